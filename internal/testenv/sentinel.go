package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// sentinelMasterName is the name under which the Sentinels of a SentinelSet
// monitor the master (SENTINEL MONITOR <name> …).
const sentinelMasterName = "testenv"

// SentinelOption changes how StartSentinel builds the set.
type SentinelOption func(*sentinelConfig)

type sentinelConfig struct {
	redis           redisConfig // the master and the replica
	authUser        string
	authPass        string
	downAfter       time.Duration
	failoverTimeout time.Duration
}

// SentinelNodeUser adds an ACL user on the master and the replica, as
// RedisUser does for one server. Their default user stays enabled without a
// password (the Sentinels and the test's admin connections use it).
func SentinelNodeUser(name, password, rules string) SentinelOption {
	return func(c *sentinelConfig) { c.redis.users = append(c.redis.users, redisUser{name, password, rules}) }
}

// SentinelAuth makes the Sentinels require a login: with user "" the
// password of their default user (requirepass); otherwise an ACL user with
// every permission, the default user being disabled. The Sentinels log in
// to each other with it too (sentinel-user, sentinel-pass), which is what a
// client's sentinel_username/sentinel_password are for.
func SentinelAuth(user, password string) SentinelOption {
	return func(c *sentinelConfig) { c.authUser, c.authPass = user, password }
}

// SentinelDownAfter sets down-after-milliseconds (default 1s): how long the
// master may not answer before a Sentinel flags it down. A failover follows
// about a second or two later.
func SentinelDownAfter(d time.Duration) SentinelOption {
	return func(c *sentinelConfig) { c.downAfter = d }
}

// SentinelSet is a master, one replica and three Sentinels (quorum 2)
// started for one test, on 127.0.0.1 and free ports, without persistence.
// Kill, Restart, Pause, Resume, ClientKill and Do work on each data node and
// each Sentinel (they are Redis values).
type SentinelSet struct {
	name      string
	nodes     []*Redis
	sentinels []*Redis
}

// StartSentinel starts the master, the replica (REPLICAOF the master) and,
// once the replica is in sync, three `redis-server --sentinel`, each with a
// sentinel.conf (monitor quorum 2, down-after-milliseconds as
// SentinelDownAfter says, failover-timeout 3s, parallel-syncs 1). It waits
// until every Sentinel knows the master, the replica and the other
// Sentinels. Everything is stopped when the test ends. A missing
// redis-server fails the test with one line naming the package to install.
func StartSentinel(t testing.TB, opts ...SentinelOption) *SentinelSet {
	t.Helper()
	cfg := sentinelConfig{downAfter: time.Second, failoverTimeout: 3 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	s := &SentinelSet{name: sentinelMasterName}

	node := cfg.redis
	node.label = "redis-server (sentinel set)"
	// Both start as masters, so that a restarted node is an empty master
	// wherever the master is by then, as after a crash.
	master := startRedis(t, node)
	s.nodes = []*Redis{master, startRedis(t, node)}
	s.replicate(t, s.nodes[1], master)

	sc := redisConfig{label: "redis-sentinel"}
	if cfg.authPass != "" {
		sc.adminAuth = []string{"AUTH", cfg.authPass}
		if cfg.authUser != "" {
			sc.adminAuth = []string{"AUTH", cfg.authUser, cfg.authPass}
		}
	}
	sc.confFile = func(dir string, port int) (string, error) {
		// A Sentinel rewrites its file with its ID and what it learns (the
		// current master, the other Sentinels): a restarted one keeps them,
		// as in production. The port is given on the command line.
		path := filepath.Join(dir, "sentinel.conf")
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
		var b strings.Builder
		fmt.Fprintf(&b, "sentinel monitor %s 127.0.0.1 %d 2\n", s.name, master.port)
		fmt.Fprintf(&b, "sentinel down-after-milliseconds %s %d\n", s.name, cfg.downAfter.Milliseconds())
		fmt.Fprintf(&b, "sentinel failover-timeout %s %d\n", s.name, cfg.failoverTimeout.Milliseconds())
		fmt.Fprintf(&b, "sentinel parallel-syncs %s 1\n", s.name)
		switch {
		case cfg.authPass != "" && cfg.authUser == "":
			fmt.Fprintf(&b, "requirepass %s\nsentinel sentinel-pass %s\n", cfg.authPass, cfg.authPass)
		case cfg.authPass != "":
			fmt.Fprintf(&b, "user default off\nuser %s on >%s ~* &* +@all\n", cfg.authUser, cfg.authPass)
			fmt.Fprintf(&b, "sentinel sentinel-user %s\nsentinel sentinel-pass %s\n", cfg.authUser, cfg.authPass)
		}
		return path, os.WriteFile(path, []byte(b.String()), 0o600)
	}
	sc.extraArgs = func(int) []string { return []string{"--sentinel"} }
	for range 3 {
		s.sentinels = append(s.sentinels, startRedis(t, sc))
	}
	s.WaitHealthy(t)
	return s
}

// MasterName returns the name the Sentinels know the master by, for a
// client's sentinel configuration.
func (s *SentinelSet) MasterName() string { return s.name }

// SentinelAddrs returns the Sentinels' addresses (host:port).
func (s *SentinelSet) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, r := range s.sentinels {
		addrs[i] = r.Addr
	}
	return addrs
}

