package exportdownload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/goleak"

	"github.com/exportedge/caddy-export-download/internal/testenv"
	"github.com/exportedge/caddy-export-download/internal/upstream"
)

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

	// A reload that rotates the S3 keys keeps the answers, and never hands
	// out a URL signed with the old keys: the URL cache is the keys' own.
	t.Run("other S3 credentials", func(t *testing.T) {
		up := testenv.NewUpstream(t)
		completed(up, testID, time.Time{})
		old := newHandler(t, up, nil)
		first := download(t, old, testID, testKey)
		if !strings.Contains(first.Header().Get("Location"), "X-Amz-Credential=AKIDEXAMPLE%2F") {
			t.Fatalf("first URL %q", first.Header().Get("Location"))
		}
		rotated := newHandler(t, up, nil, func(h *Handler) { h.AccessKeyID = "AKIDROTATED" })
		_ = old.Cleanup()
		rec := download(t, rotated, testID, testKey)
		if rec.Header().Get("Cache-Status") != "export_download; hit" || up.CallsFor(testID) != 1 {
			t.Errorf("the answer cache was not kept: %q, %d calls", rec.Header().Get("Cache-Status"), up.CallsFor(testID))
		}
		if loc := rec.Header().Get("Location"); !strings.Contains(loc, "X-Amz-Credential=AKIDROTATED%2F") {
			t.Errorf("URL after rotating keys: %q", loc)
		}
	})
}

