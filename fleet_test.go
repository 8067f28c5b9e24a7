package exportdownload

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/exportedge/caddy-export-download/internal/fleet"
	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// fleetStored is the Cache-Status of a miss that this node asked the app
// about and shared.
const fleetStored = "export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored"

// TestFleetCacheStatus: in one process the fleet tier sits under the local
// cache: a miss asks Redis and shares the app's answer; a local hit asks
// nothing; once the local entry is gone, the shared decision answers.
func TestFleetCacheStatus(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, withFleet(r.Addr))
	waitUntil(t, "the fleet is up", h.shared.client.Up)

	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored")
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
	// Another node would have no local entry: drop this one's without
	// telling the fleet.
	h.caches.decisions.PurgeAll()
	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; hit, export_download; fwd=miss; stored")
	checkCalls(t, up, testID, 1)

	// The admin API shows the fleet, and a purge is published to it.
	up2 := false
	for _, c := range statsOf(cachesStats()).Caches {
		up2 = up2 || (c.Fleet.State == "up" && c.Fleet.Stats != nil && c.Fleet.Lookups.Hit >= 1)
	}
	if !up2 {
		t.Fatalf("stats show no cache with the fleet up: %+v", statsOf(cachesStats()))
	}
	if out := purge(context.Background(), purgeSelection{IDs: []string{testID}}); out.Fleet != "published" || out.Dropped != 1 {
		t.Fatalf("purge with the fleet up = %+v, want 1 dropped and published", out)
	}

	// Redis gone: the node answers as if it had no fleet tier.
	r.Kill()
	completed(up, testID2, time.Time{})
	rec := download(t, h, testID2, testKey)
	if rec.Code != http.StatusFound || !strings.HasPrefix(rec.Header().Get("Cache-Status"), "export_download_fleet; fwd=miss; detail=unavailable, ") {
		t.Fatalf("with Redis down: %d %q", rec.Code, rec.Header().Get("Cache-Status"))
	}
}

// TestSharedDecisionsNeverUndoAnInvalidation: the fleet's shared decisions
// never bring back an answer this node has dropped (SECURITY.md: "a
// refusal drops what it refutes whether it is cached or not"; README,
// "Running a fleet": the node that saw the DELETE drops its entries before
// the 2xx reaches the client).
func TestSharedDecisionsNeverUndoAnInvalidation(t *testing.T) {
	unauthorized := `{"error":{"code":"UNAUTHORIZED","message":"Invalid or missing API key"}}`
	// A 401 on one export drops every answer of the credential here: the
	// next miss of another export must not take the shared "completed".
	t.Run("a revoked key", func(t *testing.T) {
		r := testenv.StartRedis(t)
		up := testenv.NewUpstream(t)
		completed(up, testID, time.Time{})
		h := newHandler(t, up, nil, withFleet(r.Addr))
		waitUntil(t, "the fleet is up", h.shared.client.Up)
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, fleetStored)

		// The app revokes the key: every answer for it is now 401.
		for _, id := range []string{testID, testID2} {
			up.SetFor(testKey, id, testenv.Response{Status: 401, Body: unauthorized})
		}
		if rec := download(t, h, testID2, testKey); rec.Code != http.StatusUnauthorized {
			t.Fatalf("revoked key on another export: %d", rec.Code)
		}
		rec := download(t, h, testID, testKey)
		if rec.Code == http.StatusFound {
			t.Fatalf("after a 401 for the key on this node, testID still redirects: %q (upstream asked %d times for it)",
				rec.Header().Get("Cache-Status"), up.CallsFor(testID))
		}
	})
	// With ttl not_found 0 a 404 is not cached, yet it refutes the shared
	// decision: the node's next request must not redirect again.
	t.Run("a refusal not cached", func(t *testing.T) {
		r := testenv.StartRedis(t)
		up := testenv.NewUpstream(t)
		completed(up, testID, time.Time{})
		clock := newClock()
		h := newHandler(t, up, clock, withFleet(r.Addr), func(h *Handler) {
			h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"not_found": 0}}
		})
		waitUntil(t, "the fleet is up", h.shared.client.Up)
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, fleetStored)

		// The app deletes the export (no DELETE through the edge); past 80% of
		// the entry's life a hit refreshes it in the background and gets 404.
		up.SetFor(testKey, testID, testenv.Response{Status: 404,
			Body: `{"error":{"code":"NOT_FOUND","message":"Export not found"}}`})
		advance(t, h, clock, 4*time.Minute+30*time.Second)
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
		waitUntil(t, "the refresh got the 404", func() bool { return up.CallsFor(testID) == 2 })
		waitUntil(t, "the 404 dropped the entry", func() bool { return h.caches.decisions.Stats().Entries == 0 })

		rec := download(t, h, testID, testKey)
		if rec.Code == http.StatusFound {
			t.Fatalf("after the app answered 404 for it, the export redirects again: %q", rec.Header().Get("Cache-Status"))
		}
	})
	// A DELETE whose publish Redis did not take waits in the outbox, and
	// Redis still holds the shared decision of the old generation: this
	// node must not take it while its own invalidation waits.
	t.Run("own DELETE waiting in the outbox", func(t *testing.T) {
		r := testenv.StartRedis(t)
		up := testenv.NewUpstream(t)
		completed(up, testID, time.Time{})
		h := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) {
			h.Fleet.Timeout = caddy.Duration(50 * time.Millisecond)
		})
		waitUntil(t, "the fleet is up", h.shared.client.Up)
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, fleetStored)

		// The app deletes the export; the DELETE passes through this node
		// while Redis refuses its writes (plain reads still work).
		up.Set(testID, testenv.Response{Status: 404, Body: `{"error":{"code":"NOT_FOUND","message":"Export not found"}}`})
		r.MustDo(t, "ACL", "SETUSER", "default", "-set", "-xadd")
		deleteExport(t, h, testID, http.StatusNoContent)
		if s := h.shared.client.Stats(); s.OutboxLen == 0 {
			t.Fatalf("the DELETE was published although Redis refused its writes: %+v", s)
		}

		rec := download(t, h, testID, testKey)
		if rec.Code == http.StatusFound {
			t.Fatalf("after its own DELETE answered 204, this node redirects again: %q (outbox %d)",
				rec.Header().Get("Cache-Status"), h.shared.client.Stats().OutboxLen)
		}
	})
}

