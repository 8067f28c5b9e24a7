//go:build linux

package exportdownload

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// The fleet on replicated Redis, end to end: three real `caddy run` nodes
// on a Redis Cluster (3 masters with a replica each) and on a master with a
// replica behind three Sentinels, through failovers and a slot migration
// under load. Linux only: pausing a Caddy node (SIGSTOP) and the servers'
// process groups are Linux features here. Timings are logged, never
// asserted beyond bounds that only a hang or a real defect exceeds.

const (
	// replMaxStaleness is the fleet's max_staleness in these tests: the
	// README's bound on how long a node may answer from a decision an
	// invalidation refuted.
	replMaxStaleness = time.Second
	// replFailoverHang bounds a wait for a failover as the nodes see it
	// (testenv's own waits give up after 30s).
	replFailoverHang = 30 * time.Second
	// replPropagationRounds is the number of DELETEs whose propagation is
	// measured on each topology.
	replPropagationRounds = 50
)

// TestFleetReplicatedE2E runs the fleet scenarios on a Redis Cluster and on
// a Sentinel set; the Caddy binary is built once for both.
func TestFleetReplicatedE2E(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "caddy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	t.Run("Cluster", func(t *testing.T) { testFleetCluster(t, bin) })
	t.Run("Sentinel", func(t *testing.T) { testFleetSentinel(t, bin) })
}

// --- Cluster ---------------------------------------------------------------

