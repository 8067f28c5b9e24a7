package exportdownload

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// The fleet end-to-end tests run several real `caddy run` processes (an
// in-process Caddy is a singleton) sharing one real redis-server, with the
// fake metadata API and an app behind reverse_proxy in the test process.
// Timings are reported with t.Logf, never asserted beyond bounds that only
// catch a hang.

const (
	e2eSecret          = "fleet-e2e-secret-not-for-production-0123456789"
	e2eKeyA            = "hb_test_fleet_alice"
	e2eKeyB            = "hb_test_fleet_bob"
	e2eKeyC            = "hb_test_fleet_carol"
	e2eUpstreamTimeout = time.Second
	// e2eHang is the bound that only a hang exceeds.
	e2eHang = 5 * time.Second

	csFleetStored    = "export_download_fleet; fwd=miss; stored"
	csFleetCollapsed = "export_download_fleet; fwd=miss; collapsed"
	csFleetHit       = "export_download_fleet; hit"
	csFleetDown      = "export_download_fleet; fwd=miss; detail=unavailable"
)

// e2eID is the n-th export id of a test.
func e2eID(n int) string { return fmt.Sprintf("01935abc-def0-7123-4567-%012x", n) }

// notFound programs the upstream's 404 for id (for every key), as after
// the app deleted the export.
func notFound(up *testenv.Upstream, id string) {
	up.Set(id, testenv.Response{Status: http.StatusNotFound,
		Body: `{"error":{"code":"NOT_FOUND","message":"Export not found"},"meta":{"request_id":"req_up"}}`})
}

// TestFleetE2E runs the fleet scenarios against real processes; the Caddy
// binary is built once for all of them.
func TestFleetE2E(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "caddy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	t.Run("SharedRedis", func(t *testing.T) { testFleetSharedRedis(t, bin) })
	t.Run("RedisKilledAndRestartedEmpty", func(t *testing.T) { testFleetRedisKilled(t, bin) })
	t.Run("Partition", func(t *testing.T) { testFleetPartition(t, bin) })
	t.Run("TLSAndACLUser", func(t *testing.T) { testFleetTLSACL(t, bin) })
	t.Run("DefaultTimeout", func(t *testing.T) { testFleetDefaultTimeout(t, bin) })
}

// --- the nodes -------------------------------------------------------------

// fleetSetup is what the nodes of one test share.
type fleetSetup struct {
	nodes int
	redis string // the address the nodes dial
	// timeout is the fleet's per-call timeout; default 250ms, and -1
	// leaves the line out (the module's default).
	timeout time.Duration
	// fleetExtra holds more lines of the fleet block (tls, username, ...).
	fleetExtra string
	// secret is the fleet block's secret line; default e2eSecret.
	secret string
	// prefix is the fleet's key prefix; default a random one per test.
	prefix string
	env    []string
	// reachable false: do not wait for the stream reader to be up.
	unreachable bool
}

// fleetCluster is N Caddy nodes, the fake metadata API they ask and the app
// behind their reverse_proxy.
type fleetCluster struct {
	t       *testing.T
	up      *testenv.Upstream
	deletes atomic.Int64 // DELETEs the app answered
	prefix  string
	nodes   []*fleetNode
	client  *http.Client
}

// coldBurst sends n concurrent GETs of export id with e2eKeyA, spread over
// the nodes, while the app takes 300 ms to answer the first call (so the
// whole burst arrives during it); the app answers at once afterwards.
func (c *fleetCluster) coldBurst(id string, n int) []fleetReply {
	c.up.Set(id, testenv.Response{Body: testenv.ExportBody(id, "completed", nil, nil), Delay: 300 * time.Millisecond})
	replies := make([]fleetReply, n)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			replies[i] = c.get(i%len(c.nodes), id, e2eKeyA)
		}()
	}
	close(gate)
	wg.Wait()
	completed(c.up, id, time.Time{})
	return replies
}

