package exportdownload

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestPurgeOutsideThePoolLocks: a purge reads the pools, then drops and
// publishes outside their locks. While its publish waits on a Redis that
// does not answer, a reload (which loads its caches from the pools) goes
// on; it once waited for the publish's whole timeout, and the DELETEs after
// the reload behind it.
func TestPurgeOutsideThePoolLocks(t *testing.T) {
	r := testenv.StartRedis(t)
	proxy := testenv.StartTCPProxy(t, r.Addr)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, withFleet(proxy.Addr), func(h *Handler) {
		h.Fleet.Timeout = caddy.Duration(time.Minute) // the publish waits this long on a silent Redis
	})
	waitUntil(t, "the fleet is up", h.shared.client.Up)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored")

	proxy.Freeze()
	purged := make(chan purgeOutcome, 1)
	go func() { purged <- purge(context.Background(), purgeSelection{IDs: []string{testID}}) }()
	waitUntil(t, "the purge dropped the local entry", func() bool { return h.caches.decisions.Stats().Entries == 0 })

	// A reload with other settings: new values in the pools.
	reloaded := make(chan error, 1)
	other := &Handler{Upstream: up.URL, Bucket: "other", ObjectKey: "k/{id}", Endpoint: "http://localhost:1", PathStyle: true,
		AccessKeyID: "AKID", SecretAccessKey: "secret"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(func() { _ = other.Cleanup(); cancel() })
	go func() { reloaded <- other.Provision(ctx) }()
	select {
	case err := <-reloaded:
		if err != nil {
			t.Fatalf("the reload failed: %v", err)
		}
	case out := <-purged:
		t.Fatalf("the purge ended (%+v) before the reload, with Redis silent", out)
	case <-time.After(30 * time.Second): // the publish waits a minute
		proxy.Resume()
		t.Fatal("a reload waited on a purge's publish to a silent Redis: the purge holds a pool's lock")
	}
	proxy.Resume()
	if out := <-purged; out.Dropped != 1 || out.Fleet == "off" {
		t.Fatalf("purge = %+v, want 1 dropped and the fleet told", out)
	}
}
