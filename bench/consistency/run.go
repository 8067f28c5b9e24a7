package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/exportedge/caddy-export-download/internal/checker"
)

// config is one run's settings; main's flags and the short test fill it.
type config struct {
	caddy       string // the caddy binary; empty: build ./cmd/caddy
	redisServer string
	dir         string // configs and logs

	nodes        int
	fleetExtra   string // more lines of the fleet block, ";" or newline between them
	fleetTimeout time.Duration
	inband       bool // make in-band revocations (RFC 9875 Cache-Group-Invalidation)
	bound        time.Duration

	warmup   time.Duration // reads before recording starts
	quiet    time.Duration // the fault-free phase
	duration time.Duration // recorded time in all (rounds 0): faults until it is spent
	rounds   int           // >0: this many rounds of every fault kind, in random order
	faults   []checker.FaultKind
	faultLen time.Duration // each fault lasts faultLen to 1.5×faultLen
	gap      time.Duration // healthy gap after each, gap to 1.5×gap

	readers     int
	rate        float64       // reads/s, all readers together
	quietEvery  time.Duration // mean time between invalidations in the fault-free phase
	every       time.Duration // the same from the first fault on
	exports     int
	keys        int
	probeShare  float64
	probeWindow time.Duration
	seed        uint64
}

// defaults is the configuration of `go run ./bench/consistency` without
// flags.
func defaults() config {
	return config{
		redisServer: "redis-server",
		nodes:       3,
		// Above the module's default (50ms): on a shared 2-core machine a
		// Redis call can take longer, and each one that times out opens the
		// breaker, which is noise here.
		fleetTimeout: 250 * time.Millisecond,
		bound:        time.Second,
		warmup:       4 * time.Second,
		quiet:        10 * time.Second,
		duration:     10 * time.Minute,
		faults:       checker.FaultKinds,
		faultLen:     3 * time.Second,
		gap:          4 * time.Second,
		readers:      6,
		rate:         240,
		// Each invalidation costs misses (a new export or key takes the
		// place of the invalidated one, and is cold on every node): fewer
		// of them in the fault-free phase, where the hit ratio is measured.
		quietEvery:  4 * time.Second,
		every:       500 * time.Millisecond,
		exports:     16,
		keys:        6,
		probeShare:  0.3,
		probeWindow: 6 * time.Second,
	}
}

// runInfo is what a run tells besides its history.
type runInfo struct {
	caddyVersion, redisVersion string
	restarts, reloads          int
	seed                       uint64
}