// TestSharedDecisionOfOtherTemplates: during a rolling deploy that adds
// {export.project_id} to object_key, a decision shared by a node of the
// old templates lacks the field; a node of the new ones asks the app
// rather than answer 500 for the decision's whole TTL (README, "Running a
// fleet": a node behaves at least as one without the fleet tier).
func TestSharedDecisionOfOtherTemplates(t *testing.T) {
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

// TestFleetNoGoroutineLeak: reloads and a Redis restart leave nothing
// running once the last config is cleaned up.
func TestFleetNoGoroutineLeak(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	// The restarted redis-server is the test's, with its own waiters.
	opts := []goleak.Option{goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("github.com/exportedge/caddy-export-download/internal/testenv.(*Redis).start.func1"),
		goleak.IgnoreAnyFunction("os/exec.(*Cmd).writerDescriptor.func1"),
		// rueidis schedules a topology refresh after a connection error
		// (the restart): a goroutine that sleeps a random, bounded delay,
		// then finds the client closed and returns. Not one per reload.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1")}
	var prev *Handler
	for i := range 3 {
		h := &Handler{Upstream: up.URL, Bucket: "b", ObjectKey: "k/{id}", Endpoint: "http://localhost:1", PathStyle: true,
			AccessKeyID: "AKID", SecretAccessKey: "secret"}
		withFleet(r.Addr)(h)
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		if prev != nil {
			_ = prev.Cleanup()
		}
		prev = h
		download(t, h, testID, testKey)
		if i == 1 {
			r.Restart()
		}
		defer cancel()
	}
	_ = prev.Cleanup()
	goleak.VerifyNone(t, opts...)
}

// max_staleness: with Redis gone, a node keeps answering, but asks the app
// again, once per bound, before answering from an entry decided before the
// bound (docs/fleet.md, "Bounded staleness"); with Redis back its hits are hits.
func TestFleetBoundedStaleness(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	const bound = 300 * time.Millisecond
	h := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) {
		h.Fleet.MaxStaleness = &Staleness{Duration: caddy.Duration(bound)}
	})
	waitUntil(t, "the fleet is up", h.shared.client.Up)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, fleetStored)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)

	r.Kill()
	start, calls0 := time.Now(), up.CallsFor(testID)
	var statuses []int
	for time.Since(start) < 2*time.Second {
		rec := download(t, h, testID, testKey)
		statuses = append(statuses, rec.Code)
		time.Sleep(10 * time.Millisecond)
	}
	asked := up.CallsFor(testID) - calls0
	elapsed := time.Since(start)
	t.Logf("Redis down %v with max_staleness %v: %d downloads, %d upstream calls", elapsed.Round(time.Millisecond), bound, len(statuses), asked)
	for i, s := range statuses {
		if s != http.StatusFound {
			t.Fatalf("download %d answered %d while Redis was down", i, s)
		}
	}
	// At least one call per bound once it passed (the entry stopped being
	// trusted), and at most one per bound (coalesced, then trusted again
	// for the bound).
	if maxCalls := int(elapsed/bound) + 1; asked < 2 || asked > maxCalls {
		t.Errorf("%d upstream calls in %v, want between 2 and %d (one per max_staleness)", asked, elapsed, maxCalls)
	}

	r.Restart()
	waitUntil(t, "the fleet confirms again", func() bool { return h.shared.trusts(0, time.Now()) })
	download(t, h, testID, testKey) // demoted on the restart (a new data set): asked again once
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
}

