package exportdownload

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/testenv"
	"github.com/exportedge/caddy-export-download/internal/upstream"
)

// warmHandler returns a handler on the real clock whose cache holds a
// completed export for testKey, with its presigned URL.
func warmHandler(tb testing.TB) *Handler {
	tb.Helper()
	up := testenv.NewUpstream(tb)
	completed(up, testID, time.Now().Add(24*time.Hour))
	h := newHandler(tb, up, nil)
	h.logger = productionLogger()
	checkReply(tb, download(tb, h, testID, testKey), http.StatusFound, wantStored)
	checkReply(tb, download(tb, h, testID, testKey), http.StatusFound, wantHit)
	return h
}

func BenchmarkServeHTTPCacheHit(b *testing.B) {
	h := warmHandler(b)
	for _, bc := range []struct{ name, requestID string }{
		{"new request id", ""},
		{"client request id", "req_client_0123456789"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req, w := benchRequest(testID, testKey, bc.requestID), newBenchWriter()
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				_ = h.ServeHTTP(w, req, noNext)
			}
			checkBenchHit(b, w)
		})
	}
}

func BenchmarkServeHTTPCacheHitParallel(b *testing.B) {
	h := warmHandler(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req, w := benchRequest(testID, testKey, ""), newBenchWriter()
		served := false // with a small b.N a goroutine may get no request
		for pb.Next() {
			w.reset()
			_ = h.ServeHTTP(w, req, noNext)
			served = true
		}
		if served && (w.code != http.StatusFound || w.header.Get("Cache-Status") != wantHit) {
			b.Errorf("got %d %q, want a 302 cache hit", w.code, w.header.Get("Cache-Status"))
		}
	})
}

// BenchmarkServeHTTPMiss is the contrast: the cache off, every request asks
// the (loopback) upstream and presigns.
func BenchmarkServeHTTPMiss(b *testing.B) {
	up := testenv.NewUpstream(b)
	completed(up, testID, time.Now().Add(24*time.Hour))
	h := newHandler(b, up, nil, func(h *Handler) { h.Cache = &CacheConfig{Disabled: true} })
	h.logger = productionLogger()
	req, w := benchRequest(testID, testKey, ""), newBenchWriter()
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		_ = h.ServeHTTP(w, req, noNext)
	}
	if w.code != http.StatusFound || w.header.Get("Cache-Status") != wantBypass {
		b.Fatalf("got %d %q, want a 302 bypass", w.code, w.header.Get("Cache-Status"))
	}
}

// TestCacheHitAllocs is the benchmark targets' "at most 2 allocations per
// cache hit", in every part of an entry's life, with the fleet tier off and
// on: fresh, and past 80% of its lifetime while a refresh runs (such a hit
// once built the refresh's loader before finding one running: 7
// allocations). It counts allocations, not time, so it is stable on a busy
// machine.
func TestCacheHitAllocs(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, fleetOn := range []bool{false, true} {
		t.Run(map[bool]string{false: "fleet off", true: "fleet on"}[fleetOn], func(t *testing.T) {
			up := testenv.NewUpstream(t)
			clock := newClock()
			completed(up, testID, clock.Now().Add(24*time.Hour))
			configure := []func(*Handler){}
			if fleetOn {
				configure = append(configure, withFleet(r.Addr))
			}
			h := newHandler(t, up, clock, configure...)
			h.logger = productionLogger()
			if fleetOn {
				// Not while the fleet client connects and reads the stream's
				// start: its goroutines' allocations count too.
				waitUntil(t, "the fleet is up", h.shared.client.Up)
			}
			download(t, h, testID, testKey)
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
			hits := func(phase string) {
				t.Helper()
				for _, requestID := range []string{"", "req_client_0123456789"} {
					req, w := benchRequest(testID, testKey, requestID), newBenchWriter()
					// AllocsPerRun counts every goroutine's allocations (the
					// fleet's stream reader's too): the fewest of 3 runs.
					allocs := math.Inf(1)
					for range 3 {
						allocs = min(allocs, testing.AllocsPerRun(1000, func() {
							w.reset()
							_ = h.ServeHTTP(w, req, noNext)
						}))
					}
					checkBenchHit(t, w)
					t.Logf("%s, X-Request-Id %q: %v allocations", phase, requestID, allocs)
					if allocs > 2 {
						t.Errorf("%s, X-Request-Id %q: %v allocations per hit, want at most 2", phase, requestID, allocs)
					}
				}
			}
			hits("fresh")
			// Past 80% of the 5m lifetime: the next hit starts a refresh,
			// which the upstream holds until the test ends.
			up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil), Delay: time.Minute})
			advance(t, h, clock, 4*time.Minute+30*time.Second)
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
			waitUntil(t, "the refresh reaches the upstream", func() bool { return up.CallsFor(testID) == 2 })
			hits("refresh window, a refresh running")
		})
	}
}

// TestHeap100kEntries is the benchmark targets' "100,000 cached entries within 64 MiB of
// heap". Entries go through the handler's own loader and the real upstream
// client, which parses the "Get export" body, with an in-memory transport
// instead of 100,000 loopback calls. Each has its own key and export id, as
// in production, and a typical answer: a completed export with the usual
// fields in data.
func TestHeap100kEntries(t *testing.T) {
	const n = 100_000
	up := testenv.NewUpstream(t)
	h := newHandler(t, up, nil)
	h.logger = productionLogger()
	expires := time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		// Concatenated: JSON encoding per call would only slow the fill.
		id := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		body := `{"data":{"id":"` + id + `","project_id":"proj_` + id[:8] + `","status":"completed",` +
			`"format":"csv","row_count":18234,"file_size_bytes":4718592,"created_at":"2025-01-01T10:00:00Z",` +
			`"completed_at":"2025-01-01T10:02:11Z","expires_at":"` + expires + `"},"meta":{"request_id":"req_up"}}`
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(body)), Request: r}, nil
	})
	client, err := upstream.New(upstream.Config{BaseURL: up.URL, Path: h.UpstreamPath, Timeout: time.Second,
		Forward: h.forward, Transport: rt})
	if err != nil {
		t.Fatal(err)
	}
	h.upstream = client
	c := h.caches.decisions

	fill := func(from, to int) {
		hdr := http.Header{}
		for i := from; i < to; i++ {
			id := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
			hdr.Set("Authorization", fmt.Sprintf("Bearer hb_live_%024d", i))
			x := &exchange{r: &http.Request{Header: hdr}, id: id, reqID: "req_fill"}
			x.key = h.cacheKey(x)
			_, how, err := c.Load(context.Background(), x.key, h.newFill(x, x.now).load)
			if err != nil || how != cache.Stored {
				t.Fatalf("entry %d: Load = %v, %v; want stored", i, how, err)
			}
		}
	}
	fill(0, 1000) // the first entries grow the store's fixed structures
	before := heapAlloc()
	fill(1000, n)
	after := heapAlloc()
	runtime.KeepAlive(h)

	if got := c.Stats().Entries; got < n*99/100 {
		t.Fatalf("the cache holds %d entries of %d: the measurement would be short", got, n)
	}
	grown := float64(after-before) * n / (n - 1000)
	t.Logf("%d entries: heap %.1f MiB (%.0f B per entry)", n, grown/(1<<20), grown/n)
	if grown > 64<<20 {
		t.Errorf("%d cached entries take %.1f MiB of heap, over the benchmark targets' 64 MiB", n, grown/(1<<20))
	}
}
