package exportdownload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/goleak"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// Cache-Status values of the README "Caching", spelled out here rather than taken from
// handler.go so that a change of the handler's constants shows up.
const (
	wantHit       = "export_download; hit"
	wantStale     = "export_download; hit; detail=stale"
	wantStored    = "export_download; fwd=miss; stored"
	wantCollapsed = "export_download; fwd=miss; collapsed"
	wantRefreshed = "export_download; fwd=stale; stored"
	wantBypass    = "export_download; fwd=bypass"
	wantNoStore   = "export_download; fwd=miss; detail=not-cacheable"
	// An upstream failure is "fwd=miss" plus a detail (README "Caching"); the
	// detail's wording is the handler's.
	wantFailedPrefix = "export_download; fwd=miss; detail="
)

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

// signedURL is what a test reads from a presigned Location.
type signedURL struct {
	raw     string
	signed  time.Time     // X-Amz-Date
	life    time.Duration // X-Amz-Expires
	expires time.Time
}

func parseLocation(t testing.TB, rec *httptest.ResponseRecorder) signedURL {
	t.Helper()
	loc := rec.Header().Get("Location")
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatalf("Location %q: %v", loc, err)
	}
	q := u.Query()
	at, err := time.Parse("20060102T150405Z", q.Get("X-Amz-Date"))
	if err != nil {
		t.Fatalf("Location %q: X-Amz-Date: %v", loc, err)
	}
	secs, err := strconv.Atoi(q.Get("X-Amz-Expires"))
	if err != nil {
		t.Fatalf("Location %q: X-Amz-Expires: %v", loc, err)
	}
	life := time.Duration(secs) * time.Second
	return signedURL{raw: loc, signed: at, life: life, expires: at.Add(life)}
}

// errorBody is an upstream error envelope; the handler reads only the
// status of a 401/403/404/429.
const errorBody = `{"error":{"code":"X","message":"x"},"meta":{"request_id":"req_up"}}`

func TestCacheHit(t *testing.T) {
	up := testenv.NewUpstream(t)
	clock := newClock()
	completed(up, testID, clock.Now().Add(time.Hour))
	h := newHandler(t, up, clock)

	first := download(t, h, testID, testKey)
	checkReply(t, first, http.StatusFound, wantStored)
	second := download(t, h, testID, testKey)
	checkReply(t, second, http.StatusFound, wantHit)
	checkCalls(t, up, testID, 1)
	clock.Advance(time.Second) // a new presign would now carry another X-Amz-Date
	third := download(t, h, testID, testKey)
	checkReply(t, third, http.StatusFound, wantHit)
	if first.Header().Get("Location") != third.Header().Get("Location") {
		t.Errorf("a hit in the reuse window presigned again:\n%s\n%s", first.Header().Get("Location"), third.Header().Get("Location"))
	}

	// The id is lowercased for the key (README "Responses"), and HEAD shares GET's
	// entry: neither asks again.
	checkReply(t, download(t, h, strings.ToUpper(testID), testKey), http.StatusFound, wantHit)
	head := serve(t, h, request{method: http.MethodHead, path: "/v1/exports/" + testID + "/download",
		header: map[string]string{"Authorization": "Bearer " + testKey}})
	checkReply(t, head, http.StatusFound, wantHit)
	checkCalls(t, up, testID, 1)
}