// testFleetCluster: one 6-node cluster and one fleet of 3 nodes for every
// scenario, in an order that leaves each the state it needs (the master kill
// comes after the migration, which needs every node running).
func testFleetCluster(t *testing.T, bin string) {
	cl := testenv.StartCluster(t)
	// The stream's slot sits among the lowest slots of its master, which a
	// reshard of that master's lowest reshardSlots slots moves.
	const reshardSlots = 300
	prefix, streamMaster := clusterPrefix(t, cl, 60, 200)
	c := startReplicatedFleet(t, bin, fleetSetup{
		nodes:      3,
		redis:      strings.Join(cl.Seeds(), " "),
		prefix:     prefix,
		fleetExtra: "max_staleness " + replMaxStaleness.String(),
	})
	up := c.up
	slotOf := func(id string) int { return testenv.Slot(prefix + ":d:{" + id + "}") }
	t.Logf("cluster of %d nodes; stream %s:inv in slot %d on %s", len(cl.Nodes()), prefix, testenv.Slot(prefix+":inv"), streamMaster.Addr)

	t.Run("SharedHitOnANodeThatNeverSawTheKey", func(t *testing.T) { testReplSharedHit(t, c, e2eID(1)) })
	t.Run("OneUpstreamCallForAColdBurst", func(t *testing.T) { testReplColdBurst(t, c, e2eID(2)) })

	t.Run("DecisionsOnEveryShard", func(t *testing.T) {
		masters := cl.Masters(t)
		if len(masters) != 3 {
			t.Fatalf("%d masters, want 3", len(masters))
		}
		owners := slotOwners(t, cl)
		// Three exports per master, each decided through another node.
		var ids []string
		next := 100_000
		for _, m := range masters {
			for range 3 {
				id := nextIDWhere(&next, func(id string) bool { return owners[slotOf(id)] == m })
				ids = append(ids, id)
			}
		}
		for k, id := range ids {
			completed(up, id, time.Time{})
			c.mustGet(t, k%len(c.nodes), id, e2eKeyA, http.StatusFound)
		}
		var counts []string
		for _, m := range masters {
			all := redisKeys(t, m.Redis, prefix+":d:*")
			counts = append(counts, fmt.Sprintf("%s %d", m.Addr, len(all)))
			for _, id := range ids {
				mine := owners[slotOf(id)] == m
				got := redisKeys(t, m.Redis, prefix+":d:{"+id+"}:*")
				switch {
				case mine && len(got) != 1:
					t.Errorf("master %s serves the slot of %s and holds %d decisions of it, want 1", m.Addr, id, len(got))
				case !mine && len(got) != 0:
					t.Errorf("master %s does not serve the slot of %s but holds its decisions %q", m.Addr, id, got)
				}
			}
			if len(all) < 3 {
				t.Errorf("master %s holds %d decisions, want at least 3", m.Addr, len(all))
			}
		}
		t.Logf("summary: decisions on every shard: %d exports, %s:d:* keys per master: %s", len(ids), prefix, strings.Join(counts, ", "))
	})

	t.Run("DeleteAndPurgeReachEveryNode", func(t *testing.T) {
		testReplPropagation(t, c, 1000)
	})

	t.Run("SlotMigrationUnderLoad", func(t *testing.T) {
		from := cl.MasterFor(t, prefix+":inv")
		var to *testenv.ClusterNode
		for _, m := range cl.Masters(t) {
			if m != from {
				to = m
				break
			}
		}
		low := lowestSlot(t, cl, from)
		owners := slotOwners(t, cl)
		moving := func(id string) bool {
			s := slotOf(id)
			return s >= low && s < low+reshardSlots && owners[s] == from
		}
		// Exports whose decisions move, cached by every node, to be
		// deleted one after another while the slots move.
		next := 200_000
		var victims []string
		for range 40 {
			id := nextIDWhere(&next, moving)
			completed(up, id, time.Time{})
			victims = append(victims, id)
		}
		for _, id := range victims {
			c.warmShared(t, id, e2eKeyA)
		}
		cachedID := victims[0]
		fresh := idSource(up, 10_000, 5000)

		stop := make(chan struct{})
		wait := c.loadUntil(stop, 3, cachedID, fresh)
		var dels []replDelete
		delsDone := make(chan struct{})
		migrating := make(chan struct{})
		go func() {
			defer close(delsDone)
			<-migrating
			for _, id := range victims[1:] {
				select {
				case <-stop:
					return
				default:
				}
				dels = append(dels, c.deleteAndWatch(up, len(dels)%len(c.nodes), id))
			}
		}()
		time.Sleep(300 * time.Millisecond) // some load before
		began := time.Now()
		close(migrating)
		cl.Reshard(t, from, to, reshardSlots)
		took := time.Since(began)
		time.Sleep(300 * time.Millisecond) // and some after
		close(stop)
		replies := wait()
		<-delsDone

		if got := cl.MasterFor(t, prefix+":inv"); got != to {
			t.Fatalf("after the reshard the stream is served by %s, want %s", got.Addr, to.Addr)
		}
		fiveXX, transport := checkLoad(t, replies, "during the slot migration")
		during, worst := 0, time.Duration(0)
		for _, d := range dels {
			if d.err != nil {
				t.Errorf("DELETE %s during the migration: %v", d.id, d.err)
				continue
			}
			if d.answered.Before(began.Add(took)) {
				during++
			}
			for _, w := range d.waits {
				worst = max(worst, w)
			}
		}
		if during == 0 {
			t.Errorf("no DELETE was answered while the slots moved (the reshard took %v)", took)
		}
		// Not only did the other nodes stop answering from their caches:
		// each got the event itself from the stream (no node fell back on
		// max_staleness alone).
		missing := c.untilApplied(dels)
		for _, m := range missing {
			t.Errorf("%s", m)
		}
		cross := cl.CrossSlotErrors(t)
		if cross != 0 {
			t.Errorf("CROSSSLOT errors sent by the nodes: %d, want 0", cross)
		}
		t.Logf("summary: slot migration of %d slots (the stream's among them) %s -> %s in %v under load: %d requests, %d 5xx, %d transport errors; "+
			"%d DELETEs (%d answered during the migration), slowest DELETE-2xx -> 404 on another node %v, %d events not applied; CROSSSLOT %d",
			reshardSlots, from.Addr, to.Addr, took.Round(time.Millisecond), len(replies), fiveXX, transport,
			len(dels), during, worst.Round(time.Millisecond), len(missing), cross)
	})

	t.Run("MasterKilledUnderLoad", func(t *testing.T) {
		victim := cl.MasterFor(t, prefix+":inv")
		owners := slotOwners(t, cl) // as before the kill
		onVictim := func(id string) bool { return owners[slotOf(id)] == victim }
		cachedID := e2eID(20_000)
		completed(up, cachedID, time.Time{})
		c.warmShared(t, cachedID, e2eKeyA)
		fresh := idSource(up, 30_000, 5000)
		probes := probeSource(up, 400_000, onVictim)
		k := killUnderLoad(t, c, cachedID, fresh, probes, victim.Redis.Kill, func() {
			next := cl.WaitFailover(t, victim)
			t.Logf("%s took over from %s", next.Addr, victim.Addr)
		})
		// A DELETE made afterwards reaches every node as before.
		d := c.deleteAfterFailover(t, 2, e2eID(20_001), nil)
		t.Logf("summary: cluster master %s (the stream's) killed under load: failover seen by testenv %v; kill -> first shared hit again %v "+
			"(of a probe started after the failover: %v; %d probes); %d requests, %d 5xx, %d transport errors; a DELETE afterwards reached the other nodes in %v",
			victim.Addr, k.failover.Round(time.Millisecond), k.sharing.Round(time.Millisecond), k.resumed.Round(time.Millisecond), k.probes,
			k.requests, k.fiveXX, k.transport, roundAll(d.waits, 10*time.Microsecond))
		// It comes back as a replica of the node that replaced it.
		victim.Restart()
		cl.WaitHealthy(t)
	})

	t.Run("AcknowledgedButUnreplicatedDelete", func(t *testing.T) {
		for k, lives := range unreplicatedDeleteCases {
			t.Run(lives.name, func(t *testing.T) {
				master := cl.MasterFor(t, prefix+":inv")
				replica := cl.ReplicaOf(t, master)
				if replica == nil {
					t.Fatalf("the stream's master %s has no replica", master.Addr)
				}
				// The export's generation and decisions live on the same
				// master as the stream, so that everything the DELETE
				// writes is at risk.
				owners := slotOwners(t, cl)
				next := 600_000 + 100_000*k
				id := nextIDWhere(&next, func(id string) bool { return owners[slotOf(id)] == master })
				testReplUnreplicatedDelete(t, c, id, master.Redis, replica.Redis, lives.after, func() *testenv.Redis {
					return cl.WaitFailover(t, master).Redis
				})
				// Back as a replica of the node that replaced it.
				master.Restart()
				cl.WaitHealthy(t)
			})
		}
		if cross := cl.CrossSlotErrors(t); cross != 0 {
			t.Errorf("CROSSSLOT errors sent by the nodes over the whole run: %d, want 0", cross)
		}
	})
}

// unreplicatedDeleteCases are when the master dies after it acknowledged
// the unreplicated DELETE: at once, or after the node's first retries
// (every 250 ms) had time to reach it.
var unreplicatedDeleteCases = []struct {
	name  string
	after time.Duration
}{
	{"MasterKilledAtOnce", 0},
	{"MasterKilledASecondLater", time.Second},
}

