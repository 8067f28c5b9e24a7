package exportdownload

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

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

	// The id is lowercased for the key (docs/configuration.md "Responses"), and HEAD shares GET's
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

	// A forward_header is part of the key too (docs/configuration.md "The upstream contract").
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

	// A request waiting on a failing upstream with a stale entry must not
	// serve it once a DELETE (2xx) or a 401 of the credential dropped it
	// meanwhile (SECURITY.md: "stale-if-error never brings them back").
	for _, how := range []string{"delete", "revoked"} {
		t.Run("not after a "+how+" dropped it", func(t *testing.T) {
			up := testenv.NewUpstream(t)
			completed(up, testID, time.Time{})
			clock := newClock()
			h := newHandler(t, up, clock)
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)

			// Past freshness, within stale_if_error; the upstream now fails slowly.
			clock.Advance(5*time.Minute + time.Second)
			up.Set(testID, testenv.Response{Status: 500, Body: "oops", Delay: 700 * time.Millisecond})

			done := make(chan *httptest.ResponseRecorder, 1)
			go func() {
				rec, _ := downloadFrom(context.Background(), h, testID, testKey)
				done <- rec
			}()
			waitUntil(t, "the stale request asks the upstream", func() bool { return up.CallsFor(testID) == 2 })

			switch how {
			case "delete":
				if rec := deleteExport(t, h, testID, http.StatusNoContent); rec.Code != http.StatusNoContent {
					t.Fatalf("DELETE: %d", rec.Code)
				}
			case "revoked":
				up.SetFor(testKey, testID2, testenv.Response{Status: 401,
					Body: `{"error":{"code":"UNAUTHORIZED","message":"Invalid or missing API key"}}`})
				if rec := download(t, h, testID2, testKey); rec.Code != http.StatusUnauthorized {
					t.Fatalf("revoked key on another export: %d", rec.Code)
				}
			}

			rec := <-done
			if rec.Code == http.StatusFound {
				t.Fatalf("after the entry was dropped (%s), the waiting request served it stale: %d %q",
					how, rec.Code, rec.Header().Get("Cache-Status"))
			}
		})
	}
}

