package fleet

// The fleet tier on replicated Redis: a Redis Cluster (3 masters with a
// replica each) and a master with a replica behind 3 Sentinels, both real
// local deployments (testenv), with several Clients ("nodes") in this
// process and, for the node that is away during a failover, one in a child
// process that the test stops with SIGSTOP.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
	"go.uber.org/zap"
)

// The fleet user and the ACL rules these tests prove sufficient.
const (
	fleetUser = "fleet"
	fleetPass = "fleet-pass-0123456789"
	// fleetDataACL is the fleet user's rule set on a single server and on
	// the data nodes of a Sentinel set. PTTL and PEXPIRE run inside the
	// store script (scripts are checked against the ACL too); ROLE is also
	// what the Sentinel client sends to check that it reached the master;
	// INFO (replication) tells a master whose replica is away from a
	// promoted one, for the publishes' WAIT.
	fleetDataACL = "~export_download:* -@all +get +set +del +exists +pttl +pexpire +eval +evalsha" +
		" +xadd +xread +xinfo|stream +multi +exec +time +role +info +wait +ping"
	// fleetClusterACL adds what a Cluster client needs: the topology
	// (CLUSTER SLOTS on Redis 7, CLUSTER SHARDS from Redis 8) and ASKING,
	// which follows an ASK redirect while a slot migrates.
	fleetClusterACL = fleetDataACL + " +cluster|slots +cluster|shards +asking"

	sentinelUser = "fleet-sentinel"
	sentinelPass = "sentinel-pass-0123456789"
	// fleetSentinelACL is what the fleet client needs of a Sentinel: find
	// the master and the other Sentinels, and follow their events.
	fleetSentinelACL = "-@all +ping +sentinel|get-master-addr-by-name +sentinel|sentinels +subscribe +unsubscribe" +
		" resetchannels &+sentinel &+slave &-sdown &+sdown &+switch-master &+reboot"

	streamKey = DefaultPrefix + ":inv"
	// replTimeout is the Timeout of the nodes under load in these tests:
	// 5× the default, as two shared cores under -race need, still short
	// enough that a Load's bound stays a few seconds.
	replTimeout = 250 * time.Millisecond
	// replStaleness is MaxStaleness in these tests (the value the README's
	// consistency promise is tested with).
	replStaleness = time.Second
)

// deployment is one replicated Redis and what the shared scenarios need to
// know about it.
type deployment struct {
	name string
	// point makes a node's Config use the deployment (addresses, Sentinel,
	// the fleet user).
	point func(*Config)
	child childSpec
	// streamMaster is the master that holds the invalidation stream.
	streamMaster func(t *testing.T) *testenv.Redis
	// masterFor is the master that holds key.
	masterFor func(t *testing.T, key string) *testenv.Redis
	replicaOf func(t *testing.T, m *testenv.Redis) *testenv.Redis
	// idsOn returns n export ids whose keys live on master m.
	idsOn func(t *testing.T, m *testenv.Redis, n int) []string
	// masters are the masters now (one for Sentinel).
	masters func(t *testing.T) []*testenv.Redis
	// waitFailover waits until another node serves what old served.
	waitFailover func(t *testing.T, old *testenv.Redis) *testenv.Redis
	// heal brings a killed or demoted old master back as a replica.
	heal func(t *testing.T, old *testenv.Redis)
}

// fleetNode starts a node on d; mod changes its config afterwards.
func fleetNode(t testing.TB, d *deployment, mod ...func(*Config)) *Client {
	t.Helper()
	return node(t, "127.0.0.1:1", append([]func(*Config){d.point, func(c *Config) { c.MaxStaleness = replStaleness }}, mod...)...)
}

func timeout(d time.Duration) func(*Config) { return func(c *Config) { c.Timeout = d } }

func clusterDeployment(c *testenv.Cluster) *deployment {
	byRedis := func(t *testing.T, r *testenv.Redis) *testenv.ClusterNode {
		t.Helper()
		for _, n := range c.Nodes() {
			if n.Redis == r {
				return n
			}
		}
		t.Fatalf("%s is not a node of the cluster", r.Addr)
		return nil
	}
	return &deployment{
		name: "cluster",
		point: func(cfg *Config) {
			cfg.Addrs = c.Seeds()
			cfg.Username, cfg.Password = fleetUser, fleetPass
		},
		child:        childSpec{Addrs: c.Seeds(), Username: fleetUser, Password: fleetPass},
		streamMaster: func(t *testing.T) *testenv.Redis { return c.MasterFor(t, streamKey).Redis },
		masterFor:    func(t *testing.T, key string) *testenv.Redis { return c.MasterFor(t, key).Redis },
		replicaOf: func(t *testing.T, m *testenv.Redis) *testenv.Redis {
			t.Helper()
			// The master's own view: after failovers a node's CLUSTER
			// NODES may still show an old topology.
			var port string
			waitFor(t, 15*time.Second, "master "+m.Addr+" to have exactly one replica", func() bool {
				info := m.MustDo(t, "INFO", "replication")
				if !strings.Contains(info, "connected_slaves:1\r\n") {
					return false
				}
				_, rest, _ := strings.Cut(info, "slave0:")
				_, rest, _ = strings.Cut(rest, "port=")
				port, _, _ = strings.Cut(rest, ",")
				return port != ""
			})
			for _, n := range c.Nodes() {
				if strings.HasSuffix(n.Addr, ":"+port) {
					return n.Redis
				}
			}
			t.Fatalf("master %s's replica (port %s) is not a node of the cluster", m.Addr, port)
			return nil
		},
		idsOn: func(t *testing.T, m *testenv.Redis, n int) []string {
			t.Helper()
			var slots []int
			for _, s := range c.State(t) {
				if s.Node.Redis == m {
					for _, r := range s.Slots {
						for slot := r.From; slot <= r.To; slot++ {
							slots = append(slots, slot)
						}
					}
				}
			}
			if len(slots) < n {
				t.Fatalf("%s serves %d slots, want at least %d", m.Addr, len(slots), n)
			}
			ids := make([]string, n)
			prefix := "x" + randomHex(2) + "_" // unique to this call
			for i := range ids {
				ids[i] = tagForSlot(slots[i*len(slots)/n], prefix)
			}
			return ids
		},
		masters: func(t *testing.T) []*testenv.Redis {
			var ms []*testenv.Redis
			for _, m := range c.Masters(t) {
				ms = append(ms, m.Redis)
			}
			return ms
		},
		waitFailover: func(t *testing.T, old *testenv.Redis) *testenv.Redis {
			return c.WaitFailover(t, byRedis(t, old)).Redis
		},
		heal: func(t *testing.T, old *testenv.Redis) {
			if !old.Running() {
				old.Restart() // empty; it follows its replacement (nodes.conf)
			}
			c.WaitHealthy(t)
		},
	}
}