// TestCacheCollapsesColdRequests is the benchmark targets' "one upstream call for 1,000
// concurrent cold requests of the same export and key". The upstream holds
// its answer for 200ms so that the requests overlap.
func TestCacheCollapsesColdRequests(t *testing.T) {
	up := testenv.NewUpstream(t)
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil), Delay: 200 * time.Millisecond})
	h := newHandler(t, up, nil)

	const n = 1000
	recs := make([]*httptest.ResponseRecorder, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			recs[i], errs[i] = downloadFrom(context.Background(), h, testID, testKey)
		})
	}
	close(start)
	wg.Wait()

	statuses := map[string]int{}
	locations := map[string]bool{}
	for i, rec := range recs {
		if errs[i] != nil {
			t.Fatalf("request %d: ServeHTTP returned %v", i, errs[i])
		}
		if rec.Code != http.StatusFound {
			t.Fatalf("request %d: %d %q, want 302", i, rec.Code, rec.Body)
		}
		statuses[rec.Header().Get("Cache-Status")]++
		locations[rec.Header().Get("Location")] = true
	}
	t.Logf("%d concurrent cold requests: %d upstream call(s), Cache-Status %v", n, up.CallsFor(testID), statuses)
	checkCalls(t, up, testID, 1)
	// One request asked; the others waited on it, or, if the scheduler
	// started them after the answer was stored, found it.
	if statuses[wantStored] != 1 || statuses[wantCollapsed] == 0 || statuses[wantStored]+statuses[wantCollapsed]+statuses[wantHit] != n {
		t.Fatalf("Cache-Status counts %v: want 1 %q and the rest %q (or %q)", statuses, wantStored, wantCollapsed, wantHit)
	}
	if len(locations) != 1 {
		t.Errorf("%d distinct URLs for one object: the presign was not shared", len(locations))
	}
}

// TestCacheWaiterGivesUp: a request whose client goes away does not cancel
// the upstream call others wait on, whether it started the call or joined
// it; the answer is stored all the same.
func TestCacheWaiterGivesUp(t *testing.T) {
	for _, leaderGivesUp := range []bool{true, false} {
		name := "waiter gives up"
		if leaderGivesUp {
			name = "leader gives up"
		}
		t.Run(name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil), Delay: 300 * time.Millisecond})
			h := newHandler(t, up, nil)
			gone, leave := context.WithCancel(context.Background())
			defer leave()

			leaderCtx := context.Background()
			if leaderGivesUp {
				leaderCtx = gone
			}
			leader := make(chan *httptest.ResponseRecorder, 1)
			go func() {
				rec, _ := downloadFrom(leaderCtx, h, testID, testKey)
				leader <- rec
			}()
			waitUntil(t, "the leader's call reaches the upstream", func() bool { return up.CallsFor(testID) == 1 })

			const waiters = 20
			others := make(chan *httptest.ResponseRecorder, waiters)
			for range waiters {
				go func() {
					rec, _ := downloadFrom(context.Background(), h, testID, testKey)
					others <- rec
				}()
			}
			leave()
			if !leaderGivesUp {
				// Cancelled before it asks: it joins the call in flight and
				// leaves at once (or, if the call has ended, finds a hit).
				rec, _ := downloadFrom(gone, h, testID, testKey)
				if rec.Code == http.StatusFound && rec.Header().Get("Cache-Status") != wantHit {
					t.Errorf("a cancelled waiter got a 302 %q without the call having ended", rec.Header().Get("Cache-Status"))
				}
			}
			// The leader's answer matters only if its client stayed.
			if rec := <-leader; !leaderGivesUp && rec.Code != http.StatusFound {
				t.Fatalf("the leader got %d %q after a waiter gave up, want 302", rec.Code, rec.Body)
			}
			for range waiters {
				rec := <-others
				if rec.Code != http.StatusFound {
					t.Fatalf("a waiter got %d %q after another request gave up, want 302", rec.Code, rec.Body)
				}
			}
			checkCalls(t, up, testID, 1)
			// The shared call finished and was stored.
			waitUntil(t, "the shared answer is stored", func() bool {
				return download(t, h, testID, testKey).Header().Get("Cache-Status") == wantHit
			})
			checkCalls(t, up, testID, 1)
		})
	}
}