// clusterPrefix picks a key prefix whose stream lands on a slot that a
// reshard of its master's lowest slots moves: between minOff and maxOff
// slots above the master's lowest.
func clusterPrefix(t *testing.T, cl *testenv.Cluster, minOff, maxOff int) (string, *testenv.ClusterNode) {
	t.Helper()
	base := "e2erepl" + randHex(t, 3)
	for i := 0; ; i++ {
		p := base + strconv.Itoa(i)
		s := testenv.Slot(p + ":inv")
		m := cl.MasterForSlot(t, s)
		if off := s - lowestSlot(t, cl, m); off >= minOff && off < maxOff {
			return p, m
		}
	}
}

// lowestSlot is the lowest slot m serves.
func lowestSlot(t *testing.T, cl *testenv.Cluster, m *testenv.ClusterNode) int {
	t.Helper()
	low := testenv.ClusterSlots
	for _, s := range cl.State(t) {
		if s.Node == m {
			for _, r := range s.Slots {
				low = min(low, r.From)
			}
		}
	}
	if low == testenv.ClusterSlots {
		t.Fatalf("%s serves no slot", m.Addr)
	}
	return low
}

// slotOwners maps each slot to its master, as the cluster is now.
func slotOwners(t *testing.T, cl *testenv.Cluster) []*testenv.ClusterNode {
	t.Helper()
	owners := make([]*testenv.ClusterNode, testenv.ClusterSlots)
	for _, s := range cl.State(t) {
		for _, r := range s.Slots {
			for slot := r.From; slot <= r.To; slot++ {
				owners[slot] = s.Node
			}
		}
	}
	return owners
}

// nextIDWhere returns the first export id from e2eID(*next) on that ok
// accepts, and moves *next past it.
func nextIDWhere(next *int, ok func(id string) bool) string {
	for {
		id := e2eID(*next)
		*next++
		if ok(id) {
			return id
		}
	}
}

