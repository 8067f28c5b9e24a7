package exportdownload

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// Ids and keys shared by the tests.
const (
	testID  = "01935abc-def0-7123-4567-890abcdef012"
	testID2 = "01935abc-def0-7123-4567-890abcdef013"
	testKey = "hb_test_alice"
	otherKy = "hb_test_bob"
)

// Cache-Status values under the names command_test.go and the fleet's
// end-to-end tests use.
const (
	csHit       = wantHit
	csStored    = wantStored
	csRefreshed = wantRefreshed
)

// fakeClock is the handler's injectable clock.
type fakeClock = testenv.Clock

func newClock() *fakeClock { return testenv.NewClock(time.Now().Truncate(time.Second)) }

// newHandler provisions a Handler against upstream up, as Caddy would,
// with configure applied first; it is cleaned up when the test ends. A
// non-nil clock replaces time.Now.
func newHandler(t testing.TB, up *testenv.Upstream, clock *fakeClock, configure ...func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{
		Upstream:        up.URL,
		Bucket:          "exports",
		ObjectKey:       "exports/{export.project_id}/{id}.csv",
		Endpoint:        "http://localhost:1",
		PathStyle:       true,
		AccessKeyID:     "AKIDEXAMPLE",
		SecretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
	}
	for _, f := range configure {
		f(h)
	}
	if clock != nil {
		h.now = clock.Now
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := h.Provision(ctx); err != nil {
		cancel()
		t.Fatalf("Provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		cancel()
		t.Fatalf("Validate: %v", err)
	}
	t.Cleanup(func() {
		_ = h.Cleanup()
		cancel()
	})
	return h
}

// completed programs up with a completed export expiring at expires (zero:
// never) for every accepted key.
func completed(up *testenv.Upstream, id string, expires time.Time) {
	var exp *time.Time
	if !expires.IsZero() {
		exp = &expires
	}
	up.Set(id, testenv.Response{Body: testenv.ExportBody(id, "completed", exp, nil)})
}

// nextHandler is what follows export_download in the route: it records
// that it ran and echoes the request body.
type nextHandler struct {
	mu    sync.Mutex
	calls int
	body  string
}

func (n *nextHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	b, _ := io.ReadAll(r.Body)
	n.mu.Lock()
	n.calls++
	n.body = string(b)
	n.mu.Unlock()
	w.Header().Set("X-Next", "1")
	w.WriteHeader(http.StatusTeapot)
	_, _ = w.Write([]byte("next:" + string(b)))
	return nil
}

func (n *nextHandler) Calls() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.calls
}

var _ caddyhttp.Handler = (*nextHandler)(nil)

// request is one call of ServeHTTP.
type request struct {
	method, path string
	header       map[string]string
	multi        http.Header // headers with several values
	body         string
	next         caddyhttp.Handler
	ctx          context.Context
}

// serve runs one request through h, with a replacer in the context as
// Caddy's server would put there.
func serve(t testing.TB, h *Handler, r request) *httptest.ResponseRecorder {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	req := httptest.NewRequest(r.method, r.path, strings.NewReader(r.body))
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	for k, v := range r.multi {
		req.Header[k] = v
	}
	ctx := r.ctx
	if ctx == nil {
		ctx = req.Context()
	}
	req = req.WithContext(context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer()))
	next := r.next
	if next == nil {
		next = new(nextHandler)
	}
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, req, next); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}
	return rec
}

// download is a GET of id's download path with key.
func download(t testing.TB, h *Handler, id, key string) *httptest.ResponseRecorder {
	t.Helper()
	return serve(t, h, request{path: "/v1/exports/" + id + "/download", header: map[string]string{"Authorization": "Bearer " + key}})
}

// httpRequest builds a GET with testKey for a raw (still escaped) path.
func httpRequest(t testing.TB, rawPath string) *http.Request {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "http://example.com"+rawPath, nil)
	req.Header.Set("Authorization", "Bearer "+testKey)
	return req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
}

// serveReq runs req through h; the next handler answers 418.
func serveReq(t testing.TB, h *Handler, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, req, new(nextHandler)); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}
	return rec
}