// TestCacheKeyedByCredentials: an answer cached for one key never answers
// another, and each key's call carries its own Authorization.
func TestCacheKeyedByCredentials(t *testing.T) {
	up := testenv.NewUpstream(t)
	up.SetFor(testKey, testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil)})
	up.SetFor(otherKy, testID, testenv.Response{Status: http.StatusNotFound, Body: errorBody})
	h := newHandler(t, up, newClock())

	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
	b := download(t, h, testID, otherKy)
	checkReply(t, b, http.StatusNotFound, wantStored)
	if env := decodeEnvelope(t, b.Body.String()); env.Error.Code != "NOT_FOUND" {
		t.Fatalf("key B got %q, want NOT_FOUND", env.Error.Code)
	}
	checkCalls(t, up, testID, 2)
	reqs := up.Requests()
	if got := reqs[1].Header.Get("Authorization"); got != "Bearer "+otherKy {
		t.Fatalf("key B's upstream call carried Authorization %q, want B's own", got)
	}
	// Each key keeps its own answer.
	checkReply(t, download(t, h, testID, otherKy), http.StatusNotFound, wantHit)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
	checkCalls(t, up, testID, 2)

	// A forward_header is part of the key too (README "The upstream contract").
	up2 := testenv.NewUpstream(t)
	completed(up2, testID, time.Time{})
	h2 := newHandler(t, up2, newClock(), func(h *Handler) { h.ForwardHeader = []string{"X-Tenant"} })
	tenant := func(name string) *httptest.ResponseRecorder {
		return serve(t, h2, request{path: "/v1/exports/" + testID + "/download",
			header: map[string]string{"Authorization": "Bearer " + testKey, "X-Tenant": name}})
	}
	checkReply(t, tenant("a"), http.StatusFound, wantStored)
	checkReply(t, tenant("b"), http.StatusFound, wantStored)
	checkReply(t, tenant("a"), http.StatusFound, wantHit)
	checkCalls(t, up2, testID, 2)
}

// TestCacheFreshLifetimes walks each outcome's fresh lifetime on the fake
// clock: a hit well inside it (before refresh-ahead starts at 80%), and an
// upstream call once it has passed (the stale entry is refreshed
// synchronously: "fwd=stale; stored").
func TestCacheFreshLifetimes(t *testing.T) {
	export := func(status string) testenv.Response {
		return testenv.Response{Body: testenv.ExportBody(testID, status, nil, nil)}
	}
	tests := []struct {
		name      string
		resp      testenv.Response
		ttl       map[string]caddy.Duration
		lifetime  time.Duration
		code      int
		errorCode string
	}{
		{"not_found", testenv.Response{Status: 404, Body: errorBody}, nil, 5 * time.Second, 404, "NOT_FOUND"},
		{"unauthorized 401", testenv.Response{Status: 401, Body: errorBody}, nil, 5 * time.Second, 401, "UNAUTHORIZED"},
		{"unauthorized 403", testenv.Response{Status: 403, Body: errorBody}, nil, 5 * time.Second, 401, "UNAUTHORIZED"},
		{"pending", export("pending"), nil, time.Second, 400, "EXPORT_NOT_READY"},
		{"processing", export("processing"), nil, time.Second, 400, "EXPORT_NOT_READY"},
		{"unknown status", export("queued"), nil, time.Second, 400, "EXPORT_NOT_READY"},
		{"failed", export("failed"), nil, 30 * time.Second, 400, "EXPORT_NOT_READY"},
		{"expired", export("expired"), nil, 5 * time.Minute, 410, "EXPORT_EXPIRED"},
		{"completed", export("completed"), nil, 5 * time.Minute, 302, ""},
		{"custom not_found", testenv.Response{Status: 404, Body: errorBody},
			map[string]caddy.Duration{"not_found": caddy.Duration(2 * time.Second)}, 2 * time.Second, 404, "NOT_FOUND"},
		{"custom failed", export("failed"),
			map[string]caddy.Duration{"failed": caddy.Duration(time.Minute)}, time.Minute, 400, "EXPORT_NOT_READY"},
		{"custom completed", export("completed"),
			map[string]caddy.Duration{"completed": caddy.Duration(10 * time.Second)}, 10 * time.Second, 302, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			up.Set(testID, tt.resp)
			clock := newClock()
			h := newHandler(t, up, clock, func(h *Handler) { h.Cache = &CacheConfig{TTL: tt.ttl} })
			check := func(cs string, calls int) {
				t.Helper()
				rec := download(t, h, testID, testKey)
				checkReply(t, rec, tt.code, cs)
				if tt.errorCode != "" {
					if env := decodeEnvelope(t, rec.Body.String()); env.Error.Code != tt.errorCode {
						t.Fatalf("error code %q, want %q", env.Error.Code, tt.errorCode)
					}
				}
				checkCalls(t, up, testID, calls)
			}
			check(wantStored, 1)
			clock.Advance(tt.lifetime * 79 / 100)
			check(wantHit, 1)
			clock.Advance(tt.lifetime - tt.lifetime*79/100)
			check(wantRefreshed, 2)
			check(wantHit, 2)
		})
	}
}

