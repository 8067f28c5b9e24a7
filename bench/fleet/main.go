// Command fleet measures the fleet tier with real processes on loopback:
// redis-server, `caddy run` nodes and a fake metadata API in this process.
// bench/fleet/run.sh builds Caddy and runs it; see bench/fleet/README.md.
//
// Three benchmarks, all in one run:
//
//  1. hit: a local cache hit with the fleet tier on vs off. One Caddy
//     process, two sites that differ only by the fleet block, wrk against
//     each in alternating paired rounds (on/off, then off/on); the ratio is
//     the median over the rounds. Redis's command counter is read around
//     every fleet-on round, to show that hits send nothing to Redis.
//  2. latency: a shared hit (a local miss answered by another node's
//     decision in Redis) vs an upstream call (a local and shared miss: lease,
//     app, store) vs an upstream call without the fleet tier, one request
//     at a time, interleaved, client-side latency.
//  3. invalidation: N nodes (default 10). Each round warms one export on
//     every node (a cold burst over the fleet: the upstream calls it makes
//     are counted), then sends DELETE /v1/exports/{id} through one node and
//     waits for the "fleet invalidation applied" debug line of every other
//     node. A line is written after the node dropped the export's entries,
//     with the node's clock, which is this machine's clock; the latency of
//     a round is the latest of those times minus the moment the DELETE's
//     2xx reached the client (and, as an upper bound, minus the moment the
//     DELETE was sent).
//
// Timings are reports, never pass/fail: only a broken setup (a wrong
// status, a missing line) fails the run.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

const (
	apiKey = "hb_test_fleetbench"
	secret = "fleet-bench-secret-not-for-production-0123456789"
	prefix = "fleetbench"

	csLocalHit     = "export_download; hit"
	csSharedHit    = "export_download_fleet; hit, export_download; fwd=miss; stored"
	csSharedStored = "export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored"
	csPlainStored  = "export_download; fwd=miss; stored"
)

type config struct {
	caddy, redisServer, wrk string
	dir                     string
	only                    string
	rounds                  int
	duration, warmup        time.Duration
	threads, connections    int
	samples                 int
	invalidations, nodes    int
	fleetTimeout            time.Duration
	appDelay                time.Duration
	idle                    time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.caddy, "caddy", "", "the caddy binary with export_download (required)")
	flag.StringVar(&c.redisServer, "redis-server", "redis-server", "the redis-server binary")
	flag.StringVar(&c.wrk, "wrk", "wrk", "the wrk binary")
	flag.StringVar(&c.dir, "dir", "", "directory for configs and logs (default: a new temporary one, removed at the end)")
	flag.StringVar(&c.only, "only", "hit,latency,invalidation", "benchmarks to run, comma-separated")
	flag.IntVar(&c.rounds, "rounds", 15, "hit: paired wrk rounds")
	flag.DurationVar(&c.duration, "duration", 2*time.Second, "hit: length of one wrk run (whole seconds)")
	flag.DurationVar(&c.warmup, "warmup", 2*time.Second, "hit: wrk warm-up of each site")
	flag.IntVar(&c.threads, "threads", 2, "hit: wrk threads")
	flag.IntVar(&c.connections, "connections", 32, "hit: wrk connections")
	flag.IntVar(&c.samples, "samples", 1000, "latency: requests of each kind")
	flag.IntVar(&c.invalidations, "invalidations", 250, "invalidation: DELETEs")
	flag.DurationVar(&c.idle, "idle", time.Second, "invalidation: longest random pause before each DELETE, so that the stream is idle at times, as in a real fleet")
	flag.IntVar(&c.nodes, "nodes", 10, "invalidation: Caddy nodes")
	flag.DurationVar(&c.fleetTimeout, "fleet-timeout", 0, "the fleet block's timeout (0: the module's default, 50ms)")
	flag.DurationVar(&c.appDelay, "app-delay", 0, "how long the fake metadata API takes to answer")
	flag.Parse()
	if c.caddy == "" {
		log.Fatal("fleet: -caddy is required (bench/fleet/run.sh builds it)")
	}
	log.SetFlags(0)
	log.SetPrefix("fleet: ")

	b := &bench{cfg: c}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := b.run(ctx)
	b.stopAll()
	if err != nil {
		log.Fatal(err)
	}
}

