package fleet

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// A node whose link to Redis is cut when it starts caches answers from the
// app meanwhile; when the link returns, its first read starts from before
// it started, so it applies every invalidation published in between.
func TestFirstReadStartsBeforeTheNodeStarted(t *testing.T) {
	r := testenv.StartRedis(t)
	p := testenv.StartTCPProxy(t, r.Addr)
	a := node(t, r.Addr)
	waitUp(t, a)
	a.Publish(context.Background(), Event{IDs: []string{"exp_long_before"}}) // before b started
	// Well before: b's first read places its start on the server's clock
	// by the TIME it reads, less the time the reply took to come back
	// (through the proxy, under -race), which this must exceed.
	time.Sleep(250 * time.Millisecond)
	p.Freeze()
	b := node(t, p.Addr, fast)
	rb := subscribe(t, b)
	if b.Up() {
		t.Fatal("reader up through a frozen proxy")
	}
	a.Publish(context.Background(), Event{IDs: []string{"exp_during_the_cut"}})
	p.Resume()
	waitFor(t, 10*time.Second, "the event published while the node's link was cut", func() bool {
		return rb.has(hasID("exp_during_the_cut"))
	})
	if rb.has(hasID("exp_long_before")) {
		t.Error("an event older than the node was delivered (it cannot concern anything the node holds)")
	}
	// It still knows of it: a decision made before it is refused.
	key := cred("k")
	q := query("exp_long_before", key)
	if b.purges.allows(q.ID, b.mac(key), nil, time.Now().Add(-time.Minute).UnixNano()) {
		t.Error("a decision made before an invalidation in the node's backlog is allowed")
	}
}

func TestFlushAllDemotes(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	a.Publish(context.Background(), Event{IDs: []string{"exp_1"}})
	waitFor(t, 5*time.Second, "the first event", func() bool { return rb.has(hasID("exp_1")) })
	r.MustDo(t, "FLUSHALL")
	waitFor(t, 5*time.Second, "a demotion after FLUSHALL", func() bool { return rb.has(isDemote) })
}

// A Redis that restarts from its last snapshot (RDB save points, or an
// append-only file fsynced every second) may lose acknowledged
// invalidations and bring back the decisions they retired: no node takes a
// shared decision made before the server started, also a node that starts
// afterwards and never saw the old server.
func TestRestartFromASnapshotBringsBackNoOldDecision(t *testing.T) {
	r := testenv.StartRedis(t)
	a := node(t, r.Addr)
	waitUp(t, a)
	key := cred("snapshot")
	if _, src := load(t, a, "exp_s", key, newFetcher("completed")); src != Stored {
		t.Fatalf("fill: %v, want stored", src)
	}
	r.MustDo(t, "SAVE") // the last snapshot before the crash
	if !a.Publish(context.Background(), Event{IDs: []string{"exp_s"}}) {
		t.Fatal("the DELETE was not published")
	}
	time.Sleep(20 * time.Millisecond)
	r.Restart() // killed; redis-server loads dump.rdb from its dir at start
	if got, _ := r.Do(t, "EXISTS", decisionKey(a, "exp_s", key)); got != "1" {
		t.Fatalf("the snapshot did not come back (EXISTS %q): the test's premise failed", got)
	}
	b := node(t, r.Addr) // started after the restart
	waitUp(t, b)
	confirmedSince(t, b, time.Now())
	if d := loadQ(t, b, query("exp_s", key), newFetcher("deleted")); d.Source == Hit {
		t.Fatalf("B took the shared decision made before the lost DELETE (decided %v ago)",
			time.Since(d.DecidedAt).Round(time.Millisecond))
	}
	// A saw the server restart under it: it refuses the old decision too
	// (B's new one it may take).
	confirmedSince(t, a, time.Now())
	if d := loadQ(t, a, query("exp_s", key), newFetcher("deleted")); string(d.Payload) != "deleted" {
		t.Fatalf("A took the shared decision made before the restart: %v %q", d.Source, d.Payload)
	}
}

// A node that is first to see a server process that loaded a data set
// records its start (<prefix>:loaded): a node that starts later refuses
// the decisions from before it even if it first meets another process (a
// replica that synced from this one, promoted after a failover).
func TestSnapshotRestartIsRecordedForLaterNodes(t *testing.T) {
	r := testenv.StartRedis(t)
	a := node(t, r.Addr)
	waitUp(t, a)
	if _, src := load(t, a, "exp_m", cred("marker"), newFetcher("completed")); src != Stored {
		t.Fatalf("fill: %v, want stored", src)
	}
	r.MustDo(t, "SAVE")
	a.Close() // no node reads while the server restarts
	restarted := time.Now()
	r.Restart()
	b := node(t, r.Addr)
	waitUp(t, b)
	confirmedSince(t, b, time.Now())
	got, _ := r.Do(t, "GET", b.prefix+"loaded")
	at, err := strconv.ParseInt(got, 10, 64)
	if err != nil || at < restarted.Add(-2*time.Second).UnixNano() {
		t.Fatalf("%sloaded = %q after a node first met a server that loaded a snapshot; want its start (about %v)", b.prefix, got, restarted)
	}
	// A node that starts later refuses what that process brought back,
	// without demoting the running ones.
	if gap, _ := r.Do(t, "GET", b.prefix+"gap"); gap != "(nil)" {
		t.Errorf("gap marker %q: a process that loaded a data set is not a gap", gap)
	}
	c := node(t, r.Addr)
	waitUp(t, c)
	confirmedSince(t, c, time.Now())
	if !c.purges.allows("exp_any", "", nil, at+int64(time.Second)) || c.purges.allows("exp_any", "", nil, at-int64(time.Second)) {
		t.Errorf("a later node's floor is not at %sloaded (%d)", b.prefix, at)
	}
}