// TestCacheTTLZero: an outcome whose ttl is 0 is never stored.
func TestCacheTTLZero(t *testing.T) {
	tests := []struct {
		name  string
		resp  testenv.Response
		class string
		code  int
	}{
		{"pending", testenv.Response{Body: testenv.ExportBody(testID, "pending", nil, nil)}, "pending", 400},
		{"not_found", testenv.Response{Status: 404, Body: errorBody}, "not_found", 404},
		{"completed", testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil)}, "completed", 302},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			up.Set(testID, tt.resp)
			h := newHandler(t, up, newClock(), func(h *Handler) {
				h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{tt.class: 0}}
			})
			for i := 1; i <= 3; i++ {
				checkReply(t, download(t, h, testID, testKey), tt.code, wantNoStore)
				checkCalls(t, up, testID, i)
			}
		})
	}
}

// TestCacheCompletedTurnsExpired: at expires_at a cached completed export
// answers 410 by itself, without asking the upstream.
func TestCacheCompletedTurnsExpired(t *testing.T) {
	up := testenv.NewUpstream(t)
	clock := newClock()
	expires := clock.Now().Add(2 * time.Minute)
	completed(up, testID, expires)
	h := newHandler(t, up, clock)

	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
	clock.Advance(2*time.Minute - 1500*time.Millisecond)
	rec := download(t, h, testID, testKey)
	checkReply(t, rec, http.StatusFound, wantHit)
	if u := parseLocation(t, rec); u.expires.After(expires) {
		t.Fatalf("URL valid until %v, after the export expires at %v", u.expires, expires)
	}
	// Under a second left (SigV4 counts whole seconds), then expired.
	for _, d := range []time.Duration{time.Second, 500 * time.Millisecond, time.Minute} {
		clock.Advance(d)
		rec := download(t, h, testID, testKey)
		checkReply(t, rec, http.StatusGone, wantHit)
		if env := decodeEnvelope(t, rec.Body.String()); env.Error.Code != "EXPORT_EXPIRED" {
			t.Fatalf("error code %q, want EXPORT_EXPIRED", env.Error.Code)
		}
	}
	checkCalls(t, up, testID, 1)
}

// TestCacheStaleIfError: once an entry's fresh lifetime is over and the
// upstream fails, the entry is served for stale_if_error more, then 503.
func TestCacheStaleIfError(t *testing.T) {
	body := testenv.ExportBody(testID, "completed", nil, nil)
	tests := []struct {
		name string
		// breakUp makes the upstream fail; front is a proxy in front of up
		// that the handler talks to, which the test may close.
		breakUp   func(up *testenv.Upstream, front *httptest.Server)
		configure func(h *Handler)
		counted   bool // whether the failed calls reach the fake upstream
	}{
		{"status 500", func(up *testenv.Upstream, _ *httptest.Server) {
			up.Set(testID, testenv.Response{Status: 500, Body: "oops"})
		}, nil, true},
		{"body not JSON", func(up *testenv.Upstream, _ *httptest.Server) {
			up.Set(testID, testenv.Response{Body: "<html>"})
		}, nil, true},
		{"timeout", func(up *testenv.Upstream, _ *httptest.Server) {
			up.Set(testID, testenv.Response{Body: body, Delay: time.Minute})
		}, func(h *Handler) { h.UpstreamTimeout = caddy.Duration(100 * time.Millisecond) }, true},
		{"upstream closed", func(_ *testenv.Upstream, front *httptest.Server) { front.Close() }, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			up.Set(testID, testenv.Response{Body: body})
			target, _ := url.Parse(up.URL)
			front := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
			t.Cleanup(front.Close)
			clock := newClock()
			h := newHandler(t, up, clock, func(h *Handler) {
				h.Upstream = front.URL
				if tt.configure != nil {
					tt.configure(h)
				}
			})

			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
			tt.breakUp(up, front)
			calls := 1
			// Stale from the end of the fresh lifetime (5m) to 10m past it.
			for _, d := range []time.Duration{5 * time.Minute, 10*time.Minute - time.Second} {
				clock.Advance(d)
				rec := download(t, h, testID, testKey)
				checkReply(t, rec, http.StatusFound, wantStale)
				if rec.Header().Get("Location") == "" {
					t.Fatal("a stale 302 without Location")
				}
				if tt.counted {
					// It did ask first (the proxy may still be passing
					// the call on when the handler gives up on it).
					calls++
					waitUntil(t, "the failed call reaches the upstream", func() bool { return up.CallsFor(testID) == calls })
				}
			}
			clock.Advance(time.Second)
			rec := download(t, h, testID, testKey)
			if rec.Code != http.StatusServiceUnavailable || !strings.HasPrefix(rec.Header().Get("Cache-Status"), wantFailedPrefix) {
				t.Fatalf("past stale_if_error: %d %q, want 503 %q…", rec.Code, rec.Header().Get("Cache-Status"), wantFailedPrefix)
			}
			if env := decodeEnvelope(t, rec.Body.String()); env.Error.Code != "SERVICE_UNAVAILABLE" {
				t.Fatalf("error code %q, want SERVICE_UNAVAILABLE", env.Error.Code)
			}
			if ra := rec.Header().Get("Retry-After"); ra != "1" {
				t.Fatalf("Retry-After %q, want 1", ra)
			}
		})
	}
}

