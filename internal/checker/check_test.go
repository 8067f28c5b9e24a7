package checker

import (
	"strings"
	"testing"
	"time"
)

const (
	exA = "01935abc-def0-7123-4567-00000000000a"
	exB = "01935abc-def0-7123-4567-00000000000b"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// redirect is a 302 read of (export, key) on node, started at start ms.
func redirect(node int, export, key string, start int) Read {
	return Read{Node: node, Export: export, Key: key, Start: ms(start), End: ms(start + 2), Status: 302, Location: true,
		CacheStatus: HitCacheStatus}
}

func deleted(node int, export string, start, ack int) Invalidation {
	return Invalidation{Kind: Delete, Node: node, Export: export, Start: ms(start), End: ms(ack), Status: 204}
}

func revoked(kind InvalidationKind, node int, key string, start, ack int) Invalidation {
	return Invalidation{Kind: kind, Node: node, Key: key, Start: ms(start), End: ms(ack), Status: 200}
}

// lateReads lists the late reads as "node export key start", in history
// order, so tests compare them as a whole.
func lateReads(rep Report) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, l := range rep.Late {
		out[describe(l.Read)] = l.Lateness
	}
	return out
}

func describe(r Read) string {
	return strings.Join([]string{"node" + string(rune('0'+r.Node)), short(r.Export), r.Key, r.Start.String()}, " ")
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name   string
		h      History
		late   []Read
		byLate map[string]time.Duration // lateness of some late reads
	}{
		{
			name: "a redirect after the bound is late, one before it is not",
			h: History{Length: ms(5000),
				Invalidations: []Invalidation{deleted(0, exA, 900, 1000)},
				Reads: []Read{
					redirect(1, exA, "k1", 1500), // on time: within 1s of the ack
					redirect(1, exA, "k1", 2000), // exactly at the bound: on time
					redirect(2, exA, "k1", 2500), // late by 500ms
					redirect(2, exB, "k1", 2600), // another export
					{Node: 1, Export: exA, Key: "k1", Start: ms(2700), End: ms(2710), Status: 404},
				}},
			late:   []Read{redirect(2, exA, "k1", 2500)},
			byLate: map[string]time.Duration{describe(redirect(2, exA, "k1", 2500)): ms(500)},
		},
		{
			name: "an invalidation that was not acknowledged binds nothing",
			h: History{Length: ms(5000),
				Invalidations: []Invalidation{{Kind: Delete, Node: 0, Export: exA, Start: ms(900), End: ms(1000), Err: "connection reset"},
					{Kind: Delete, Node: 1, Export: exB, Start: ms(900), End: ms(1000), Status: 502}},
				Reads: []Read{redirect(1, exA, "k1", 3000), redirect(1, exB, "k1", 3000)}},
		},
		{
			name: "a purge and an in-band revocation cover every export of the key, and only that key",
			h: History{Length: ms(5000),
				Invalidations: []Invalidation{revoked(Purge, 0, "k1", 900, 1000), revoked(InBand, 1, "k2", 1900, 2000)},
				Reads: []Read{
					redirect(0, exA, "k1", 2100), redirect(1, exB, "k1", 2200), // late
					redirect(2, exA, "k2", 2900), // on time
					redirect(2, exB, "k2", 3100), // late
					redirect(0, exA, "k3", 4000), // another key
				}},
			late: []Read{redirect(0, exA, "k1", 2100), redirect(1, exB, "k1", 2200), redirect(2, exB, "k2", 3100)},
		},
		{
			name: "the earliest covering invalidation decides",
			h: History{Length: ms(5000),
				Invalidations: []Invalidation{deleted(0, exA, 2900, 3000), revoked(Purge, 1, "k1", 900, 1000)},
				Reads:         []Read{redirect(2, exA, "k1", 2500)}},
			late:   []Read{redirect(2, exA, "k1", 2500)},
			byLate: map[string]time.Duration{describe(redirect(2, exA, "k1", 2500)): ms(500)},
		},
		{
			name: "a link fault defers only its own node's acknowledgements, to the fault's end",
			h: History{Length: ms(10000),
				Faults: []Fault{{Kind: LinkBlackhole, Node: 2, Start: ms(1000), End: ms(4000)}},
				Invalidations: []Invalidation{
					deleted(2, exA, 1900, 2000), // acked by the cut-off node: counts from 4000
					deleted(0, exB, 1900, 2000), // acked by a connected node: counts from 2000
				},
				Reads: []Read{
					redirect(0, exA, "k1", 4500), // within 1s of the fault's end
					redirect(1, exA, "k1", 5500), // late by 500ms
					redirect(2, exB, "k1", 3500), // the cut-off node reading is no exception: late by 500ms
					redirect(0, exB, "k1", 2900), // on time
				}},
			late: []Read{redirect(1, exA, "k1", 5500), redirect(2, exB, "k1", 3500)},
			byLate: map[string]time.Duration{
				describe(redirect(1, exA, "k1", 5500)): ms(500),
				describe(redirect(2, exB, "k1", 3500)): ms(500),
			},
		},
		{
			name: "a frozen link is the same exception; an ack outside the fault is not deferred",
			h: History{Length: ms(10000),
				Faults: []Fault{{Kind: LinkFreeze, Node: 1, Start: ms(1000), End: ms(3000)}},
				Invalidations: []Invalidation{
					deleted(1, exA, 3050, 3100), // after the fault
					revoked(Purge, 1, "k2", 500, 1500),
				},
				Reads: []Read{redirect(0, exA, "k1", 4200), redirect(0, exB, "k2", 3900), redirect(2, exB, "k2", 4100)},
			},
			late: []Read{redirect(0, exA, "k1", 4200), redirect(2, exB, "k2", 4100)},
		},
		{
			name: "Redis down for every node is no exception",
			h: History{Length: ms(10000),
				Faults:        []Fault{{Kind: RedisRestart, Node: -1, Start: ms(1000), End: ms(4000)}},
				Invalidations: []Invalidation{deleted(0, exA, 1900, 2000)},
				Reads:         []Read{redirect(1, exA, "k1", 3500)},
			},
			late: []Read{redirect(1, exA, "k1", 3500)},
		},
		{
			name: "other faults on the acknowledging node are no exception",
			h: History{Length: ms(10000),
				Faults: []Fault{{Kind: Reload, Node: 0, Start: ms(1000), End: ms(4000)},
					{Kind: NodeKill, Node: 0, Start: ms(5000), End: ms(7000)}},
				Invalidations: []Invalidation{deleted(0, exA, 1900, 2000), deleted(0, exB, 5000, 5100)},
				Reads:         []Read{redirect(1, exA, "k1", 3500), redirect(1, exB, "k1", 6500)},
			},
			late: []Read{redirect(1, exA, "k1", 3500), redirect(1, exB, "k1", 6500)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := Check(&tc.h, time.Second)
			got := lateReads(rep)
			want := map[string]bool{}
			for _, r := range tc.late {
				want[describe(r)] = true
			}
			for d := range want {
				if _, ok := got[d]; !ok {
					t.Errorf("not found late: %s", d)
				}
			}
			for d, by := range got {
				if !want[d] {
					t.Errorf("found late, wrongly: %s (by %v)", d, by)
				}
			}
			for d, by := range tc.byLate {
				if got[d] != by {
					t.Errorf("%s: late by %v, want %v", d, got[d], by)
				}
			}
			if rep.Total.Late != len(tc.late) {
				t.Errorf("Total.Late = %d, want %d", rep.Total.Late, len(tc.late))
			}
		})
	}
}