// redisKeys is KEYS pattern on one server (in a cluster: that node's keys).
func redisKeys(t *testing.T, r *testenv.Redis, pattern string) []string {
	t.Helper()
	out := r.MustDo(t, "KEYS", pattern)
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// --- Sentinel --------------------------------------------------------------

// testFleetSentinel: one Sentinel set (master, replica, 3 Sentinels) and one
// fleet of 3 nodes that finds the master through the Sentinels.
func testFleetSentinel(t *testing.T, bin string) {
	s := testenv.StartSentinel(t)
	c := startReplicatedFleet(t, bin, fleetSetup{
		nodes: 3,
		redis: strings.Join(s.SentinelAddrs(), " "),
		fleetExtra: "sentinel " + s.MasterName() +
			"\n\t\t\tmax_staleness " + replMaxStaleness.String(),
	})
	up := c.up
	t.Logf("sentinel set: master %s, replica %s, Sentinels %s", s.Master(t).Addr, s.Replica(t).Addr, strings.Join(s.SentinelAddrs(), " "))

	t.Run("SharedHitOnANodeThatNeverSawTheKey", func(t *testing.T) { testReplSharedHit(t, c, e2eID(1)) })
	t.Run("OneUpstreamCallForAColdBurst", func(t *testing.T) { testReplColdBurst(t, c, e2eID(2)) })
	t.Run("DeleteAndPurgeReachEveryNode", func(t *testing.T) { testReplPropagation(t, c, 1000) })

	t.Run("SentinelFailoverUnderLoad", func(t *testing.T) {
		old := s.Master(t)
		cachedID := e2eID(20_000)
		completed(up, cachedID, time.Time{})
		c.warmShared(t, cachedID, e2eKeyA)
		fresh := idSource(up, 30_000, 5000)
		probes := probeSource(up, 400_000, nil)
		var next *testenv.Redis
		k := killUnderLoad(t, c, cachedID, fresh, probes, nil, func() { next = s.Failover(t) })
		d := c.deleteAfterFailover(t, 1, e2eID(20_001), next)
		t.Logf("summary: SENTINEL FAILOVER %s -> %s under load: took %v (testenv); longest time without a shared hit %v; "+
			"first shared hit of a probe started after the failover at +%v (%d probes); %d requests, %d 5xx, %d transport errors; "+
			"a DELETE afterwards reached the other nodes in %v",
			old.Addr, next.Addr, k.failover.Round(time.Millisecond), k.longestGap.Round(time.Millisecond), k.resumed.Round(time.Millisecond), k.probes,
			k.requests, k.fiveXX, k.transport, roundAll(d.waits, 10*time.Microsecond))
		s.Rejoin(t, old)
	})

	t.Run("MasterKilledUnderLoad", func(t *testing.T) {
		victim := s.Master(t)
		cachedID := e2eID(40_000)
		completed(up, cachedID, time.Time{})
		c.warmShared(t, cachedID, e2eKeyA)
		fresh := idSource(up, 50_000, 5000)
		probes := probeSource(up, 500_000, nil)
		var next *testenv.Redis
		k := killUnderLoad(t, c, cachedID, fresh, probes, victim.Kill, func() { next = s.WaitMasterChange(t, victim) })
		d := c.deleteAfterFailover(t, 0, e2eID(40_001), next)
		t.Logf("summary: sentinel master %s killed under load, %s promoted: failover seen by testenv %v; kill -> first shared hit again %v "+
			"(of a probe started after the failover: %v; %d probes); %d requests, %d 5xx, %d transport errors; a DELETE afterwards reached the other nodes in %v",
			victim.Addr, next.Addr, k.failover.Round(time.Millisecond), k.sharing.Round(time.Millisecond), k.resumed.Round(time.Millisecond), k.probes,
			k.requests, k.fiveXX, k.transport, roundAll(d.waits, 10*time.Microsecond))
		s.Rejoin(t, victim) // restarted empty, a replica again
	})

	t.Run("AcknowledgedButUnreplicatedDelete", func(t *testing.T) {
		for k, lives := range unreplicatedDeleteCases {
			t.Run(lives.name, func(t *testing.T) {
				master, replica := s.Master(t), s.Replica(t)
				testReplUnreplicatedDelete(t, c, e2eID(60_000+k), master, replica, lives.after, func() *testenv.Redis {
					return s.WaitMasterChange(t, master)
				})
				s.Rejoin(t, master) // restarted empty, a replica again
			})
		}
	})
}

// --- scenarios shared by both topologies -------------------------------------

// testReplSharedHit: node0 asks the app and shares the answer; node1 and
// node2, which never saw the key, answer from the shared decision.
func testReplSharedHit(t *testing.T, c *fleetCluster, id string) {
	completed(c.up, id, time.Time{})
	first := c.mustGet(t, 0, id, e2eKeyA, http.StatusFound)
	if first.fleetMember() != csFleetStored {
		t.Errorf("node0, first GET: Cache-Status %q, want the fleet member %q", first.cacheStatus, csFleetStored)
	}
	var took []string
	for i := 1; i < len(c.nodes); i++ {
		r := c.mustGet(t, i, id, e2eKeyA, http.StatusFound)
		if want := csFleetHit + ", " + csStored; r.cacheStatus != want {
			t.Errorf("node%d: Cache-Status %q, want %q", i, r.cacheStatus, want)
		}
		if objectPath(r.location) != objectPath(first.location) {
			t.Errorf("node%d's Location %q names another object than node0's %q", i, r.location, first.location)
		}
		took = append(took, fmt.Sprintf("node%d %v", i, r.took.Round(10*time.Microsecond)))
	}
	if got := c.up.CallsFor(id); got != 1 {
		t.Errorf("upstream calls = %d after shared hits, want 1", got)
	}
	t.Logf("summary: shared hit: 1 upstream call for 3 nodes; shared hits answered in %s", strings.Join(took, ", "))
}

// testReplColdBurst: 60 concurrent requests for one cold export, spread over
// the 3 nodes, make one upstream call.
func testReplColdBurst(t *testing.T, c *fleetCluster, id string) {
	up := c.up
	const n = 60
	replies := c.coldBurst(id, n)
	stored := 0
	for _, r := range replies {
		if r.err != nil || r.status != http.StatusFound {
			t.Errorf("node%d: %v %d %q, want 302", r.node, r.err, r.status, r.cacheStatus)
		}
		if r.fleetMember() == csFleetStored {
			stored++
		}
	}
	if got := up.CallsFor(id); got != 1 {
		t.Errorf("upstream calls for the burst = %d, want 1; Cache-Status values:%s", got, countValues(replies))
	}
	if stored != 1 {
		t.Errorf("%d answers with %q, want exactly 1", stored, csFleetStored)
	}
	t.Logf("summary: cold burst of %d requests over %d nodes: %d upstream call(s); Cache-Status values:%s",
		n, len(c.nodes), up.CallsFor(id), countValues(replies))
}

// testReplPropagation measures, over replPropagationRounds DELETEs through
// each node in turn, the time from the DELETE's 2xx to each other node
// answering 404; then a few in-band purges (an app answer naming a cache
// group) the same way.
func testReplPropagation(t *testing.T, c *fleetCluster, firstID int) {
	var waits []time.Duration
	for k := range replPropagationRounds {
		id := e2eID(firstID + k)
		completed(c.up, id, time.Time{})
		c.warmShared(t, id, e2eKeyA)
		d := c.deleteAndWatch(c.up, k%len(c.nodes), id)
		if d.err != nil {
			t.Fatalf("DELETE %s through node%d: %v", id, d.from, d.err)
		}
		waits = append(waits, d.waitList()...)
	}
	var purges []time.Duration
	const purgeRounds = 6
	for k := range purgeRounds {
		id := e2eID(firstID + replPropagationRounds + k)
		group := fmt.Sprintf("keyid_e2e%d", k)
		c.up.Set(id, testenv.Response{Body: testenv.ExportBody(id, "completed", nil, nil), Header: http.Header{"Surrogate-Key": {group}}})
		c.warmShared(t, id, e2eKeyA)
		notFound(c.up, id)
		from := k % len(c.nodes)
		status, answered, err := c.revokeGroup(from, group)
		if err != nil || status != http.StatusOK {
			t.Fatalf("POST revoking %s through node%d: %d %v, want 200", group, from, status, err)
		}
		if r := c.mustGet(t, from, id, e2eKeyA, http.StatusNotFound); r.cacheStatus == csHit {
			t.Errorf("node%d answered the purged export from its cache", from)
		}
		for i := range c.nodes {
			if i == from {
				continue
			}
			d, err := c.waitStatus(i, id, e2eKeyA, http.StatusNotFound, answered, e2eHang)
			if err != nil {
				t.Fatalf("in-band purge of %s through node%d: %v", group, from, err)
			}
			purges = append(purges, d)
		}
	}
	t.Logf("summary: invalidation across 3 nodes: DELETE-2xx -> 404 on each other node over %d DELETEs (%d measurements, polled every ~2ms): "+
		"p50 %v, p99 %v, max %v; in-band purge (Cache-Group-Invalidation) over %d POSTs: p50 %v, max %v",
		replPropagationRounds, len(waits), percentile(waits, 50).Round(10*time.Microsecond), percentile(waits, 99).Round(10*time.Microsecond),
		percentile(waits, 100).Round(10*time.Microsecond), purgeRounds, percentile(purges, 50).Round(10*time.Microsecond),
		percentile(purges, 100).Round(10*time.Microsecond))
}

// killOutcome is what killUnderLoad measured.
type killOutcome struct {
	failover time.Duration // the fault → testenv saw the new master
	// sharing is the fault → the first shared hit of a probe; longestGap
	// the longest time without a shared hit from the fault on; resumed the
	// fault → the first shared hit of a probe that started once testenv
	// saw the new master.
	sharing, longestGap, resumed time.Duration
	probes                       int
	requests, fiveXX, transport  int
}

// sharedProbe is one probe: a new export read through node0, then node1.
type sharedProbe struct {
	start, end time.Time
	hit        bool // node1's answer was a shared hit
	last       string
}

// killUnderLoad runs readers on every node, applies fault (nil: none, the
// failover itself is the fault) and waitFailover in the test goroutine,
// and probes meanwhile for shared hits: node0 reads a new export (from
// probes), then node1 reads it, until a probe that started after the
// failover hits. Every answer of the load must be a 302.
func killUnderLoad(t *testing.T, c *fleetCluster, cachedID string, fresh, probes func() string, fault, waitFailover func()) killOutcome {
	t.Helper()
	stop := make(chan struct{})
	wait := c.loadUntil(stop, 3, cachedID, fresh)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			wait()
		}
	}()
	time.Sleep(500 * time.Millisecond) // the load runs undisturbed first
	faultAt := time.Now()
	if fault != nil {
		fault()
	}
	var mu sync.Mutex
	var done []sharedProbe
	stopProbe := make(chan struct{})
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		for {
			select {
			case <-stopProbe:
				return
			default:
			}
			p := c.probeShared(probes())
			mu.Lock()
			done = append(done, p)
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	waitFailover()
	var k killOutcome
	failedOver := time.Now()
	k.failover = failedOver.Sub(faultAt)
	deadline := failedOver.Add(replFailoverHang)
	for {
		mu.Lock()
		ok := slices.ContainsFunc(done, func(p sharedProbe) bool { return p.hit && p.start.After(failedOver) })
		mu.Unlock()
		if ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stopProbe)
	<-probed
	time.Sleep(300 * time.Millisecond) // the load runs a while on the new master
	close(stop)
	replies := wait()

	k.probes = len(done)
	lastHit := faultAt
	for _, p := range done {
		if !p.hit {
			continue
		}
		if k.sharing == 0 {
			k.sharing = p.end.Sub(faultAt)
		}
		if k.resumed == 0 && p.start.After(failedOver) {
			k.resumed = p.end.Sub(faultAt)
		}
		k.longestGap = max(k.longestGap, p.end.Sub(lastHit))
		lastHit = p.end
	}
	if k.resumed == 0 {
		last := "no probe"
		if len(done) > 0 {
			last = done[len(done)-1].last
		}
		t.Errorf("sharing did not resume within %v of the new master: %d probes, node1's last answer %s", replFailoverHang, len(done), last)
	}
	k.requests = len(replies)
	k.fiveXX, k.transport = checkLoad(t, replies, "during the failover")
	after := 0
	for _, r := range replies {
		if r.start.After(faultAt) {
			after++
		}
	}
	if after == 0 {
		t.Errorf("the load did not run past the fault")
	}
	return k
}