// runChecker starts everything, runs the workload with its faults and
// returns the history. Every process it started is stopped when it
// returns; logs stay in cfg.dir. progress gets a line per phase.
func runChecker(ctx context.Context, cfg config, progress io.Writer) (_ *checker.History, info runInfo, err error) {
	info.seed = cfg.seed
	if cfg.seed == 0 {
		info.seed = rand.Uint64()
	}
	if cfg.nodes < 1 || cfg.readers < 1 || cfg.rate <= 0 || cfg.exports < 2 || cfg.keys < 1 || len(cfg.faults) == 0 {
		return nil, info, errors.New("want at least 1 node, 1 reader, a positive rate, 2 exports, 1 key and 1 fault kind")
	}
	redisBin, lerr := exec.LookPath(cfg.redisServer)
	if lerr != nil {
		return nil, info, fmt.Errorf("%s not found: install Debian's redis-server package (apt-get install redis-server)", cfg.redisServer)
	}
	if cfg.caddy == "" {
		fmt.Fprintf(progress, "building ./cmd/caddy\n")
		if cfg.caddy, err = buildCaddy(ctx, cfg.dir); err != nil {
			return nil, info, err
		}
	}
	if out, err := exec.Command(redisBin, "--version").Output(); err == nil {
		info.redisVersion = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command(cfg.caddy, "version").Output(); err == nil {
		info.caddyVersion = strings.TrimSpace(string(out))
	}

	redis, err := startRedis(redisBin, filepath.Join(cfg.dir, "redis"))
	if err != nil {
		return nil, info, err
	}
	defer redis.close()
	app, err := startApp()
	if err != nil {
		return nil, info, err
	}
	defer app.close()
	ncfg := nodeConfig{app: app.Addr, fleetTimeout: cfg.fleetTimeout, fleetExtra: cfg.fleetExtra}
	nodes := make([]*node, cfg.nodes)
	errs := make([]error, cfg.nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i], errs[i] = startNode(ctx, i, cfg.caddy, cfg.dir, ncfg, redis.Addr)
		}()
	}
	wg.Wait()
	defer func() {
		for _, n := range nodes {
			if n != nil {
				info.restarts += n.restarts
				info.reloads += n.reloads
				n.close()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return nil, info, err
	}
	fmt.Fprintf(progress, "%d nodes up (logs in %s); warming up: every pair once on every node, then reads for %v\n",
		len(nodes), cfg.dir, cfg.warmup)

	rec := &recorder{}
	w := &workload{nodes: nodes, app: app, rec: rec, client: newClient(),
		pool:    newPool(info.seed, cfg.nodes, cfg.exports, cfg.keys, cfg.probeShare, cfg.probeWindow),
		readers: cfg.readers, rate: cfg.rate, seed: info.seed,
		invRng: rand.New(rand.NewPCG(info.seed, 0x696e76))}
	defer w.client.CloseIdleConnections()
	w.warmAll()
	stopReaders, stopInvalidations := make(chan struct{}), make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		w.runReaders(stopReaders)
	}()
	stopAll := func() {
		close(stopInvalidations)
		close(stopReaders)
		bg.Wait()
	}
	if err := sleepCtx(ctx, cfg.warmup); err != nil {
		stopAll()
		return nil, info, err
	}

	w.every.Store(int64(cfg.quietEvery))
	epoch := time.Now()
	rec.start(epoch)
	app.epoch.Store(&epoch)
	bg.Add(1)
	go func() {
		defer bg.Done()
		w.runInvalidations(stopInvalidations, cfg.inband)
	}()
	fmt.Fprintf(progress, "recording; fault-free phase for %v\n", cfg.quiet)
	err = sleepCtx(ctx, cfg.quiet)
	f := &faulter{w: w, redis: redis, cfg: cfg, rng: rand.New(rand.NewPCG(info.seed, 0x666175))}
	if err == nil {
		w.every.Store(int64(cfg.every))
		err = f.inject(ctx, epoch, progress)
	}
	stopAll()
	length := time.Since(epoch)

	h := &checker.History{Epoch: epoch.Round(0), Length: length}
	rec.mu.Lock()
	h.Reads, h.Invalidations, h.Faults = rec.reads, rec.invs, rec.faults
	rec.mu.Unlock()
	slices.SortFunc(h.Reads, func(a, b checker.Read) int { return cmp.Compare(a.Start, b.Start) })
	h.UpstreamCalls = app.upstreamCalls()
	return h, info, err
}

// faulter injects the faults, one at a time, each followed by a healthy
// gap.
type faulter struct {
	w     *workload
	redis *redisServer
	cfg   config
	rng   *rand.Rand
}

func (f *faulter) jitter(d time.Duration) time.Duration {
	return d + time.Duration(f.rng.Int64N(int64(d/2)+1))
}

// inject runs rounds of every fault kind in a random order: cfg.rounds
// of them, or as many as fit in cfg.duration.
func (f *faulter) inject(ctx context.Context, epoch time.Time, progress io.Writer) error {
	for round := 0; f.cfg.rounds == 0 || round < f.cfg.rounds; round++ {
		kinds := slices.Clone(f.cfg.faults)
		f.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		for _, kind := range kinds {
			if f.cfg.rounds == 0 && time.Since(epoch)+f.cfg.faultLen+f.cfg.gap > f.cfg.duration {
				return nil
			}
			fault, err := f.one(ctx, kind)
			if fault.Kind != "" {
				f.w.rec.fault(fault)
				node := "redis-server"
				if fault.Node >= 0 {
					node = fmt.Sprintf("node%d", fault.Node)
				}
				fmt.Fprintf(progress, "%7.1fs %s on %s for %v\n", fault.Start.Seconds(), kind, node,
					(fault.End - fault.Start).Round(10*time.Millisecond))
			}
			if err != nil {
				return fmt.Errorf("%s: %w", kind, err)
			}
			if err := sleepCtx(ctx, f.jitter(f.cfg.gap)); err != nil {
				return err
			}
		}
	}
	return nil
}