func sentinelDeployment(s *testenv.SentinelSet) *deployment {
	return &deployment{
		name: "sentinel",
		point: func(cfg *Config) {
			cfg.Addrs = s.SentinelAddrs()
			cfg.Sentinel = s.MasterName()
			cfg.Username, cfg.Password = fleetUser, fleetPass
		},
		child:        childSpec{Addrs: s.SentinelAddrs(), Sentinel: s.MasterName(), Username: fleetUser, Password: fleetPass},
		streamMaster: func(t *testing.T) *testenv.Redis { return s.Master(t) },
		masterFor:    func(t *testing.T, _ string) *testenv.Redis { return s.Master(t) },
		replicaOf:    func(t *testing.T, _ *testenv.Redis) *testenv.Redis { return s.Replica(t) },
		idsOn: func(t *testing.T, _ *testenv.Redis, n int) []string {
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("exp_%s_%d", randomHex(3), i)
			}
			return ids
		},
		masters:      func(t *testing.T) []*testenv.Redis { return []*testenv.Redis{s.Master(t)} },
		waitFailover: func(t *testing.T, old *testenv.Redis) *testenv.Redis { return s.WaitMasterChange(t, old) },
		heal:         func(t *testing.T, old *testenv.Redis) { s.Rejoin(t, old) },
	}
}

// TestCluster runs the fleet on one Redis Cluster through its subtests, in
// order; each leaves the cluster healthy. The measured numbers are logged.
func TestCluster(t *testing.T) {
	t.Parallel()
	t.Cleanup(settleRueidis) // registered first: runs after the nodes closed
	began := time.Now()
	c := testenv.StartCluster(t, testenv.ClusterUser(fleetUser, fleetPass, fleetClusterACL))
	d := clusterDeployment(c)
	t.Logf("cluster of 6 up in %v", time.Since(began).Round(time.Millisecond))
	a, b, n3 := fleetNode(t, d), fleetNode(t, d), fleetNode(t, d)
	waitUp(t, a, b, n3)
	nodes := []*Client{a, b, n3}

	t.Run("shared hit on a node that never saw the key", func(t *testing.T) { testSharedHit(t, a, b) })
	t.Run("one upstream call for a cold burst across 3 nodes", func(t *testing.T) { testColdBurst(t, nodes) })
	t.Run("decisions land on every shard", func(t *testing.T) {
		const n = 120
		f := newFetcher("sharded")
		for i := range n {
			if _, src := load(t, a, fmt.Sprintf("shard_%d", i), cred("shards"), f); src != Stored {
				t.Fatalf("shard_%d: %v, want stored", i, src)
			}
		}
		total := 0
		for _, m := range c.Masters(t) {
			k := countKeys(t, m.Redis, DefaultPrefix+":d:{shard_*")
			t.Logf("master %s holds %d of the %d decisions", m.Addr, k, n)
			if k == 0 {
				t.Errorf("master %s holds no decision", m.Addr)
			}
			total += k
		}
		if total != n {
			t.Errorf("the masters hold %d decisions, want %d", total, n)
		}
		for i := range n {
			if _, src := load(t, b, fmt.Sprintf("shard_%d", i), cred("shards"), newFetcher("x")); src != Hit {
				t.Fatalf("shard_%d on another node: %v, want a shared hit", i, src)
			}
		}
	})
	t.Run("DELETE and purges reach other nodes and retire older decisions", func(t *testing.T) {
		testPropagation(t, d, a, b, n3)
	})
	t.Run("invalidation latency across 3 nodes", func(t *testing.T) {
		testInvalidationLatency(t, d.name, a, []*Client{b, n3}, 100)
	})
	t.Run("master killed under load", func(t *testing.T) {
		testFailoverUnderLoad(t, d, a, []*Client{b, n3}, "kill", func(t *testing.T, m *testenv.Redis) { m.Kill() })
	})
	t.Run("Publish while the stream's slot is half-migrated", func(t *testing.T) { testPublishHalfMigrated(t, c, a, b) })
	t.Run("slot migration under load", func(t *testing.T) { testMigrationUnderLoad(t, c, d, a, []*Client{b, n3}) })
	t.Run("acknowledged but unreplicated DELETE", func(t *testing.T) { testUnreplicatedDelete(t, d, a, b) })

	if n := c.CrossSlotErrors(t); n != 0 {
		t.Errorf("the nodes answered %d CROSSSLOT errors: a command spanned slots", n)
	}
	var denied int64
	for _, n := range c.Nodes() {
		denied += n.ErrorCount(t, "NOPERM")
	}
	if denied != 0 {
		t.Errorf("the nodes refused %d commands of the fleet user (NOPERM): the ACL %q is not enough", denied, fleetClusterACL)
	}
	for _, n := range nodes {
		if s := n.Stats(); s.Lookups.Invalid != 0 || s.Invalidations.Invalid != 0 {
			t.Errorf("values failed authentication: %+v", s)
		}
	}
	t.Logf("TestCluster took %v", time.Since(began).Round(time.Millisecond))
}

// TestSentinel runs the fleet on a master, a replica and 3 Sentinels through
// its subtests, in order; each leaves the set healthy.
func TestSentinel(t *testing.T) {
	t.Parallel()
	t.Cleanup(settleRueidis)
	began := time.Now()
	s := testenv.StartSentinel(t, testenv.SentinelNodeUser(fleetUser, fleetPass, fleetDataACL))
	d := sentinelDeployment(s)
	t.Logf("master, replica and 3 Sentinels up in %v", time.Since(began).Round(time.Millisecond))
	a, b, n3 := fleetNode(t, d), fleetNode(t, d), fleetNode(t, d)
	waitUp(t, a, b, n3)
	nodes := []*Client{a, b, n3}

	t.Run("shared hit on a node that never saw the key", func(t *testing.T) { testSharedHit(t, a, b) })
	t.Run("one upstream call for a cold burst across 3 nodes", func(t *testing.T) { testColdBurst(t, nodes) })
	t.Run("DELETE and purges reach other nodes and retire older decisions", func(t *testing.T) {
		testPropagation(t, d, a, b, n3)
	})
	t.Run("invalidation latency across 3 nodes", func(t *testing.T) {
		testInvalidationLatency(t, d.name, a, []*Client{b, n3}, 100)
	})
	t.Run("master killed under load", func(t *testing.T) {
		testFailoverUnderLoad(t, d, a, []*Client{b, n3}, "kill", func(t *testing.T, m *testenv.Redis) { m.Kill() })
	})
	t.Run("SENTINEL FAILOVER under load", func(t *testing.T) {
		testFailoverUnderLoad(t, d, a, []*Client{b, n3}, "SENTINEL FAILOVER", func(t *testing.T, _ *testenv.Redis) {
			s.RequestFailover(t)
		})
	})
	t.Run("acknowledged but unreplicated DELETE", func(t *testing.T) { testUnreplicatedDelete(t, d, a, b) })

	for _, n := range append(s.Nodes(), s.Sentinels()...) {
		for _, e := range aclLog(t, n) {
			if e.username == fleetUser {
				t.Errorf("%s refused the fleet user (rules %q): %+v", n.Addr, fleetDataACL, e)
			}
		}
	}
	for _, n := range nodes {
		if s := n.Stats(); s.Lookups.Invalid != 0 || s.Invalidations.Invalid != 0 {
			t.Errorf("values failed authentication: %+v", s)
		}
	}
	t.Logf("TestSentinel took %v", time.Since(began).Round(time.Millisecond))
}