// While the fleet cannot confirm (Redis gone), an entry's age counts on the
// monotonic clock too: a wall clock that steps back (an NTP step, a resumed
// VM) does not make a cached answer young again.
func TestFleetClockStepBackKeepsTheBound(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	clock := newClock()
	completed(up, testID, clock.Now().Add(24*time.Hour))
	const bound = 300 * time.Millisecond
	h := newHandler(t, up, clock, withFleet(r.Addr), func(h *Handler) {
		h.Fleet.MaxStaleness = &Staleness{Duration: caddy.Duration(bound)}
	})
	waitUntil(t, "the fleet is up", h.shared.client.Up)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, fleetStored)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)

	r.Kill()
	waitUntil(t, "the fleet stops confirming", func() bool { return !h.shared.current() })
	clock.Advance(-time.Hour) // the wall clock steps back; the entry's wall age is now negative
	time.Sleep(bound)         // and more than the bound passes on the monotonic clock
	calls := up.CallsFor(testID)
	if rec := download(t, h, testID, testKey); rec.Code != http.StatusFound {
		t.Fatalf("download answered %d with Redis down", rec.Code)
	}
	if up.CallsFor(testID) == calls {
		t.Fatal("an answer older than max_staleness was served from the cache after the wall clock stepped back; want it asked of the app")
	}
}

// A reload that changes the fleet block (here: to fix a wrong password)
// keeps the invalidations that waited for Redis: the new config's client
// publishes them.
func TestFleetOutboxSurvivesAReload(t *testing.T) {
	const rules = "~* -@all +get +set +del +exists +pttl +pexpire +eval +evalsha +xadd +xread +xinfo|stream +multi +exec +time +role +info +wait +ping +cluster|slots +cluster|shards"
	r := testenv.StartRedis(t, testenv.RedisUser("edge", "right-password", rules))
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	fleetUser := func(password string) func(*Handler) {
		return func(h *Handler) {
			withFleet(r.Addr)(h)
			h.Fleet.Username, h.Fleet.Password = "edge", password
		}
	}
	// Another node of the fleet, to see what is published.
	other := newHandler(t, up, nil, fleetUser("right-password"))
	waitUntil(t, "the other node's fleet is up", other.shared.client.Up)
	checkReply(t, download(t, other, testID, testKey), http.StatusFound, fleetStored)

	old := &Handler{Upstream: up.URL, Bucket: "b", ObjectKey: "k/{id}", Endpoint: "http://localhost:1", PathStyle: true,
		AccessKeyID: "AKID", SecretAccessKey: "secret"}
	fleetUser("wrong-password")(old)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := old.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	deleteExport(t, old, testID, http.StatusNoContent)
	if n := old.shared.client.Stats().OutboxLen; n != 1 {
		t.Fatalf("outbox %d with a wrong password, want the DELETE", n)
	}
	// The reload: the new config is provisioned, then the old cleaned up.
	fixed := newHandler(t, up, nil, fleetUser("right-password"))
	_ = old.Cleanup()
	waitUntil(t, "the other node drops the export", func() bool { return other.caches.decisions.Stats().Entries == 0 })
	waitUntil(t, "the new client's outbox empties", func() bool { return fixed.shared.client.Stats().OutboxLen == 0 })
}

// A config that fails to load after it took the fleet's metrics must leave
// them to the running config: its Cleanup removes its observer only.
func TestFleetMetricsAcrossAFailedReload(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	running := newHandler(t, up, nil, withFleet(r.Addr))
	waitUntil(t, "the fleet is up", running.shared.client.Up)
	runningReg := prometheus.NewRegistry()
	m, err := newFleetMetrics(runningReg, "running")
	if err != nil {
		t.Fatal(err)
	}
	running.shared.removeObserver() // the running config's observer, on a registry the test reads
	running.shared.removeObserver = running.shared.client.AddObserver(m)

	// A reload with the same fleet block that fails after the fleet was
	// provisioned (here: Validate fails after Provision).
	failed := &Handler{Upstream: up.URL, Bucket: "b", ObjectKey: "k/{id}", Endpoint: "http://localhost:1", PathStyle: true,
		AccessKeyID: "AKID", SecretAccessKey: "secret"}
	withFleet(r.Addr)(failed)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := failed.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if failed.shared.client != running.shared.client {
		t.Fatal("the two configs do not share the pooled client")
	}
	_ = failed.Cleanup()

	before := testutil.ToFloat64(m.lookups["miss"]) + testutil.ToFloat64(m.lookups["hit"])
	completed(up, testID2, time.Time{})
	download(t, running, testID2, testKey)
	if after := testutil.ToFloat64(m.lookups["miss"]) + testutil.ToFloat64(m.lookups["hit"]); after != before+1 {
		t.Fatalf("the running config's fleet_lookups_total went from %v to %v after a failed reload, want +1", before, after)
	}
	if up := testutil.ToFloat64(m.up); up != 1 {
		t.Fatalf("the running config's fleet_up = %v after a failed reload", up)
	}
}

