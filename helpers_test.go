package exportdownload

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// Ids and keys shared by the tests.
const (
	testID  = "01935abc-def0-7123-4567-890abcdef012"
	testID2 = "01935abc-def0-7123-4567-890abcdef013"
	testKey = "hb_test_alice"
	otherKy = "hb_test_bob"
)

// Cache-Status values of the docs/caching.md "Caching", spelled out here rather than taken from
// handler.go so that a change of the handler's constants shows up.
const (
	wantHit       = "export_download; hit"
	wantStale     = "export_download; hit; detail=stale"
	wantStored    = "export_download; fwd=miss; stored"
	wantCollapsed = "export_download; fwd=miss; collapsed"
	wantRefreshed = "export_download; fwd=stale; stored"
	wantBypass    = "export_download; fwd=bypass"
	wantNoStore   = "export_download; fwd=miss; detail=not-cacheable"
	// An upstream failure is "fwd=miss" plus a detail (docs/caching.md "Caching"); the
	// detail's wording is the handler's.
	wantFailedPrefix = "export_download; fwd=miss; detail="
)

// Cache-Status values under the names command_test.go and the fleet's
// end-to-end tests use.
const (
	csHit       = wantHit
	csStored    = wantStored
	csRefreshed = wantRefreshed
)

// errorBody is an upstream error envelope; the handler reads only the
// status of a 401/403/404/429.
const errorBody = `{"error":{"code":"X","message":"x"},"meta":{"request_id":"req_up"}}`

const fleetSecret = "0123456789abcdef0123456789abcdef-test"

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

// withFleet gives the handler a fleet tier on the Redis at addr, with a
// generous timeout: two shared cores under -race miss the default 50 ms now
// and then, and a missed call is an unavailable lookup and an extra upstream
// call where most tests count them. The tests of the bounds set their own.
func withFleet(addr string) func(*Handler) {
	return func(h *Handler) {
		h.Fleet = &FleetConfig{Redis: []string{addr}, Secret: fleetSecret, Prefix: "t" + strings.ReplaceAll(addr, ":", "_"),
			Timeout: caddy.Duration(time.Second)}
	}
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

// downloadFrom is download for other goroutines than the test's, with the
// request's context: it returns ServeHTTP's error, since t.Fatal must not
// be called off the test goroutine.
func downloadFrom(ctx context.Context, h *Handler, id, key string) (*httptest.ResponseRecorder, error) {
	req := httptest.NewRequest(http.MethodGet, "/v1/exports/"+id+"/download", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	req = req.WithContext(context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer()))
	rec := httptest.NewRecorder()
	return rec, h.ServeHTTP(rec, req, new(nextHandler))
}

// deleteExport sends a DELETE of id's invalidate_path through h, which the
// application (the next handler) answers with status.
func deleteExport(t testing.TB, h *Handler, id string, status int) *httptest.ResponseRecorder {
	t.Helper()
	app := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(status)
		return nil
	})
	return serve(t, h, request{method: http.MethodDelete, path: "/v1/exports/" + id, next: app,
		header: map[string]string{"Authorization": "Bearer " + testKey}})
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

// checkReply fails unless rec has status code and Cache-Status cs.
func checkReply(t testing.TB, rec *httptest.ResponseRecorder, code int, cs string) {
	t.Helper()
	if rec.Code != code || rec.Header().Get("Cache-Status") != cs {
		t.Fatalf("got %d, Cache-Status %q, body %q; want %d, %q", rec.Code, rec.Header().Get("Cache-Status"), rec.Body, code, cs)
	}
}

// checkCalls fails unless the upstream saw want requests for id.
func checkCalls(t testing.TB, up *testenv.Upstream, id string, want int) {
	t.Helper()
	if got := up.CallsFor(id); got != want {
		t.Fatalf("upstream calls for %s = %d, want %d", id, got, want)
	}
}

