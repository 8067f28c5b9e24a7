package main

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

func testMix() Mix {
	return Mix{Requests: 20000, Exports: 100000, ZipfS: 1.1, Keys: 8, PollShare: 0.1, Pending: 200, Round: 3, Tag: 3, Seed: 7, CompleteBy: 0.8}
}

// TestStream: the stream is the same for the same flags and round, another
// in another round, and has the mix's shape.
func TestStream(t *testing.T) {
	m := testMix()
	paths, keys, completeAt := m.Stream()
	again, againKeys, _ := m.Stream()
	if !slices.Equal(paths, again) || !slices.Equal(keys, againKeys) {
		t.Fatal("the same mix gave two streams")
	}
	n := 0
	for at, ids := range completeAt {
		if at < 0 || float64(at) >= m.CompleteBy*float64(m.Requests) {
			t.Errorf("%q complete at %d, past %v of the stream", ids, at, m.CompleteBy)
		}
		n += len(ids)
	}
	if n != int(m.Pending) {
		t.Errorf("%d pending exports complete, want %d", n, m.Pending)
	}
	m.Tag = 4
	other, _, _ := m.Stream()
	if len(other) != len(paths) || other[0] == paths[0] || strings.Replace(other[0], "-0004-", "-0003-", 1) != paths[0] {
		t.Fatalf("another tag: %q, want %q with tag 4", other[0], paths[0])
	}
	m.Round = 4
	if again, _, _ := m.Stream(); slices.Equal(again, other) {
		t.Fatal("two rounds gave the same stream")
	}
	counts := map[string]int{}
	polls := 0
	for i, p := range paths {
		counts[p]++
		id := strings.TrimSuffix(strings.TrimPrefix(p, "/v1/exports/"), "/download")
		if len(id) != 36 || !strings.HasPrefix(id, "b3000000-0003-4000-800") {
			t.Fatalf("path %q", p)
		}
		if id[22] == '1' {
			polls++
		}
		if !strings.HasPrefix(keys[i], "hb_test_mix_") {
			t.Fatalf("key %q", keys[i])
		}
	}
	once, top := 0, 0
	for _, n := range counts {
		if n == 1 {
			once++
		}
		top = max(top, n)
	}
	// Most exports asked for once, a few very often, about a tenth polls.
	if once*2 < len(counts) || top < 1000 || polls < m.Requests/20 || polls > m.Requests/5 {
		t.Errorf("%d distinct, %d once, the most popular %d times, %d polls", len(counts), once, top, polls)
	}
}

// TestRun sends a stream to a server that answers in the ways a site may:
// Content-Length, chunked, closing the connection.
func TestRun(t *testing.T) {
	var n, completed atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/debug/complete/") {
			completed.Add(1)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		i := n.Add(1)
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer hb_test_mix_") {
			w.WriteHeader(401)
			return
		}
		if i%50 == 0 {
			w.Header().Set("Connection", "close")
		}
		if strings.Contains(r.URL.Path, "-8001-") {
			w.WriteHeader(400)
			if i%2 == 0 {
				w.(http.Flusher).Flush() // chunked
			}
			_, _ = w.Write([]byte(`{"error":{"code":"EXPORT_NOT_READY"}}`))
			return
		}
		w.Header().Set("Location", "http://localhost/x")
		w.WriteHeader(302)
	}))
	defer srv.Close()
	m := testMix()
	m.Requests = 2000
	res, err := Run(strings.TrimPrefix(srv.URL, "http://"), srv.URL, m, 4)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || res.Status["302"]+res.Status["400"] != m.Requests || res.Status["400"] == 0 || int(n.Load()) != m.Requests {
		t.Errorf("result %+v, server saw %d requests", res, n.Load())
	}
	if completed.Load() != int64(m.Pending) {
		t.Errorf("the app was told of %d completions, want %d", completed.Load(), m.Pending)
	}
}