// TestSlowAndDownUpstream: a request finishes within upstream_timeout plus
// a margin, and a cached completed export keeps redirecting within
// stale_if_error.
func TestSlowAndDownUpstream(t *testing.T) {
	clock := newClock()
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	up.Set(testID2, testenv.Response{Body: "{}", Delay: 5 * time.Second})
	h := newHandler(t, up, clock, func(h *Handler) { h.UpstreamTimeout = caddy.Duration(300 * time.Millisecond) })

	start := time.Now()
	rec := download(t, h, testID2, testKey)
	if took := time.Since(start); rec.Code != 503 || took > 3*time.Second {
		t.Fatalf("slow upstream: %d after %v, want 503 within the timeout and a margin", rec.Code, took)
	}
	if rec.Header().Get("Retry-After") != "1" {
		t.Errorf("Retry-After %q", rec.Header().Get("Retry-After"))
	}

	if rec := download(t, h, testID, testKey); rec.Code != 302 {
		t.Fatalf("warm-up: %d", rec.Code)
	}
	// The app goes slow past the entry's freshness: stale is served.
	up.Set(testID, testenv.Response{Body: "{}", Delay: 5 * time.Second})
	clock.Advance(6 * time.Minute)
	start = time.Now()
	rec = download(t, h, testID, testKey)
	if took := time.Since(start); rec.Code != 302 || rec.Header().Get("Cache-Status") != "export_download; hit; detail=stale" || took > 3*time.Second {
		t.Fatalf("stale-if-error: %d %q after %v", rec.Code, rec.Header().Get("Cache-Status"), took)
	}
	// Past stale_if_error (10m after the 5m freshness): 503.
	clock.Advance(10 * time.Minute)
	if rec := download(t, h, testID, testKey); rec.Code != 503 {
		t.Fatalf("past stale_if_error: %d", rec.Code)
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

// TestRefusalNotStoredStillRevokes: with ttl unauthorized 0, a key revoked
// while its answer is cached stops downloading as soon as a call sees the
// 401 (here the refresh-ahead call), and stale-if-error never serves an
// answer the app has refused since.
func TestRefusalNotStoredStillRevokes(t *testing.T) {
	t.Run("refresh-ahead sees the 401", func(t *testing.T) {
		up := testenv.NewUpstream(t)
		completed(up, testID, time.Time{})
		clock := newClock()
		h := newHandler(t, up, clock, func(h *Handler) {
			h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"unauthorized": 0}}
		})
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
		up.Set(testID, testenv.Response{Status: http.StatusUnauthorized, Body: errorBody})
		clock.Advance(4*time.Minute + 30*time.Second) // 90% of 5m: refresh-ahead
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
		waitUntil(t, "the refresh gets its 401", func() bool { return up.CallsFor(testID) == 2 })
		// Until the refresh's answer is in, hits go on; then the key is
		// refused (asked again: the 401 itself is not stored).
		waitUntil(t, "the refused key gets 401", func() bool {
			rec := download(t, h, testID, testKey)
			return rec.Code == http.StatusUnauthorized
		})
		rec := download(t, h, testID, testKey)
		if rec.Code != http.StatusUnauthorized || up.CallsFor(testID) < 3 {
			t.Fatalf("after the app refused the key: %d %q, %d calls; want 401 from the app", rec.Code, rec.Header().Get("Cache-Status"), up.CallsFor(testID))
		}
	})
	for _, ttl := range []time.Duration{0, 5 * time.Second} {
		t.Run(fmt.Sprintf("stale-if-error after a 401, ttl unauthorized %v", ttl), func(t *testing.T) {
			up := testenv.NewUpstream(t)
			completed(up, testID, time.Time{})
			completed(up, testID2, time.Time{})
			clock := newClock()
			h := newHandler(t, up, clock, func(h *Handler) {
				h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"unauthorized": caddy.Duration(ttl)}}
			})
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
			checkReply(t, download(t, h, testID2, testKey), http.StatusFound, wantStored)
			clock.Advance(6 * time.Minute) // past freshness, within stale_if_error
			up.Set(testID, testenv.Response{Status: http.StatusUnauthorized, Body: errorBody})
			if rec := download(t, h, testID, testKey); rec.Code != http.StatusUnauthorized {
				t.Fatalf("the app refuses the key: got %d, want 401", rec.Code)
			}
			// Now the app fails: the old 302s (of this and of every other
			// export of the key) must not come back as stale answers.
			up.Set(testID, testenv.Response{Status: 500, Body: "down"})
			up.Set(testID2, testenv.Response{Status: 500, Body: "down"})
			clock.Advance(10 * time.Second)
			for _, id := range []string{testID, testID2} {
				if rec := download(t, h, id, testKey); rec.Code == http.StatusFound {
					t.Fatalf("%s: stale-if-error served %d %q for a key the app refused", id, rec.Code, rec.Header().Get("Cache-Status"))
				}
			}
		})
	}
}