// TestSentinelAuth: Sentinels that require a login, with a Sentinel user
// that may do only what the fleet needs. The right credentials work and
// follow a failover; a wrong Sentinel password never fails a Load (it falls
// back: Unavailable); and credentials given as a function (Config.
// Credentials) are used for the data nodes only, the Sentinels keeping
// their own.
func TestSentinelAuth(t *testing.T) {
	t.Parallel()
	t.Cleanup(settleRueidis)
	s := testenv.StartSentinel(t,
		testenv.SentinelAuth("sentinel-admin", "sentinel-admin-pass"),
		testenv.SentinelNodeUser(fleetUser, fleetPass, fleetDataACL))
	d := sentinelDeployment(s)
	for _, sen := range s.Sentinels() {
		sen.MustDo(t, append([]string{"ACL", "SETUSER", sentinelUser, "on", ">" + sentinelPass}, strings.Fields(fleetSentinelACL)...)...)
	}
	withSentinelAuth := func(c *Config) { c.SentinelUsername, c.SentinelPassword = sentinelUser, sentinelPass }
	a, b := fleetNode(t, d, withSentinelAuth), fleetNode(t, d, withSentinelAuth)
	waitUp(t, a, b)
	testSharedHit(t, a, b)

	t.Run("a wrong Sentinel password falls back", func(t *testing.T) {
		wrong := fleetNode(t, d, fast, func(c *Config) { c.SentinelUsername, c.SentinelPassword = sentinelUser, "wrong" })
		for i := range 5 {
			f := newFetcher("direct")
			p, src := load(t, wrong, fmt.Sprintf("auth_wrong_%d", i), cred("auth"), f)
			if src != Unavailable || string(p) != "direct" || f.calls.Load() != 1 {
				t.Fatalf("wrong Sentinel password: src %v payload %q calls %d, want unavailable, a direct fetch", src, p, f.calls.Load())
			}
		}
		if wrong.Publish(context.Background(), Event{IDs: []string{"auth_wrong"}}) {
			t.Error("Publish reported success without reaching Redis")
		}
		if s := wrong.Stats(); s.Up || s.OutboxLen != 1 {
			t.Errorf("wrong Sentinel password: up %v outbox %d, want down with the event queued", s.Up, s.OutboxLen)
		}
	})

	t.Run("Config.Credentials with Sentinel credentials", func(t *testing.T) {
		// The Sentinels do not know the data user, and the data nodes do not
		// know the Sentinel user: each must get its own.
		withFn := func(c *Config) {
			c.Username, c.Password = "", ""
			c.Credentials = func() (string, string, error) { return fleetUser, fleetPass, nil }
		}
		fn := fleetNode(t, d, withSentinelAuth, withFn)
		deadline := time.Now().Add(5 * time.Second)
		for !fn.Up() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !fn.Up() {
			var sent []string
			for _, sen := range s.Sentinels() {
				for _, e := range aclLog(t, sen) {
					if e.reason == "auth" {
						sent = append(sent, fmt.Sprintf("%s refused user %q ×%d", sen.Addr, e.username, e.count))
					}
				}
			}
			t.Fatalf("a node with Config.Credentials and Sentinel credentials never connected (stats %+v); "+
				"the Sentinels' ACL LOG: %v", fn.Stats(), sent)
		}
		if _, src := load(t, fn, "exp_shared", cred("shared"), newFetcher("x")); src != Hit {
			t.Errorf("Config.Credentials on Sentinel: src %v, want a shared hit", src)
		}
	})

	t.Run("a failover is followed with the restricted Sentinel user", func(t *testing.T) {
		rb := subscribe(t, b)
		old := s.Master(t)
		s.Failover(t)
		waitFor(t, 20*time.Second, "a Publish that is not queued on the new master", func() bool {
			return a.Publish(context.Background(), Event{IDs: []string{"auth_after_failover"}})
		})
		waitFor(t, 10*time.Second, "the DELETE on the other node", func() bool { return rb.has(hasID("auth_after_failover")) })
		if _, src := load(t, a, "auth_after", cred("auth"), newFetcher("v")); src != Stored {
			t.Errorf("after the failover: %v, want stored", src)
		}
		if _, src := load(t, b, "auth_after", cred("auth"), newFetcher("v")); src != Hit {
			t.Errorf("after the failover, another node: %v, want a shared hit", src)
		}
		s.Rejoin(t, old)
	})

	for _, sen := range s.Sentinels() {
		for _, e := range aclLog(t, sen) {
			if e.username == sentinelUser && e.reason != "auth" {
				t.Errorf("Sentinel %s refused the fleet's Sentinel user %s (rules %q): %+v", sen.Addr, e.object, fleetSentinelACL, e)
			}
		}
	}
}

// testSharedHit: a decision stored by one node is a shared hit on a node
// that never saw the key, without an upstream call there.
func testSharedHit(t *testing.T, a, b *Client) {
	t.Helper()
	key := cred("shared")
	fa := newFetcher("decided-by-a")
	if p, src := load(t, a, "exp_shared", key, fa); src != Stored || string(p) != "decided-by-a" {
		t.Fatalf("first node: %v %q, want stored", src, p)
	}
	fb := newFetcher("not-asked")
	p, src := load(t, b, "exp_shared", key, fb)
	if src != Hit || string(p) != "decided-by-a" || fb.calls.Load() != 0 {
		t.Fatalf("other node: %v %q after %d upstream calls, want a shared hit without one", src, p, fb.calls.Load())
	}
}

// testColdBurst: 30 concurrent Loads of one cold key across the nodes make
// one upstream call; every other Load takes its answer.
func testColdBurst(t *testing.T, nodes []*Client) {
	t.Helper()
	const n = 30
	f := &fetcher{payload: []byte("burst"), ttl: time.Minute, delay: 200 * time.Millisecond}
	id, key := "exp_burst_"+randomHex(4), cred("burst")
	gate := make(chan struct{})
	ds := make([]Decision, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ds[i], errs[i] = nodes[i%len(nodes)].Load(ctx, query(id, key), f.fetch)
		}()
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	sources := map[Source]int{}
	for i := range n {
		if errs[i] != nil || string(ds[i].Payload) != "burst" {
			t.Fatalf("load %d: %q, %v", i, ds[i].Payload, errs[i])
		}
		sources[ds[i].Source]++
	}
	t.Logf("cold burst of %d Loads over %d nodes: %d upstream call(s), sources %v, %v", n, len(nodes), f.calls.Load(), sources, time.Since(start).Round(time.Millisecond))
	if f.calls.Load() != 1 || sources[Stored] != 1 || sources[Collapsed]+sources[Hit] != n-1 {
		t.Fatalf("cold burst: %d upstream calls, sources %v; want 1 call, 1 stored and the rest collapsed", f.calls.Load(), sources)
	}
}