func TestCheckRowsByPhase(t *testing.T) {
	h := History{
		Length: ms(20000),
		Faults: []Fault{
			{Kind: LinkFreeze, Node: 1, Start: ms(12000), End: ms(14000)},
			{Kind: RedisRestart, Node: -1, Start: ms(5000), End: ms(8000)},
		},
		Invalidations: []Invalidation{
			deleted(0, exB, 1000, 1100),          // fault-free
			revoked(Purge, 0, "k9", 4000, 4100),  // fault-free
			revoked(InBand, 2, "k8", 6000, 6100), // redis-restart
			{Kind: Delete, Node: 0, Export: "01935abc-def0-7123-4567-00000000000c", Start: ms(6500), End: ms(6600)}, // no answer
		},
		UpstreamCalls: []time.Duration{ms(100), ms(200), ms(5500), ms(7000), ms(9000), ms(13000)},
		Reads: []Read{
			redirect(0, exA, "k1", 100), // node0's first read of the pair: not live
			{Node: 0, Export: exA, Key: "k1", Start: ms(200), End: ms(210), Status: 302, CacheStatus: "export_download; fwd=miss; stored"},
			redirect(0, exA, "k1", 300),
			redirect(0, exA, "k1", 400),
			{Node: 0, Export: exB, Key: "k1", Start: ms(3000), End: ms(3010), Status: 404, CacheStatus: HitCacheStatus}, // not live
			{Node: 1, Export: exA, Key: "k1", Start: ms(5500), End: ms(5600), Err: "connection refused"},
			{Node: 1, Export: exA, Key: "k1", Start: ms(6000), End: ms(6100), Status: 503}, // node1's first answer: not live, and a 5xx makes no later read live
			redirect(2, exB, "k1", 9000), // late, phase redis-restart (the gap after it)
			redirect(1, exA, "k1", 13000),
		},
	}
	rep := Check(&h, time.Second)
	want := map[string]Row{
		NoFault: {Phase: NoFault, Time: ms(5000), Answers: 5, Slowest: ms(10), Redirects: 4, Invalidations: 2, Checked: 1, UpstreamCalls: 2, Live: 3, Hits: 2},
		string(RedisRestart): {Phase: string(RedisRestart), Faults: 1, Time: ms(3000), Answers: 2, Errors: 1, Redirects: 1, Slowest: ms(100),
			Status5xx: 1, Invalidations: 1, Checked: 1, Late: 1, WorstLate: ms(6900), UpstreamCalls: 2},
		string(LinkFreeze): {Phase: string(LinkFreeze), Faults: 1, Time: ms(2000), Answers: 1, Redirects: 1, Slowest: ms(2), UpstreamCalls: 1},
	}
	if len(rep.Rows) != len(want) {
		t.Errorf("rows %+v, want %d", rep.Rows, len(want))
	}
	for phase, w := range want {
		got, ok := rep.Row(phase)
		if !ok || got != w {
			t.Errorf("row %s:\n got %+v\nwant %+v", phase, got, w)
		}
	}
	if rep.Rows[0].Phase != NoFault || rep.Rows[1].Phase != string(RedisRestart) || rep.Rows[2].Phase != string(LinkFreeze) {
		t.Errorf("rows out of order: %s, %s, %s", rep.Rows[0].Phase, rep.Rows[1].Phase, rep.Rows[2].Phase)
	}
	if rep.Total.Answers != 8 || rep.Total.Checked != 2 || rep.Total.Late != 1 || rep.Total.UpstreamCalls != 6 || rep.Total.Status5xx != 1 {
		t.Errorf("total %+v", rep.Total)
	}
	if nf, _ := rep.Row(NoFault); nf.HitRatio() != 2.0/3 {
		t.Errorf("fault-free hit ratio %v, want 2/3", nf.HitRatio())
	}

	problems := strings.Join(rep.Problems(0.9), "\n")
	for _, want := range []string{"1 redirects started later than 1s", "1 answers were 5xx", "fault-free hit ratio 66.7% (2 of 3 live reads), under 90%"} {
		if !strings.Contains(problems, want) {
			t.Errorf("Problems() = %q, want it to say %q", problems, want)
		}
	}
	var table strings.Builder
	if err := rep.WriteTable(&table, 5); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"redis-restart", "link-freeze", "66.7%", "node2 export …00000000000b key k1 at 9s", "6.9s late; delete of export …00000000000b via node0 acked at 1.1s"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func TestProblemsNoneWhenThePromiseHolds(t *testing.T) {
	h := History{Length: ms(3000),
		Invalidations: []Invalidation{deleted(0, exB, 100, 200)},
		Reads:         []Read{redirect(0, exA, "k1", 100), redirect(0, exA, "k1", 200), {Node: 1, Export: exB, Key: "k1", Start: ms(300), End: ms(310), Status: 404}},
	}
	if p := Check(&h, time.Second).Problems(0.9); len(p) != 0 {
		t.Errorf("Problems() = %q, want none", p)
	}
	empty := History{Length: ms(3000)}
	if p := Check(&empty, time.Second).Problems(0.9); len(p) != 1 || !strings.Contains(p[0], "no live read") {
		t.Errorf("Problems() of an empty history = %q, want the missing fault-free reads", p)
	}
}