// Sentinels returns the three Sentinels, in start order.
func (s *SentinelSet) Sentinels() []*Redis { return slices.Clone(s.sentinels) }

// Nodes returns the two data nodes: the first started as the master, the
// second as its replica.
func (s *SentinelSet) Nodes() []*Redis { return slices.Clone(s.nodes) }

// Master returns the data node that a running, unpaused Sentinel reports
// as the master (SENTINEL GET-MASTER-ADDR-BY-NAME). It fails the test if
// no Sentinel answers.
func (s *SentinelSet) Master(t testing.TB) *Redis {
	t.Helper()
	for _, sen := range s.sentinels {
		if !sen.Running() || sen.Paused() {
			continue
		}
		addr, err := s.masterAddr(sen)
		if err != nil {
			t.Fatalf("testenv: SENTINEL GET-MASTER-ADDR-BY-NAME on %s: %v", sen.Addr, err)
		}
		n := s.node(addr)
		if n == nil {
			t.Fatalf("testenv: Sentinel %s reports master %s, not a node of the set", sen.Addr, addr)
		}
		return n
	}
	t.Fatalf("testenv: no Sentinel is running")
	return nil
}

// Replica returns the data node that Master does not.
func (s *SentinelSet) Replica(t testing.TB) *Redis {
	t.Helper()
	if m := s.Master(t); m == s.nodes[0] {
		return s.nodes[1]
	}
	return s.nodes[0]
}

// Failover asks a Sentinel to fail over (RequestFailover), then waits as
// WaitMasterChange does and returns the new master.
func (s *SentinelSet) Failover(t testing.TB) *Redis {
	t.Helper()
	old := s.Master(t)
	s.RequestFailover(t)
	return s.WaitMasterChange(t, old)
}

