package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// confirmedSince waits until c's stream reader has confirmed a read that
// started after at: every event written before at is applied.
func confirmedSince(t *testing.T, c *Client, at time.Time) {
	t.Helper()
	waitFor(t, 15*time.Second, "the stream reader to confirm a later read", func() bool {
		n := c.confirmed.Load()
		return n != 0 && c.mono.Add(time.Duration(n-1)).After(at)
	})
}

// An invalidation published late (from an outbox) reaches the local
// entries of a node whose client started after the invalidation was made:
// that node may have taken the shared decision it retires. What counts is
// when the event was appended to the stream, not when it was written.
func TestLateEventReachesNodesStartedSinceItWasMade(t *testing.T) {
	r := testenv.StartRedis(t)
	p := testenv.StartTCPProxy(t, r.Addr)
	c := node(t, r.Addr)       // fills the shared decision before the DELETE
	a := node(t, p.Addr, fast) // forwards the DELETE while its link is cut
	waitUp(t, a, c)
	key := cred("queued")
	if _, src := load(t, c, "exp_q", key, newFetcher("completed")); src != Stored {
		t.Fatalf("fill: %v, want stored", src)
	}
	p.Blackhole()
	if a.Publish(context.Background(), Event{IDs: []string{"exp_q"}}) {
		t.Fatal("published through a blackholed link")
	}
	time.Sleep(20 * time.Millisecond) // well past the tests' 1 ms clock skew

	// B starts now (autoscaling, a restart, a reload of its fleet block)
	// and takes the shared decision, which nothing refutes yet: A could
	// tell nobody.
	b := node(t, r.Addr)
	rb := subscribe(t, b)
	waitUp(t, b)
	confirmedSince(t, b, time.Now())
	if _, src := load(t, b, "exp_q", key, newFetcher("deleted")); src != Hit {
		t.Fatalf("B's first lookup: %v, want the shared hit", src)
	}
	// A's link returns and its outbox publishes the DELETE: B drops its
	// entry.
	p.Resume()
	waitFor(t, 10*time.Second, "A's outbox to empty", func() bool { return !a.Pending() })
	confirmedSince(t, b, time.Now())
	if !rb.has(hasID("exp_q")) {
		t.Fatalf("B never delivered the late DELETE to its cache (events: %+v)", rb.all())
	}
}

// A stream deleted (evicted under allkeys-*, or by anyone with write
// access) and recreated by the next publish between two reads of a node is
// a gap: the node demotes rather than confirm past the lost events.
func TestStreamRecreatedBetweenReadsIsAGap(t *testing.T) {
	r, p, a, b, rb := proxiedPair(t, "exp_before")

	p.Freeze() // B is between two reads
	a.Publish(context.Background(), Event{IDs: []string{"exp_lost"}})
	r.MustDo(t, "DEL", DefaultPrefix+":inv")
	a.Publish(context.Background(), Event{IDs: []string{"exp_after"}}) // recreates the stream
	p.Resume()

	waitFor(t, 10*time.Second, "B to apply the event after", func() bool { return rb.has(hasID("exp_after")) })
	confirmedSince(t, b, time.Now())
	if !rb.has(hasID("exp_lost")) && !rb.has(isDemote) {
		t.Fatalf("B neither applied exp_lost nor demoted, and confirmed (demotes %d)", b.Stats().Invalidations.Demotes)
	}
}

// The bound on staleness counts on the monotonic clock: a wall clock that
// steps back (an NTP step, a VM resumed) does not extend the trust in
// entries while the stream reader confirms nothing.
func TestClockStepBackDoesNotExtendTrust(t *testing.T) {
	r := testenv.StartRedis(t)
	clock := testenv.NewClock(time.Now())
	a := node(t, r.Addr, fast, func(c *Config) { c.Now = clock.Now; c.MaxStaleness = time.Second })
	waitUp(t, a)
	waitFor(t, 10*time.Second, "a confirmation", func() bool { return a.Current() })
	r.Kill() // the reader confirms nothing from now on
	killed := time.Now()
	clock.Advance(-10 * time.Second) // the wall clock steps back
	waitFor(t, 5*time.Second, "the node to stop trusting its entries", func() bool { return !a.Current() })
	if since := time.Since(killed); since > 2*time.Second {
		t.Fatalf("trusted for %v after the last possible confirmation, max_staleness 1s", since)
	}
}
