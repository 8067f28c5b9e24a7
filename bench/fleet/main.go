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
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
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