// testReplUnreplicatedDelete: a DELETE that the master acknowledges while
// its replica is cut off, then the master dies and the stale replica takes
// over. Nodes 1 and 2 were frozen meanwhile (they saw nothing); once they
// resume, neither may redirect to the deleted export later than
// max_staleness.
func testReplUnreplicatedDelete(t *testing.T, c *fleetCluster, id string, master, replica *testenv.Redis, masterLives time.Duration, waitPromotion func() *testenv.Redis) {
	up := c.up
	completed(up, id, time.Time{})
	c.warmShared(t, id, e2eKeyA)
	c.warmShared(t, id, e2eKeyB)
	waitReplicaCaughtUp(t, master)

	// Cut the replica's link and keep it from coming back; freeze nodes 1
	// and 2 and close their connections, so that they receive nothing of
	// what follows.
	replica.Pause()
	defer replica.Resume()
	if n := master.ClientKill(t, "TYPE", "replica"); n != 1 {
		t.Fatalf("CLIENT KILL TYPE replica on %s closed %d links, want 1", master.Addr, n)
	}
	frozen := []*fleetNode{c.nodes[1], c.nodes[2]}
	for _, n := range frozen {
		signalNode(t, n, syscall.SIGSTOP)
	}
	defer func() {
		for _, n := range frozen {
			_ = syscall.Kill(n.cmd.Process.Pid, syscall.SIGCONT)
		}
	}()
	// Only theirs: node0 keeps its connections, so that its DELETE meets
	// the master as it is, not a connection it must dial again.
	for _, n := range frozen {
		if k := closeNodeConns(t, master, n); k == 0 {
			t.Fatalf("%s had no connection to the master %s", n.name, master.Addr)
		}
	}

	notFound(up, id)
	before := len(c.nodes[0].out.String())
	status, answered, err := c.delete(0, id)
	if err != nil || status != http.StatusNoContent {
		t.Fatalf("DELETE through node0: %d %v, want 204", status, err)
	}
	onOld := streamEventsFor(t, master, c.prefix, id)
	fleetState := invalidatedState(c.nodes[0].out.String()[before:], id)
	if cause := queuedCause(c.nodes[0].out.String()[before:]); cause != "" {
		fleetState += " (" + cause + ")"
	}

	time.Sleep(masterLives)
	master.Kill()
	killed := time.Now()
	replica.Resume()
	next := waitPromotion()
	promoted := time.Since(killed)
	if next != replica {
		t.Fatalf("%s took over, not the cut-off replica %s", next.Addr, replica.Addr)
	}

	// Resume nodes 1 and 2 and read through both from that moment: key A
	// at once, key B (cached the same way) from max_staleness on, when any
	// 302 is late whatever each node did first.
	for _, n := range frozen {
		signalNode(t, n, syscall.SIGCONT)
	}
	resumed := time.Now()
	window := replMaxStaleness + 2*time.Second
	var mu sync.Mutex
	var replies []fleetReply
	var wg sync.WaitGroup
	for _, node := range []int{1, 2} {
		for _, k := range []struct {
			key  string
			from time.Duration
		}{{e2eKeyA, 0}, {e2eKeyB, replMaxStaleness + 50*time.Millisecond}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Until(resumed.Add(k.from)))
				for time.Since(resumed) < window {
					r := c.get(node, id, k.key)
					mu.Lock()
					replies = append(replies, r)
					mu.Unlock()
					time.Sleep(5 * time.Millisecond)
				}
			}()
		}
	}
	wg.Wait()

	late, redirects, other := 0, 0, 0
	var last302 time.Duration = -1
	for _, r := range replies {
		switch {
		case r.err != nil || r.status >= 500:
			other++
			t.Errorf("node%d after resuming: %v %d %q", r.node, r.err, r.status, r.cacheStatus)
		case r.status == http.StatusFound:
			redirects++
			last302 = max(last302, r.start.Sub(resumed))
			if r.start.Sub(resumed) > replMaxStaleness {
				late++
			}
		case r.status != http.StatusNotFound:
			other++
		}
	}
	if late > 0 {
		t.Errorf("%d redirects to the deleted export started more than max_staleness (%v) after nodes 1 and 2 resumed (last at +%v); want 0",
			late, replMaxStaleness, last302.Round(time.Millisecond))
	}
	lastText := "none"
	if last302 >= 0 {
		lastText = "+" + last302.Round(time.Millisecond).String()
	}

	// The event: was it sent again to the new master?
	deadline := time.Now().Add(e2eHang)
	var onNew int
	for {
		onNew = streamEventsFor(t, next, c.prefix, id)
		if onNew > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	fate := fmt.Sprintf("node0 logged it as %q; the old master held %d event(s) for it; the new master's stream holds %d", fleetState, onOld, onNew)
	if onNew == 0 {
		t.Errorf("the DELETE's event never reached the new master's stream (%s): node0's outbox did not send it again", fate)
	}
	t.Logf("summary: acknowledged-but-unreplicated DELETE: answered %d at %s; master killed %v later, replica %s promoted after %v; "+
		"nodes 1 and 2 polled for %v from their resume: %d answers (%d 302, %d other), %d 302 started after +%v, last 302 %s; %s",
		status, answered.Format("15:04:05.000"), masterLives, next.Addr, promoted.Round(time.Millisecond), window, len(replies), redirects, other,
		late, replMaxStaleness, lastText, fate)
}