// A refusal reaches every node: once the app answers 401 for a key on one
// node, the other nodes stop answering from their cached 302s of that key,
// for every export (docs/fleet.md, "Bounded
// staleness": the app refusing a credential is one of the three
// invalidations the bound covers).
func TestFleetRefusalReachesEveryNode(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	completed(up, testID2, time.Time{})
	a := newHandler(t, up, nil, withFleet(r.Addr))
	// Another node: its own fleet client and its own cache (in one
	// process, a setting that is neither the site's nor the connection's
	// keeps them apart), of the same site.
	b := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) {
		h.Fleet.Timeout = caddy.Duration(2 * time.Second)
		h.Cache = &CacheConfig{MaxEntries: 1000}
	})
	if a.shared.client == b.shared.client || a.caches.decisions == b.caches.decisions {
		t.Fatal("the two nodes share a client or a cache")
	}
	waitUntil(t, "the fleet is up", func() bool { return a.shared.client.Up() && b.shared.client.Up() })
	// Node b caches testID for the key, and another key's answer.
	download(t, b, testID, testKey)
	checkReply(t, download(t, b, testID, testKey), http.StatusFound, wantHit)
	download(t, b, testID, otherKy)

	// The app revokes the key; node a asks about another export with it.
	up.SetFor(testKey, testID, testenv.Response{Status: 401, Body: `{"error":{"code":"UNAUTHORIZED","message":"Invalid or missing API key"}}`})
	up.SetFor(testKey, testID2, testenv.Response{Status: 401, Body: `{"error":{"code":"UNAUTHORIZED","message":"Invalid or missing API key"}}`})
	refused := time.Now()
	if rec := download(t, a, testID2, testKey); rec.Code != http.StatusUnauthorized {
		t.Fatalf("node a: %d, want the app's 401", rec.Code)
	}
	waitUntil(t, "node b stops redirecting the refused key", func() bool {
		return download(t, b, testID, testKey).Code != http.StatusFound
	})
	t.Logf("node b refused the key %v after node a saw the app refuse it", time.Since(refused))
	// Only that key: the other key's answer on node b is still a hit.
	checkReply(t, download(t, b, testID, otherKy), http.StatusFound, wantHit)
}

// DELETEs that flow while reloads change the fleet block are never lost:
// whichever config (the old, draining, or the new) answers a DELETE, and
// whichever client it publishes through, every other node drops the
// export. 20 reloads, a DELETE every few milliseconds.
func TestFleetDeletesDuringReloadsReachEveryNode(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	other := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) {
		h.Fleet.Timeout = caddy.Duration(2 * time.Second) // its own client: another node
	})
	waitUntil(t, "the other node's fleet is up", other.shared.client.Up)
	var mu sync.Mutex
	applied := map[string]bool{}
	unsub := other.shared.client.Subscribe(func(ev fleet.Event) {
		mu.Lock()
		for _, id := range ev.IDs {
			applied[id] = true
		}
		mu.Unlock()
	})
	defer unsub()

	provision := func(timeout time.Duration) *Handler {
		h := &Handler{Upstream: up.URL, Bucket: "b", ObjectKey: "k/{id}", Endpoint: "http://localhost:1", PathStyle: true,
			AccessKeyID: "AKID", SecretAccessKey: "secret"}
		withFleet(r.Addr)(h)
		h.Fleet.Timeout = caddy.Duration(timeout)
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		t.Cleanup(cancel)
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		return h
	}
	var cur atomic.Pointer[Handler]
	cur.Store(provision(200 * time.Millisecond))
	stop := make(chan struct{})
	var sent []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("01935abc-def0-7123-4567-%012x", 0x7000+i)
			deleteExport(t, cur.Load(), id, http.StatusNoContent)
			sent = append(sent, id)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	for i := range 20 {
		old := cur.Load()
		next := provision(time.Duration(200+10*(i%2+1)) * time.Millisecond) // the new config first, as Caddy does
		cur.Store(next)
		_ = old.Cleanup()
		time.Sleep(30 * time.Millisecond)
	}
	close(stop)
	<-done
	defer func() { _ = cur.Load().Cleanup() }()
	waitUntil(t, "every DELETE on the other node", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range sent {
			if !applied[id] {
				return false
			}
		}
		return true
	})
	t.Logf("%d DELETEs across 20 reloads, every one applied on the other node", len(sent))
}
