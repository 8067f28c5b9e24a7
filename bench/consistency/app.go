package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// apiKeyPrefix starts every API key of a run; the key's id follows it. The
// nodes accept only keys with the prefix (key_prefixes hb_test_).
const apiKeyPrefix = "hb_test_ck_"

// apiKey is the API key whose id is keyID.
func apiKey(keyID string) string { return apiKeyPrefix + keyID }

// tag is the surrogate key (and RFC 9875 cache group) that names every
// answer given to keyID's key.
func tag(keyID string) string { return "key_" + keyID }

// fakeApp is the application: the metadata API the nodes ask
// (GET /v1/exports/{id} with the caller's Authorization) and the app behind
// their reverse_proxy (DELETE /v1/exports/{id}, POST
// /v1/keys/{keyid}/revoke). Every export id exists until it is deleted, and
// every key of the run is valid until it is revoked; neither comes back.
type fakeApp struct {
	srv  *http.Server
	Addr string

	// epoch is when recording started (nil before): metadata GETs are
	// recorded as offsets from it.
	epoch atomic.Pointer[time.Time]

	mu      sync.Mutex
	deleted map[string]bool
	revoked map[string]bool // key ids
	calls   []time.Duration // metadata GETs since epoch
}

func startApp() (*fakeApp, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &fakeApp{Addr: l.Addr().String(), deleted: map[string]bool{}, revoked: map[string]bool{}}
	a.srv = &http.Server{Handler: http.HandlerFunc(a.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = a.srv.Serve(l) }()
	return a, nil
}

func (a *fakeApp) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
}

// revoke marks a key revoked, as the app does before an operator purges
// its tag.
func (a *fakeApp) revoke(keyID string) {
	a.mu.Lock()
	a.revoked[keyID] = true
	a.mu.Unlock()
}

// upstreamCalls returns the recorded metadata GETs.
func (a *fakeApp) upstreamCalls() []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]time.Duration(nil), a.calls...)
}

const (
	bodyUnauthorized = `{"error":{"code":"UNAUTHORIZED","message":"Invalid or missing API key"},"meta":{"request_id":"req_app"}}`
	bodyNotFound     = `{"error":{"code":"NOT_FOUND","message":"Export not found"},"meta":{"request_id":"req_app"}}`
)

func (a *fakeApp) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if id, ok := strings.CutPrefix(r.URL.Path, "/v1/exports/"); ok && id != "" && !strings.Contains(id, "/") {
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			a.getExport(w, r, id)
		case http.MethodDelete:
			a.mu.Lock()
			a.deleted[id] = true
			a.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
		return
	}
	if rest, ok := strings.CutPrefix(r.URL.Path, "/v1/keys/"); ok && r.Method == http.MethodPost {
		if keyID, ok := strings.CutSuffix(rest, "/revoke"); ok && keyID != "" && !strings.Contains(keyID, "/") {
			a.revoke(keyID)
			// RFC 9875: the answer to an unsafe method invalidates the
			// cache group that tags every answer given to this key.
			w.Header().Set("Cache-Group-Invalidation", fmt.Sprintf("%q", tag(keyID)))
			_, _ = io.WriteString(w, `{"data":{"revoked":true},"meta":{"request_id":"req_app"}}`)
			return
		}
	}
	w.WriteHeader(http.StatusNotFound)
	_, _ = io.WriteString(w, `{"error":{"code":"NOT_FOUND","message":"Not found"},"meta":{"request_id":"req_app"}}`)
}

// getExport answers "Get export": 401 for a revoked or unknown key, 404
// for a deleted export, else the export, completed, tagged with the key's
// surrogate key both ways (Surrogate-Key, and RFC 9875's Cache-Groups).
func (a *fakeApp) getExport(w http.ResponseWriter, r *http.Request, id string) {
	keyID := ""
	if scheme, key, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		keyID, _ = strings.CutPrefix(key, apiKeyPrefix)
		if keyID == key {
			keyID = ""
		}
	}
	a.mu.Lock()
	if e := a.epoch.Load(); e != nil {
		a.calls = append(a.calls, time.Since(*e))
	}
	revoked, deleted := keyID == "" || a.revoked[keyID], a.deleted[id]
	a.mu.Unlock()
	switch {
	case revoked:
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, bodyUnauthorized)
	case deleted:
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, bodyNotFound)
	default:
		w.Header().Set("Surrogate-Key", tag(keyID))
		w.Header().Set("Cache-Groups", fmt.Sprintf("%q", tag(keyID)))
		fmt.Fprintf(w, `{"data":{"id":%q,"project_id":"proj_ck","status":"completed","expires_at":null},"meta":{"request_id":"req_app"}}`, id)
	}
}