// testPropagation: a DELETE (ids), a purge by surrogate key and a purge of
// all, published by one node, reach the others' subscribers, and every
// node refuses the shared decisions they retire, also when Redis serves a
// retired decision again with its old generation (lost in a failover, or
// replayed), and also a node that starts afterwards.
func testPropagation(t *testing.T, d *deployment, a, b, pub *Client) {
	t.Helper()
	ctx := context.Background()
	ra, rb := subscribe(t, a), subscribe(t, b)
	key := cred("propagation")
	suffix := randomHex(3)
	del, tagged, other := "prop_del_"+suffix, "prop_tagged_"+suffix, "prop_other_"+suffix
	for id, tag := range map[string]string{del: "key_del", tagged: "key_purged", other: "key_kept"} {
		f := &fetcher{payload: []byte("old-" + id), tags: []string{tag}, ttl: time.Minute}
		if _, src := load(t, a, id, key, f); src != Stored {
			t.Fatalf("%s: %v, want stored", id, src)
		}
		if _, src := load(t, b, id, key, newFetcher("x")); src != Hit {
			t.Fatalf("%s on another node: %v, want a shared hit", id, src)
		}
	}
	// What Redis holds before the invalidations, to serve it again after.
	type raw struct{ decision, gen string }
	old := map[string]raw{}
	for _, id := range []string{del, tagged, other} {
		m := d.masterFor(t, decisionKey(a, id, key))
		old[id] = raw{m.MustDo(t, "GET", decisionKey(a, id, key)), m.MustDo(t, "GET", DefaultPrefix+":g:{"+id+"}")}
	}
	serveOld := func(id string) {
		t.Helper()
		m := d.masterFor(t, decisionKey(a, id, key))
		m.MustDo(t, "SET", decisionKey(a, id, key), old[id].decision, "PX", "60000")
		m.MustDo(t, "SET", DefaultPrefix+":g:{"+id+"}", old[id].gen, "PX", "60000")
	}
	var rl *recorder // the node started later, once it is
	delivered := func(what string, pred func(Event) bool) {
		t.Helper()
		waitFor(t, 10*time.Second, what+" on the other nodes", func() bool {
			return ra.has(pred) && rb.has(pred) && (rl == nil || rl.has(pred))
		})
	}
	// refused: the node does not answer with the decision made before the
	// invalidation (a decision another node made after it is fine).
	refused := func(c *Client, id, why string) {
		t.Helper()
		if p, src := load(t, c, id, key, newFetcher("new-"+id)); string(p) == "old-"+id {
			t.Errorf("%s: %v %q: the decision made before the invalidation was used (%s)", id, src, p, why)
		}
	}

	if !pub.Publish(ctx, Event{IDs: []string{del}}) {
		t.Fatal("DELETE queued with every server up")
	}
	delivered("the DELETE", hasID(del))
	refused(b, del, "deleted")
	// Redis serves the old decision again, generation included (as after a
	// failover that lost the new generation): every node knows of the
	// DELETE and refuses it anyway, a node started afterwards too.
	serveOld(del)
	refused(b, del, "served again after the DELETE")
	late := fleetNode(t, d)
	rl = subscribe(t, late)
	waitConfirmed(t, late)
	serveOld(del)
	refused(late, del, "a node started after the DELETE learns it from the stream")

	if !pub.Publish(ctx, Event{Tags: []string{"key_purged"}}) {
		t.Fatal("tag purge queued with every server up")
	}
	delivered("the tag purge", func(ev Event) bool { return slices.Contains(ev.Tags, "key_purged") })
	refused(b, tagged, "its surrogate key was purged")
	if p, src := load(t, b, other, key, newFetcher("x")); src != Hit || string(p) != "old-"+other {
		t.Errorf("%s (another surrogate key): %v %q, want still a shared hit", other, src, p)
	}
	serveOld(tagged)
	refused(late, tagged, "its surrogate key was purged")

	if !pub.Publish(ctx, Event{All: true}) {
		t.Fatal("purge of all queued with every server up")
	}
	delivered("the purge of all", func(ev Event) bool { return ev.All })
	refused(b, other, "everything was purged")
	serveOld(other)
	refused(late, other, "everything was purged")
}

// testInvalidationLatency publishes n DELETEs through pub and measures, for
// each, the time from Publish to its delivery on every other node.
func testInvalidationLatency(t *testing.T, name string, pub *Client, others []*Client, n int) {
	t.Helper()
	recs := make([]*recorder, len(others))
	for i, o := range others {
		recs[i] = subscribe(t, o)
	}
	prefix := "lat_" + randomHex(3)
	all := make([]time.Duration, 0, n)
	each := make([]time.Duration, 0, n*len(others))
	pubTook := make([]time.Duration, 0, n)
	for i := range n {
		id := fmt.Sprintf("%s_%d", prefix, i)
		start := time.Now()
		if !pub.Publish(context.Background(), Event{IDs: []string{id}}) {
			t.Fatalf("event %d queued with every server up", i)
		}
		pubTook = append(pubTook, time.Since(start))
		var last time.Time
		for _, r := range recs {
			waitFor(t, 10*time.Second, "event "+id+" on every node", func() bool { return r.has(hasID(id)) })
			at := arrivalOf(r, hasID(id))
			each = append(each, at.Sub(start))
			last = later(last, at)
		}
		all = append(all, last.Sub(start))
	}
	t.Logf("%s: invalidation, Publish → delivered on all %d other nodes, %d events: p50 %v, p99 %v, max %v (per node: p50 %v, p99 %v); Publish itself (XADD + WAIT 1): p50 %v, p99 %v",
		name, len(others), n, percentile(all, 0.5), percentile(all, 0.99), percentile(all, 1),
		percentile(each, 0.5), percentile(each, 0.99), percentile(pubTook, 0.5), percentile(pubTook, 0.99))
}