// waitUntil polls cond for up to 10s (real time: it waits on goroutines
// and the fake upstream, never on the fake clock).
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// envelope is the error body of the docs/configuration.md "Responses".
type envelope struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Meta struct {
		RequestID string `json:"request_id"`
	} `json:"meta"`
}

func decodeEnvelope(t *testing.T, body string) envelope {
	t.Helper()
	var env envelope
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("body %q is not the error envelope: %v", body, err)
	}
	return env
}

// caddyMu serialises the tests that run a whole Caddy: a process holds one
// running config at a time.
var caddyMu sync.Mutex

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runCaddy adapts caddyfile and loads it into this process's Caddy, as
// `caddy run` would, and stops it when the test ends. Calling it again in
// the same test is a config reload.
func runCaddy(t *testing.T, caddyfile string) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, warnings, err := adapter.Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting the Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading the config: %v", err)
	}
	waitOldListenersClosed(t, cfg)
}

// waitOldListenersClosed waits until each TCP port the config's HTTP
// servers listen on has one listening socket. caddy.Load returns once the
// old config's servers were told to shut down, not once they stopped
// accepting (their shutdown goroutines may not have run yet); with
// SO_REUSEPORT each config has a socket of its own and the kernel hands a
// new connection to either, so a request sent right after Load could still
// meet the old config.
func waitOldListenersClosed(t *testing.T, cfg []byte) {
	t.Helper()
	var parsed struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &parsed); err != nil {
		t.Fatalf("reading the adapted config: %v", err)
	}
	var ports []int
	for _, srv := range parsed.Apps.HTTP.Servers {
		for _, l := range srv.Listen {
			addr, err := caddy.ParseNetworkAddress(l)
			if err != nil || addr.IsUnixNetwork() || addr.IsFdNetwork() {
				continue
			}
			for p := addr.StartPort; p <= addr.EndPort; p++ {
				ports = append(ports, int(p))
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		counts := testenv.ListeningSockets()
		busy := 0
		for _, p := range ports {
			if counts[p] > 1 {
				busy = p
				break
			}
		}
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old config still listens on port %d 10s after the reload", busy)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// edge is a running Caddy with export_download in front of reverse_proxy.
type edge struct {
	base    string // http://127.0.0.1:port
	addr    string // 127.0.0.1:port
	up      *testenv.Upstream
	s3      *testenv.S3
	app     *echoApp
	appAddr string // where reverse_proxy sends the rest
	cfg     func(extra string) string
}

// echoApp stands for the application behind reverse_proxy: it echoes what
// it got and answers DELETEs with 204.
type echoApp struct {
	mu   sync.Mutex
	seen []string
}

func (a *echoApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	a.seen = append(a.seen, r.Method+" "+r.URL.Path+" "+string(b))
	a.mu.Unlock()
	if r.Method == http.MethodDelete {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("X-App", "1")
	fmt.Fprintf(w, "app:%s %s %s", r.Method, r.URL.Path, b)
}

// newEdge starts what an edge's Caddy stands between: the fake metadata
// API, versitygw and the app. Like every test that runs a whole Caddy, it
// holds caddyMu until the test ends.
func newEdge(t *testing.T) *edge {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	e := &edge{up: testenv.NewUpstream(t), s3: testenv.StartS3(t), app: new(echoApp)}
	app := httptest.NewServer(e.app)
	t.Cleanup(app.Close)
	e.appAddr = strings.TrimPrefix(app.URL, "http://")
	e.addr = freeAddr(t)
	e.base = "http://" + e.addr
	return e
}

// globalOptions are the Caddyfile's global options: admin as given
// ("off", or an address), loopback only.
func globalOptions(admin string) string {
	return "{\n\tadmin " + admin + "\n\tpersist_config off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n"
}

// site is a site block at addr: export_download, with directives in its
// block, over e's upstream and S3, then extra, then reverse_proxy to the app.
func (e *edge) site(addr, directives, extra string) string {
	return fmt.Sprintf(`
http://%s {
	export_download {
		upstream %s
		key_prefixes hb_test_ hb_live_
		bucket exports
		object_key exports/{export.project_id}/{id}.csv
		endpoint %s
		path_style
		region %s
		access_key_id %s
		secret_access_key %s
		%s
	}
	%s
	reverse_proxy %s
}
`, addr, e.up.URL, e.s3.Endpoint, e.s3.Region, e.s3.AccessKey, e.s3.SecretKey, directives, extra, e.appAddr)
}

// startEdge runs Caddy with one site, the edge, in this process.
func startEdge(t *testing.T, directives string) *edge {
	t.Helper()
	e := newEdge(t)
	e.cfg = func(extra string) string { return globalOptions("off") + e.site(e.addr, directives, extra) }
	runCaddy(t, e.cfg(""))
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
	})
	e.s3.CreateBucket(t, "exports")
	return e
}

// noRedirects is a client that, like the official Go SDK, does not follow
// redirects. It opens a connection per request: a reload closes the old
// server's idle keep-alive connections, and Go does not retry a DELETE
// sent on one of those just as it closes.
var noRedirects = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Transport:     &http.Transport{DisableKeepAlives: true},
}

func (e *edge) get(t *testing.T, client *http.Client, method, path, key string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	// Right after a reload, Caddy's SO_REUSEPORT listener swap may reset a
	// connection before any response (see TestReloadUnderLoad): a GET or
	// HEAD, idempotent, is retried; a DELETE is not.
	for try := 0; err != nil && try < 3 && (method == http.MethodGet || method == http.MethodHead); try++ {
		time.Sleep(20 * time.Millisecond)
		resp, err = client.Do(req)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// benchWriter is a ResponseWriter that costs next to nothing, so that the
// benchmarks measure the handler: its header map is cleared between
// requests, not reallocated, as a server's would be reused.
type benchWriter struct {
	header http.Header
	code   int
}

func newBenchWriter() *benchWriter { return &benchWriter{header: make(http.Header, 8)} }

func (w *benchWriter) Header() http.Header         { return w.header }
func (w *benchWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *benchWriter) WriteHeader(code int)        { w.code = code }
func (w *benchWriter) reset()                      { clear(w.header); w.code = 0 }

// noNext is the next handler of benchmarks; download requests never reach it.
var noNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// benchRequest is a download request built once and served many times.
// requestID, when set, is the client's X-Request-Id (else the handler
// makes one per request, as for most API clients).
func benchRequest(id, key, requestID string) *http.Request {
	req := httptest.NewRequest(http.MethodGet, "/v1/exports/"+id+"/download", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	if requestID != "" {
		req.Header.Set("X-Request-Id", requestID)
	}
	return req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
}

// productionLogger logs at Caddy's default level, INFO. Outside a Caddy
// config, ctx.Logger() is a development logger at DEBUG, which would put the
// per-request debug line (and its console encoding) into the measurements.
func productionLogger() *zap.Logger {
	return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zapcore.InfoLevel))
}

// checkBenchHit fails unless w holds a cache hit's redirect: a benchmark
// that measured an error path would be worthless.
func checkBenchHit(tb testing.TB, w *benchWriter) {
	tb.Helper()
	if w.code != http.StatusFound || w.header.Get("Cache-Status") != wantHit {
		tb.Fatalf("got %d %q, want a 302 cache hit", w.code, w.header.Get("Cache-Status"))
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// heapAlloc is the live heap after a full collection.
func heapAlloc() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// advance moves the handler's clock forward by d. With a fleet it then
// waits until the stream reader has confirmed at the new time: the bound
// on staleness counts in the handler's clock, and in production the clock
// never jumps past the reader's confirmations.
func advance(t testing.TB, h *Handler, clock *fakeClock, d time.Duration) {
	t.Helper()
	clock.Advance(d)
	if h.shared != nil {
		waitUntil(t, "the fleet confirms at the new time", func() bool { return h.shared.trusts(0, clock.Now()) })
	}
}
