package testenv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// redisCLIMissing is the one line a test fails with when redis-cli (which
// creates and reshards clusters) is not installed.
const redisCLIMissing = "redis-cli not found: install Debian's redis-tools package (apt-get install redis-tools) or run ./test.sh"

// ClusterSlots is the number of hash slots of a Redis Cluster.
const ClusterSlots = 16384

// replicatedWait bounds every wait for a cluster or a Sentinel set to settle:
// failovers take seconds here, so only a hang reaches it.
const replicatedWait = 30 * time.Second

// ClusterOption changes how StartCluster builds the cluster.
type ClusterOption func(*clusterConfig)

type clusterConfig struct {
	masters     int
	nodeTimeout time.Duration
	redis       redisConfig
}

// ClusterTLS serves TLS only on every node, the cluster bus and replication
// included (tls-cluster, tls-replication), with one test CA for all of them.
// Cluster.TLSConfig and Cluster.CAFile give what a client needs.
func ClusterTLS() ClusterOption { return func(c *clusterConfig) { c.redis.tls = true } }

// ClusterUser adds an ACL user on every node, as RedisUser does for one
// server. The default user stays enabled without a password for the test's
// admin connections and for redis-cli.
func ClusterUser(name, password, rules string) ClusterOption {
	return func(c *clusterConfig) { c.redis.users = append(c.redis.users, redisUser{name, password, rules}) }
}

// ClusterMasters sets the number of masters (default 3, the fewest a cluster
// accepts); each gets one replica.
func ClusterMasters(n int) ClusterOption { return func(c *clusterConfig) { c.masters = n } }

// ClusterNodeTimeout sets cluster-node-timeout (default 1s): how long a node
// may be unreachable before it is flagged failing. A replica takes over a
// failed master about one to two timeouts after the master stops answering.
func ClusterNodeTimeout(d time.Duration) ClusterOption {
	return func(c *clusterConfig) { c.nodeTimeout = d }
}

// Cluster is a Redis Cluster started for one test: 3 masters with one
// replica each (by default), on 127.0.0.1 and free ports, without
// persistence. Kill, Restart, Pause, Resume, ClientKill and Do work on each
// node (ClusterNode embeds Redis).
type Cluster struct {
	cli   string
	cfg   clusterConfig
	certs *redisCerts
	nodes []*ClusterNode

	mu     sync.Mutex
	owners []string // slot → master node ID, as of the last healthy check
}

// ClusterNode is one redis-server of a Cluster.
type ClusterNode struct {
	*Redis
	// ID is the node's cluster ID (CLUSTER MYID); it survives Restart.
	ID string
}

// SlotRange is an inclusive range of hash slots.
type SlotRange struct{ From, To int }

// ClusterNodeState is a node as it describes itself in CLUSTER NODES.
type ClusterNodeState struct {
	Node   *ClusterNode
	Master bool
	// MasterID is, for a replica, the ID of the master it follows.
	MasterID string
	// Slots are the slots a master serves.
	Slots []SlotRange
}