// testFailoverUnderLoad fails the stream's master over (fail: a kill, or
// asking the Sentinels) while 3 nodes load decisions, some on that master:
// no Load returns an error or outlasts its bound, sharing resumes once the
// replica serves, and a DELETE published afterwards reaches every node.
func testFailoverUnderLoad(t *testing.T, d *deployment, pub *Client, others []*Client, how string, fail func(*testing.T, *testenv.Redis)) {
	t.Helper()
	old := d.streamMaster(t)
	watched := d.idsOn(t, old, 12)
	ids := slices.Clone(watched)
	for _, m := range d.masters(t) {
		if m != old {
			ids = append(ids, d.idsOn(t, m, 6)...)
		}
	}
	loaders := []*Client{
		fleetNode(t, d, timeout(replTimeout)), fleetNode(t, d, timeout(replTimeout)), fleetNode(t, d, timeout(replTimeout)),
	}
	waitUp(t, loaders...)
	key := cred("failover")
	for _, id := range ids {
		load(t, pub, id, key, newFetcher("before-failover"))
	}
	waitReplicated(t, d, old)

	run := startLoad(loaders, ids, key)
	waitFor(t, 10*time.Second, "shared hits under load", func() bool { return run.snapshot().bySource[Hit] > 50 })
	before := run.snapshot()
	fail(t, old)
	// From here the old master is gone (a kill) or asked to step down.
	killed := time.Now()
	run.watch(watched, killed)
	next := d.waitFailover(t, old)
	failedOver := time.Since(killed)
	waitFor(t, 30*time.Second, "a shared hit on the new master", func() bool { return !run.snapshot().firstHit.IsZero() })
	hitAgain := run.snapshot().firstHit.Sub(killed)
	waitUp(t, append(loaders, others...)...)
	allUp := time.Since(killed)

	// A DELETE after the failover reaches every node.
	receivers := append(slices.Clone(others), loaders...)
	recs := make([]*recorder, 0, len(receivers))
	for _, c := range receivers {
		recs = append(recs, subscribe(t, c))
	}
	id := watched[0]
	published := time.Now()
	queued := !pub.Publish(context.Background(), Event{IDs: []string{id}})
	// Where the DELETE landed, right away: on a failover the Sentinels
	// leave the old master a master for a while.
	var landed []string
	for _, r := range []*testenv.Redis{old, next} {
		if !r.Running() {
			continue
		}
		role, _ := r.Do(t, "ROLE")
		role, _, _ = strings.Cut(role, "\n")
		landed = append(landed, fmt.Sprintf("%s (%s): %v", r.Addr, role, strings.Contains(lastEntries(t, r, 5), `"`+id+`"`)))
	}
	for deadline := time.Now().Add(15 * time.Second); ; {
		var missing []string
		for i, r := range recs {
			if !r.has(hasID(id)) {
				st := receivers[i].Stats()
				missing = append(missing, fmt.Sprintf("node %d (up %v, confirmed %d ms ago, demotes %d, received %d)",
					i, st.Up, st.ConfirmedAgoMS, st.Invalidations.Demotes, st.Invalidations.Received))
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			ps := pub.Stats()
			t.Fatalf("%s: the DELETE published %v ago, after the failover (queued at first: %v; publisher outbox %d, sent %d, queued %d) did not reach %v; right after Publish it was on: %v; master now %s, with it: %v",
				how, time.Since(published).Round(time.Millisecond), queued, ps.OutboxLen, ps.Invalidations.Sent, ps.Invalidations.Queued,
				missing, landed, d.streamMaster(t).Addr, strings.Contains(lastEntries(t, d.streamMaster(t), 5), `"`+id+`"`))
		}
		time.Sleep(10 * time.Millisecond)
	}
	deleteTook := time.Since(published)
	after := run.stop()

	bound := DefaultLockWait + 4*replTimeout + time.Second
	t.Logf("%s, %s of the stream's master %s → %s: servers failed over after %v; first shared hit on the new master %v after; every node's stream reader up %v after; a DELETE then reached all %d nodes in %v (queued at first: %v; right after Publish on: %v)",
		d.name, how, old.Addr, next.Addr, failedOver.Round(time.Millisecond), hitAgain.Round(time.Millisecond),
		allUp.Round(time.Millisecond), len(recs), deleteTook.Round(time.Millisecond), queued, landed)
	t.Logf("%s, %s: %d Loads during the failover, by source %v (unavailable: %d of exports on the failed master, %d of the others); errors %d; slowest Load %v (bound %v); demotions %d",
		d.name, how, after.n-before.n, diffSources(after.bySource, before.bySource), after.unavailableWatched, after.unavailableOthers,
		len(after.errs), after.slowest.Round(time.Millisecond), bound, demotes(loaders))
	if len(after.errs) != 0 {
		t.Errorf("%d Loads failed during the failover, e.g. %s", len(after.errs), after.errs[0])
	}
	if after.slowest > bound {
		t.Errorf("a Load took %v during the failover, bound %v", after.slowest, bound)
	}
	d.heal(t, old)
}

// testMigrationUnderLoad moves slots that hold decisions (redis-cli
// reshard) and then the stream's slot (MigrateSlot) to another master while
// 3 nodes load and one publishes a DELETE every 20 ms: no Load fails, and
// every DELETE reaches every other node.
func testMigrationUnderLoad(t *testing.T, c *testenv.Cluster, d *deployment, pub *Client, others []*Client) {
	t.Helper()
	from := c.MasterFor(t, streamKey)
	var to *testenv.ClusterNode
	for _, m := range c.Masters(t) {
		if m != from {
			to = m
			break
		}
	}
	// The reshard takes from's lowest slots: decisions live there.
	const moved = 400
	var lowest []int
	for _, s := range c.State(t) {
		if s.Node == from {
			for _, r := range s.Slots {
				for slot := r.From; slot <= r.To; slot++ {
					lowest = append(lowest, slot)
				}
			}
		}
	}
	slices.Sort(lowest)
	var ids []string
	for i := 0; i < moved; i += 20 {
		ids = append(ids, testenv.HashTagForSlot(lowest[i]))
	}
	ids = append(ids, d.idsOn(t, to.Redis, 10)...)
	loaders := []*Client{
		fleetNode(t, d, timeout(replTimeout)), fleetNode(t, d, timeout(replTimeout)), fleetNode(t, d, timeout(replTimeout)),
	}
	waitUp(t, loaders...)
	recs := make([]*recorder, 0, 5)
	for _, o := range append(slices.Clone(others), loaders...) {
		recs = append(recs, subscribe(t, o))
	}
	key := cred("migration")
	for _, id := range ids {
		load(t, pub, id, key, newFetcher("before-migration"))
	}
	run := startLoad(loaders, ids, key)
	asks, moves := errorCount(t, c, "ASK"), errorCount(t, c, "MOVED")

	// Keys that share the stream's slot, so that its migration takes many
	// MIGRATE batches, during which the stream may already be on the
	// target (ASK redirects for the readers and the publisher).
	streamSlot := testenv.Slot(streamKey)
	fillerTag := testenv.HashTagForSlot(streamSlot)
	for batch := range 30 {
		args := []string{"MSET"}
		for i := range 100 {
			args = append(args, fmt.Sprintf("{%s}:filler:%d", fillerTag, batch*100+i), "x")
		}
		from.MustDo(t, args...)
	}

	var sent []string
	var queued int
	var pubTook []time.Duration
	stopPub := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			case <-time.After(20 * time.Millisecond):
			}
			id := fmt.Sprintf("mig_%d", i)
			start := time.Now()
			if !pub.Publish(context.Background(), Event{IDs: []string{id}}) {
				queued++
			}
			pubTook = append(pubTook, time.Since(start))
			sent = append(sent, id)
		}
	}()

	start := time.Now()
	c.Reshard(t, from, to, moved)
	reshardTook := time.Since(start)
	start = time.Now()
	c.MigrateSlot(t, streamSlot, to)
	migrateTook := time.Since(start)
	close(stopPub)
	<-pubDone
	waitFor(t, 15*time.Second, "the publisher's outbox to empty", func() bool { return pub.Stats().OutboxLen == 0 })
	for i, r := range recs {
		waitFor(t, 15*time.Second, fmt.Sprintf("every DELETE on node %d", i), func() bool {
			for _, id := range sent {
				if !r.has(hasID(id)) {
					return false
				}
			}
			return true
		})
	}
	res := run.stop()
	for _, id := range ids[:moved/20] {
		if got := c.MasterFor(t, DefaultPrefix+":d:{"+id+"}"); got != to {
			t.Fatalf("decision slot of %s is served by %s after the reshard, want %s", id, got.Addr, to.Addr)
		}
	}
	if got := c.MasterFor(t, streamKey); got != to {
		t.Fatalf("the stream is served by %s after MigrateSlot, want %s", got.Addr, to.Addr)
	}
	asks, moves = errorCount(t, c, "ASK")-asks, errorCount(t, c, "MOVED")-moves
	dups := 0
	for _, r := range recs {
		dups += len(r.all()) - len(sent)
	}
	t.Logf("cluster, slot migration under load: reshard of %d slots %v, stream slot %d (with 3,000 other keys) migrated in %v; %d DELETEs published (%d queued at first; Publish p50 %v, max %v), all delivered to all %d nodes (%d duplicates); %d Loads, by source %v, errors %d, slowest %v; redirects: %d ASK, %d MOVED",
		moved, reshardTook.Round(time.Millisecond), streamSlot, migrateTook.Round(time.Millisecond), len(sent), queued,
		percentile(pubTook, 0.5).Round(time.Microsecond), percentile(pubTook, 1).Round(time.Millisecond), len(recs), dups,
		res.n, res.bySource, len(res.errs), res.slowest.Round(time.Millisecond), asks, moves)
	if len(res.errs) != 0 {
		t.Errorf("%d Loads failed during the migration, e.g. %s", len(res.errs), res.errs[0])
	}
	if bound := DefaultLockWait + 4*replTimeout + time.Second; res.slowest > bound {
		t.Errorf("a Load took %v during the migration, bound %v", res.slowest, bound)
	}
	if n := c.CrossSlotErrors(t); n != 0 {
		t.Errorf("%d CROSSSLOT errors during the migration", n)
	}
}

