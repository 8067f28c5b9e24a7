package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/checker"
)

// The short run's product-dependent settings: the bound the tests use and
// in-band invalidations (RFC 9875). CONSISTENCY_FLEET_EXTRA (lines
// separated by ";") and CONSISTENCY_INBAND (true/false) override them, e.g.
// to show that the checker finds late answers with the bound off
// (CONSISTENCY_FLEET_EXTRA='max_staleness off').
const (
	ciFleetExtra = "max_staleness 1s"
	ciInband     = true
)

// TestConsistencyShort is the checker's short run (about a minute, every
// fault kind once, plus building Caddy): it fails on any late 302, any
// 5xx, or a fault-free hit ratio under 90%.
func TestConsistencyShort(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found: install Debian's redis-server package (apt-get install redis-server) or run ./test.sh")
	}
	c := defaults()
	c.fleetExtra, c.inband = ciFleetExtra, ciInband
	if v, ok := os.LookupEnv("CONSISTENCY_FLEET_EXTRA"); ok {
		c.fleetExtra = v
	}
	if v, ok := os.LookupEnv("CONSISTENCY_INBAND"); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			t.Fatalf("CONSISTENCY_INBAND=%q: want true or false", v)
		}
		c.inband = b
	}
	c.dir = t.TempDir()
	c.rounds = 1
	c.warmup, c.quiet = 3*time.Second, 10*time.Second
	c.faultLen, c.gap = 2500*time.Millisecond, 3500*time.Millisecond
	c.probeWindow = 8 * time.Second

	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-30*time.Second))
		defer cancel()
	}
	var progress bytes.Buffer
	h, info, err := runChecker(ctx, c, &progress)
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		logNodeTails(t, c.dir)
		t.Fatal(err)
	}
	rep := checker.Check(h, c.bound)
	var table strings.Builder
	writeReport(&table, c, info, rep, 10)
	t.Logf("report:\n%s", table.String())

	// The run itself must have been able to see a late answer: every fault
	// kind injected once, invalidations acknowledged, and answers the
	// bound applies to.
	for _, k := range checker.FaultKinds {
		if row, ok := rep.Row(string(k)); !ok || row.Faults != 1 {
			t.Errorf("fault %s injected %d times, want once", k, row.Faults)
		}
	}
	if rep.Total.Invalidations == 0 || rep.Total.Checked == 0 {
		t.Errorf("%d invalidations acknowledged, %d answers checked against them: the run could not have found a late 302",
			rep.Total.Invalidations, rep.Total.Checked)
	}
	for _, p := range rep.Problems(0.9) {
		t.Error(p)
	}
	if t.Failed() && rep.Total.Late == 0 {
		logNodeTails(t, c.dir)
	}
}

func logNodeTails(t *testing.T, dir string) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "node*", "caddy.log"))
	for _, l := range logs {
		t.Logf("%s (tail):\n%s", l, tailFile(l, 30))
	}
}

func TestParseKinds(t *testing.T) {
	got, err := parseKinds(" link-freeze, redis-restart ,")
	if err != nil || len(got) != 2 || got[0] != checker.LinkFreeze || got[1] != checker.RedisRestart {
		t.Errorf("parseKinds = %v, %v", got, err)
	}
	for _, bad := range []string{"", "link-freez", ","} {
		if _, err := parseKinds(bad); err == nil {
			t.Errorf("parseKinds(%q): no error", bad)
		}
	}
}

func TestCaddyfileFleetExtraLines(t *testing.T) {
	n := &node{adminPort: 2019, port: 8080, redisAddr: "127.0.0.1:6390",
		cfg: nodeConfig{app: "127.0.0.1:9", fleetExtra: "max_staleness 1s; lock_wait 1s\n"}}
	got := n.caddyfile(300 * time.Millisecond)
	want := "\t\tfleet {\n\t\t\tredis 127.0.0.1:6390\n\t\t\tsecret " + fleetSecret + "\n\t\t\tprefix " + fleetPrefix +
		"\n\t\t\ttimeout 300ms\n\t\t\tmax_staleness 1s\n\t\t\tlock_wait 1s\n\t\t}\n"
	if !strings.Contains(got, want) {
		t.Errorf("fleet block not found:\n%s\nwant:\n%s", got, want)
	}
	for _, w := range []string{"admin 127.0.0.1:2019", "http://127.0.0.1:8080 {", "reverse_proxy 127.0.0.1:9"} {
		if !strings.Contains(got, w) {
			t.Errorf("Caddyfile lacks %q:\n%s", w, got)
		}
	}
}

func TestPoolProbesThroughNodesThatRedirected(t *testing.T) {
	p := newPool(1, 3, 4, 2, 1, time.Minute) // every read a probe once something is gone
	rng := rand.New(rand.NewPCG(2, 3))
	zipf := newZipf(rng, len(p.exports))
	if node, e, k := p.pick(rng, zipf); node != -1 || !p.live[e] || !p.live[k] {
		t.Fatalf("nothing gone yet: pick = %d %s %s, want a live pair on any node", node, e, k)
	}
	for _, e := range p.exports {
		for _, k := range p.keys {
			p.answered(checker.Read{Node: 1, Export: e, Key: k, Status: 302})
			p.answered(checker.Read{Node: 0, Export: e, Key: k, Status: 404})
		}
	}
	goneExport, goneKey := p.takeExport(), p.takeKey()
	// A 302 after the invalidation (a late one) is no reason to ask there.
	p.answered(checker.Read{Node: 2, Export: goneExport, Key: p.keys[0], Status: 302})
	for range 200 {
		node, e, k := p.pick(rng, zipf)
		switch {
		case e == goneExport && k == goneKey:
			t.Fatalf("pick %s %s: both gone; a probe keeps one side live", e, k)
		case e != goneExport && k != goneKey:
			t.Fatalf("pick %s %s: neither was invalidated", e, k)
		case node != 1:
			t.Fatalf("pick %s %s through node %d, want node1, the only one that redirected for it", e, k, node)
		case !p.live[e] && !p.live[k]:
			t.Fatalf("pick %s %s: the other side is not live", e, k)
		}
	}
}
