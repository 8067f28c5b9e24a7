//go:build !race

// The race detector multiplies memory several times over, so this test is
// built only without it; .ci/run runs it in a step of its own.

package exportdownload

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/testenv"
	"github.com/exportedge/caddy-export-download/internal/upstream"
)

// TestHeap1MEntriesWithSurrogateKeys is the benchmark targets' "1,000,000
// cached entries within 500 MiB", with each answer tagged by two surrogate
// keys as the README's revocation pattern has it: the API key's id and the
// project. 10,000 API keys with 100 exports each, 1,000 projects.
func TestHeap1MEntriesWithSurrogateKeys(t *testing.T) {
	const n, perKey, projects = 1_000_000, 100, 1000
	up := testenv.NewUpstream(t)
	h := newHandler(t, up, nil, func(h *Handler) { h.Cache = &CacheConfig{MaxEntries: n} })
	h.logger = productionLogger()
	expires := time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		id := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		key := r.Header.Get("Authorization")[len("Bearer hb_live_"):]
		proj := fmt.Sprintf("proj_%04d", (len(key)*7+int(key[len(key)-1]))%projects)
		body := `{"data":{"id":"` + id + `","project_id":"` + proj + `","status":"completed",` +
			`"format":"csv","row_count":18234,"file_size_bytes":4718592,"created_at":"2025-01-01T10:00:00Z",` +
			`"completed_at":"2025-01-01T10:02:11Z","expires_at":"` + expires + `"},"meta":{"request_id":"req_up"}}`
		return &http.Response{StatusCode: http.StatusOK,
			Header: http.Header{"Content-Type": {"application/json"}, "Surrogate-Key": {"key_" + key[len(key)-8:] + " " + proj}},
			Body:   io.NopCloser(strings.NewReader(body)), Request: r}, nil
	})
	client, err := upstream.New(upstream.Config{BaseURL: up.URL, Path: h.UpstreamPath, Timeout: time.Second,
		Forward: h.forward, Transport: rt, SurrogateKeyHeader: "Surrogate-Key"})
	if err != nil {
		t.Fatal(err)
	}
	h.upstream = client
	c := h.caches.decisions

	fill := func(from, to int) {
		hdr := http.Header{}
		x := &exchange{r: &http.Request{Header: hdr}, reqID: "req_fill"}
		for i := from; i < to; i++ {
			x.id = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
			x.apiKey = fmt.Sprintf("hb_live_%024d", i/perKey)
			hdr.Set("Authorization", "Bearer "+x.apiKey)
			x.key = h.cacheKey(x)
			_, how, err := c.Load(context.Background(), x.key, h.newFill(x, x.now).load)
			if err != nil || how != cache.Stored {
				t.Fatalf("entry %d: Load = %v, %v; want stored", i, how, err)
			}
		}
	}
	fill(0, 10_000) // the first entries grow the store's fixed structures
	before := heapAlloc()
	fill(10_000, n)
	after := heapAlloc()
	runtime.KeepAlive(h)

	s := c.Stats()
	if s.Entries < n*99/100 {
		t.Fatalf("the cache holds %d entries of %d: the measurement would be short", s.Entries, n)
	}
	if s.Tags < n/perKey {
		t.Fatalf("%d surrogate keys indexed, want at least %d", s.Tags, n/perKey)
	}
	grown := float64(after-before) * n / (n - 10_000)
	t.Logf("%d entries with 2 surrogate keys each: heap %.1f MiB (%.0f B per entry), %d surrogate keys", n, grown/(1<<20), grown/n, s.Tags)
	if grown > 500<<20 {
		t.Errorf("%d cached entries take %.1f MiB of heap, over the 500 MiB target", n, grown/(1<<20))
	}

	// Purging one API key's tag drops its 100 entries, and costs that.
	start := time.Now()
	dropped := c.PurgeTags("key_" + fmt.Sprintf("%024d", 4242)[16:])
	took := time.Since(start)
	t.Logf("purge of one surrogate key (%d entries) among %d: %v", dropped, s.Entries, took)
	if dropped != perKey {
		t.Errorf("purging one API key's tag dropped %d entries, want %d", dropped, perKey)
	}
}