// StartCluster starts the nodes in cluster mode (a nodes.conf each in its
// own temporary directory, cluster-node-timeout as ClusterNodeTimeout says,
// cluster-replica-validity-factor 0 so that a replica that was cut off for
// a while may still take over), joins them with `redis-cli --cluster create
// … --cluster-replicas 1`, and waits until every node reports
// cluster_state:ok, every slot is served and every replica is in sync. The
// nodes are stopped when the test ends. A missing redis-server or redis-cli
// fails the test with one line naming the package to install.
func StartCluster(t testing.TB, opts ...ClusterOption) *Cluster {
	t.Helper()
	cfg := clusterConfig{masters: 3, nodeTimeout: time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.masters < 3 {
		t.Fatalf("testenv: a cluster needs at least 3 masters, not %d", cfg.masters)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal(redisCLIMissing)
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal(redisMissing)
	}
	c := &Cluster{cli: cli, cfg: cfg}
	if cfg.redis.tls {
		dir := t.TempDir()
		c.certs = &redisCerts{dir: dir, client: writeRedisCerts(t, dir)}
	}
	for range 2 * cfg.masters {
		c.nodes = append(c.nodes, c.startNode(t))
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Seeds()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	c.redisCLI(t, args...)
	c.WaitHealthy(t)
	return c
}

func (c *Cluster) startNode(t testing.TB) *ClusterNode {
	t.Helper()
	rc := c.cfg.redis
	rc.label = "redis-server (cluster)"
	rc.certs = c.certs
	// The bus port is picked once per client port, so that a restart keeps
	// the address the other nodes know.
	var lastPort, busPort int
	rc.extraArgs = func(port int) []string {
		if port != lastPort {
			lastPort = port
			if p, err := freePort(); err == nil {
				busPort = p
			} else {
				busPort = 0 // default: port + 10000
			}
		}
		args := []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(c.cfg.nodeTimeout.Milliseconds(), 10),
			"--cluster-replica-validity-factor", "0",
		}
		if busPort != 0 {
			args = append(args, "--cluster-port", strconv.Itoa(busPort))
		}
		if rc.tls {
			args = append(args, "--tls-cluster", "yes", "--tls-replication", "yes")
		}
		return args
	}
	n := &ClusterNode{Redis: startRedis(t, rc)}
	n.ID = n.MustDo(t, "CLUSTER", "MYID")
	return n
}

// redisCLI runs redis-cli with args (TLS options added) and returns its
// output; a failure ends the test with the output.
func (c *Cluster) redisCLI(t testing.TB, args ...string) string {
	t.Helper()
	if c.certs != nil {
		args = append([]string{"--tls", "--cacert", c.CAFile()}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*replicatedWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.cli, args...)
	// Settings of the developer's own redis-cli (a password, a TLS
	// default) must not change the test's commands.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REDISCLI_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 8<<10 {
			out = out[len(out)-8<<10:]
		}
		t.Fatalf("testenv: redis-cli %s: %v; output (tail):\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Seeds returns the addresses (host:port) of every node, in start order: the
// seeds for a cluster client.
func (c *Cluster) Seeds() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// Nodes returns every node, in start order, running or not.
func (c *Cluster) Nodes() []*ClusterNode { return slices.Clone(c.nodes) }

// TLSConfig returns a client TLS configuration that trusts the test CA, or
// nil without ClusterTLS.
func (c *Cluster) TLSConfig() *tls.Config {
	if c.certs == nil {
		return nil
	}
	return c.certs.client.Clone()
}

// CAFile is the path of the test CA's PEM file (ClusterTLS only).
func (c *Cluster) CAFile() string {
	if c.certs == nil {
		return ""
	}
	return filepath.Join(c.certs.dir, "ca.pem")
}

// State returns every running, unpaused node as it describes itself: its
// role, its master (replicas) and its slots (masters).
func (c *Cluster) State(t testing.TB) []ClusterNodeState {
	t.Helper()
	views, err := c.views()
	if err != nil {
		t.Fatalf("testenv: cluster state: %v", err)
	}
	states := make([]ClusterNodeState, 0, len(views))
	for _, v := range views {
		states = append(states, ClusterNodeState{
			Node:     v.node,
			Master:   v.self.master,
			MasterID: v.self.masterID,
			Slots:    v.self.slots,
		})
	}
	return states
}

// Masters returns the nodes that serve slots, as the running nodes see the
// cluster (the highest configuration epoch wins), in slot order. A master
// that was killed or paused is listed until a replica replaces it.
func (c *Cluster) Masters(t testing.TB) []*ClusterNode {
	t.Helper()
	owners := c.currentOwners(t)
	var masters []*ClusterNode
	for _, id := range owners {
		if n := c.byID(id); n != nil && !slices.Contains(masters, n) {
			masters = append(masters, n)
		}
	}
	return masters
}

// MasterFor returns the master that serves key's slot (see Slot), as the
// running nodes see the cluster. It fails the test if no node serves it.
func (c *Cluster) MasterFor(t testing.TB, key string) *ClusterNode {
	t.Helper()
	return c.MasterForSlot(t, Slot(key))
}

// MasterForSlot returns the master that serves slot, as MasterFor.
func (c *Cluster) MasterForSlot(t testing.TB, slot int) *ClusterNode {
	t.Helper()
	if slot < 0 || slot >= ClusterSlots {
		t.Fatalf("testenv: no slot %d", slot)
	}
	n := c.byID(c.currentOwners(t)[slot])
	if n == nil {
		t.Fatalf("testenv: no node serves slot %d", slot)
	}
	return n
}

// ReplicaOf returns a running, unpaused node that replicates master, or nil
// when there is none (e.g. after its replica took over).
func (c *Cluster) ReplicaOf(t testing.TB, master *ClusterNode) *ClusterNode {
	t.Helper()
	for _, s := range c.State(t) {
		if !s.Master && s.MasterID == master.ID {
			return s.Node
		}
	}
	return nil
}

// WaitHealthy waits until every running, unpaused node reports
// cluster_state:ok and agrees on who serves each of the 16384 slots, each
// slot is served by a running, unpaused master, and each running replica's
// link to its master is up. It fails the test after 30s.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	c.waitFor(t, "cluster healthy", func(owners []string) bool { return true })
}

// WaitFailover waits until the slots that old served are served by another
// node (its replica, promoted) and the cluster is healthy again (see
// WaitHealthy), and returns the new master. Call it after Kill or Pause of
// a master. It fails the test after 30s, or if old was not a master when
// the cluster was last seen healthy.
func (c *Cluster) WaitFailover(t testing.TB, old *ClusterNode) *ClusterNode {
	t.Helper()
	c.mu.Lock()
	first := slices.Index(c.owners, old.ID)
	c.mu.Unlock()
	if first < 0 {
		t.Fatalf("testenv: WaitFailover: %s (%s) served no slot when the cluster was last healthy", old.Addr, old.ID)
	}
	var next *ClusterNode
	c.waitFor(t, "failover of "+old.Addr, func(owners []string) bool {
		if owners[first] == old.ID {
			return false
		}
		next = c.byID(owners[first])
		return true
	})
	return next
}

// waitFor polls until the cluster is healthy and done says so, then keeps
// the slot owners for WaitFailover.
func (c *Cluster) waitFor(t testing.TB, what string, done func(owners []string) bool) {
	t.Helper()
	waitUntil(t, what, func() string {
		owners, problem := c.check()
		if problem != "" {
			return problem
		}
		if !done(owners) {
			return "not yet"
		}
		c.mu.Lock()
		c.owners = owners
		c.mu.Unlock()
		return ""
	})
}

// check says what keeps the cluster from being healthy ("" when it is),
// with the slot owners the running nodes agree on.
func (c *Cluster) check() (owners []string, problem string) {
	views, err := c.views()
	if err != nil {
		return nil, err.Error()
	}
	if len(views) == 0 {
		return nil, "no node is running"
	}
	owners = ownersOf(views)
	for slot, id := range owners {
		n := c.byID(id)
		switch {
		case id == "":
			return nil, fmt.Sprintf("slot %d is not assigned", slot)
		case n == nil:
			return nil, fmt.Sprintf("slot %d is served by unknown node %s", slot, id)
		case !n.Running() || n.Paused():
			return nil, fmt.Sprintf("slot %d is served by %s, which is killed or paused", slot, n.Addr)
		}
	}
	for _, v := range views {
		// The owners' own views are among these, so each owner claims its
		// slots itself.
		for slot, id := range v.slotMap() {
			if id != owners[slot] {
				return nil, fmt.Sprintf("%s sees slot %d served by %q, not %q", v.node.Addr, slot, id, owners[slot])
			}
		}
		info, err := v.node.doTimeout(2*time.Second, "CLUSTER", "INFO")
		if err != nil {
			return nil, fmt.Sprintf("CLUSTER INFO on %s: %v", v.node.Addr, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return nil, v.node.Addr + " does not report cluster_state:ok"
		}
		if !v.self.master {
			repl, err := v.node.doTimeout(2*time.Second, "INFO", "replication")
			if err != nil {
				return nil, fmt.Sprintf("INFO replication on %s: %v", v.node.Addr, err)
			}
			if !strings.Contains(repl, "master_link_status:up") {
				return nil, "replica " + v.node.Addr + " is not in sync with its master"
			}
		}
	}
	return owners, ""
}

// currentOwners maps each slot to its master's ID as the running nodes see
// it now, healthy or not.
func (c *Cluster) currentOwners(t testing.TB) []string {
	t.Helper()
	views, err := c.views()
	if err != nil {
		t.Fatalf("testenv: cluster state: %v", err)
	}
	if len(views) == 0 {
		t.Fatalf("testenv: cluster state: no node is running")
	}
	return ownersOf(views)
}

func (c *Cluster) byID(id string) *ClusterNode {
	for _, n := range c.nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// clusterView is CLUSTER NODES as one node answers it.
type clusterView struct {
	node  *ClusterNode
	self  clusterLine
	lines []clusterLine
}

// clusterLine is one line of CLUSTER NODES.
type clusterLine struct {
	id       string
	master   bool
	masterID string
	epoch    int64
	slots    []SlotRange
}

// views asks every running, unpaused node for CLUSTER NODES.
func (c *Cluster) views() ([]clusterView, error) {
	var views []clusterView
	for _, n := range c.nodes {
		if !n.Running() || n.Paused() {
			continue
		}
		s, err := n.doTimeout(2*time.Second, "CLUSTER", "NODES")
		if err != nil {
			return nil, fmt.Errorf("CLUSTER NODES on %s: %w", n.Addr, err)
		}
		v := clusterView{node: n}
		for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
			l, myself, err := parseClusterLine(line)
			if err != nil {
				return nil, fmt.Errorf("CLUSTER NODES on %s: %w", n.Addr, err)
			}
			if myself {
				v.self = l
			}
			v.lines = append(v.lines, l)
		}
		if v.self.id != n.ID {
			return nil, fmt.Errorf("CLUSTER NODES on %s: no line for itself (%s)", n.Addr, n.ID)
		}
		views = append(views, v)
	}
	return views, nil
}

// slotMap maps each slot to the ID of the master that serves it in this
// view.
func (v clusterView) slotMap() []string {
	m := make([]string, ClusterSlots)
	for _, l := range v.lines {
		if !l.master {
			continue
		}
		for _, r := range l.slots {
			for s := r.From; s <= r.To; s++ {
				m[s] = l.id
			}
		}
	}
	return m
}

// ownersOf resolves the views as Redis does: for each slot, the claim with
// the highest configuration epoch wins.
func ownersOf(views []clusterView) []string {
	owners := make([]string, ClusterSlots)
	epochs := make([]int64, ClusterSlots)
	for _, v := range views {
		for _, l := range v.lines {
			if !l.master {
				continue
			}
			for _, r := range l.slots {
				for s := r.From; s <= r.To; s++ {
					if owners[s] == "" || l.epoch > epochs[s] {
						owners[s], epochs[s] = l.id, l.epoch
					}
				}
			}
		}
	}
	return owners
}

// parseClusterLine parses "<id> <ip:port@cport> <flags> <master> <ping-sent>
// <pong-recv> <config-epoch> <link-state> <slot> <slot> …", where a slot is
// "n" or "from-to"; "[n->-id]" and "[n-<-id]" (a migration in progress) are
// skipped.
func parseClusterLine(line string) (l clusterLine, myself bool, err error) {
	f := strings.Fields(line)
	if len(f) < 8 {
		return l, false, fmt.Errorf("short line %q", line)
	}
	l.id = f[0]
	for flag := range strings.SplitSeq(f[2], ",") {
		switch flag {
		case "myself":
			myself = true
		case "master":
			l.master = true
		}
	}
	if f[3] != "-" {
		l.masterID = f[3]
	}
	if l.epoch, err = strconv.ParseInt(f[6], 10, 64); err != nil {
		return l, false, fmt.Errorf("epoch in %q: %w", line, err)
	}
	for _, s := range f[8:] {
		if strings.HasPrefix(s, "[") {
			continue
		}
		from, to, isRange := strings.Cut(s, "-")
		if !isRange {
			to = from
		}
		a, err1 := strconv.Atoi(from)
		b, err2 := strconv.Atoi(to)
		if err := errors.Join(err1, err2); err != nil || a > b || b >= ClusterSlots {
			return l, false, fmt.Errorf("slot %q in %q", s, line)
		}
		l.slots = append(l.slots, SlotRange{a, b})
	}
	return l, myself, nil
}

// Reshard moves n slots from one master to another with `redis-cli --cluster
// reshard … --cluster-yes`, keys included (MIGRATE), as an operator would,
// then waits until the cluster is healthy. redis-cli takes from's lowest
// slots first. Every node must be running: redis-cli checks the whole
// cluster first.
func (c *Cluster) Reshard(t testing.TB, from, to *ClusterNode, n int) {
	t.Helper()
	c.WaitHealthy(t) // redis-cli refuses to work on a cluster whose nodes disagree
	c.redisCLI(t, "--cluster", "reshard", from.Addr,
		"--cluster-from", from.ID, "--cluster-to", to.ID,
		"--cluster-slots", strconv.Itoa(n), "--cluster-yes")
	c.WaitHealthy(t)
}

// MigrateSlot moves one slot and its keys to master to by hand, the way
// redis-cli does (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE in batches,
// CLUSTER SETSLOT NODE on both ends and then on every other master), and
// waits until the cluster is healthy. Clients that ask for a key of the slot
// meanwhile get ASK redirects.
func (c *Cluster) MigrateSlot(t testing.TB, slot int, to *ClusterNode) {
	t.Helper()
	c.WaitHealthy(t)
	from := c.MasterForSlot(t, slot)
	if from == to {
		return
	}
	s := strconv.Itoa(slot)
	to.MustDo(t, "CLUSTER", "SETSLOT", s, "IMPORTING", from.ID)
	from.MustDo(t, "CLUSTER", "SETSLOT", s, "MIGRATING", to.ID)
	host, port, _ := strings.Cut(to.Addr, ":")
	for {
		v, err := from.doValue(5*time.Second, "CLUSTER", "GETKEYSINSLOT", s, "100")
		if err != nil {
			t.Fatalf("testenv: CLUSTER GETKEYSINSLOT %d on %s: %v", slot, from.Addr, err)
		}
		keys, _ := v.([]any)
		if len(keys) == 0 {
			break
		}
		args := []string{"MIGRATE", host, port, "", "0", "5000", "REPLACE", "KEYS"}
		for _, k := range keys {
			args = append(args, k.(string))
		}
		from.MustDo(t, args...)
	}
	to.MustDo(t, "CLUSTER", "SETSLOT", s, "NODE", to.ID)
	from.MustDo(t, "CLUSTER", "SETSLOT", s, "NODE", to.ID)
	for _, m := range c.Masters(t) {
		if m != from && m != to && m.Running() && !m.Paused() {
			// A master that missed it learns it from the bus anyway.
			_, _ = m.doTimeout(2*time.Second, "CLUSTER", "SETSLOT", s, "NODE", to.ID)
		}
	}
	c.WaitHealthy(t)
}

// CrossSlotErrors returns how many CROSSSLOT error replies the nodes have
// sent during the test (INFO errorstats, summed; see Redis.ErrorCount): a
// client that never sends a multi-key command spanning slots keeps it at 0.
func (c *Cluster) CrossSlotErrors(t testing.TB) int64 {
	t.Helper()
	var n int64
	for _, node := range c.nodes {
		n += node.ErrorCount(t, "CROSSSLOT")
	}
	return n
}

// Slot returns the cluster hash slot of key, as Redis computes it: CRC16
// (XMODEM) modulo 16384, of the hash tag when the key has one (the text
// between the first "{" and the next "}", if not empty).
func Slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % ClusterSlots)
}

// HashTagForSlot returns a short hash tag whose keys ("{tag}…") all land in
// slot, e.g. to put keys in a slot that is about to be migrated.
func HashTagForSlot(slot int) string {
	for i := 0; ; i++ {
		tag := strconv.Itoa(i)
		if Slot(tag) == slot {
			return tag
		}
	}
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum
// of the Redis Cluster key distribution.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
