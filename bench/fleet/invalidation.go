package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

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