// bench holds the processes of a run; stopAll ends them.
type bench struct {
	cfg   config
	dir   string
	app   *fakeApp
	redis string // host:port

	mu    sync.Mutex
	procs []*exec.Cmd
	clean func()
}

func (b *bench) run(ctx context.Context) error {
	c := b.cfg
	if c.dir == "" {
		dir, err := os.MkdirTemp("", "fleetbench-")
		if err != nil {
			return err
		}
		b.dir, b.clean = dir, func() { _ = os.RemoveAll(dir) }
	} else {
		b.dir = c.dir
		if err := os.MkdirAll(b.dir, 0o755); err != nil {
			return err
		}
	}
	var err error
	if b.app, err = startApp(c.appDelay); err != nil {
		return err
	}
	if b.redis, err = b.startRedis(); err != nil {
		return err
	}
	out, _ := exec.Command(c.redisServer, "--version").Output()
	caddyVer, _ := exec.Command(c.caddy, "version").Output()
	fmt.Printf("# fleet tier benchmarks, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Printf("machine: %d CPUs (shared), %s", runtime.NumCPU(), loadavg())
	fmt.Printf("redis: %s", out)
	fmt.Printf("caddy: %s", caddyVer)
	timeout := "the module's default (50ms)"
	if c.fleetTimeout > 0 {
		timeout = c.fleetTimeout.String()
	}
	fmt.Printf("fleet timeout: %s; fake metadata API delay: %v\n\n", timeout, c.appDelay)

	want := map[string]bool{}
	for _, s := range strings.Split(c.only, ",") {
		want[strings.TrimSpace(s)] = true
	}
	if want["hit"] || want["latency"] {
		if err := b.hitAndLatency(ctx, want); err != nil {
			return err
		}
	}
	if want["invalidation"] {
		if err := b.invalidation(ctx); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (b *bench) stopAll() {
	b.mu.Lock()
	procs := b.procs
	b.procs = nil
	b.mu.Unlock()
	for _, p := range procs {
		_ = p.Process.Kill() // by PID
	}
	for _, p := range procs {
		_ = p.Wait()
	}
	if b.app != nil {
		b.app.srv.Close()
	}
	if b.clean != nil {
		b.clean()
	}
}

// --- processes -----------------------------------------------------------------

func (b *bench) start(name string, stderr io.Writer, bin string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = b.dir
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(b.dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(b.dir, "config"))
	if stderr == nil {
		f, err := os.Create(filepath.Join(b.dir, name+".log"))
		if err != nil {
			return nil, err
		}
		stderr = f
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	b.mu.Lock()
	b.procs = append(b.procs, cmd)
	b.mu.Unlock()
	return cmd, nil
}

func (b *bench) stop(cmd *exec.Cmd) {
	b.mu.Lock()
	b.procs = slices.DeleteFunc(b.procs, func(p *exec.Cmd) bool { return p == cmd })
	b.mu.Unlock()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

func (b *bench) startRedis() (string, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	_, err = b.start("redis", nil, b.cfg.redisServer, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", b.dir, "--daemonize", "no")
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, err := redisDo(addr, "PING"); err == nil && s == "PONG" {
			return addr, nil
		} else if time.Now().After(deadline) {
			return "", fmt.Errorf("redis-server not answering on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// redisDo sends one command on a new connection and returns the reply as
// text.
func redisDo(addr string, args ...string) (string, error) {
	return testenv.RedisCommand(addr, "", "", args...)
}

// redisCommands is Redis's count of commands processed so far.
func (b *bench) redisCommands() int64 {
	s, err := redisDo(b.redis, "INFO", "stats")
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(`total_commands_processed:(\d+)`).FindStringSubmatch(s)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// fakeApp is the metadata API and the app behind reverse_proxy: GET
// /v1/exports/{id} answers a completed export, DELETE answers 204.
type fakeApp struct {
	srv     *http.Server
	addr    string
	gets    atomic.Int64
	deletes atomic.Int64
}

func startApp(delay time.Duration) (*fakeApp, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &fakeApp{addr: l.Addr().String()}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := strings.CutPrefix(r.URL.Path, "/v1/exports/")
		if !ok || strings.Contains(id, "/") {
			_, _ = io.WriteString(w, "ok")
			return
		}
		if r.Method == http.MethodDelete {
			a.deletes.Add(1)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		a.gets.Add(1)
		if delay > 0 {
			time.Sleep(delay)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"data":{"id":%q,"project_id":"proj_bench","status":"completed","expires_at":null},"meta":{"request_id":"req_app"}}`, id)
	})}
	go func() { _ = a.srv.Serve(l) }()
	return a, nil
}

// site is one export_download site of a node's Caddyfile.
type site struct {
	port  int
	fleet bool
}

func (b *bench) caddyfile(debug bool, sites ...site) string {
	var sb strings.Builder
	sb.WriteString("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n\tgrace_period 1s\n")
	if debug {
		sb.WriteString("\tlog {\n\t\tlevel DEBUG\n\t}\n")
	}
	sb.WriteString("}\n")
	for _, s := range sites {
		fmt.Fprintf(&sb, `
http://127.0.0.1:%d {
	export_download {
		upstream http://%s
		key_prefixes hb_test_
		bucket bench-exports
		object_key exports/{export.project_id}/{id}.csv
		endpoint http://localhost:7070
		path_style
		access_key_id AKIABENCHEXAMPLE0001
		secret_access_key bench/secret/key/not/used/for/anything/real
`, s.port, b.app.addr)
		if s.fleet {
			fmt.Fprintf(&sb, "\t\tfleet {\n\t\t\tredis %s\n\t\t\tsecret %s\n\t\t\tprefix %s\n", b.redis, secret, prefix)
			if b.cfg.fleetTimeout > 0 {
				fmt.Fprintf(&sb, "\t\t\ttimeout %s\n", b.cfg.fleetTimeout)
			}
			sb.WriteString("\t\t}\n")
		}
		fmt.Fprintf(&sb, "\t}\n\treverse_proxy %s\n}\n", b.app.addr)
	}
	return sb.String()
}

// node is a running Caddy process.
type node struct {
	name  string
	cmd   *exec.Cmd
	bases []string // one per site
	out   *logTap
}

func (b *bench) startNode(ctx context.Context, name string, debug bool, tap *logTap, sites ...site) (*node, error) {
	cfg := filepath.Join(b.dir, name+".Caddyfile")
	if err := os.WriteFile(cfg, []byte(b.caddyfile(debug, sites...)), 0o600); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(b.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	if tap == nil {
		tap = &logTap{}
	}
	tap.file = f
	cmd, err := b.start(name, tap, b.cfg.caddy, "run", "--config", cfg, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	n := &node{name: name, cmd: cmd, out: tap}
	for _, s := range sites {
		n.bases = append(n.bases, "http://127.0.0.1:"+strconv.Itoa(s.port))
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, base := range n.bases {
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			resp, err := http.Get(base + "/ready")
			if err == nil {
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s not answering on %s (see %s)", name, base, f.Name())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return n, nil
}

// logTap copies a node's log to its file and hands the lines it watches
// for to onLine.
type logTap struct {
	file   *os.File
	mu     sync.Mutex
	buf    []byte
	onLine func(line []byte)
}

func (t *logTap) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.file != nil {
		_, _ = t.file.Write(p)
	}
	if t.onLine == nil {
		return len(p), nil
	}
	t.buf = append(t.buf, p...)
	for {
		i := slices.Index(t.buf, '\n')
		if i < 0 {
			break
		}
		t.onLine(t.buf[:i])
		t.buf = t.buf[i+1:]
	}
	return len(p), nil
}

// --- requests ------------------------------------------------------------------

var client = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Transport:     &http.Transport{MaxIdleConnsPerHost: 64},
}

type reply struct {
	status int
	cs     string
	took   time.Duration
	at     time.Time // when the answer arrived
}

func do(method, url string) (reply, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	now := time.Now()
	return reply{status: resp.StatusCode, cs: resp.Header.Get("Cache-Status"), took: now.Sub(start), at: now}, nil
}

// download GETs id on base and checks the status and, when want is not
// empty, the Cache-Status.
func download(base, id, want string) (reply, error) {
	r, err := do(http.MethodGet, base+"/v1/exports/"+id+"/download")
	if err != nil {
		return r, err
	}
	if r.status != http.StatusFound {
		return r, fmt.Errorf("GET %s on %s: %d %q, want 302", id, base, r.status, r.cs)
	}
	if want != "" && r.cs != want {
		return r, &otherPathError{got: r.cs, want: want}
	}
	return r, nil
}

// otherPathError is a 302 that took another path than the one measured,
// e.g. a Redis call over the fleet timeout on a busy host ("detail=
// unavailable"): not a broken setup, but not a sample of that path.
type otherPathError struct{ got, want string }

func (e *otherPathError) Error() string {
	return fmt.Sprintf("Cache-Status %q, want %q", e.got, e.want)
}

// skipped counts samples that took another path, by Cache-Status.
type skipped map[string]int

// take reports whether err is nil; an otherPathError is counted and
// reported as false; any other error is returned.
func (s skipped) take(err error) (bool, error) {
	var o *otherPathError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &o):
		s[o.got]++
		return false, nil
	}
	return false, err
}

func (s skipped) String() string {
	if len(s) == 0 {
		return "none"
	}
	var parts []string
	for cs, n := range s {
		parts = append(parts, fmt.Sprintf("%d × %q", n, cs))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

var idSeq atomic.Int64

// newID is an export id no node has seen in this run.
func newID() string {
	return fmt.Sprintf("01935abc-def0-7123-4567-%012x", idSeq.Add(1))
}

// --- 1 and 2: local hit on/off, shared hit vs upstream call ------------------

func (b *bench) hitAndLatency(ctx context.Context, want map[string]bool) error {
	ports := make([]int, 3)
	for i := range ports {
		p, err := testenv.FreePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	// P: fleet on and off side by side in one process; Q: a second node.
	p, err := b.startNode(ctx, "P", false, nil, site{ports[0], true}, site{ports[1], false})
	if err != nil {
		return err
	}
	defer b.stop(p.cmd)
	q, err := b.startNode(ctx, "Q", false, nil, site{ports[2], true})
	if err != nil {
		return err
	}
	defer b.stop(q.cmd)
	time.Sleep(300 * time.Millisecond) // the stream readers connect

	if want["hit"] {
		if err := b.hitOnOff(ctx, p.cmd.Process.Pid, p.bases[0], p.bases[1]); err != nil {
			return err
		}
	}
	if want["latency"] {
		if err := b.latency(ctx, p.bases[0], p.bases[1], q.bases[0]); err != nil {
			return err
		}
	}
	return nil
}

var rpsRE = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

func (b *bench) runWrk(ctx context.Context, url string, d time.Duration) (float64, error) {
	c := b.cfg
	cmd := exec.CommandContext(ctx, c.wrk, "-t", strconv.Itoa(c.threads), "-c", strconv.Itoa(c.connections),
		"-d", fmt.Sprintf("%ds", max(1, int(d.Round(time.Second).Seconds()))), "-H", "Authorization: Bearer "+apiKey, url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("wrk %s: %v\n%s", url, err, out)
	}
	if strings.Contains(string(out), "Non-2xx or 3xx responses") || strings.Contains(string(out), "Socket errors") {
		return 0, fmt.Errorf("wrk %s: errors during the run:\n%s", url, out)
	}
	m := rpsRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("wrk %s: no Requests/sec in:\n%s", url, out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// cpuTicks is the user+system CPU time of process pid, in clock ticks
// (1/100 s on Linux), or -1.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name (field 2) may hold blanks: count from after it.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return -1
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

func (b *bench) hitOnOff(ctx context.Context, pid int, on, off string) error {
	c := b.cfg
	id := newID()
	// Warm both sites: the second answer of each must be a local hit.
	for _, base := range []string{on, off} {
		if _, err := download(base, id, ""); err != nil {
			return err
		}
	}
	for _, base := range []string{on, off} {
		if _, err := download(base, id, csLocalHit); err != nil {
			return err
		}
	}
	url := map[bool]string{true: on + "/v1/exports/" + id + "/download", false: off + "/v1/exports/" + id + "/download"}
	for _, fl := range []bool{true, false} {
		if _, err := b.runWrk(ctx, url[fl], c.warmup); err != nil {
			return err
		}
	}
	gets := b.app.gets.Load()
	fmt.Printf("## 1. Local hit, fleet tier on vs off (one Caddy process, two sites; wrk -t%d -c%d, %v per run)\n\n",
		c.threads, c.connections, c.duration)
	fmt.Printf("CPU is the Caddy process's user+system time per request during the run (less sensitive than req/s to\n" +
		"the other processes of a shared machine).\n\n")
	fmt.Printf("| round | order | fleet on (req/s) | fleet off (req/s) | on/off req/s | CPU on (µs/req) | CPU off (µs/req) | off/on CPU | Redis commands during the on run |\n|---|---|---|---|---|---|---|---|---|\n")
	var ratios, cpuRatios, ons, offs, cpuOns, cpuOffs []float64
	for r := range c.rounds {
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		rps, cpu := map[bool]float64{}, map[bool]float64{}
		var cmds int64
		for _, fl := range order {
			before, ticks := b.redisCommands(), cpuTicks(pid)
			v, err := b.runWrk(ctx, url[fl], c.duration)
			if err != nil {
				return err
			}
			used := cpuTicks(pid) - ticks
			if fl {
				cmds = b.redisCommands() - before
			}
			rps[fl] = v
			// 100 ticks a second on Linux.
			cpu[fl] = float64(used) * 1e4 / (v * float64(max(1, int(c.duration.Round(time.Second).Seconds()))))
		}
		ratio, cpuRatio := rps[true]/rps[false], cpu[false]/cpu[true]
		ratios, ons, offs = append(ratios, ratio), append(ons, rps[true]), append(offs, rps[false])
		cpuRatios, cpuOns, cpuOffs = append(cpuRatios, cpuRatio), append(cpuOns, cpu[true]), append(cpuOffs, cpu[false])
		names := map[bool]string{true: "on", false: "off"}
		fmt.Printf("| %d | %s, %s | %.0f | %.0f | %.3f | %.1f | %.1f | %.3f | %d |\n", r+1, names[order[0]], names[order[1]],
			rps[true], rps[false], ratio, cpu[true], cpu[false], cpuRatio, cmds)
	}
	fmt.Printf("\nat the end: %s", loadavg())
	fmt.Printf("median over %d paired rounds: fleet on %.0f req/s, fleet off %.0f req/s, ratio on/off %.3f (min %.3f, max %.3f);\n",
		len(ratios), median(ons), median(offs), median(ratios), slices.Min(ratios), slices.Max(ratios))
	fmt.Printf("CPU per request: fleet on %.1f µs, fleet off %.1f µs, ratio off/on %.3f (min %.3f, max %.3f); 1 means no difference\n",
		median(cpuOns), median(cpuOffs), median(cpuRatios), slices.Min(cpuRatios), slices.Max(cpuRatios))
	fmt.Printf("upstream calls during the rounds: %d (every answer was a local hit)\n", b.app.gets.Load()-gets)
	fmt.Printf("Redis commands during an on run are the two nodes' stream readers (a blocking XREAD every 500ms, a\n" +
		"MULTI/XINFO/EXEC read and an incarnation check once a second): none is caused by a hit.\n\n")
	return nil
}

func (b *bench) latency(ctx context.Context, pFleet, pPlain, qFleet string) error {
	n := b.cfg.samples
	kinds := []string{"local hit (Q)", "shared hit (Q, decision from P)", "upstream call, fleet on (Q: lease, app, store)", "upstream call, fleet off (P)"}
	lat := make([][]time.Duration, len(kinds))
	skip := skipped{}
	// sample measures one kind; a request that took another path is
	// counted in skip and measured nowhere.
	sample := func(kind int, base, id, want string) (bool, error) {
		r, err := download(base, id, want)
		ok, err := skip.take(err)
		if ok && kind >= 0 {
			lat[kind] = append(lat[kind], r.took)
		}
		return ok, err
	}
	for range n {
		if err := ctx.Err(); err != nil {
			return err
		}
		shared := newID()
		if ok, err := sample(-1, pFleet, shared, csSharedStored); err != nil {
			return err
		} else if ok {
			if ok, err := sample(1, qFleet, shared, csSharedHit); err != nil {
				return err
			} else if ok {
				if _, err := sample(0, qFleet, shared, csLocalHit); err != nil {
					return err
				}
			}
		}
		if _, err := sample(2, qFleet, newID(), csSharedStored); err != nil {
			return err
		}
		if _, err := sample(3, pPlain, newID(), csPlainStored); err != nil {
			return err
		}
	}
	fmt.Printf("## 2. Shared hit vs upstream call (client-side latency, one request at a time, %d of each, interleaved)\n\n", n)
	fmt.Printf("| kind | samples | p50 | p90 | p99 | mean |\n|---|---|---|---|---|---|\n")
	for i, k := range kinds {
		s := summarize(lat[i])
		fmt.Printf("| %s | %d | %s | %s | %s | %s |\n", k, len(lat[i]), ms(s.p50), ms(s.p90), ms(s.p99), ms(s.mean))
	}
	fmt.Printf("\nat the end: %s", loadavg())
	fmt.Printf("samples not measured because a request took another path (a Redis call over the fleet timeout on a busy host): %s\n", skip)
	up, sh := summarize(lat[2]), summarize(lat[1])
	fmt.Printf("upstream call (fleet on) / shared hit, p50: %.2f; the fake metadata API answers in %v on loopback,\n"+
		"so a real app's own latency adds to every upstream call and to nothing else.\n\n", float64(up.p50)/float64(sh.p50), b.cfg.appDelay)
	return nil
}

// --- 3: invalidation latency over N nodes -------------------------------------

type applied struct {
	node    int
	at      time.Time
	entries int
}

// appliedLog is the part of a "fleet invalidation applied" line read here.
type appliedLog struct {
	TS        float64  `json:"ts"`
	Msg       string   `json:"msg"`
	ExportIDs []string `json:"export_ids"`
	Entries   int      `json:"entries"`
}

type invalidationWatch struct {
	mu     sync.Mutex
	byID   map[string][]applied
	flaps  []int // per node: "invalidation stream unreachable" warnings
	notify chan struct{}
}

func (w *invalidationWatch) tap(i int) *logTap {
	return &logTap{onLine: func(line []byte) {
		switch {
		case msgOf(line) == "fleet invalidation applied":
			var l appliedLog
			if json.Unmarshal(line, &l) != nil {
				return
			}
			at := time.Unix(0, int64(math.Round(l.TS*1e9)))
			w.mu.Lock()
			for _, id := range l.ExportIDs {
				w.byID[id] = append(w.byID[id], applied{node: i, at: at, entries: l.Entries})
			}
			w.mu.Unlock()
			select {
			case w.notify <- struct{}{}:
			default:
			}
		case msgOf(line) == "fleet: invalidation stream unreachable, retrying":
			w.mu.Lock()
			w.flaps[i]++
			w.mu.Unlock()
		}
	}}
}

var msgRE = regexp.MustCompile(`"msg":"((?:[^"\\]|\\.)*)"`)

func msgOf(line []byte) string {
	if m := msgRE.FindSubmatch(line); m != nil {
		return string(m[1])
	}
	return ""
}

func (b *bench) invalidation(ctx context.Context) error {
	c := b.cfg
	w := &invalidationWatch{byID: map[string][]applied{}, flaps: make([]int, c.nodes), notify: make(chan struct{}, 1)}
	nodes := make([]*node, c.nodes)
	errs := make([]error, c.nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		port, err := testenv.FreePort()
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i], errs[i] = b.startNode(ctx, fmt.Sprintf("node%02d", i), true, w.tap(i), site{port, true})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	defer func() {
		for _, n := range nodes {
			b.stop(n.cmd)
		}
	}()
	// Every stream reader up before the first DELETE.
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		for !strings.Contains(readFile(n.out.file.Name()), `"fleet: stream reader up"`) {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: the stream reader did not come up", n.name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	var from2xx, fromSend, perNode []time.Duration
	var deleteTook []time.Duration
	burstCalls := map[int64]int{}
	notDropped := 0
	for k := range c.invalidations {
		if err := ctx.Err(); err != nil {
			return err
		}
		id := newID()
		// A cold burst over every node: one request each, at once.
		gets := b.app.gets.Load()
		var werr error
		var mu sync.Mutex
		var bw sync.WaitGroup
		for _, n := range nodes {
			bw.Add(1)
			go func() {
				defer bw.Done()
				if _, err := download(n.bases[0], id, ""); err != nil {
					mu.Lock()
					werr = err
					mu.Unlock()
				}
			}()
		}
		bw.Wait()
		if werr != nil {
			return werr
		}
		burstCalls[b.app.gets.Load()-gets]++
		// A random pause: not in step with the readers' 500ms heartbeat,
		// and at times long enough for the stream to be idle, as it mostly
		// is in a real fleet.
		time.Sleep(5*time.Millisecond + time.Duration(rand.Int64N(int64(max(c.idle, time.Millisecond)))))

		origin := k % len(nodes)
		sent := time.Now()
		r, err := do(http.MethodDelete, nodes[origin].bases[0]+"/v1/exports/"+id)
		if err != nil {
			return err
		}
		if r.status != http.StatusNoContent {
			return fmt.Errorf("DELETE through %s: %d", nodes[origin].name, r.status)
		}
		deleteTook = append(deleteTook, r.took)
		wait := time.NewTimer(5 * time.Second)
		var got []applied
		for {
			w.mu.Lock()
			got = slices.Clone(w.byID[id])
			w.mu.Unlock()
			if len(got) >= len(nodes)-1 {
				break
			}
			select {
			case <-w.notify:
				continue
			case <-wait.C:
			case <-ctx.Done():
				return ctx.Err()
			}
			break
		}
		wait.Stop()
		if len(got) < len(nodes)-1 {
			return fmt.Errorf("invalidation %d of %s: applied on %d of %d other nodes within 5s", k, id, len(got), len(nodes)-1)
		}
		var last time.Time
		for _, a := range got {
			if a.node == origin {
				return fmt.Errorf("the origin node received its own invalidation")
			}
			if a.entries == 0 {
				notDropped++
			}
			if a.at.After(last) {
				last = a.at
			}
			perNode = append(perNode, a.at.Sub(r.at))
		}
		from2xx = append(from2xx, last.Sub(r.at))
		fromSend = append(fromSend, last.Sub(sent))
	}
	a, s, p, d := summarize(from2xx), summarize(fromSend), summarize(perNode), summarize(deleteTook)
	fmt.Printf("## 3. Invalidation latency, DELETE-2xx to dropped on every node (%d nodes, %d invalidations, a random pause of up to %v before each)\n\n",
		c.nodes, c.invalidations, c.idle)
	fmt.Printf("| measured from | to | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n")
	fmt.Printf("| the DELETE's 2xx at the client | the last of the %d other nodes dropped it | %s | %s | %s | %s |\n", c.nodes-1, ms(a.p50), ms(a.p90), ms(a.p99), ms(a.max))
	fmt.Printf("| the DELETE sent by the client | the last of the %d other nodes dropped it | %s | %s | %s | %s |\n", c.nodes-1, ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max))
	fmt.Printf("| the DELETE's 2xx at the client | each other node dropped it | %s | %s | %s | %s |\n", ms(p.p50), ms(p.p90), ms(p.p99), ms(p.max))
	fmt.Printf("| the DELETE sent | its 2xx at the client (app round trip + local drop + publish) | %s | %s | %s | %s |\n\n", ms(d.p50), ms(d.p90), ms(d.p99), ms(d.max))
	fmt.Printf("at the end: %s", loadavg())
	fmt.Printf("A negative time: the node had dropped the export before the client saw the 2xx (the origin publishes\n" +
		"before it answers).\n")
	fmt.Printf("nodes that applied an invalidation with no entry to drop: %d (each round first caches the export on every node)\n", notDropped)
	w.mu.Lock()
	total := 0
	for _, f := range w.flaps {
		total += f
	}
	w.mu.Unlock()
	fmt.Printf("\"invalidation stream unreachable\" warnings during the run (Redis was up throughout): %d over %d nodes\n", total, c.nodes)
	keys := make([]int64, 0, len(burstCalls))
	for k := range burstCalls {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d call(s): %d bursts", k, burstCalls[k]))
	}
	fmt.Printf("cold bursts (one request on each of the %d nodes at once, a new export each round), upstream calls per burst: %s\n\n",
		c.nodes, strings.Join(parts, ", "))
	return nil
}

// --- numbers ----------------------------------------------------------------

type summary struct{ p50, p90, p99, max, mean time.Duration }

func summarize(d []time.Duration) summary {
	if len(d) == 0 {
		return summary{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(math.Ceil(p*float64(len(s))))-1)] }
	var sum time.Duration
	for _, v := range s {
		sum += v
	}
	return summary{p50: q(.50), p90: q(.90), p99: q(.99), max: s[len(s)-1], mean: sum / time.Duration(len(s))}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "\n"
	}
	return "load average " + strings.Join(strings.Fields(string(b))[:3], " ") + "\n"
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}