type fleetNode struct {
	name   string
	base   string
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

// startFleet starts s.nodes Caddy processes with the same fleet block and
// waits until each answers and reads the invalidation stream.
func startFleet(t *testing.T, bin string, s fleetSetup) *fleetCluster {
	t.Helper()
	if s.timeout == 0 {
		// Above the default (50ms): on a shared 2-core machine a Redis call
		// can take longer, and each one that times out is an extra upstream
		// call that would make the exact counts below flaky.
		s.timeout = 250 * time.Millisecond
	}
	if s.secret == "" {
		s.secret = e2eSecret
	}
	if s.prefix == "" {
		s.prefix = "e2e" + randHex(t, 6)
	}
	c := &fleetCluster{t: t, up: testenv.NewUpstream(t), prefix: s.prefix}
	c.client = &http.Client{
		Timeout:       15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{MaxIdleConnsPerHost: 64},
	}
	t.Cleanup(c.client.CloseIdleConnections)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			c.deletes.Add(1)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		_, _ = io.WriteString(w, "app")
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
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

const fleetNodeCaddyfile = `{
	admin off
	persist_config off
	auto_https off
	default_bind 127.0.0.1
	log {
		level DEBUG
	}
}

http://%s {
	export_download {
		upstream %s
		upstream_timeout %s
		key_prefixes hb_test_
		bucket exports
		object_key exports/{export.project_id}/{id}.csv
		endpoint http://localhost:1
		path_style
		access_key_id AKIDFLEETE2E
		secret_access_key fleet-e2e-s3-secret
		fleet {
			redis %s
			secret %s
			prefix %s
			%s
			lock_wait 2s
			%s
		}
	}
	reverse_proxy %s
}
`

// startNode runs one node; a port taken by someone else between picking
// and binding it is retried with another.
func (c *fleetCluster) startNode(t *testing.T, bin string, i int, s fleetSetup, app string) (*fleetNode, error) {
	dir := t.TempDir()
	var lastErr error
	for range 3 {
		addr := freeAddrTB(t)
		cfg := filepath.Join(dir, "Caddyfile")
		timeout := ""
		if s.timeout > 0 {
			timeout = "timeout " + s.timeout.String()
		}
		src := fmt.Sprintf(fleetNodeCaddyfile, addr, c.up.URL, e2eUpstreamTimeout, s.redis, s.secret, c.prefix, timeout, s.fleetExtra, app)
		if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
			return nil, err
		}
		n := &fleetNode{name: fmt.Sprintf("node%d", i), base: "http://" + addr, out: new(lockedBuffer), exited: make(chan struct{})}
		n.cmd = exec.Command(bin, "run", "--config", cfg, "--adapter", "caddyfile")
		n.cmd.Env = append(append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"),
			"XDG_CONFIG_HOME="+filepath.Join(dir, "config")), s.env...)
		n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
		setFleetNodeProcAttr(n.cmd)
		if err := n.cmd.Start(); err != nil {
			return nil, err
		}
		go func() {
			_ = n.cmd.Wait()
			close(n.exited)
		}()
		t.Cleanup(func() {
			// By PID; a node that fails is shown.
			_ = n.cmd.Process.Kill()
			<-n.exited
			if t.Failed() {
				t.Logf("%s output (tail):\n%s", n.name, tail(n.out.String(), 60))
			}
		})
		if lastErr = n.waitReady(!s.unreachable); lastErr == nil {
			return n, nil
		}
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
	return nil, lastErr
}

// freeAddrTB is freeAddr for any testing.TB.
func freeAddrTB(t *testing.T) string { return freeAddr(t) }

// waitReady waits until the node answers HTTP and, with up, its stream
// reader is up (bounded), or fails early if the process exits.
func (n *fleetNode) waitReady(up bool) error {
	deadline := time.Now().Add(20 * time.Second)
	client := &http.Client{Timeout: time.Second}
	answered := false
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return fmt.Errorf("%s exited before it was ready:\n%s", n.name, tail(n.out.String(), 30))
		default:
		}
		if !answered {
			if resp, err := client.Get(n.base + "/ready"); err == nil {
				resp.Body.Close()
				answered = true
			}
		}
		if answered && (!up || strings.Contains(n.out.String(), `"fleet: stream reader up"`)) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within 20s (answered HTTP: %v):\n%s", n.name, answered, tail(n.out.String(), 30))
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// nodeLog is the part of a node's JSON log line these tests read.
type nodeLog struct {
	TS        float64  `json:"ts"`
	Level     string   `json:"level"`
	Msg       string   `json:"msg"`
	ExportIDs []string `json:"export_ids"`
	Demote    bool     `json:"demote"`
	Entries   int      `json:"entries"`
}

func (l nodeLog) time() time.Time { return time.Unix(0, int64(l.TS*1e9)) }

// logs returns the node's log lines whose message is msg.
func (n *fleetNode) logs(msg string) []nodeLog {
	var out []nodeLog
	sc := bufio.NewScanner(strings.NewReader(n.out.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), msg) {
			continue
		}
		var l nodeLog
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == msg {
			out = append(out, l)
		}
	}
	return out
}

// applied returns the node's "fleet invalidation applied" lines for id.
func (n *fleetNode) applied(id string) []nodeLog {
	var out []nodeLog
	for _, l := range n.logs("fleet invalidation applied") {
		if slices.Contains(l.ExportIDs, id) {
			out = append(out, l)
		}
	}
	return out
}