// --- nodes, app and requests -----------------------------------------------

// startReplicatedFleet is startFleet with an app behind the nodes that also
// answers in-band invalidations: POST /v1/groups/{group}/revoke answers
// 200 with Cache-Group-Invalidation naming that group.
func startReplicatedFleet(t *testing.T, bin string, s fleetSetup) *fleetCluster {
	t.Helper()
	if s.timeout == 0 {
		s.timeout = 250 * time.Millisecond // as startFleet: a loaded machine
	}
	if s.secret == "" {
		s.secret = e2eSecret
	}
	if s.prefix == "" {
		s.prefix = "e2erepl" + randHex(t, 6)
	}
	c := &fleetCluster{t: t, up: testenv.NewUpstream(t), prefix: s.prefix}
	c.client = &http.Client{
		Timeout:       15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{MaxIdleConnsPerHost: 64},
	}
	t.Cleanup(c.client.CloseIdleConnections)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodDelete:
			c.deletes.Add(1)
			w.WriteHeader(http.StatusNoContent)
		case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/v1/groups/") && strings.HasSuffix(r.URL.Path, "/revoke"):
			group := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v1/groups/"), "/revoke")
			w.Header().Set("Cache-Group-Invalidation", strconv.Quote(group))
			_, _ = io.WriteString(w, "revoked")
		default:
			_, _ = io.WriteString(w, "app")
		}
	}))
	t.Cleanup(app.Close)
	c.nodes = make([]*fleetNode, s.nodes)
	errs := make([]error, s.nodes)
	var wg sync.WaitGroup
	for i := range s.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.nodes[i], errs[i] = c.startNode(t, bin, i, s, strings.TrimPrefix(app.URL, "http://"))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return c
}

// signalNode sends sig to a node's process (by its PID).
func signalNode(t *testing.T, n *fleetNode, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(n.cmd.Process.Pid, sig); err != nil {
		t.Fatalf("%s: %v: %v", n.name, sig, err)
	}
}

// warmShared makes node0 decide (id, key) and share it, and nodes 1 and 2
// take the shared decision; each then holds it in its local cache.
func (c *fleetCluster) warmShared(t *testing.T, id, key string) {
	t.Helper()
	for i := range c.nodes {
		c.mustGet(t, i, id, key, http.StatusFound)
		if r := c.mustGet(t, i, id, key, http.StatusFound); r.cacheStatus != csHit {
			t.Fatalf("node%d: second GET of %s: Cache-Status %q, want %q", i, id, r.cacheStatus, csHit)
		}
	}
}

// delete is del without failing the test: for other goroutines.
func (c *fleetCluster) delete(node int, id string) (int, time.Time, error) {
	req, err := http.NewRequest(http.MethodDelete, c.nodes[node].base+"/v1/exports/"+id, nil)
	if err != nil {
		return 0, time.Time{}, err
	}
	req.Header.Set("Authorization", "Bearer "+e2eKeyA)
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, time.Time{}, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Now(), nil
}

