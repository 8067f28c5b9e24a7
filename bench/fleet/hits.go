package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

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