// awaitApplied is applied once the node logged at least one line for id, or
// after e2eHang: the node drops its entries before it logs, so a 404 seen
// on it can come before the line.
func (n *fleetNode) awaitApplied(id string) []nodeLog {
	deadline := time.Now().Add(e2eHang)
	for {
		if got := n.applied(id); len(got) > 0 || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// demotes counts the node's demotions of its local entries.
func (n *fleetNode) demotes() int {
	k := 0
	for _, l := range n.logs("fleet invalidation applied") {
		if l.Demote {
			k++
		}
	}
	return k
}

// --- requests --------------------------------------------------------------

// fleetReply is one answer of a node.
type fleetReply struct {
	node        int
	id          string
	status      int
	cacheStatus string
	location    string
	start       time.Time
	took        time.Duration
	err         error
}

// fleetMember is the fleet's member of a Cache-Status, or "".
func (r fleetReply) fleetMember() string {
	m, _, ok := strings.Cut(r.cacheStatus, ", ")
	if !ok {
		return ""
	}
	return m
}

// localMember is the node cache's member of a Cache-Status.
func (r fleetReply) localMember() string {
	if _, l, ok := strings.Cut(r.cacheStatus, ", "); ok {
		return l
	}
	return r.cacheStatus
}

func (c *fleetCluster) get(node int, id, key string) fleetReply {
	r := fleetReply{node: node, id: id, start: time.Now()}
	req, err := http.NewRequest(http.MethodGet, c.nodes[node].base+"/v1/exports/"+id+"/download", nil)
	if err != nil {
		r.err = err
		return r
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.client.Do(req)
	r.took = time.Since(r.start)
	if err != nil {
		r.err = err
		return r
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	r.status, r.cacheStatus, r.location = resp.StatusCode, resp.Header.Get("Cache-Status"), resp.Header.Get("Location")
	return r
}

// mustGet is get that fails the test on a transport error or another
// status than want.
func (c *fleetCluster) mustGet(t *testing.T, node int, id, key string, want int) fleetReply {
	t.Helper()
	r := c.get(node, id, key)
	if r.err != nil {
		t.Fatalf("node%d GET %s: %v", node, id, r.err)
	}
	if r.status != want {
		t.Fatalf("node%d GET %s with %s: status %d (Cache-Status %q), want %d", node, id, key, r.status, r.cacheStatus, want)
	}
	return r
}

// del sends DELETE /v1/exports/{id} through node; it returns the status and
// when the answer arrived.
func (c *fleetCluster) del(t *testing.T, node int, id string) (int, time.Time, time.Duration) {
	t.Helper()
	req, err := http.NewRequest(http.MethodDelete, c.nodes[node].base+"/v1/exports/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e2eKeyA)
	start := time.Now()
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatalf("node%d DELETE %s: %v", node, id, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Now(), time.Since(start)
}

// warm makes every node cache (id, key) and checks that it answers from
// its local cache afterwards.
func (c *fleetCluster) warm(t *testing.T, id, key string) {
	t.Helper()
	for i := range c.nodes {
		c.mustGet(t, i, id, key, http.StatusFound)
		if r := c.mustGet(t, i, id, key, http.StatusFound); r.cacheStatus != csHit {
			t.Fatalf("node%d: second GET of %s: Cache-Status %q, want %q", i, id, r.cacheStatus, csHit)
		}
	}
}

// untilStatus polls node with GETs of (id, key) until one answers want, and
// returns how long after since that answer arrived (bounded by e2eHang).
func (c *fleetCluster) untilStatus(t *testing.T, node int, id, key string, want int, since time.Time) (time.Duration, fleetReply) {
	t.Helper()
	for {
		r := c.get(node, id, key)
		if r.err == nil && r.status == want {
			return time.Since(since), r
		}
		if r.err == nil && r.status >= 500 {
			t.Errorf("node%d answered %d (Cache-Status %q) while waiting for %d", node, r.status, r.cacheStatus, want)
		}
		if time.Since(since) > e2eHang {
			t.Fatalf("node%d still answers %d (Cache-Status %q, err %v) for %s %v after %v, want %d",
				node, r.status, r.cacheStatus, r.err, id, time.Since(since), e2eHang, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// eachNode runs fn for every node but skip, concurrently, and returns
// their results in node order.
func eachNode[T any](c *fleetCluster, skip int, fn func(i int) T) []T {
	out := make([]T, len(c.nodes))
	var wg sync.WaitGroup
	for i := range c.nodes {
		if i == skip {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = fn(i)
		}()
	}
	wg.Wait()
	return out
}

func countValues(rs []fleetReply) string {
	n := map[string]int{}
	for _, r := range rs {
		n[fmt.Sprintf("%d %s", r.status, r.cacheStatus)]++
	}
	keys := make([]string, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %3d × %s", n[k], k)
	}
	return b.String()
}

// noReaderFlaps fails the test if a node reported the invalidation stream
// unreachable while Redis was up and reachable the whole time.
func (c *fleetCluster) noReaderFlaps(t *testing.T) {
	t.Helper()
	for _, n := range c.nodes {
		if k := len(n.logs("fleet: invalidation stream unreachable, retrying")); k > 0 {
			downs := n.logs("fleet: stream reader down")
			t.Errorf("%s: the invalidation stream was reported unreachable %d times (reader down %d times) while redis-server ran undisturbed",
				n.name, k, len(downs))
		}
		if k := n.demotes(); k > 0 {
			t.Errorf("%s: demoted its entries %d times while redis-server ran undisturbed", n.name, k)
		}
	}
}

// --- scenarios -------------------------------------------------------------

// testFleetSharedRedis: three nodes on one redis-server: a cold burst over
// every node, a shared hit, key isolation, a DELETE that reaches the other
// nodes, and tampered values in Redis.
func testFleetSharedRedis(t *testing.T, bin string) {
	r := testenv.StartRedis(t)
	c := startFleet(t, bin, fleetSetup{nodes: 3, redis: r.Addr})
	up := c.up
	started := time.Now()

	burstID := e2eID(1)
	t.Run("ColdBurstOverEveryNode", func(t *testing.T) {
		const n = 60
		replies := c.coldBurst(burstID, n)

		t.Logf("cold burst of %d requests over %d nodes: %d upstream call(s); Cache-Status values:%s",
			n, len(c.nodes), up.CallsFor(burstID), countValues(replies))
		if got := up.CallsFor(burstID); got != 1 {
			t.Errorf("upstream calls for the burst = %d, want 1", got)
		}
		stored := 0
		perNode := make([]int, len(c.nodes))
		for _, rep := range replies {
			if rep.err != nil || rep.status != http.StatusFound {
				t.Errorf("node%d: %v %d %q, want 302", rep.node, rep.err, rep.status, rep.cacheStatus)
				continue
			}
			switch f := rep.fleetMember(); f {
			case "":
			case csFleetStored:
				stored++
				perNode[rep.node]++
			case csFleetCollapsed, csFleetHit:
				perNode[rep.node]++
			default:
				t.Errorf("node%d: fleet member %q in the burst", rep.node, f)
			}
		}
		if stored != 1 {
			t.Errorf("%d answers with %q, want exactly 1", stored, csFleetStored)
		}
		for i, k := range perNode {
			// Each node collapses its own concurrent misses into one fleet
			// lookup; the rest wait on it or hit the local entry.
			if k != 1 {
				t.Errorf("node%d: %d answers consulted the fleet, want 1", i, k)
			}
		}
	})

	sharedID := e2eID(2)
	t.Run("SharedHitAndKeyIsolation", func(t *testing.T) {
		completed(up, sharedID, time.Time{})
		notFoundFor(up, e2eKeyB, sharedID)
		first := c.mustGet(t, 0, sharedID, e2eKeyA, http.StatusFound)
		if first.fleetMember() != csFleetStored {
			t.Errorf("node0, first GET: Cache-Status %q, want the fleet member %q", first.cacheStatus, csFleetStored)
		}
		// node1 never saw the key: the shared decision answers.
		shared := c.mustGet(t, 1, sharedID, e2eKeyA, http.StatusFound)
		if want := csFleetHit + ", " + csStored; shared.cacheStatus != want {
			t.Errorf("node1: Cache-Status %q, want %q", shared.cacheStatus, want)
		}
		if objectPath(shared.location) != objectPath(first.location) || !strings.Contains(shared.location, "/exports/proj_1/"+sharedID+".csv") {
			t.Errorf("node1's Location %q names another object than node0's %q", shared.location, first.location)
		}
		if r := c.mustGet(t, 1, sharedID, e2eKeyA, http.StatusFound); r.cacheStatus != csHit {
			t.Errorf("node1, again: Cache-Status %q, want %q", r.cacheStatus, csHit)
		}
		if got := up.CallsFor(sharedID); got != 1 {
			t.Errorf("upstream calls = %d after a shared hit, want 1", got)
		}
		// Another key on another node: its own decision, from the app.
		other := c.mustGet(t, 2, sharedID, e2eKeyB, http.StatusNotFound)
		if other.fleetMember() != csFleetStored {
			t.Errorf("node2, key B: Cache-Status %q, want the fleet member %q", other.cacheStatus, csFleetStored)
		}
		if got := up.CallsFor(sharedID); got != 2 {
			t.Errorf("upstream calls = %d after another key's request, want 2", got)
		}
		// ...which node0 then shares, still as key B's 404, never key A's 302.
		if r := c.mustGet(t, 0, sharedID, e2eKeyB, http.StatusNotFound); r.cacheStatus != csFleetHit+", "+csStored {
			t.Errorf("node0, key B: Cache-Status %q, want a shared hit", r.cacheStatus)
		}
		if got := up.CallsFor(sharedID); got != 2 {
			t.Errorf("upstream calls = %d, want 2", got)
		}
	})

	t.Run("DeleteReachesEveryNode", func(t *testing.T) {
		// Every node answers the burst's export from its own cache.
		for i := range c.nodes {
			if r := c.mustGet(t, i, burstID, e2eKeyA, http.StatusFound); r.cacheStatus != csHit {
				t.Fatalf("node%d before the DELETE: Cache-Status %q, want %q", i, r.cacheStatus, csHit)
			}
		}
		notFound(up, burstID) // the app deletes it...
		callsBefore := up.CallsFor(burstID)
		sent := time.Now()
		status, answered, took := c.del(t, 0, burstID) // ...answering the DELETE that node0 passes on
		if status != http.StatusNoContent || c.deletes.Load() != 1 {
			t.Fatalf("DELETE through node0: %d (app saw %d DELETEs), want 204 from the app", status, c.deletes.Load())
		}
		c.mustGet(t, 0, burstID, e2eKeyA, http.StatusNotFound)
		// The others stop answering from their caches: their next answers
		// come from the app (404 now), not the cached 302.
		waits := eachNode(c, 0, func(i int) time.Duration {
			d, _ := c.untilStatus(t, i, burstID, e2eKeyA, http.StatusNotFound, answered)
			return d
		})
		if up.CallsFor(burstID) <= callsBefore {
			t.Errorf("no upstream call after the DELETE")
		}
		var applied []string
		for i, n := range c.nodes[1:] {
			logged := n.awaitApplied(burstID)
			for _, l := range logged {
				applied = append(applied, fmt.Sprintf("%s %.1fms", n.name, float64(l.time().Sub(sent).Microseconds())/1000))
			}
			if len(logged) == 0 {
				t.Errorf("node%d logged no \"fleet invalidation applied\" for %s", i+1, burstID)
			}
		}
		t.Logf("DELETE on node0 answered 204 in %v; node1 answered 404 %v and node2 %v after that 2xx (polling every ~2ms); "+
			"invalidation applied (log time after the DELETE was sent): %s", took.Round(10*time.Microsecond),
			waits[1].Round(10*time.Microsecond), waits[2].Round(10*time.Microsecond), strings.Join(applied, ", "))
	})

	t.Run("TamperedValuesAreNeverUsed", func(t *testing.T) {
		id := e2eID(4)
		completed(up, id, time.Time{})
		notFoundFor(up, e2eKeyB, id)
		// One decision per credential, each created by a different node.
		keyOf := func(node int, key string, status int) string {
			t.Helper()
			before := decisionKeys(t, r, c.prefix, id)
			c.mustGet(t, node, id, key, status)
			after := decisionKeys(t, r, c.prefix, id)
			var added []string
			for _, k := range after {
				if !slices.Contains(before, k) {
					added = append(added, k)
				}
			}
			if len(added) != 1 || !strings.HasPrefix(added[0], c.prefix+":d:{"+id+"}:") {
				t.Fatalf("decision keys before %q, after %q: want exactly one new <prefix>:d:{<id>}:<mac>", before, after)
			}
			return added[0]
		}
		keyA := keyOf(0, e2eKeyA, http.StatusFound)    // completed
		keyB := keyOf(1, e2eKeyB, http.StatusNotFound) // not found
		keyC := keyOf(0, e2eKeyC, http.StatusFound)
		valueA := r.MustDo(t, "GET", keyA)
		if !strings.Contains(valueA, `"proj_1"`) || strings.Contains(valueA, e2eKeyA) {
			t.Fatalf("the shared decision should hold the template field and no credential: %q", valueA)
		}
		calls := up.CallsFor(id)

		// Copied: key A's "completed" onto key B's key. Node2 never saw key
		// B: it must ask the app (404), not redirect.
		r.MustDo(t, "SET", keyB, valueA, "PX", "60000")
		rep := c.mustGet(t, 2, id, e2eKeyB, http.StatusNotFound)
		if up.CallsFor(id) != calls+1 || rep.fleetMember() == csFleetHit {
			t.Errorf("copied value: Cache-Status %q, upstream calls %d, want %d (the app asked)", rep.cacheStatus, up.CallsFor(id), calls+1)
		}

		// Edited: key A's own value with another project. Node1 never saw
		// key A for this export.
		r.MustDo(t, "SET", keyA, strings.Replace(valueA, `"proj_1"`, `"proj_X"`, 1), "PX", "60000")
		rep = c.mustGet(t, 1, id, e2eKeyA, http.StatusFound)
		if up.CallsFor(id) != calls+2 || rep.fleetMember() == csFleetHit || !strings.Contains(rep.location, "/exports/proj_1/") {
			t.Errorf("edited value: Cache-Status %q, Location %q, upstream calls %d, want %d and proj_1",
				rep.cacheStatus, rep.location, up.CallsFor(id), calls+2)
		}

		// Garbage under key C's name; node2 never saw key C.
		r.MustDo(t, "SET", keyC, "garbage", "PX", "60000")
		rep = c.mustGet(t, 2, id, e2eKeyC, http.StatusFound)
		if up.CallsFor(id) != calls+3 || rep.fleetMember() == csFleetHit {
			t.Errorf("garbage: Cache-Status %q, upstream calls %d, want %d", rep.cacheStatus, up.CallsFor(id), calls+3)
		}

		warned := 0
		for _, n := range c.nodes {
			warned += len(n.logs("fleet: ignoring a shared value that failed authentication"))
			if strings.Contains(n.out.String(), "proj_X") || strings.Contains(n.out.String(), "garbage") {
				t.Errorf("%s logged the content of a tampered value", n.name)
			}
		}
		if warned < 3 {
			t.Errorf("%d warnings about values that failed authentication, want at least 3", warned)
		}
	})

	t.Run("ReaderStaysUpWhileRedisIs", func(t *testing.T) {
		// Give every reader a few heartbeats more, then check that none of
		// them ever saw the stream as unreachable: nothing disturbed Redis.
		time.Sleep(max(0, 3*time.Second-time.Since(started)))
		c.noReaderFlaps(t)
	})
}

func notFoundFor(up *testenv.Upstream, key, id string) {
	up.SetFor(key, id, testenv.Response{Status: http.StatusNotFound,
		Body: `{"error":{"code":"NOT_FOUND","message":"Export not found"},"meta":{"request_id":"req_up"}}`})
}

// objectPath is a presigned URL without its query.
func objectPath(loc string) string {
	p, _, _ := strings.Cut(loc, "?")
	return p
}

// decisionKeys lists the shared decisions of id, sorted.
func decisionKeys(t *testing.T, r *testenv.Redis, prefix, id string) []string {
	t.Helper()
	out := r.MustDo(t, "KEYS", prefix+":d:{"+id+"}:*")
	if out == "" {
		return nil
	}
	keys := strings.Split(out, "\n")
	sort.Strings(keys)
	return keys
}

// loadResult summarises a load run.
type loadResult struct {
	replies []fleetReply
	maxTook map[string]time.Duration
}

// runLoad sends GETs from workers goroutines for d, round robin over the
// nodes, alternating a cached export (cachedID) and a new uncached one
// from fresh(); at atTime (if > 0) it calls event once.
func (c *fleetCluster) runLoad(d time.Duration, workers int, cachedID string, fresh func() string, at time.Duration, event func()) []fleetReply {
	var mu sync.Mutex
	var out []fleetReply
	start := time.Now()
	var wg sync.WaitGroup
	var seq atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				k := seq.Add(1)
				id := cachedID
				if k%2 == 0 {
					id = fresh()
				}
				rep := c.get(int(k)%len(c.nodes), id, e2eKeyA)
				mu.Lock()
				out = append(out, rep)
				mu.Unlock()
			}
		}()
	}
	if event != nil {
		time.Sleep(at)
		event()
	}
	wg.Wait()
	return out
}

// idSource hands out export ids the upstream knows as completed.
func idSource(up *testenv.Upstream, from, n int) func() string {
	for i := range n {
		completed(up, e2eID(from+i), time.Time{})
	}
	var next atomic.Int64
	return func() string {
		k := int(next.Add(1)) - 1
		if k >= n {
			k = n - 1 // out of fresh ids: reuse the last (then cached)
		}
		return e2eID(from + k)
	}
}

// testFleetRedisKilled: kill -9 of redis-server during load, a DELETE
// during the outage, and a restart with an empty data set.
func testFleetRedisKilled(t *testing.T, bin string) {
	r := testenv.StartRedis(t)
	c := startFleet(t, bin, fleetSetup{nodes: 3, redis: r.Addr})
	up := c.up
	cachedID, deletedID, oldID := e2eID(1), e2eID(2), e2eID(3)
	for _, id := range []string{cachedID, deletedID, oldID} {
		completed(up, id, time.Time{})
		c.warm(t, id, e2eKeyA)
	}
	fresh := idSource(up, 1000, 20000)

	var killedAt time.Time
	replies := c.runLoad(2*time.Second, 4, cachedID, fresh, 700*time.Millisecond, func() {
		r.Kill()
		killedAt = time.Now()
	})
	var worst, worstAfter time.Duration
	after, unavailable := 0, 0
	for _, rep := range replies {
		worst = max(worst, rep.took)
		if rep.err != nil || rep.status != http.StatusFound {
			t.Errorf("node%d GET %s during the outage: %v %d %q, want 302", rep.node, rep.id, rep.err, rep.status, rep.cacheStatus)
			continue
		}
		if !rep.start.After(killedAt) {
			continue
		}
		after++
		worstAfter = max(worstAfter, rep.took)
		switch {
		case rep.id == cachedID && rep.cacheStatus != csHit:
			t.Errorf("node%d: cached export after the kill: Cache-Status %q, want %q", rep.node, rep.cacheStatus, csHit)
		case rep.id != cachedID && rep.fleetMember() != csFleetDown:
			t.Errorf("node%d: uncached export after the kill: Cache-Status %q, want the fleet member %q", rep.node, rep.cacheStatus, csFleetDown)
		case rep.id != cachedID:
			unavailable++
		}
	}
	t.Logf("kill -9 of redis-server during load: %d requests (%d after the kill, %d of them uncached and sent to the app), "+
		"no 5xx; slowest answer %v (after the kill %v)", len(replies), after, unavailable, worst.Round(time.Millisecond), worstAfter.Round(time.Millisecond))
	if after == 0 || unavailable == 0 {
		t.Fatalf("the load did not run past the kill: %d requests after it", after)
	}

	// A DELETE while Redis is gone: answered at once, published later.
	notFound(up, deletedID)
	status, _, took := c.del(t, 0, deletedID)
	if status != http.StatusNoContent || took > e2eHang {
		t.Fatalf("DELETE during the outage: %d in %v, want 204", status, took)
	}
	c.mustGet(t, 0, deletedID, e2eKeyA, http.StatusNotFound)
	// The other nodes cannot know yet; they answer from their caches.
	for i := 1; i < len(c.nodes); i++ {
		rep := c.mustGet(t, i, deletedID, e2eKeyA, http.StatusFound)
		t.Logf("node%d during the outage, deleted export: %d %q (it cannot know yet)", i, rep.status, rep.cacheStatus)
	}
	demotesBefore := make([]int, len(c.nodes))
	for i, n := range c.nodes {
		demotesBefore[i] = n.demotes()
	}

	r.Restart() // same port, empty: no persistence
	restarted := time.Now()
	waits := eachNode(c, 0, func(i int) time.Duration {
		d, _ := c.untilStatus(t, i, deletedID, e2eKeyA, http.StatusNotFound, restarted)
		return d
	})
	t.Logf("after the restart, the DELETE made during the outage took effect on node1 in %v and node2 in %v",
		waits[1].Round(time.Millisecond), waits[2].Round(time.Millisecond))
	// The nodes may answer 404 through their demotion before node0's
	// outbox (retried every 250 ms, the breaker open after the restart's
	// resets) is out: wait for the event itself, within a bound.
	deadline := time.Now().Add(e2eHang)
	for {
		n, err := r.Do(t, "XLEN", c.prefix+":inv")
		if err == nil && n != "0" {
			t.Logf("the outbox was published %v after the restart", time.Since(restarted).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the outbox was not published within %v of the restart: XLEN %s:inv = %q, %v", e2eHang, c.prefix, n, err)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The event itself arrives (not only the demotion), and every node
	// demotes: it cannot know what it missed while Redis was gone.
	for i, n := range c.nodes {
		deadline := time.Now().Add(e2eHang)
		for (i > 0 && len(n.applied(deletedID)) == 0) || n.demotes() <= demotesBefore[i] {
			if time.Now().After(deadline) {
				t.Fatalf("%s after the restart: %d invalidations of %s applied, %d demotions (before: %d)",
					n.name, len(n.applied(deletedID)), deletedID, n.demotes(), demotesBefore[i])
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// No node serves an answer older than the restart as fresh: the first
	// answer for a previously cached export is a refresh.
	calls := up.CallsFor(oldID)
	for i := range c.nodes {
		rep := c.mustGet(t, i, oldID, e2eKeyA, http.StatusFound)
		if rep.localMember() != csRefreshed {
			t.Errorf("node%d, export cached before the restart: Cache-Status %q, want the local member %q", i, rep.cacheStatus, csRefreshed)
		}
	}
	t.Logf("export cached before the restart: %d upstream call(s) for 3 nodes' refreshes", up.CallsFor(oldID)-calls)
	if up.CallsFor(oldID) == calls {
		t.Errorf("no node asked the app again for an answer older than the restart")
	}
}

// testFleetPartition: the nodes reach Redis through a proxy that stops
// forwarding (silence, not a reset).
func testFleetPartition(t *testing.T, bin string) {
	r := testenv.StartRedis(t)
	proxy := testenv.StartTCPProxy(t, r.Addr)
	const fleetTimeout = 100 * time.Millisecond
	c := startFleet(t, bin, fleetSetup{nodes: 3, redis: proxy.Addr, timeout: fleetTimeout})
	up := c.up
	cachedID, deletedID := e2eID(1), e2eID(2)
	for _, id := range []string{cachedID, deletedID} {
		completed(up, id, time.Time{})
		c.warm(t, id, e2eKeyA)
	}
	fresh := idSource(up, 1000, 20000)

	proxy.Freeze()
	frozen := true
	defer func() {
		if frozen {
			proxy.Resume()
		}
	}()
	var delStatus int
	var delTook time.Duration
	replies := c.runLoad(1500*time.Millisecond, 3, cachedID, fresh, 500*time.Millisecond, func() {
		notFound(up, deletedID)
		delStatus, _, delTook = c.del(t, 0, deletedID)
	})
	bound := e2eUpstreamTimeout + fleetTimeout + 3*time.Second
	worst := map[bool]time.Duration{}
	for _, rep := range replies {
		if rep.err != nil || rep.status != http.StatusFound {
			t.Errorf("node%d GET %s during the partition: %v %d %q, want 302", rep.node, rep.id, rep.err, rep.status, rep.cacheStatus)
		}
		cached := rep.id == cachedID
		worst[cached] = max(worst[cached], rep.took)
		if rep.took > bound {
			t.Errorf("node%d GET %s took %v during the partition, more than upstream_timeout + timeout + 3s", rep.node, rep.id, rep.took)
		}
	}
	if delStatus != http.StatusNoContent || delTook > bound {
		t.Errorf("DELETE during the partition: %d in %v, want 204", delStatus, delTook)
	}
	t.Logf("partition: %d requests, no 5xx; slowest cached answer %v, slowest uncached %v (fleet timeout %v); DELETE answered in %v",
		len(replies), worst[true].Round(time.Millisecond), worst[false].Round(time.Millisecond), fleetTimeout, delTook.Round(time.Millisecond))

	// The other nodes still have the deleted export; once the proxy
	// forwards again, the queued DELETE reaches them.
	proxy.Resume()
	frozen = false
	resumed := time.Now()
	waits := eachNode(c, 0, func(i int) time.Duration {
		d, _ := c.untilStatus(t, i, deletedID, e2eKeyA, http.StatusNotFound, resumed)
		return d
	})
	t.Logf("after the partition healed, the DELETE made during it took effect on node1 in %v and node2 in %v",
		waits[1].Round(time.Millisecond), waits[2].Round(time.Millisecond))
	if got := len(c.nodes[1].awaitApplied(deletedID)) + len(c.nodes[2].awaitApplied(deletedID)); got < 2 {
		t.Errorf("the queued invalidation was applied %d times on node1 and node2, want once on each", got)
	}
}

// testFleetTLSACL: Redis over TLS with a certificate from a test CA, an ACL
// user restricted to the prefix, and the password and secret given through
// {env.*} and {file.*}.
func testFleetTLSACL(t *testing.T, bin string) {
	prefix := "e2etls" + randHex(t, 4)
	const password = "e2e-acl-password-4f1c"
	rules := "~" + prefix + ":* -@all +get +set +del +exists +pttl +pexpire +eval +evalsha +xadd +xread +xinfo|stream +multi +exec +time +role +info +wait +ping +cluster|slots +cluster|shards"
	r := testenv.StartRedis(t, testenv.RedisTLS(), testenv.RedisUser("edge", password, rules))
	secretFile := filepath.Join(t.TempDir(), "fleet_secret")
	if err := os.WriteFile(secretFile, []byte(e2eSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startFleet(t, bin, fleetSetup{
		nodes:  2,
		redis:  r.Addr,
		prefix: prefix,
		secret: "{file." + secretFile + "}",
		fleetExtra: "username edge\n\t\t\tpassword {env.E2E_REDIS_PASSWORD}\n\t\t\ttls ca_file " + r.CAFile() +
			" server_name localhost",
		env: []string{"E2E_REDIS_PASSWORD=" + password},
	})
	id := e2eID(1)
	completed(c.up, id, time.Time{})
	if rep := c.mustGet(t, 0, id, e2eKeyA, http.StatusFound); rep.fleetMember() != csFleetStored {
		t.Errorf("node0: Cache-Status %q, want the fleet member %q", rep.cacheStatus, csFleetStored)
	}
	if rep := c.mustGet(t, 1, id, e2eKeyA, http.StatusFound); rep.cacheStatus != csFleetHit+", "+csStored {
		t.Errorf("node1: Cache-Status %q, want a shared hit", rep.cacheStatus)
	}
	if keys := decisionKeys(t, r, prefix, id); len(keys) != 1 {
		t.Errorf("decision keys under %s: %q, want 1", prefix, keys)
	}
	notFound(c.up, id)
	status, answered, _ := c.del(t, 0, id)
	if status != http.StatusNoContent {
		t.Fatalf("DELETE: %d", status)
	}
	d, _ := c.untilStatus(t, 1, id, e2eKeyA, http.StatusNotFound, answered)
	t.Logf("TLS and an ACL user: shared hit, and a DELETE on node0 took effect on node1 %v after its 2xx", d.Round(10*time.Microsecond))
	// Nothing the module sent was refused by the ACL rule.
	if denied := r.MustDo(t, "ACL", "LOG"); denied != "" {
		t.Errorf("ACL LOG after the run: %q, want empty", denied)
	}
	for _, n := range c.nodes {
		if out := n.out.String(); strings.Contains(out, password) || strings.Contains(out, e2eSecret) {
			t.Errorf("%s logged the Redis password or the fleet secret", n.name)
		}
	}

	// A user whose ACL does not cover the configured prefix: the node
	// still answers (from the app), and says why the fleet is unusable.
	t.Run("ACLNotCoveringThePrefixIsLogged", func(t *testing.T) {
		bad := startFleet(t, bin, fleetSetup{
			nodes:       1,
			redis:       r.Addr,
			prefix:      "notallowed" + randHex(t, 4),
			secret:      "{file." + secretFile + "}",
			fleetExtra:  "username edge\n\t\t\tpassword {env.E2E_REDIS_PASSWORD}\n\t\t\ttls ca_file " + r.CAFile(),
			env:         []string{"E2E_REDIS_PASSWORD=" + password},
			unreachable: true,
		})
		completed(bad.up, id, time.Time{})
		rep := bad.mustGet(t, 0, id, e2eKeyA, http.StatusFound)
		if rep.fleetMember() != csFleetDown {
			t.Errorf("Cache-Status %q, want the fleet member %q", rep.cacheStatus, csFleetDown)
		}
		n := bad.nodes[0]
		deadline := time.Now().Add(e2eHang)
		for !strings.Contains(n.out.String(), "NOPERM") {
			if time.Now().After(deadline) {
				t.Fatalf("every Redis command is refused (NOPERM), and after %v the node has logged nothing about it:\n%s",
					e2eHang, tail(n.out.String(), 20))
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// testFleetDefaultTimeout: three nodes with the module's default timeout
// (50ms). The stream reader's blocking read is also its heartbeat: it must
// not time out while Redis answers it on time, and invalidations must not
// wait for a reconnect.
func testFleetDefaultTimeout(t *testing.T, bin string) {
	r := testenv.StartRedis(t)
	c := startFleet(t, bin, fleetSetup{nodes: 3, redis: r.Addr, timeout: -1})
	const rounds = 6
	for k := range rounds {
		id := e2eID(k + 1)
		completed(c.up, id, time.Time{})
		c.warm(t, id, e2eKeyA)
	}
	time.Sleep(2 * time.Second) // a few heartbeats with nothing to read
	var waits []time.Duration
	for k := range rounds {
		id := e2eID(k + 1)
		from := k % len(c.nodes)
		notFound(c.up, id)
		status, answered, _ := c.del(t, from, id)
		if status != http.StatusNoContent {
			t.Fatalf("DELETE: %d", status)
		}
		for i, d := range eachNode(c, from, func(i int) time.Duration {
			d, _ := c.untilStatus(t, i, id, e2eKeyA, http.StatusNotFound, answered)
			return d
		}) {
			if i != from {
				waits = append(waits, d.Round(10*time.Microsecond))
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("default timeout: DELETE-2xx to the other nodes answering 404, %d measurements: %v", len(waits), waits)
	c.noReaderFlaps(t)
}

// TestFleetAdaptInvalid adapts bad fleet blocks through the caddyfile
// adapter, the path of `caddy adapt` and `caddy validate`: each must fail
// while parsing, name the subdirective at fault, and never quote the
// secret or the password.
func TestFleetAdaptInvalid(t *testing.T) {
	const secret = "secret " + e2eSecret + "\n"
	for _, tc := range []struct{ name, block, want string }{
		{"fleet with an argument", "fleet on {\nredis 127.0.0.1:6379\n" + secret + "}", "fleet: takes a block, not arguments"},
		{"no redis", "fleet {\n" + secret + "}", "fleet: redis: required"},
		{"redis without argument", "fleet {\nredis\n" + secret + "}", "fleet: redis: want at least one host:port"},
		{"redis without port", "fleet {\nredis redis.internal\n" + secret + "}", `fleet: redis: "redis.internal" is not host:port`},
		{"no secret", "fleet {\nredis 127.0.0.1:6379\n}", "fleet: secret: required"},
		{"short secret", "fleet {\nredis 127.0.0.1:6379\nsecret short-fleet-secret\n}", "fleet: secret: must be at least 32 bytes"},
		{"secret twice", "fleet {\nredis 127.0.0.1:6379\n" + secret + secret + "}", "fleet: secret: duplicate subdirective"},
		{"secret with two arguments", "fleet {\nredis 127.0.0.1:6379\nsecret a b\n}", "secret: want exactly one argument, got 2"},
		{"password on two lines", "fleet {\nredis 127.0.0.1:6379\n" + secret + "password \"pass\nword\"\n}", "fleet: password: must be one line"},
		{"timeout 0", "fleet {\nredis 127.0.0.1:6379\n" + secret + "timeout 0\n}", "fleet: timeout: must be positive"},
		{"negative timeout", "fleet {\nredis 127.0.0.1:6379\n" + secret + "timeout -50ms\n}", "timeout: must not be negative"},
		{"bad lock_wait", "fleet {\nredis 127.0.0.1:6379\n" + secret + "lock_wait soon\n}", "lock_wait:"},
		{"tls skip verify", "fleet {\nredis 127.0.0.1:6379\n" + secret + "tls insecure_skip_verify true\n}", "there is no skip-verify"},
		{"tls odd arguments", "fleet {\nredis 127.0.0.1:6379\n" + secret + "tls ca_file\n}", "fleet: tls: want [ca_file <pem>] [server_name <name>]"},
		{"prefix with a glob", "fleet {\nredis 127.0.0.1:6379\n" + secret + "prefix edge*\n}", "fleet: prefix:"},
		{"prefix with a brace", "fleet {\nredis 127.0.0.1:6379\n" + secret + "prefix edge}x\n}", "fleet: prefix:"},
		{"unknown subdirective", "fleet {\nredis 127.0.0.1:6379\n" + secret + "pool_size 10\n}", `fleet: unrecognized subdirective "pool_size"`},
		{"block after a subdirective", "fleet {\nredis 127.0.0.1:6379\n" + secret + "timeout 1s {\nx\n}\n}", "fleet: timeout: takes no block"},
		{"fleet subdirective at top level", "secret " + e2eSecret, `unrecognized subdirective "secret"`},
		{"fleet twice", "fleet {\nredis a:1\n" + secret + "}\nfleet {\nredis b:1\n" + secret + "}", "fleet: duplicate subdirective"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			input := ":8080 {\nexport_download {\nupstream http://127.0.0.1:9080\nbucket exports\nobject_key {id}.csv\n" +
				tc.block + "\n}\nreverse_proxy 127.0.0.1:9080\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
			if err == nil {
				t.Fatalf("adapted without error; want one containing %q\n%s", tc.want, input)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tc.want)
			}
			for _, secretText := range []string{e2eSecret, "short-fleet-secret", "pass\nword"} {
				if strings.Contains(err.Error(), secretText) {
					t.Errorf("the error quotes a secret: %q", err)
				}
			}
		})
	}
}

// BenchmarkFleetLocalHit is a local cache hit with the fleet tier off and
// on, side by side in one process (no network, no wrk, so much less noise
// than bench/fleet's): the fleet tier must not change a hit's cost, since a
// hit makes no Redis call. redis-cmds/op counts what Redis processed per
// hit during the run (the stream reader's heartbeat, divided by b.N).
func BenchmarkFleetLocalHit(b *testing.B) {
	r := testenv.StartRedis(b)
	for _, bc := range []struct {
		name  string
		fleet bool
	}{{"fleet off", false}, {"fleet on", true}} {
		b.Run(bc.name, func(b *testing.B) {
			up := testenv.NewUpstream(b)
			completed(up, testID, time.Now().Add(24*time.Hour))
			var h *Handler
			if bc.fleet {
				h = newHandler(b, up, nil, withFleet(r.Addr))
			} else {
				h = newHandler(b, up, nil)
			}
			h.logger = productionLogger()
			download(b, h, testID, testKey)
			checkReply(b, download(b, h, testID, testKey), http.StatusFound, wantHit)
			req, w := benchRequest(testID, testKey, ""), newBenchWriter()
			before := redisCommandsProcessed(b, r)
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				_ = h.ServeHTTP(w, req, noNext)
			}
			b.ReportMetric(float64(redisCommandsProcessed(b, r)-before)/float64(b.N), "redis-cmds/op")
			checkBenchHit(b, w)
		})
	}
}

// redisCommandsProcessed is Redis's count of commands processed so far.
func redisCommandsProcessed(tb testing.TB, r *testenv.Redis) int64 {
	tb.Helper()
	info := r.MustDo(tb, "INFO", "stats")
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_commands_processed:"); ok {
			var n int64
			if _, err := fmt.Sscan(v, &n); err == nil {
				return n
			}
		}
	}
	tb.Fatalf("no total_commands_processed in INFO stats")
	return 0
}