// TestCacheNeverStoresFailuresOr429: a 429 and an upstream failure are
// passed on every time, and the next healthy answer is stored.
func TestCacheNeverStoresFailuresOr429(t *testing.T) {
	up := testenv.NewUpstream(t)
	h := newHandler(t, up, newClock())

	up.Set(testID, testenv.Response{Status: 429, Body: errorBody, Header: http.Header{"Retry-After": {"7"}}})
	for i := 1; i <= 2; i++ {
		rec := download(t, h, testID, testKey)
		checkReply(t, rec, http.StatusTooManyRequests, wantNoStore)
		if rec.Header().Get("Retry-After") != "7" {
			t.Fatalf("Retry-After %q, want the upstream's 7", rec.Header().Get("Retry-After"))
		}
		checkCalls(t, up, testID, i)
	}
	up.Set(testID, testenv.Response{Status: 500, Body: "oops"})
	for i := 3; i <= 4; i++ {
		rec := download(t, h, testID, testKey)
		if rec.Code != http.StatusServiceUnavailable || !strings.HasPrefix(rec.Header().Get("Cache-Status"), wantFailedPrefix) {
			t.Fatalf("upstream 500: %d %q, want 503 %q…", rec.Code, rec.Header().Get("Cache-Status"), wantFailedPrefix)
		}
		checkCalls(t, up, testID, i)
	}
	completed(up, testID, time.Time{})
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
	checkCalls(t, up, testID, 5)
}

// TestCacheRefreshAhead: past 80% of its lifetime an entry is served at
// once while one background call refreshes it. The refreshed answer names
// another project, so a reply built from it is told apart from the old one:
// a hit that had waited for the (slow) refresh would carry proj_2.
func TestCacheRefreshAhead(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	clock := newClock()
	h := newHandler(t, up, clock)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)

	up.Set(testID, testenv.Response{
		Body:  testenv.ExportBody(testID, "completed", nil, map[string]any{"project_id": "proj_2"}),
		Delay: time.Second,
	})
	clock.Advance(4*time.Minute + 30*time.Second) // 90% of 5m
	start := time.Now()
	for i := range 5 {
		rec := download(t, h, testID, testKey)
		checkReply(t, rec, http.StatusFound, wantHit)
		if loc := rec.Header().Get("Location"); !strings.Contains(loc, "/proj_1/") {
			t.Fatalf("hit %d during the refresh waited for it: Location %s", i, loc)
		}
	}
	t.Logf("5 hits during a 1s refresh took %v", time.Since(start))
	waitUntil(t, "the refresh reaches the upstream", func() bool { return up.CallsFor(testID) == 2 })
	waitUntil(t, "the refreshed answer is served", func() bool {
		rec := download(t, h, testID, testKey)
		checkReply(t, rec, http.StatusFound, wantHit)
		return strings.Contains(rec.Header().Get("Location"), "/proj_2/")
	})
	checkCalls(t, up, testID, 2)
}