// testPublishHalfMigrated publishes while the stream's slot is being
// migrated and the stream already moved to the importing master, so that
// the XADD is answered with an ASK redirect: the event is delivered, and
// the node does not crash (rueidis v1.0.79 panics on an ASK redirect of the
// first command of a pipeline that also holds a blocking command, WAIT).
func testPublishHalfMigrated(t *testing.T, c *testenv.Cluster, pub, other *Client) {
	t.Helper()
	rec := subscribe(t, other)
	// Not asserted: the first Publish after the previous subtest's replica
	// came back may be reported queued (and sent again), when the last look
	// at the master predates the replica.
	pub.Publish(context.Background(), Event{IDs: []string{"half_before"}})
	waitFor(t, 10*time.Second, "the first event", func() bool { return rec.has(hasID("half_before")) })
	from := c.MasterFor(t, streamKey)
	var to *testenv.ClusterNode
	for _, m := range c.Masters(t) {
		if m != from {
			to = m
			break
		}
	}
	slot := strconv.Itoa(testenv.Slot(streamKey))
	asksBefore := errorCount(t, c, "ASK")
	to.MustDo(t, "CLUSTER", "SETSLOT", slot, "IMPORTING", from.ID)
	from.MustDo(t, "CLUSTER", "SETSLOT", slot, "MIGRATING", to.ID)
	host, port, _ := strings.Cut(to.Addr, ":")
	from.MustDo(t, "MIGRATE", host, port, "", "0", "5000", "REPLACE", "KEYS", streamKey)

	start := time.Now()
	published := pub.Publish(context.Background(), Event{IDs: []string{"half_during"}})
	took := time.Since(start)
	waitFor(t, 10*time.Second, "the event published while the slot migrates", func() bool { return rec.has(hasID("half_during")) })
	asks := errorCount(t, c, "ASK") - asksBefore
	for _, n := range []*testenv.ClusterNode{to, from} {
		n.MustDo(t, "CLUSTER", "SETSLOT", slot, "NODE", to.ID)
	}
	c.WaitHealthy(t)
	t.Logf("Publish with the stream half-migrated: published=%v in %v; %d ASK redirects", published, took.Round(time.Millisecond), asks)
	if asks == 0 {
		t.Error("no ASK redirect: the test did not exercise a half-migrated slot")
	}
}

// tagForSlot returns an export id that starts with prefix and whose keys
// land in slot.
func tagForSlot(slot int, prefix string) string {
	for i := 0; ; i++ {
		if id := prefix + strconv.Itoa(i); testenv.Slot(id) == slot {
			return id
		}
	}
}

// errorCount sums the error replies of one kind over the cluster's nodes.
func errorCount(t *testing.T, c *testenv.Cluster, code string) int64 {
	t.Helper()
	var n int64
	for _, node := range c.Nodes() {
		n += node.ErrorCount(t, code)
	}
	return n
}