// TestSitesWithOtherTTLsDoNotShareAnswers: two sites with the same
// upstream, bucket and templates but other TTLs keep their answers apart:
// the one that checks every request (ttl completed 0) never serves the
// other's stored answer.
func TestSitesWithOtherTTLsDoNotShareAnswers(t *testing.T) {
	e := startEdge(t, "")
	other := freeAddr(t)
	runCaddy(t, globalOptions("off")+e.site(e.addr, "", "")+e.site(other, "cache {\n\t\t\tttl completed 0\n\t\t}", ""))
	completed(e.up, testID, time.Time{})
	get := func(base string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/exports/"+testID+"/download", nil)
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i, want := range []string{wantStored, wantHit} {
		if resp := get(e.base); resp.StatusCode != 302 || resp.Header.Get("Cache-Status") != want {
			t.Fatalf("site A request %d: %d %q, want 302 %q", i, resp.StatusCode, resp.Header.Get("Cache-Status"), want)
		}
	}
	for i := range 2 {
		resp := get("http://" + other)
		if resp.StatusCode != 302 || resp.Header.Get("Cache-Status") == wantHit {
			t.Fatalf("site B (ttl completed 0) request %d: %d %q: served site A's stored answer", i, resp.StatusCode, resp.Header.Get("Cache-Status"))
		}
	}
	checkCalls(t, e.up, testID, 3)
}

// TestReloadUnderLoad reloads the config three times while downloads run:
// every answer is the right 302 and the cache is kept.
func TestReloadUnderLoad(t *testing.T) {
	e := startEdge(t, "")
	completed(e.up, testID, time.Now().Add(time.Hour))
	path := "/v1/exports/" + testID + "/download"
	if resp, _ := e.get(t, noRedirects, http.MethodGet, path, testKey); resp.StatusCode != 302 {
		t.Fatalf("warm-up: %d", resp.StatusCode)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var ok, bad, dropped atomic.Int64
	var firstBad atomic.Value
	var wg sync.WaitGroup
	// A new connection per request. On Linux, Caddy binds each config's
	// listener with SO_REUSEPORT and closes the old one at a reload, which
	// resets connections still in its accept queue: the client sees EOF
	// before any response. That is Caddy's listener, not this handler, so
	// such a GET is retried (up to 3 times), as an idempotent request may
	// be; every response must be right and every request must succeed.
	client := &http.Client{Timeout: 10 * time.Second, CheckRedirect: noRedirects.CheckRedirect,
		Transport: &http.Transport{DisableKeepAlives: true}}
	do := func() (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, e.base+path, nil)
		req.Header.Set("Authorization", "Bearer "+testKey)
		return client.Do(req)
	}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := do()
				for try := 0; err != nil && try < 3; try++ {
					dropped.Add(1)
					time.Sleep(10 * time.Millisecond)
					resp, err = do()
				}
				if err != nil {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, err.Error())
					continue
				}
				resp.Body.Close()
				loc := resp.Header.Get("Location")
				if resp.StatusCode != 302 || !strings.Contains(loc, "/exports/exports/proj_1/"+testID+".csv?") {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, resp.Status+" "+loc)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	for i := 1; i <= 3; i++ {
		time.Sleep(300 * time.Millisecond)
		runCaddy(t, e.cfg("header X-Reload "+strings.Repeat("x", i)))
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d failed or wrong answers of %d (first: %v)", bad.Load(), bad.Load()+ok.Load(), firstBad.Load())
	}
	if ok.Load() < 10 {
		t.Fatalf("only %d answers during the reloads", ok.Load())
	}
	if n := e.up.CallsFor(testID); n != 1 {
		t.Errorf("%d upstream calls across 3 reloads, want 1 (cache kept)", n)
	}
	t.Logf("%d answers, all 302, across 3 reloads; %d connections reset by the listener swap and retried", ok.Load(), dropped.Load())
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

// An answer with more surrogate keys than an entry keeps is served but
// not cached: a purge of a tag it could not keep would miss it.
func TestAnswerWithTooManyTagsIsNotCached(t *testing.T) {
	up := testenv.NewUpstream(t)
	tags := make([]string, 0, upstream.MaxSurrogateKeys+1)
	for i := range upstream.MaxSurrogateKeys {
		tags = append(tags, fmt.Sprintf("proj_%02d", i))
	}
	up.Set(testID, testenv.Response{
		Header: http.Header{"Surrogate-Key": {strings.Join(tags, " ")}, "Cache-Groups": {`"key_alice"`}},
		Body:   testenv.ExportBody(testID, "completed", nil, map[string]any{"project_id": "p"})})
	h := newHandler(t, up, nil)
	for range 2 {
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, "export_download; fwd=miss; detail=not-cacheable")
	}
	checkCalls(t, up, testID, 2)
	purge(context.Background(), purgeSelection{Tags: []string{"key_alice"}}) // nothing to miss
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, "export_download; fwd=miss; detail=not-cacheable")
}

// The cache key is the API key, not how the header spells it: a refusal
// (the app's 401 for one spelling) drops the answers cached under every
// spelling ("Bearer K", "bearer K", "BEARER  K").
func TestRefusalCoversEverySpellingOfTheKey(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	completed(up, testID2, time.Time{})
	h := newHandler(t, up, nil)
	get := func(id, authorization string) *httptest.ResponseRecorder {
		return serve(t, h, request{path: "/v1/exports/" + id + "/download", header: map[string]string{"Authorization": authorization}})
	}
	spellings := []string{"Bearer " + testKey, "bearer " + testKey, "BEARER  " + testKey}
	checkReply(t, get(testID, spellings[0]), http.StatusFound, wantStored)
	for _, auth := range spellings[1:] {
		checkReply(t, get(testID, auth), http.StatusFound, wantHit) // one entry
	}
	up.SetKeys(otherKy) // the app revokes the key
	if rec := get(testID2, spellings[0]); rec.Code != http.StatusUnauthorized {
		t.Fatalf("after the revocation: %d, want the app's 401", rec.Code)
	}
	for _, auth := range spellings {
		if rec := get(testID, auth); rec.Code == http.StatusFound {
			t.Fatalf("the refused key still redirects as %q (Cache-Status %q)", auth, rec.Header().Get("Cache-Status"))
		}
	}
}
