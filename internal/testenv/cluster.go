package testenv

import (
	"context"
	"crypto/tls"
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
			if p, err := FreePort(); err == nil {
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