// TestCachePresignReuse: a URL is handed out again for min(presign_reuse,
// a third of its lifetime), so it always has two thirds of its lifetime
// left, and never outlives the export.
func TestCachePresignReuse(t *testing.T) {
	type step struct {
		advance time.Duration
		same    bool // the URL of the previous step
	}
	reuse := func(d time.Duration) *caddy.Duration { c := caddy.Duration(d); return &c }
	tests := []struct {
		name    string
		reuse   *caddy.Duration // nil: the default, a third of presign_expiry (15m)
		expires time.Duration   // the export's, from the start; 0: none
		steps   []step
	}{
		{"default window", nil, 0, []step{
			{0, false}, {time.Second, true}, {5*time.Minute - 2*time.Second, true}, {time.Second, false}, {time.Minute, true},
		}},
		{"presign_reuse 1m", reuse(time.Minute), 0, []step{
			{0, false}, {59 * time.Second, true}, {time.Second, false},
		}},
		// Lifetime 6m, clamped by expires_at: a third of it is 2m.
		{"lifetime clamped by the export", nil, 6 * time.Minute, []step{
			{0, false}, {2*time.Minute - time.Second, true}, {time.Second, false},
		}},
		{"presign_reuse 0", reuse(0), 0, []step{
			{0, false}, {time.Second, false}, {time.Second, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			clock := newClock()
			var expires time.Time
			if tt.expires > 0 {
				expires = clock.Now().Add(tt.expires)
			}
			completed(up, testID, expires)
			h := newHandler(t, up, clock, func(h *Handler) {
				// A long fresh lifetime keeps refresh-ahead out of the way.
				h.Cache = &CacheConfig{PresignReuse: tt.reuse, TTL: map[string]caddy.Duration{"completed": caddy.Duration(time.Hour)}}
			})
			var prev signedURL
			for i, st := range tt.steps {
				clock.Advance(st.advance)
				rec := download(t, h, testID, testKey)
				if rec.Code != http.StatusFound {
					t.Fatalf("step %d: %d %q", i, rec.Code, rec.Body)
				}
				u := parseLocation(t, rec)
				if same := u.raw == prev.raw; same != st.same {
					t.Fatalf("step %d (+%v): same URL = %v, want %v\nprevious %s\ngot      %s", i, st.advance, same, st.same, prev.raw, u.raw)
				}
				now := clock.Now()
				if left := u.expires.Sub(now); left*3 < u.life*2 {
					t.Fatalf("step %d: handed out a URL with %v of its %v left, under two thirds", i, left, u.life)
				}
				if !expires.IsZero() && u.expires.After(expires) {
					t.Fatalf("step %d: URL valid until %v, after the export expires at %v", i, u.expires, expires)
				}
				prev = u
			}
			checkCalls(t, up, testID, 1)
		})
	}

	t.Run("export expiry moved earlier", func(t *testing.T) {
		up := testenv.NewUpstream(t)
		clock := newClock()
		start := clock.Now()
		completed(up, testID, start.Add(time.Hour))
		h := newHandler(t, up, clock, func(h *Handler) {
			h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"completed": caddy.Duration(time.Minute)}}
		})
		first := parseLocation(t, download(t, h, testID, testKey))
		if first.life != 15*time.Minute {
			t.Fatalf("first URL lifetime %v, want presign_expiry 15m", first.life)
		}
		sooner := start.Add(10 * time.Minute)
		completed(up, testID, sooner)
		clock.Advance(time.Minute) // the entry is stale: the next request reloads it
		rec := download(t, h, testID, testKey)
		checkReply(t, rec, http.StatusFound, wantRefreshed)
		second := parseLocation(t, rec)
		if second.raw == first.raw || second.expires.After(sooner) {
			t.Fatalf("after the export's expiry moved to %v: URL valid until %v (first URL: %v); want a new one within it", sooner, second.expires, first.expires)
		}
	})
}