// RequestFailover asks a running Sentinel to fail over (SENTINEL FAILOVER
// <name>), retried while it answers that it cannot yet (for a while after
// the previous failover), and returns without waiting for the failover.
func (s *SentinelSet) RequestFailover(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(replicatedWait)
	for {
		err := errors.New("no Sentinel is running")
		for _, sen := range s.sentinels {
			if sen.Running() && !sen.Paused() {
				_, err = sen.doTimeout(2*time.Second, "SENTINEL", "FAILOVER", s.name)
				break
			}
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: SENTINEL FAILOVER %s: %v", s.name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitMasterChange waits until every running, unpaused Sentinel reports the
// same master, other than old, and that node answers ROLE as a master, and
// returns it. Call it after Kill or Pause of the master. It fails the test
// after 30s.
func (s *SentinelSet) WaitMasterChange(t testing.TB, old *Redis) *Redis {
	t.Helper()
	var next *Redis
	waitUntil(t, "master change from "+old.Addr, func() string {
		m, problem := s.agreedMaster()
		if problem != "" {
			return problem
		}
		if m == old {
			return "the Sentinels still report " + old.Addr
		}
		next = m
		return ""
	})
	return next
}

// Rejoin makes n, a data node that is not the master, a replica of the
// current master at once (REPLICAOF), restarting it first (empty) if it was
// killed, and waits until the set is healthy. The Sentinels would turn a
// returning master into a replica themselves, but only about 10s after it
// came back (SENTINEL FAILOVER leaves the old master a master until then).
func (s *SentinelSet) Rejoin(t testing.TB, n *Redis) {
	t.Helper()
	if !n.Running() {
		n.Restart()
	}
	m := s.Master(t)
	if n == m {
		t.Fatalf("testenv: Rejoin: %s is the master", n.Addr)
	}
	s.replicate(t, n, m)
	s.WaitHealthy(t)
}

// replicate makes n a replica of m and waits until it is in sync.
func (s *SentinelSet) replicate(t testing.TB, n, m *Redis) {
	t.Helper()
	host, port, _ := strings.Cut(m.Addr, ":")
	n.MustDo(t, "REPLICAOF", host, port)
	// A Sentinel learns the replicas from the master's INFO, which it reads
	// when it connects and then every 10s.
	waitUntil(t, "replica in sync", func() string { return replicaProblem(n, m) })
}

// WaitHealthy waits until every running, unpaused Sentinel reports the same
// master, which answers ROLE as a master; every other running data node
// replicates it with its link up; and every Sentinel lists those replicas
// and the other running Sentinels, none of them down or disconnected. It
// fails the test after 30s. A node that comes back as a master is turned
// into a replica by the Sentinels only about 10s later; Rejoin does it at
// once.
func (s *SentinelSet) WaitHealthy(t testing.TB) {
	t.Helper()
	waitUntil(t, "sentinel set healthy", s.problem)
}

// problem says what keeps the set from being healthy, or "".
func (s *SentinelSet) problem() string {
	m, problem := s.agreedMaster()
	if problem != "" {
		return problem
	}
	for _, n := range s.nodes {
		if n == m || !n.Running() || n.Paused() {
			continue
		}
		if p := replicaProblem(n, m); p != "" {
			return p
		}
	}
	for _, sen := range s.sentinels {
		if !sen.Running() || sen.Paused() {
			continue
		}
		replicas, err := s.sentinelTable(sen, "REPLICAS")
		if err != nil {
			return err.Error()
		}
		for _, n := range s.nodes {
			if n == m || !n.Running() || n.Paused() {
				continue
			}
			if p := findHealthy(replicas, n.Addr, "slave"); p != "" {
				return fmt.Sprintf("Sentinel %s: replica %s", sen.Addr, p)
			}
		}
		others, err := s.sentinelTable(sen, "SENTINELS")
		if err != nil {
			return err.Error()
		}
		for _, o := range s.sentinels {
			if o == sen || !o.Running() || o.Paused() {
				continue
			}
			if p := findHealthy(others, o.Addr, "sentinel"); p != "" {
				return fmt.Sprintf("Sentinel %s: Sentinel %s", sen.Addr, p)
			}
		}
	}
	return ""
}

// agreedMaster returns the master every running, unpaused Sentinel
// reports, if they agree and it answers ROLE as a master.
func (s *SentinelSet) agreedMaster() (*Redis, string) {
	var addr string
	for _, sen := range s.sentinels {
		if !sen.Running() || sen.Paused() {
			continue
		}
		a, err := s.masterAddr(sen)
		if err != nil {
			return nil, fmt.Sprintf("SENTINEL GET-MASTER-ADDR-BY-NAME on %s: %v", sen.Addr, err)
		}
		if addr != "" && a != addr {
			return nil, fmt.Sprintf("the Sentinels disagree: master %s or %s", addr, a)
		}
		addr = a
	}
	if addr == "" {
		return nil, "no Sentinel is running"
	}
	m := s.node(addr)
	if m == nil {
		return nil, "the Sentinels report master " + addr + ", not a node of the set"
	}
	if !m.Running() || m.Paused() {
		return nil, "the Sentinels report master " + addr + ", which is killed or paused"
	}
	role, err := m.doTimeout(2*time.Second, "ROLE")
	if err != nil {
		return nil, fmt.Sprintf("ROLE on %s: %v", addr, err)
	}
	if !strings.HasPrefix(role, "master\n") {
		return nil, addr + " does not answer ROLE as a master yet"
	}
	return m, ""
}

func (s *SentinelSet) masterAddr(sen *Redis) (string, error) {
	v, err := sen.doValue(2*time.Second, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.name)
	if err != nil {
		return "", err
	}
	hp, ok := v.([]any)
	if !ok || len(hp) != 2 {
		return "", fmt.Errorf("unexpected reply %v", v)
	}
	return fmt.Sprintf("%v:%v", hp[0], hp[1]), nil
}

// sentinelTable reads SENTINEL REPLICAS or SENTINEL SENTINELS: one field map
// per instance.
func (s *SentinelSet) sentinelTable(sen *Redis, what string) ([]map[string]string, error) {
	v, err := sen.doValue(2*time.Second, "SENTINEL", what, s.name)
	if err != nil {
		return nil, fmt.Errorf("SENTINEL %s on %s: %w", what, sen.Addr, err)
	}
	rows, _ := v.([]any)
	table := make([]map[string]string, 0, len(rows))
	for _, row := range rows {
		fields, _ := row.([]any)
		m := map[string]string{}
		for i := 0; i+1 < len(fields); i += 2 {
			m[flatten(fields[i])] = flatten(fields[i+1])
		}
		table = append(table, m)
	}
	return table, nil
}

// findHealthy says what is wrong with the instance at addr in a Sentinel
// table: "" when it is listed with the flag want and none of s_down, o_down
// or disconnected. (Master_down, on a Sentinel, only says how it voted.)
func findHealthy(table []map[string]string, addr, want string) string {
	for _, m := range table {
		if m["ip"]+":"+m["port"] != addr {
			continue
		}
		flags := strings.Split(m["flags"], ",")
		if !slices.Contains(flags, want) || slices.ContainsFunc(flags, func(f string) bool {
			return f == "s_down" || f == "o_down" || f == "disconnected"
		}) {
			return addr + " has flags " + m["flags"]
		}
		return ""
	}
	return addr + " is not known yet"
}

func (s *SentinelSet) node(addr string) *Redis {
	for _, n := range s.nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// replicaProblem says why n is not an in-sync replica of master, or "".
func replicaProblem(n, master *Redis) string {
	info, err := n.doTimeout(2*time.Second, "INFO", "replication")
	if err != nil {
		return fmt.Sprintf("INFO replication on %s: %v", n.Addr, err)
	}
	host, port, _ := strings.Cut(master.Addr, ":")
	for _, want := range []string{"role:slave", "master_host:" + host, "master_port:" + port, "master_link_status:up"} {
		if !slices.Contains(strings.Split(info, "\r\n"), want) {
			return fmt.Sprintf("%s is not an in-sync replica of %s (no %s)", n.Addr, master.Addr, want)
		}
	}
	return ""
}

// waitUntil polls problem until it returns "", and fails the test with the
// last problem after replicatedWait.
func waitUntil(t testing.TB, what string, problem func() string) {
	t.Helper()
	deadline := time.Now().Add(replicatedWait)
	for {
		p := problem()
		if p == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: %s: not reached after %v: %s", what, replicatedWait, p)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
