package fleet

import (
	"context"
	"net"
	"strconv"
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
	// The replica takes the stream once it holds a write made after it
	// loaded the master's snapshot. Neither state=online nor one WAIT 1
	// shows that: a write the snapshot holds waits for offset 0, which a
	// replica that just loaded acknowledged already; and after a diskless
	// sync Redis (7.0) starts the stream only at the replica's next
	// acknowledgement, up to a second later, so a WAIT meanwhile runs out.
	waitFor(t, 10*time.Second, "the replica to load the master's snapshot", func() bool {
		return strings.Contains(replica.MustDo(t, "INFO", "replication"), "master_link_status:up")
	})
	probes := 0
	waitFor(t, 10*time.Second, "the replica to take the master's writes", func() bool {
		probes++
		v := strconv.Itoa(probes)
		got := master.MustDoMulti(t, []string{"SET", "probe", v}, []string{"WAIT", "1", "1000"})
		return got[1] == "1" && replica.MustDo(t, "GET", "probe") == v
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