// one injects one fault and returns its window.
func (f *faulter) one(ctx context.Context, kind checker.FaultKind) (checker.Fault, error) {
	w := f.w
	n := w.nodes[f.rng.IntN(len(w.nodes))]
	fault := checker.Fault{Kind: kind, Node: n.i}
	length := f.jitter(f.cfg.faultLen)
	begin := func() {
		now := time.Now()
		fault.Start, fault.Wall = w.rec.since(now), now.Round(0)
	}
	end := func() { fault.End = w.rec.since(time.Now()) }
	var err error
	switch kind {
	case checker.RedisRestart:
		fault.Node = -1
		begin()
		f.redis.kill()
		err = f.exercise(ctx, length, n, false)
		if rerr := f.redis.restart(); rerr != nil {
			err = rerr
		}
		end()
	case checker.LinkBlackhole, checker.LinkFreeze:
		begin()
		if kind == checker.LinkBlackhole {
			n.proxy.Blackhole()
		} else {
			n.proxy.Freeze()
		}
		err = f.exercise(ctx, length, n, true)
		n.proxy.Resume()
		end()
	case checker.NodeKill:
		// The node forwards a few DELETEs and dies as soon as the last
		// 2xx has reached the client.
		begin()
		for range 1 + f.rng.IntN(3) {
			w.invalidate(checker.Delete, n)
		}
		n.down.Store(true)
		n.kill()
		err = sleepCtx(ctx, length)
		if rerr := n.restart(context.WithoutCancel(ctx)); rerr != nil {
			err = rerr
		} else {
			n.down.Store(false)
		}
		end()
	case checker.Reload:
		// Reloads that change the fleet block (its timeout) while DELETEs
		// flow through the node.
		begin()
		stop := make(chan struct{})
		var dels sync.WaitGroup
		dels.Add(1)
		go func() {
			defer dels.Done()
			for {
				w.invalidate(checker.Delete, n)
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(100+rand.IntN(100)) * time.Millisecond):
				}
			}
		}()
		deadline := time.Now().Add(length)
		for err == nil {
			timeout := f.cfg.fleetTimeout
			if n.timeout == timeout {
				timeout += 50 * time.Millisecond
			}
			err = n.reload(ctx, timeout)
			if err != nil || !time.Now().Before(deadline) {
				break
			}
			err = sleepCtx(ctx, min(time.Until(deadline), length/3))
		}
		close(stop)
		dels.Wait()
		end()
	default:
		return checker.Fault{}, fmt.Errorf("unknown fault kind %q", kind)
	}
	return fault, err
}

// exercise makes sure a fault meets invalidations, whatever the random
// ones do: shortly after it begins, a DELETE and a key revocation through
// another node than n, and, when n's own link is cut, a DELETE through n
// (the exception's case). It returns after length.
func (f *faulter) exercise(ctx context.Context, length time.Duration, n *node, throughN bool) error {
	w := f.w
	others := slices.DeleteFunc(slices.Clone(w.nodes), func(o *node) bool { return o == n || o.down.Load() })
	if len(others) == 0 {
		others = []*node{n}
	}
	other := others[f.rng.IntN(len(others))]
	revoke := checker.Purge
	if f.cfg.inband && f.rng.IntN(2) == 0 {
		revoke = checker.InBand
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if sleepCtx(ctx, 300*time.Millisecond) != nil {
			return
		}
		w.invalidate(checker.Delete, other)
		w.invalidate(revoke, other)
		if throughN {
			w.invalidate(checker.Delete, n)
		}
	}()
	err := sleepCtx(ctx, length)
	<-done
	return err
}