// testUnreplicatedDelete: the stream's master acknowledges a DELETE that no
// replica holds (the replica's link cut and the replica frozen), then dies
// and the replica takes over. The DELETE must not be lost: Publish reports
// it queued, the publisher's outbox sends it again once a master answers,
// and every node refuses the decision made before it: one connected
// throughout, one started after the failover, and one (another process)
// stopped during the whole episode and resumed after it.
func testUnreplicatedDelete(t *testing.T, d *deployment, a, b *Client) {
	t.Helper()
	m := d.streamMaster(t)
	r := d.replicaOf(t, m)
	// The export's keys live with the stream, so its new generation is lost
	// along with the event if the event is.
	id := d.idsOn(t, m, 1)[0]
	key := cred("unreplicated")
	if _, src := load(t, a, id, key, newFetcher("before-delete")); src != Stored {
		t.Fatalf("store: %v", src)
	}
	away := startChildNode(t, d.child)
	if got := away.load(id, "unreplicated"); got.Source != Hit.String() || got.Payload != "before-delete" {
		t.Fatalf("node in another process before the DELETE: %+v, want a shared hit", got)
	}
	rb := subscribe(t, b)
	waitReplicated(t, d, m)

	r.Pause()
	if n := m.ClientKill(t, "TYPE", "replica"); n != 1 {
		t.Fatalf("CLIENT KILL TYPE replica closed %d links, want 1", n)
	}
	away.pause()
	start := time.Now()
	published := a.Publish(context.Background(), Event{IDs: []string{id}})
	publishTook := time.Since(start)
	outbox := a.Stats().OutboxLen
	waitFor(t, 5*time.Second, "the DELETE on the connected node", func() bool { return rb.has(hasID(id)) })
	onOldMaster := strings.Contains(m.MustDo(t, "XRANGE", streamKey, "-", "+"), `"`+id+`"`)

	killed := time.Now()
	m.Kill()
	r.Resume()
	next := d.waitFailover(t, m)
	failedOver := time.Since(killed)
	outboxOK := true
	deadline := time.Now().Add(20 * time.Second)
	for a.Stats().OutboxLen != 0 {
		if time.Now().After(deadline) {
			outboxOK = false
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	resent := time.Since(killed)
	onNewMaster := strings.Contains(next.MustDo(t, "XRANGE", streamKey, "-", "+"), `"`+id+`"`)

	// What the failover (and the outbox) left in Redis, put back before each
	// node's look, so that each looks first: the node started now, the one
	// stopped throughout (resumed), and the one connected throughout. Each
	// looks once its stream reader confirmed that it is current (until then
	// the staleness bound alone refuses the old decision).
	dk, gk := decisionKey(a, id, key), DefaultPrefix+":g:{"+id+"}"
	left := [2]string{next.MustDo(t, "GET", dk), next.MustDo(t, "GET", gk)}
	serveLeft := func() {
		for i, k := range []string{dk, gk} {
			if left[i] == "(nil)" {
				next.MustDo(t, "DEL", k)
			} else {
				next.MustDo(t, "SET", k, left[i], "PX", "60000")
			}
		}
	}
	late := fleetNode(t, d)
	waitConfirmed(t, late)
	serveLeft()
	lateGot := loadQ(t, late, query(id, key), newFetcher("after-delete"))

	resumed := time.Now()
	away.resume()
	awayReceived := "never"
	waitFor(t, 30*time.Second, "the resumed node's stream reader to confirm", func() bool {
		st := away.stats()
		return st.Up && st.ConfirmedAgoMS >= 0 && st.ConfirmedAgoMS < 200
	})
	awayUp := time.Since(resumed)
	if away.has(hasID(id)) {
		awayReceived = time.Since(resumed).Round(time.Millisecond).String()
	}
	serveLeft()
	awayGot := away.load(id, "unreplicated")

	waitConfirmed(t, b)
	serveLeft()
	bGot := loadQ(t, b, query(id, key), newFetcher("after-delete"))

	t.Logf("%s, acknowledged-but-unreplicated DELETE: Publish took %v and reported published=%v (outbox %d); on the old master: %v; the connected node got it before the kill; failover %v; outbox empty %v after the kill (within 20s: %v); on the new master: %v",
		d.name, publishTook.Round(time.Millisecond), published, outbox, onOldMaster, failedOver.Round(time.Millisecond), resent.Round(time.Millisecond), outboxOK, onNewMaster)
	t.Logf("%s, after the failover: node started after: %v %q; node stopped throughout, resumed: confirmed after %v, had the event by then: %s, then %s %q; node connected throughout: %v %q",
		d.name, lateGot.Source, lateGot.Payload, awayUp.Round(time.Millisecond), awayReceived, awayGot.Source, awayGot.Payload, bGot.Source, bGot.Payload)
	if published {
		t.Errorf("Publish reported the DELETE published although no replica acknowledged it (the master's replica link was down): it must stay queued")
	}
	if !onNewMaster {
		t.Errorf("the DELETE is not in the new master's stream: the acknowledged invalidation was lost in the failover")
	}
	if string(bGot.Payload) == "before-delete" {
		t.Errorf("the connected node took the decision made before the DELETE: %v", bGot.Source)
	}
	if string(lateGot.Payload) == "before-delete" {
		t.Errorf("a node started after the failover took the decision made before the DELETE: %v", lateGot.Source)
	}
	if awayReceived == "never" {
		t.Errorf("the node stopped during the failover had not received the DELETE when its reader confirmed after resuming")
	}
	if awayGot.Payload == "before-delete" {
		t.Errorf("the node stopped during the failover took the decision made before the DELETE after resuming: %v", awayGot.Source)
	}
	d.heal(t, m)
}

// waitReplicated waits until a replica of m holds everything m has
// written: a write of its own, then WAIT 1 on the same connection (which
// covers every earlier write of m).
func waitReplicated(t *testing.T, d *deployment, m *testenv.Redis) {
	t.Helper()
	probe := "{" + d.idsOn(t, m, 1)[0] + "}:replication-probe"
	waitFor(t, 15*time.Second, "a replica to acknowledge "+m.Addr+"'s writes", func() bool {
		return m.MustDoMulti(t, []string{"SET", probe, "1"}, []string{"WAIT", "1", "1000"})[1] == "1"
	})
}

// settleRueidis waits, at most 7 s, until no goroutine of a closed rueidis
// client is left: rueidis (v1.0.79) does not stop on Close a delayed
// topology refresh (started after an error or a MOVED, it sleeps up to a
// second) nor the closing of connections a refresh dropped (5 s later), so
// the package's goroutine leak check could see them.
func settleRueidis() {
	buf := make([]byte, 16<<20)
	for deadline := time.Now().Add(7 * time.Second); time.Now().Before(deadline); {
		n := runtime.Stack(buf, true)
		if !bytes.Contains(buf[:n], []byte("rueidis.(*call).DelayDo")) &&
			!bytes.Contains(buf[:n], []byte("rueidis.(*clusterClient)._refresh.func")) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitConfirmed waits until c's stream reader has confirmed, within the
// last 200 ms, that it applied every event.
func waitConfirmed(t *testing.T, c *Client) {
	t.Helper()
	waitFor(t, 15*time.Second, "the stream reader to confirm", func() bool {
		st := c.Stats()
		return st.Up && st.ConfirmedAgoMS >= 0 && st.ConfirmedAgoMS < 200
	})
}

// lastEntries is the stream's last n entries on r, for messages.
func lastEntries(t *testing.T, r *testenv.Redis, n int) string {
	t.Helper()
	out, _ := r.Do(t, "XREVRANGE", streamKey, "+", "-", "COUNT", strconv.Itoa(n))
	return out
}

// countKeys counts the keys of one server that match pattern (SCAN).
func countKeys(t *testing.T, r *testenv.Redis, pattern string) int {
	t.Helper()
	n, cursor := 0, "0"
	for {
		lines := strings.Split(r.MustDo(t, "SCAN", cursor, "MATCH", pattern, "COUNT", "1000"), "\n")
		cursor = lines[0]
		for _, k := range lines[1:] {
			if k != "" {
				n++
			}
		}
		if cursor == "0" {
			return n
		}
	}
}

func arrivalOf(r *recorder, pred func(Event) bool) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, ev := range r.events {
		if pred(ev) {
			return r.at[i]
		}
	}
	return time.Time{}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func demotes(cs []*Client) uint64 {
	var n uint64
	for _, c := range cs {
		n += c.Stats().Invalidations.Demotes
	}
	return n
}

func diffSources(after, before map[Source]int) map[Source]int {
	out := map[Source]int{}
	for s, n := range after {
		if d := n - before[s]; d != 0 {
			out[s] = d
		}
	}
	return out
}

// loadRun is a load of Loads on several nodes, one goroutine per node,
// each going round the ids with a 2 ms pause.
type loadRun struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	st        loadStats
	watched   map[string]bool
	watchFrom time.Time
}

type loadStats struct {
	n        int
	bySource map[Source]int
	errs     []string
	slowest  time.Duration
	// firstHit is when a Load of a watched id first answered with a shared
	// hit after the watch started.
	firstHit time.Time
	// unavailable counts, after the watch started, Unavailable Loads of
	// watched ids and of the others.
	unavailableWatched, unavailableOthers int
}

func startLoad(nodes []*Client, ids []string, key [32]byte) *loadRun {
	l := &loadRun{done: make(chan struct{}), st: loadStats{bySource: map[Source]int{}}}
	f := newFetcher("under-load")
	for k, c := range nodes {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := k; ; i++ {
				select {
				case <-l.done:
					return
				case <-time.After(2 * time.Millisecond):
				}
				id := ids[i%len(ids)]
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				start := time.Now()
				d, err := c.Load(ctx, query(id, key), f.fetch)
				took := time.Since(start)
				cancel()
				l.mu.Lock()
				l.st.n++
				l.st.bySource[d.Source]++
				l.st.slowest = max(l.st.slowest, took)
				if err != nil {
					l.st.errs = append(l.st.errs, fmt.Sprintf("%s after %v: %v", id, took, err))
				}
				if l.watched != nil && start.After(l.watchFrom) {
					switch {
					case d.Source == Hit && l.watched[id] && l.st.firstHit.IsZero():
						l.st.firstHit = time.Now()
					case d.Source == Unavailable && l.watched[id]:
						l.st.unavailableWatched++
					case d.Source == Unavailable:
						l.st.unavailableOthers++
					}
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// watch records the first shared hit of one of ids in a Load started after
// from.
func (l *loadRun) watch(ids []string, from time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.watched = map[string]bool{}
	for _, id := range ids {
		l.watched[id] = true
	}
	l.watchFrom, l.st.firstHit = from, time.Time{}
}

func (l *loadRun) snapshot() loadStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.st
	s.bySource = map[Source]int{}
	for k, v := range l.st.bySource {
		s.bySource[k] = v
	}
	s.errs = slices.Clone(l.st.errs)
	return s
}

func (l *loadRun) stop() loadStats {
	close(l.done)
	l.wg.Wait()
	return l.snapshot()
}

// A node in another process, which the test can stop (SIGSTOP) and resume
// as a whole: its connections stay open and its stream reader reads nothing
// meanwhile, as a node frozen by a VM pause or a long GC would.
//
// The test binary runs as such a node when childNodeEnv holds its
// childSpec (JSON): it answers lines on stdin ("load <id> <credential>",
// "stats") with one JSON line each on stdout, and prints every event its
// subscriber gets. It exits when stdin closes.
const childNodeEnv = "FLEET_TEST_CHILD_NODE"

type childSpec struct {
	Addrs              []string
	Sentinel           string
	Username, Password string
}

type childLoad struct {
	Source, Payload, Err string
}

type childLine struct {
	Kind  string     `json:"kind"`
	Load  *childLoad `json:"load,omitempty"`
	Stats *Stats     `json:"stats,omitempty"`
	Event *Event     `json:"event,omitempty"`
}

func init() {
	if spec := os.Getenv(childNodeEnv); spec != "" {
		os.Exit(runChildNode(spec, os.Stdin, os.Stdout))
	}
}

func runChildNode(spec string, in io.Reader, out io.Writer) int {
	var s childSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "child node:", err)
		return 2
	}
	// Its log goes to stderr, which the test shows when it fails.
	logCfg := zap.NewDevelopmentConfig()
	logCfg.OutputPaths = []string{"stderr"}
	log, err := logCfg.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child node:", err)
		return 2
	}
	c, err := New(Config{Addrs: s.Addrs, Sentinel: s.Sentinel, Username: s.Username, Password: s.Password,
		Secret: testSecret, Timeout: replTimeout, MaxStaleness: replStaleness, ClockSkew: time.Millisecond, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child node:", err)
		return 2
	}
	defer c.Close()
	var mu sync.Mutex
	w := bufio.NewWriter(out)
	emit := func(l childLine) {
		b, _ := json.Marshal(l)
		mu.Lock()
		defer mu.Unlock()
		w.Write(append(b, '\n'))
		w.Flush()
	}
	c.Subscribe(func(ev Event) { emit(childLine{Kind: "event", Event: &ev}) })
	emit(childLine{Kind: "ready"})
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "load":
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			d, err := c.Load(ctx, query(f[1], cred(f[2])), newFetcher("fetched-by-child").fetch)
			cancel()
			l := childLoad{Source: d.Source.String(), Payload: string(d.Payload)}
			if err != nil {
				l.Err = err.Error()
			}
			emit(childLine{Kind: "load", Load: &l})
		case len(f) == 1 && f[0] == "stats":
			st := c.Stats()
			emit(childLine{Kind: "stats", Stats: &st})
		}
	}
	return 0
}

// childNode is the test's side of a node in another process.
type childNode struct {
	t       *testing.T
	cmd     *exec.Cmd
	in      io.WriteCloser
	replies chan childLine
	stderr  *strings.Builder
	exited  chan struct{}

	mu     sync.Mutex
	events []Event
}

// startChildNode starts a node in another process and waits until its
// stream reader is up. It is stopped when the test ends.
func startChildNode(t *testing.T, spec childSpec) *childNode {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childNodeEnv+"="+string(b))
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n := &childNode{t: t, cmd: cmd, in: in, replies: make(chan childLine, 16), stderr: &strings.Builder{}, exited: make(chan struct{})}
	cmd.Stderr = &lockedWriter{w: n.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start a node in another process: %v", err)
	}
	go func() {
		defer close(n.exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var l childLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				continue
			}
			if l.Kind == "event" && l.Event != nil {
				n.mu.Lock()
				n.events = append(n.events, *l.Event)
				n.mu.Unlock()
				continue
			}
			n.replies <- l
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = in.Close() // the node closes its client and exits
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-n.exited
		}
		if t.Failed() {
			t.Logf("node in another process, stderr:\n%s", n.stderr)
		}
	})
	if l := n.reply(); l.Kind != "ready" {
		t.Fatalf("node in another process: first line %+v", l)
	}
	waitFor(t, 10*time.Second, "the other process's node to confirm", func() bool {
		st := n.stats()
		return st.Up && st.ConfirmedAgoMS >= 0 && st.ConfirmedAgoMS < 200
	})
	return n
}