// TestCacheInvalidateOnDelete: a DELETE of an export that the next handler
// answers with a 2xx drops the export's entries for every key, and only
// then, and only that export's.
func TestCacheInvalidateOnDelete(t *testing.T) {
	answer := func(code int) caddyhttp.Handler {
		return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			if code == http.StatusOK {
				_, err := w.Write([]byte("{}")) // an implicit 200
				return err
			}
			w.WriteHeader(code)
			return nil
		})
	}
	tests := []struct {
		name    string
		path    string
		code    int
		dropped string // the export whose entries go; "": none
	}{
		{"204", "/v1/exports/" + testID, http.StatusNoContent, testID},
		{"implicit 200", "/v1/exports/" + testID, http.StatusOK, testID},
		{"upper-case id", "/v1/exports/" + strings.ToUpper(testID), http.StatusNoContent, testID},
		{"403", "/v1/exports/" + testID, http.StatusForbidden, ""},
		{"404", "/v1/exports/" + testID, http.StatusNotFound, ""},
		{"500", "/v1/exports/" + testID, http.StatusInternalServerError, ""},
		{"another id", "/v1/exports/" + testID2, http.StatusNoContent, testID2},
		{"another path", "/v1/projects/" + testID, http.StatusNoContent, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			completed(up, testID, time.Time{})
			completed(up, testID2, time.Time{})
			h := newHandler(t, up, newClock())
			// testID is cached for two keys, testID2 for one.
			cached := map[string][]string{testID: {testKey, otherKy}, testID2: {testKey}}
			for _, id := range []string{testID, testID2} {
				for _, key := range cached[id] {
					checkReply(t, download(t, h, id, key), http.StatusFound, wantStored)
				}
			}

			rec := serve(t, h, request{method: http.MethodDelete, path: tt.path, next: answer(tt.code),
				header: map[string]string{"Authorization": "Bearer " + testKey}})
			if rec.Code != tt.code {
				t.Fatalf("DELETE answered %d, want the next handler's %d", rec.Code, tt.code)
			}

			for _, id := range []string{testID, testID2} {
				want, calls := wantHit, len(cached[id])
				if id == tt.dropped {
					want, calls = wantStored, 2*len(cached[id])
				}
				for _, key := range cached[id] {
					checkReply(t, download(t, h, id, key), http.StatusFound, want)
				}
				checkCalls(t, up, id, calls)
			}
		})
	}
}

// TestCacheDisabled: with the cache off every request asks the upstream.
func TestCacheDisabled(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, newClock(), func(h *Handler) { h.Cache = &CacheConfig{Disabled: true} })
	for i := 1; i <= 3; i++ {
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantBypass)
		checkCalls(t, up, testID, i)
	}
	checkReply(t, download(t, h, testID2, testKey), http.StatusNotFound, wantBypass)
	// DELETE still passes through untouched.
	next := new(nextHandler)
	if rec := serve(t, h, request{method: http.MethodDelete, path: "/v1/exports/" + testID, next: next}); rec.Code != http.StatusTeapot || next.Calls() != 1 {
		t.Fatalf("DELETE with the cache off: %d, next called %d times", rec.Code, next.Calls())
	}
}

// TestCacheSurvivesReload: Caddy provisions the new config before it cleans
// up the old one; a config with the same settings keeps the cache, one with
// other settings gets its own, and the last Cleanup releases it.
func TestCacheSurvivesReload(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	clock := newClock()
	old := newHandler(t, up, clock)
	first := download(t, old, testID, testKey)
	checkReply(t, first, http.StatusFound, wantStored)

	reloaded := newHandler(t, up, clock)
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second) // a new presign would now carry another X-Amz-Date
	rec := download(t, reloaded, testID, testKey)
	checkReply(t, rec, http.StatusFound, wantHit)
	if rec.Header().Get("Location") != first.Header().Get("Location") {
		t.Error("the presigned URL cache did not survive the reload")
	}
	checkCalls(t, up, testID, 1)

	other := newHandler(t, up, clock, func(h *Handler) { h.ObjectKey = "other/{id}.csv" })
	rec = download(t, other, testID, testKey)
	checkReply(t, rec, http.StatusFound, wantStored)
	if loc := rec.Header().Get("Location"); !strings.Contains(loc, "/other/"+testID+".csv") {
		t.Fatalf("the config with another object_key redirected to %s", loc)
	}
	checkCalls(t, up, testID, 2)
	checkReply(t, download(t, reloaded, testID, testKey), http.StatusFound, wantHit)

	if err := reloaded.Cleanup(); err != nil {
		t.Fatal(err)
	}
	fresh := newHandler(t, up, clock)
	checkReply(t, download(t, fresh, testID, testKey), http.StatusFound, wantStored)
	checkCalls(t, up, testID, 3)
}

