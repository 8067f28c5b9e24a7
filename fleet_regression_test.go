package exportdownload

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

const reviewUnauthorized = `{"error":{"code":"UNAUTHORIZED","message":"Invalid or missing API key"}}`

// TestRegressionFleetRevocationNotUndone: a 401 for a credential drops every
// cached answer of that credential on the node (SECURITY.md: "a revoked key
// stops downloading as soon as any of its requests reaches the app"; "New
// exports and uncached ids are refused at once"). With the fleet tier, the
// node's next miss of another export of that key must not take the shared
// "completed" decision back from Redis and redirect.
func TestRegressionFleetRevocationNotUndone(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, withFleet(r.Addr))
	waitUntil(t, "the fleet is up", h.shared.client.Up)

	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored")

	// The app revokes the key: every answer for it is now 401.
	for _, id := range []string{testID, testID2} {
		up.SetFor(testKey, id, testenv.Response{Status: 401, Body: reviewUnauthorized})
	}
	if rec := download(t, h, testID2, testKey); rec.Code != http.StatusUnauthorized {
		t.Fatalf("revoked key on another export: %d", rec.Code)
	}
	// The refusal dropped the node's entry of testID for this key...
	rec := download(t, h, testID, testKey)
	if rec.Code == http.StatusFound {
		t.Fatalf("after a 401 for the key on this node, testID still redirects: %q (upstream asked %d times for it)",
			rec.Header().Get("Cache-Status"), up.CallsFor(testID))
	}
}

// TestRegressionFleetUncachedRefusalNotUndone: with `ttl not_found 0` a 404 is
// not cached, yet SECURITY.md says "a refusal drops what it refutes whether
// it is cached or not". With the fleet tier, the refuted shared decision
// stays in Redis and the node's next request redirects again.
func TestRegressionFleetUncachedRefusalNotUndone(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	clock := newClock()
	h := newHandler(t, up, clock, withFleet(r.Addr), func(h *Handler) {
		h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"not_found": 0}}
	})
	waitUntil(t, "the fleet is up", h.shared.client.Up)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored")

	// The app deletes the export (no DELETE through the edge); past 80% of
	// the entry's life a hit refreshes it in the background and gets 404.
	up.SetFor(testKey, testID, testenv.Response{Status: 404,
		Body: `{"error":{"code":"NOT_FOUND","message":"Export not found"}}`})
	clock.Advance(4*time.Minute + 30*time.Second)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
	waitUntil(t, "the refresh got the 404", func() bool { return up.CallsFor(testID) == 2 })
	waitUntil(t, "the 404 dropped the entry", func() bool { return h.caches.decisions.Stats().Entries == 0 })

	rec := download(t, h, testID, testKey)
	if rec.Code == http.StatusFound {
		t.Fatalf("after the app answered 404 for it, the export redirects again: %q", rec.Header().Get("Cache-Status"))
	}
}

// TestRegressionFleetRollingTemplateChange: nodes of one fleet whose templates
// differ (a rolling deploy that adds {export.project_id} to object_key)
// share decisions. A decision shared by a node whose templates name fewer
// fields lacks the new field, and the new node answers 500 INTERNAL_ERROR
// from it for the decision's whole TTL, where without the fleet tier the
// app's answer (which has the field) would have redirected. README,
// "Running a fleet": a node "behaves exactly as a node without the fleet
// tier" is the floor. A shared decision that lacks a field this node's
// templates name should be a miss (or the fields be part of the key).
func TestRegressionFleetRollingTemplateChange(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, map[string]any{"project_id": "p1"})})
	oldNode := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) { h.ObjectKey = "exports/{id}.csv" })
	newNode := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) { h.ObjectKey = "exports/{export.project_id}/{id}.csv" })
	waitUntil(t, "the fleet is up", oldNode.shared.client.Up)

	checkReply(t, download(t, oldNode, testID, testKey), http.StatusFound,
		"export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored")
	rec := download(t, newNode, testID, testKey)
	if rec.Code != http.StatusFound {
		t.Fatalf("the node with the new template: %d %q %s (the app would have answered with project_id)",
			rec.Code, rec.Header().Get("Cache-Status"), rec.Body)
	}
}
