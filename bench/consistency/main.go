// Command consistency checks the fleet tier's bounded-staleness promise
// from outside, in the spirit of Jepsen's checkers (Elle) and Meta's
// Polaris: real `caddy run` nodes sharing one real redis-server (each node
// through its own TCP proxy, so that one node's link can be cut alone), a
// fake app in this process, readers downloading through every node while
// exports are deleted and keys revoked, and faults injected one at a time.
// It records every answer and counts each 302 that started later than the
// bound after an invalidation covering it was acknowledged
// (internal/checker). See bench/consistency/README.md.
//
//	go run ./bench/consistency -duration 10m -nodes 3 -fleet-extra 'max_staleness 1s' -inband
//
// It prints one row per fault kind and exits 1 when the promise was broken
// (a late 302, a 5xx, or a fault-free hit ratio under -min-hit-ratio).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/exportedge/caddy-export-download/internal/checker"
)

func main() { os.Exit(mainCode()) }

// mainCode is main with an exit code, so that deferred cleanups run
// before the program exits: 0 the promise held, 1 it did not, 2 the run
// could not be made.
func mainCode() int {
	c := defaults()
	var faults, history string
	var keep bool
	var worst int
	var minHits float64
	flag.StringVar(&c.caddy, "caddy", "", "the caddy binary with export_download (default: go build ./cmd/caddy of this module)")
	flag.StringVar(&c.redisServer, "redis-server", c.redisServer, "the redis-server binary")
	flag.StringVar(&c.dir, "dir", "", "directory for configs and logs, kept (default: a temporary one, removed unless -keep)")
	flag.BoolVar(&keep, "keep", false, "keep the temporary directory (node and Redis logs)")
	flag.IntVar(&c.nodes, "nodes", c.nodes, "Caddy nodes")
	flag.StringVar(&c.fleetExtra, "fleet-extra", "", "more lines for every node's fleet block, separated by ';' (e.g. 'max_staleness 1s')")
	flag.DurationVar(&c.fleetTimeout, "fleet-timeout", c.fleetTimeout, "the fleet block's timeout (a reload fault switches it to +50ms and back)")
	flag.BoolVar(&c.inband, "inband", false, "also revoke keys in-band: POST /v1/keys/{id}/revoke through a node, answered with Cache-Group-Invalidation (RFC 9875); only for a product that honours it")
	flag.DurationVar(&c.bound, "bound", c.bound, "the promise's bound: the configured max_staleness")
	flag.DurationVar(&c.warmup, "warmup", c.warmup, "reads before recording starts")
	flag.DurationVar(&c.quiet, "quiet", c.quiet, "the fault-free phase, where the hit ratio is measured")
	flag.DurationVar(&c.duration, "duration", c.duration, "recorded time in all (fault-free phase, then faults until it is spent)")
	flag.IntVar(&c.rounds, "rounds", 0, "instead of -duration: this many rounds of every fault kind (each in a random order)")
	flag.StringVar(&faults, "faults", kindsString(c.faults), "fault kinds to inject, comma-separated")
	flag.DurationVar(&c.faultLen, "fault", c.faultLen, "how long each fault lasts (up to 1.5×)")
	flag.DurationVar(&c.gap, "gap", c.gap, "healthy gap after each fault (up to 1.5×)")
	flag.IntVar(&c.readers, "readers", c.readers, "reader goroutines")
	flag.Float64Var(&c.rate, "rate", c.rate, "reads per second, all readers together")
	flag.DurationVar(&c.quietEvery, "quiet-every", c.quietEvery, "mean time between invalidations in the fault-free phase (exponential)")
	flag.DurationVar(&c.every, "every", c.every, "mean time between invalidations from the first fault on (exponential)")
	flag.IntVar(&c.exports, "exports", c.exports, "live exports (Zipf popularity)")
	flag.IntVar(&c.keys, "keys", c.keys, "live API keys (uniform popularity)")
	flag.Float64Var(&c.probeShare, "probe-share", c.probeShare, "share of reads that ask for what was invalidated lately")
	flag.DurationVar(&c.probeWindow, "probe-window", c.probeWindow, "how long after its invalidation an export or key is still asked for")
	flag.Uint64Var(&c.seed, "seed", 0, "random seed (0: a new one, printed)")
	flag.IntVar(&worst, "worst", 10, "late 302s listed in detail")
	flag.Float64Var(&minHits, "min-hit-ratio", 0.9, "the least fault-free hit ratio that passes")
	flag.StringVar(&history, "history", "", "write the recorded history as JSON to this file")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("consistency: ")
	var err error
	if c.faults, err = parseKinds(faults); err != nil {
		log.Print(err)
		return 2
	}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "consistency-"); err != nil {
			log.Print(err)
			return 2
		}
		if !keep {
			defer os.RemoveAll(c.dir)
		}
	} else if err := os.MkdirAll(c.dir, 0o755); err != nil {
		log.Print(err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, info, err := runChecker(ctx, c, os.Stderr)
	if err != nil {
		log.Print(err)
		if h == nil {
			return 2
		}
		log.Print("the report covers what was recorded until then")
	}
	if history != "" {
		if err := writeHistory(history, h); err != nil {
			log.Print(err)
		}
	}
	rep := checker.Check(h, c.bound)
	writeReport(os.Stdout, c, info, rep, worst)
	if problems := rep.Problems(minHits); len(problems) > 0 {
		fmt.Printf("\nFAIL: the promise does not hold:\n- %s\n", strings.Join(problems, "\n- "))
		return 1
	}
	if err != nil {
		return 2
	}
	fmt.Printf("\nPASS: no late 302, no 5xx, fault-free hit ratio at least %.0f%%\n", 100*minHits)
	return 0
}

// writeReport prints the run's settings, the table and the late 302s.
func writeReport(w io.Writer, c config, info runInfo, rep checker.Report, worst int) {
	extra := c.fleetExtra
	if extra == "" {
		extra = "(none)"
	}
	fmt.Fprintf(w, "# fleet consistency check, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "machine: %d CPUs, %s", runtime.NumCPU(), loadavg())
	fmt.Fprintf(w, "caddy: %s; redis: %s\n", info.caddyVersion, info.redisVersion)
	fmt.Fprintf(w, "nodes: %d; fleet timeout %v; fleet extra lines: %s; in-band revocations: %v\n", c.nodes, c.fleetTimeout, extra, c.inband)
	fmt.Fprintf(w, "bound (max_staleness): %v; reads: %d readers, %.0f/s, %d exports (Zipf), %d keys, %.0f%% asking for what was invalidated in the last %v\n",
		c.bound, c.readers, c.rate, c.exports, c.keys, 100*c.probeShare, c.probeWindow)
	fmt.Fprintf(w, "invalidations every %v on average (fault-free phase: %v); faults of %v–%v, healthy gaps of %v–%v; node restarts %d, reloads %d; seed %d\n\n",
		c.every, c.quietEvery, c.faultLen, c.faultLen*3/2, c.gap, c.gap*3/2, info.restarts, info.reloads, info.seed)
	_ = rep.WriteTable(w, worst)
	fmt.Fprintf(w, "\nA phase is a fault's window and the healthy gap after it; \"none\" is the fault-free phase before the first fault.\n"+
		"answers and late 302s count by when the read started, invalidations by when they were acknowledged. app calls:\n"+
		"metadata GETs the app received while the faults of that kind were in effect. hit ratio: Cache-Status %q\n"+
		"among reads of pairs not invalidated yet, through a node that had answered the pair before.\n", checker.HitCacheStatus)
}

func kindsString(kinds []checker.FaultKind) string {
	s := make([]string, len(kinds))
	for i, k := range kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ",")
}

func parseKinds(s string) ([]checker.FaultKind, error) {
	var out []checker.FaultKind
	for _, f := range strings.Split(s, ",") {
		k := checker.FaultKind(strings.TrimSpace(f))
		if k == "" {
			continue
		}
		known := false
		for _, kk := range checker.FaultKinds {
			known = known || kk == k
		}
		if !known {
			return nil, fmt.Errorf("-faults: unknown fault kind %q (known: %s)", k, kindsString(checker.FaultKinds))
		}
		out = append(out, k)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-faults: name at least one of %s", kindsString(checker.FaultKinds))
	}
	return out, nil
}

func writeHistory(name string, h *checker.History) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := json.NewEncoder(f).Encode(h); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "\n"
	}
	return "load average " + strings.Join(strings.Fields(string(b))[:3], " ") + "\n"
}