// revokeGroup POSTs through node to the app's revocation of group, whose
// answer names the group in Cache-Group-Invalidation.
func (c *fleetCluster) revokeGroup(node int, group string) (int, time.Time, error) {
	req, err := http.NewRequest(http.MethodPost, c.nodes[node].base+"/v1/groups/"+group+"/revoke", nil)
	if err != nil {
		return 0, time.Time{}, err
	}
	req.Header.Set("Authorization", "Bearer "+e2eKeyA)
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, time.Time{}, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Now(), nil
}

// waitStatus is untilStatus without failing the test: it polls node until
// it answers want, and returns how long after since, or an error after
// bound or on a 5xx.
func (c *fleetCluster) waitStatus(node int, id, key string, want int, since time.Time, bound time.Duration) (time.Duration, error) {
	for {
		r := c.get(node, id, key)
		if r.err == nil && r.status == want {
			return time.Since(since), nil
		}
		if r.err == nil && r.status >= 500 {
			return 0, fmt.Errorf("node%d answered %d (Cache-Status %q) while waiting for %d", node, r.status, r.cacheStatus, want)
		}
		if time.Since(since) > bound {
			return 0, fmt.Errorf("node%d still answers %d (Cache-Status %q, err %v) for %s %v later, want %d",
				node, r.status, r.cacheStatus, r.err, id, time.Since(since).Round(time.Millisecond), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// replDelete is one DELETE through a node and its effect on the others.
type replDelete struct {
	id       string
	from     int
	answered time.Time
	waits    map[int]time.Duration // other node → DELETE-2xx to its 404
	err      error
}

func (d replDelete) waitList() []time.Duration {
	var out []time.Duration
	for _, w := range d.waits {
		out = append(out, w)
	}
	return out
}

// deleteAfterFailover caches export id on every node, DELETEs it through
// node from, and fails the test if that DELETE did not reach every node
// or, with next, if next (the new master) does not hold its event. It may
// hold it twice: a publish whose WAIT ran out (the old master, back as a
// replica, takes the stream about a second after its full sync) goes out
// again from the outbox.
func (c *fleetCluster) deleteAfterFailover(t *testing.T, from int, id string, next *testenv.Redis) replDelete {
	t.Helper()
	completed(c.up, id, time.Time{})
	c.warmShared(t, id, e2eKeyA)
	d := c.deleteAndWatch(c.up, from, id)
	if d.err != nil {
		t.Errorf("DELETE after the failover: %v", d.err)
	}
	if next != nil {
		if n := streamEventsFor(t, next, c.prefix, id); n < 1 {
			t.Errorf("the new master's stream holds no event for the DELETE made after the failover")
		} else if n > 1 {
			t.Logf("the new master's stream holds the DELETE's event %d times (sent again from the outbox)", n)
		}
	}
	return d
}

// deleteAndWatch makes the app forget id, DELETEs it through node from and
// polls the other nodes until each answers 404. It does not fail the test
// (other goroutines call it): errors are in the result.
func (c *fleetCluster) deleteAndWatch(up *testenv.Upstream, from int, id string) replDelete {
	d := replDelete{id: id, from: from, waits: map[int]time.Duration{}}
	notFound(up, id)
	status, answered, err := c.delete(from, id)
	d.answered = answered
	if err == nil && status != http.StatusNoContent {
		err = fmt.Errorf("status %d, want 204", status)
	}
	if err != nil {
		d.err = fmt.Errorf("DELETE through node%d: %w", from, err)
		return d
	}
	var mu sync.Mutex
	var errs []error
	eachNode(c, from, func(i int) struct{} {
		w, err := c.waitStatus(i, id, e2eKeyA, http.StatusNotFound, answered, e2eHang)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		} else {
			d.waits[i] = w
		}
		return struct{}{}
	})
	d.err = errors.Join(errs...)
	return d
}

// untilApplied waits (bounded) until each other node logged the event of
// every DELETE as applied, and returns what is still missing.
func (c *fleetCluster) untilApplied(dels []replDelete) []string {
	deadline := time.Now().Add(e2eHang)
	for {
		var missing []string
		for _, d := range dels {
			for i, n := range c.nodes {
				if i != d.from && d.err == nil && len(n.applied(d.id)) == 0 {
					missing = append(missing, fmt.Sprintf("%s never applied the invalidation of %s (DELETE through node%d)", n.name, d.id, d.from))
				}
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// loadUntil runs workers goroutines sending GETs round robin over the nodes
// until stop is closed, alternating a cached export and a new one from
// fresh(); the returned function waits for them and returns every answer.
func (c *fleetCluster) loadUntil(stop <-chan struct{}, workers int, cachedID string, fresh func() string) func() []fleetReply {
	var mu sync.Mutex
	var out []fleetReply
	var wg sync.WaitGroup
	var seq sync.Mutex
	k := 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				seq.Lock()
				k++
				n := k
				seq.Unlock()
				id := cachedID
				if n%2 == 0 {
					id = fresh()
				}
				r := c.get(n%len(c.nodes), id, e2eKeyA)
				mu.Lock()
				out = append(out, r)
				mu.Unlock()
			}
		}()
	}
	return func() []fleetReply {
		wg.Wait()
		return out
	}
}

// checkLoad reports every answer of a load that is not a 302 (all its
// exports are completed); it returns the 5xx and transport errors.
func checkLoad(t *testing.T, replies []fleetReply, when string) (fiveXX, transport int) {
	t.Helper()
	shown := 0
	for _, r := range replies {
		switch {
		case r.err != nil:
			transport++
		case r.status >= 500:
			fiveXX++
		case r.status == http.StatusFound:
			continue
		}
		if shown++; shown <= 10 {
			t.Errorf("node%d GET %s %s: %v %d %q, want 302", r.node, r.id, when, r.err, r.status, r.cacheStatus)
		}
	}
	if shown > 10 {
		t.Errorf("... %d wrong answers %s in all", shown, when)
	}
	return fiveXX, transport
}

// probeSource programs exports as completed, on demand, among the ids from
// from on that ok accepts (nil: every id).
func probeSource(up *testenv.Upstream, from int, ok func(string) bool) func() string {
	var mu sync.Mutex
	next := from
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		id := nextIDWhere(&next, func(id string) bool { return ok == nil || ok(id) })
		completed(up, id, time.Time{})
		return id
	}
}

// probeShared reads id through node0 then node1.
func (c *fleetCluster) probeShared(id string) sharedProbe {
	p := sharedProbe{start: time.Now()}
	c.get(0, id, e2eKeyA)
	r := c.get(1, id, e2eKeyA)
	p.end = time.Now()
	p.hit = r.err == nil && r.fleetMember() == csFleetHit
	p.last = fmt.Sprintf("%d %q %v", r.status, r.cacheStatus, r.err)
	return p
}

// waitReplicaCaughtUp waits until every replica of master acknowledged
// everything master wrote before the call (INFO replication: each slaveN
// offset reaches the master_repl_offset read first). Not the offset of the
// moment: the nodes keep writing (leases, shared decisions) and a replica
// acknowledges once a second, so under load the two are rarely equal.
func waitReplicaCaughtUp(t *testing.T, master *testenv.Redis) {
	t.Helper()
	deadline := time.Now().Add(e2eHang)
	target := int64(-1)
	for {
		info := master.MustDo(t, "INFO", "replication")
		var replicas []int64
		for _, line := range strings.Split(info, "\n") {
			line = strings.TrimSpace(line)
			if v, ok := strings.CutPrefix(line, "master_repl_offset:"); ok && target < 0 {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatalf("INFO replication of %s: master_repl_offset %q: %v", master.Addr, v, err)
				}
				target = n
			}
			if strings.HasPrefix(line, "slave") && strings.Contains(line, "offset=") {
				_, v, _ := strings.Cut(line, "offset=")
				v, _, _ = strings.Cut(v, ",")
				n, _ := strconv.ParseInt(v, 10, 64)
				replicas = append(replicas, n)
			}
		}
		if len(replicas) > 0 && !slices.ContainsFunc(replicas, func(n int64) bool { return n < target }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replicas of %s did not reach offset %d within %v:\n%s", master.Addr, target, e2eHang, info)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closeNodeConns closes, on r, every client connection of node's process
// (CLIENT KILL ADDR for each of its local TCP addresses), and returns how
// many it closed.
func closeNodeConns(t *testing.T, r *testenv.Redis, node *fleetNode) int {
	t.Helper()
	addrs := processTCPAddrs(t, node.cmd.Process.Pid)
	closed := 0
	for _, line := range strings.Split(r.MustDo(t, "CLIENT", "LIST"), "\n") {
		for _, f := range strings.Fields(line) {
			if a, ok := strings.CutPrefix(f, "addr="); ok && addrs[a] {
				closed += r.ClientKill(t, "ADDR", a)
			}
		}
	}
	return closed
}

// processTCPAddrs returns the local addresses (ip:port) of the IPv4 TCP
// sockets that process pid holds, from /proc.
func processTCPAddrs(t *testing.T, pid int) map[string]bool {
	t.Helper()
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]bool{}
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || !inodes[f[9]] {
			continue
		}
		hexIP, hexPort, _ := strings.Cut(f[1], ":")
		ip, err1 := strconv.ParseUint(hexIP, 16, 32)
		port, err2 := strconv.ParseUint(hexPort, 16, 16)
		if err1 != nil || err2 != nil {
			continue
		}
		// The kernel prints the address in host byte order (little endian here).
		addrs[fmt.Sprintf("%d.%d.%d.%d:%d", ip&0xff, ip>>8&0xff, ip>>16&0xff, ip>>24, port)] = true
	}
	return addrs
}

// streamEventsFor counts the events of the invalidation stream on r that
// name id.
func streamEventsFor(t *testing.T, r *testenv.Redis, prefix, id string) int {
	t.Helper()
	out, err := r.Do(t, "XRANGE", prefix+":inv", "-", "+")
	if err != nil {
		t.Errorf("XRANGE %s:inv on %s: %v", prefix, r.Addr, err)
		return 0
	}
	return strings.Count(out, id)
}

// invalidatedState is the fleet field ("published", "queued") of node's
// "invalidated" log line for id in out.
func invalidatedState(out, id string) string {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg   string   `json:"msg"`
			IDs   []string `json:"export_ids"`
			Fleet string   `json:"fleet"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "invalidated" && slices.Contains(l.IDs, id) {
			return l.Fleet
		}
	}
	return "(no log line)"
}

// queuedCause is the cause of the first "fleet: invalidation queued" line
// in out, or "".
func queuedCause(out string) string {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg   string `json:"msg"`
			Cause string `json:"cause"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "fleet: invalidation queued" {
			return l.Cause
		}
	}
	return ""
}

// percentile is the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))]
}

func roundAll(m map[int]time.Duration, to time.Duration) string {
	var parts []string
	for i := range 8 {
		if d, ok := m[i]; ok {
			parts = append(parts, fmt.Sprintf("node%d %v", i, d.Round(to)))
		}
	}
	return strings.Join(parts, ", ")
}
