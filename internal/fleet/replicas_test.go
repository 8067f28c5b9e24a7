package fleet

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// An invalidation counts as published only once a replica holds it: with
// the replica's link frozen (connected, not acknowledging), it stays in the
// outbox and goes out again once the replica answers.
func TestPublishWaitsForAReplica(t *testing.T) {
	master := testenv.StartRedis(t)
	replica := testenv.StartRedis(t)
	link := testenv.StartTCPProxy(t, master.Addr)
	host, port, _ := net.SplitHostPort(link.Addr)
	replica.MustDo(t, "REPLICAOF", host, port)
	waitFor(t, 10*time.Second, "the replica to acknowledge writes", func() bool {
		// state=online is not enough: the first WAIT 1 may still run out.
		got := master.MustDoMulti(t, []string{"SET", "probe", "1"}, []string{"WAIT", "1", "1000"})
		return len(got) == 2 && got[1] == "1"
	})
	a := node(t, master.Addr, func(c *Config) { c.Timeout = time.Second })
	waitUp(t, a)
	if !a.Publish(context.Background(), Event{IDs: []string{"exp_replicated"}}) {
		t.Fatal("Publish not confirmed with a healthy replica")
	}
	link.Freeze()
	if a.Publish(context.Background(), Event{IDs: []string{"exp_unreplicated"}}) {
		t.Fatal("Publish confirmed although no replica acknowledged it")
	}
	if n := a.Stats().OutboxLen; n != 1 {
		t.Fatalf("outbox %d, want the unreplicated event", n)
	}
	link.Resume()
	waitFor(t, 10*time.Second, "the event to be confirmed", func() bool { return a.Stats().OutboxLen == 0 })
	if got := replica.MustDo(t, "XRANGE", DefaultPrefix+":inv", "-", "+"); !strings.Contains(got, "exp_unreplicated") {
		t.Fatalf("the replica does not hold the event:\n%s", got)
	}
}
