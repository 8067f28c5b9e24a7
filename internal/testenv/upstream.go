package testenv

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Response is what the fake upstream answers for one export id.
type Response struct {
	// Status defaults to 200.
	Status int
	// Header is added to the response; Content-Type defaults to
	// application/json.
	Header http.Header
	// Body is written as is; see ExportBody for the usual 200 envelope.
	Body string
	// Delay holds the answer back; a request cancelled meanwhile gets
	// nothing, as with a real slow server.
	Delay time.Duration
}

// Request is a copy of one request the fake upstream received.
type Request struct {
	Method string
	Path   string
	Header http.Header
}

// Upstream is a fake of the application's metadata API on 127.0.0.1. It
// serves /v1/exports/{id}: GET and HEAD get the Response programmed for the
// id, DELETE gets 204 when a Response is programmed, and an id without one
// gets the 404 envelope. With SetKeys, requests bearing another key get the
// 401 envelope first. Every other path gets the 404 envelope. Safe for
// concurrent use.
type Upstream struct {
	// URL is the base URL, e.g. http://127.0.0.1:41234.
	URL string

	srv  *httptest.Server
	done chan struct{} // closed at cleanup, to end pending Delays

	mu       sync.Mutex
	byID     map[string]Response
	byKeyID  map[[2]string]Response
	keys     map[string]bool
	total    int
	calls    map[string]int
	requests []Request
}

// exportsPrefix is the default upstream_path of the README "Configuration reference" without its {id}.
const exportsPrefix = "/v1/exports/"

// NewUpstream starts a fake upstream that the test closes when it ends.
func NewUpstream(t testing.TB) *Upstream {
	t.Helper()
	u := &Upstream{
		done:    make(chan struct{}),
		byID:    make(map[string]Response),
		byKeyID: make(map[[2]string]Response),
		calls:   make(map[string]int),
	}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serveHTTP))
	u.URL = u.srv.URL
	t.Cleanup(func() {
		close(u.done)
		u.srv.Close()
	})
	return u
}

// Set programs the answer for id, for every accepted key.
func (u *Upstream) Set(id string, r Response) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.byID[id] = r
}

// SetFor programs the answer for id when the request bears key; it takes
// precedence over Set. Use it to show that one key's answer is never served
// to another.
func (u *Upstream) SetFor(key, id string, r Response) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.byKeyID[[2]string{key, id}] = r
}

// SetKeys restricts the accepted API keys: a request whose Authorization is
// not "Bearer <one of keys>" gets 401. With no keys, any request is accepted.
func (u *Upstream) SetKeys(keys ...string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.keys = nil
	if len(keys) > 0 {
		u.keys = make(map[string]bool, len(keys))
		for _, k := range keys {
			u.keys[k] = true
		}
	}
}

// Calls returns how many requests the server has received, of any method
// and path.
func (u *Upstream) Calls() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.total
}

// CallsFor returns how many requests for /v1/exports/{id} the server has
// received, of any method.
func (u *Upstream) CallsFor(id string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.calls[id]
}

// Requests returns copies of every request received, in arrival order.
func (u *Upstream) Requests() []Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]Request, len(u.requests))
	for i, r := range u.requests {
		out[i] = Request{Method: r.Method, Path: r.Path, Header: r.Header.Clone()}
	}
	return out
}

func (u *Upstream) serveHTTP(w http.ResponseWriter, r *http.Request) {
	id, isExport := strings.CutPrefix(r.URL.Path, exportsPrefix)
	isExport = isExport && id != "" && !strings.Contains(id, "/")
	key := bearerKey(r.Header.Get("Authorization"))

	u.mu.Lock()
	u.total++
	if isExport {
		u.calls[id]++
	}
	u.requests = append(u.requests, Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone()})
	authorized := u.keys == nil || u.keys[key]
	resp, found := u.byKeyID[[2]string{key, id}]
	if !found {
		resp, found = u.byID[id]
	}
	u.mu.Unlock()

	switch {
	case !isExport:
		resp = errorResponse(http.StatusNotFound, "NOT_FOUND", "Not found")
	case !authorized:
		resp = errorResponse(http.StatusUnauthorized, "UNAUTHORIZED", "Invalid or missing API key")
	case !found:
		resp = errorResponse(http.StatusNotFound, "NOT_FOUND", "Export not found")
	case r.Method == http.MethodDelete:
		resp = Response{Status: http.StatusNoContent, Delay: resp.Delay}
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		resp = errorResponse(http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "Method not allowed")
	}

	if resp.Delay > 0 {
		timer := time.NewTimer(resp.Delay)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
			return
		case <-u.done:
			return
		}
	}
	for name, values := range resp.Header {
		w.Header()[http.CanonicalHeaderKey(name)] = append([]string(nil), values...)
	}
	if resp.Body != "" && w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json")
	}
	status := resp.Status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(resp.Body))
	}
}

// bearerKey returns the credential of a Bearer Authorization header, or ""
// (the scheme is case-insensitive, RFC 9110 §11.1).
func bearerKey(h string) string {
	scheme, key, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(key)
}

func errorResponse(status int, code, message string) Response {
	body, _ := json.Marshal(map[string]any{
		"error": map[string]string{"code": code, "message": message},
		"meta":  map[string]string{"request_id": "req_up"},
	})
	return Response{Status: status, Body: string(body)}
}

// ExportBody returns the "Get export" 200 envelope:
// {"data":{"id":id,"project_id":"proj_1","status":status,"expires_at":…},
// "meta":{"request_id":"req_up"}}. expires_at is null when expiresAt is nil,
// else RFC 3339 in UTC with fractional seconds (so that sub-second lifetimes
// in tests are exact). extra adds or replaces fields of data.
func ExportBody(id, status string, expiresAt *time.Time, extra map[string]any) string {
	data := map[string]any{
		"id":         id,
		"project_id": "proj_1",
		"status":     status,
		"expires_at": nil,
	}
	if expiresAt != nil {
		data["expires_at"] = expiresAt.UTC().Format(time.RFC3339Nano)
	}
	for k, v := range extra {
		data[k] = v
	}
	body, err := json.Marshal(map[string]any{
		"data": data,
		"meta": map[string]string{"request_id": "req_up"},
	})
	if err != nil {
		// Only a test's own unmarshalable extra value gets here.
		panic("testenv: ExportBody: " + err.Error())
	}
	return string(body)
}