// TestClientLeavesDuringStaleRefresh: a client that disconnects while its
// stale entry is being refreshed gets nothing written and is not counted
// as a stale answer served or as an outage.
func TestClientLeavesDuringStaleRefresh(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	clock := newClock()
	h := newHandler(t, up, clock)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
	clock.Advance(6 * time.Minute) // stale
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil), Delay: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // the client leaves once the refresh has asked the upstream
		for deadline := time.Now().Add(10 * time.Second); up.CallsFor(testID) < 2 && time.Now().Before(deadline); {
			time.Sleep(2 * time.Millisecond)
		}
		cancel()
	}()
	rec, err := downloadFrom(ctx, h, testID, testKey)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Header().Get("Location") != "" || rec.Code == http.StatusFound {
		t.Fatalf("a client that left got %d, Location %q written to its closed connection", rec.Code, rec.Header().Get("Location"))
	}
	if n := testutil.ToFloat64(h.metrics.lookups[localStale]); n != 0 {
		t.Fatalf("counted %v stale answers served to a client that left", n)
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

// TestAnsweredBy: each way the tiers answer has its Cache-Status (README,
// "Caching"; the fleet's member first, as RFC 9211 lists caches from the
// origin's side), its cache_lookups_total label and its placeholder word,
// read from tables without an allocation.
func TestAnsweredBy(t *testing.T) {
	for _, tc := range []struct {
		by                  answeredBy
		status, label, word string
	}{
		{answeredBy{localBypass, sharedNotAsked}, "export_download; fwd=bypass", "bypass", "bypass"},
		{answeredBy{localHit, sharedNotAsked}, "export_download; hit", "hit", "hit"},
		{answeredBy{localStale, sharedNotAsked}, "export_download; hit; detail=stale", "stale", "stale"},
		{answeredBy{localStored, sharedNotAsked}, "export_download; fwd=miss; stored", "miss", "miss"},
		{answeredBy{localNotStored, sharedNotAsked}, "export_download; fwd=miss; detail=not-cacheable", "miss", "miss"},
		{answeredBy{localFailed, sharedNotAsked}, "export_download; fwd=miss; detail=upstream-error", "miss", "miss"},
		{answeredBy{localCollapsed, sharedNotAsked}, "export_download; fwd=miss; collapsed", "collapsed", "collapsed"},
		{answeredBy{localRefreshed, sharedNotAsked}, "export_download; fwd=stale; stored", "refreshed", "refreshed"},
		{answeredBy{localRefreshedNotStored, sharedNotAsked}, "export_download; fwd=stale; detail=not-cacheable", "refreshed", "refreshed"},
		{answeredBy{localStored, sharedHit}, "export_download_fleet; hit, export_download; fwd=miss; stored", "miss", "fleet_hit"},
		{answeredBy{localStored, sharedStored}, "export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored", "miss", "miss"},
		{answeredBy{localStored, sharedCollapsed}, "export_download_fleet; fwd=miss; collapsed, export_download; fwd=miss; stored", "miss", "fleet_collapsed"},
		{answeredBy{localNotStored, sharedFetched}, "export_download_fleet; fwd=miss, export_download; fwd=miss; detail=not-cacheable", "miss", "miss"},
		{answeredBy{localFailed, sharedUnavailable}, "export_download_fleet; fwd=miss; detail=unavailable, export_download; fwd=miss; detail=upstream-error", "miss", "miss"},
		{answeredBy{localStale, sharedUnavailable}, "export_download_fleet; fwd=miss; detail=unavailable, export_download; hit; detail=stale", "stale", "stale"},
		{answeredBy{localRefreshed, sharedHit}, "export_download_fleet; hit, export_download; fwd=stale; stored", "refreshed", "fleet_hit"},
	} {
		if got := tc.by.cacheStatus(); got != tc.status {
			t.Errorf("%+v: Cache-Status %q, want %q", tc.by, got, tc.status)
		}
		if got := tc.by.label(); got != tc.label {
			t.Errorf("%+v: label %q, want %q", tc.by, got, tc.label)
		}
		if got := tc.by.word(); got != tc.word {
			t.Errorf("%+v: placeholder word %v, want %q", tc.by, got, tc.word)
		}
	}
	var sink any
	by := answeredBy{localRefreshed, sharedCollapsed}
	if n := testing.AllocsPerRun(100, func() { sink = by.word(); _, _ = by.cacheStatus(), by.label() }); n != 0 {
		t.Errorf("answeredBy's values cost %v allocations, want 0", n)
	}
	_ = sink
}