func (n *childNode) reply() childLine {
	n.t.Helper()
	select {
	case l := <-n.replies:
		return l
	case <-n.exited:
		n.t.Fatalf("the node in another process exited; stderr:\n%s", n.stderr)
	case <-time.After(20 * time.Second):
		n.t.Fatalf("the node in another process did not answer within 20s")
	}
	return childLine{}
}

func (n *childNode) send(line string) childLine {
	n.t.Helper()
	if _, err := io.WriteString(n.in, line+"\n"); err != nil {
		n.t.Fatalf("write to the node in another process: %v", err)
	}
	return n.reply()
}

func (n *childNode) load(id, credential string) childLoad {
	n.t.Helper()
	l := n.send("load " + id + " " + credential)
	if l.Load == nil {
		n.t.Fatalf("load: unexpected reply %+v", l)
	}
	if l.Load.Err != "" {
		n.t.Fatalf("Load(%s) in the other process failed: %s", id, l.Load.Err)
	}
	return *l.Load
}

func (n *childNode) stats() Stats {
	n.t.Helper()
	l := n.send("stats")
	if l.Stats == nil {
		n.t.Fatalf("stats: unexpected reply %+v", l)
	}
	return *l.Stats
}

func (n *childNode) has(pred func(Event) bool) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.ContainsFunc(n.events, pred)
}

// pause stops the whole process (SIGSTOP); resume continues it.
func (n *childNode) pause() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		n.t.Fatalf("SIGSTOP: %v", err)
	}
}

func (n *childNode) resume() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		n.t.Fatalf("SIGCONT: %v", err)
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