// TestCacheNoGoroutineLeak: once the last Handler of a pool key is cleaned
// up, none of its cache's goroutines is left: not otter's maintenance, not
// a background refresh still waiting on a slow upstream. The fake
// upstream's server and the HTTP client's connection goroutines are not
// the cache's and are ignored.
func TestCacheNoGoroutineLeak(t *testing.T) {
	httpPlumbing := []goleak.Option{
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http/httptest.(*Server).goServe.func1"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
	}
	for _, refreshing := range []bool{false, true} {
		name := "idle"
		if refreshing {
			name = "refresh in flight"
		}
		t.Run(name, func(t *testing.T) {
			opts := append([]goleak.Option{goleak.IgnoreCurrent()}, httpPlumbing...)
			up := testenv.NewUpstream(t)
			completed(up, testID, time.Time{})
			clock := newClock()
			h := newHandler(t, up, clock, func(h *Handler) { h.UpstreamTimeout = caddy.Duration(time.Minute) })
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
			checkReply(t, download(t, h, testID2, otherKy), http.StatusNotFound, wantStored)
			if refreshing {
				up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil), Delay: time.Minute})
				clock.Advance(4*time.Minute + 30*time.Second)
				checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
				waitUntil(t, "the refresh reaches the upstream", func() bool { return up.CallsFor(testID) == 2 })
			}
			done := make(chan struct{})
			go func() { _ = h.Cleanup(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Cleanup did not return within 10s")
			}
			if err := goleak.Find(opts...); err != nil {
				t.Fatalf("goroutines left after the last Cleanup: %v", err)
			}
		})
	}
}

// TestCacheNamesAreKeyed: the admin API's stats name each cache by a keyed
// digest of its settings. A plain digest of them (they include
// upstream_header values and the fleet's secret) would let whoever may
// read the stats test guesses of a weak edge token offline. The name stays
// the same across a reload that keeps the cache.
func TestCacheNamesAreKeyed(t *testing.T) {
	up := testenv.NewUpstream(t)
	for _, id := range []string{testID, testID2} {
		completed(up, id, time.Time{})
	}
	edgeToken := func(h *Handler) { h.UpstreamHeader = map[string]string{"X-Edge-Token": "weak-token"} }
	nameOf := func(h *Handler) string {
		t.Helper()
		for _, r := range cachesStats() {
			if r.Entries == 2 && r.Misses >= 2 {
				return r.Name
			}
		}
		t.Fatalf("no cache with this test's 2 entries in %+v", cachesStats())
		return ""
	}
	h := newHandler(t, up, nil, edgeToken)
	for _, id := range []string{testID, testID2} {
		checkReply(t, download(t, h, id, testKey), http.StatusFound, wantStored)
	}
	name := nameOf(h)
	// What a reader of the stats could compute from a guess of the token.
	settings, _ := json.Marshal([]any{h.Upstream, h.UpstreamPath, map[string]string{"X-Edge-Token": "weak-token"}, h.forward,
		h.Bucket, h.ObjectKey, h.Filename, h.ContentType, h.Cache.MaxEntries, h.Cache.StaleIfError,
		h.ttls, h.SurrogateKeyHeader, ""})
	sum := sha256.Sum256(settings)
	if guess := "decisions:" + hex.EncodeToString(sum[:]); name == guess {
		t.Fatalf("the cache is named %s, the plain digest of its settings: a guess of the edge token can be tested against it", name)
	}
	if !strings.HasPrefix(name, "decisions:") {
		t.Errorf("cache name %q: want it to say it is a decisions cache", name)
	}
	reloaded := newHandler(t, up, nil, edgeToken)
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if got := nameOf(reloaded); got != name {
		t.Errorf("after a reload that keeps the cache its name is %q, was %q", got, name)
	}
}
