package exportdownload

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestRegressionDeleteReachesEveryCacheOfTheNode: README, "Caching": a DELETE
// answered 2xx "drops every cached answer of that export (all keys) on
// this node". Two sites in one process whose settings differ (here only the
// file name template) keep two caches; with the fleet tier the event
// reaches both caches on every other node, yet the node that saw the DELETE
// drops only the cache of the handler the DELETE passed through (the fleet
// client does not deliver its own events, and serveDelete does not visit the
// other caches as the admin purge does).
func TestRegressionDeleteReachesEveryCacheOfTheNode(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h1 := newHandler(t, up, nil, withFleet(r.Addr))
	h2 := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) { h.Filename = "other-{id}.csv" })
	if h1.caches.decisions == h2.caches.decisions {
		t.Fatal("the two handlers share a cache: the test needs two")
	}
	waitUntil(t, "the fleet is up", h1.shared.client.Up)
	if rec := download(t, h1, testID, testKey); rec.Code != http.StatusFound {
		t.Fatalf("h1: %d", rec.Code)
	}
	if rec := download(t, h2, testID, testKey); rec.Code != http.StatusFound {
		t.Fatalf("h2: %d", rec.Code)
	}

	ok := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	serve(t, h1, request{method: http.MethodDelete, path: "/v1/exports/" + testID, next: ok,
		header: map[string]string{"Authorization": "Bearer " + testKey}})
	time.Sleep(200 * time.Millisecond) // any event delivery has happened by now

	rec := download(t, h2, testID, testKey)
	if got := rec.Header().Get("Cache-Status"); got == wantHit {
		t.Fatalf("after a DELETE answered 204 on this node, the other site's cache still answers %q", got)
	}
}
