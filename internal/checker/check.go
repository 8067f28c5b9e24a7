package checker

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// NoFault names the phase before the first fault: the fault-free phase,
// whose hit ratio shows what the promise costs when nothing goes wrong.
const NoFault = "none"

// HitCacheStatus is the Cache-Status of an answer from the node's own
// cache (docs/caching.md, "Cache-Status").
const HitCacheStatus = "export_download; hit"

// Late is a redirect that started later than the bound after an
// invalidation covering it was acknowledged.
type Late struct {
	Read Read
	// By is the covering invalidation the bound ran out for first.
	By Invalidation
	// From is when the bound started counting for By: its
	// acknowledgement, or the end of a fault that cut By's node off from
	// Redis while it acknowledged By.
	From time.Duration
	// Lateness is how far past From + bound the read started.
	Lateness time.Duration
	// Phase is the phase the read started in.
	Phase string
}

// Row is the figures of one phase kind: NoFault, a FaultKind, or "all".
type Row struct {
	Phase string
	// Faults is how many faults of this kind were injected.
	Faults int
	// Time is how long the phase lasted (NoFault) or the faults of this
	// kind were in effect, added up.
	Time time.Duration
	// Answers are the reads that got an HTTP answer, Errors those that did
	// not; both by the phase their read started in.
	Answers, Errors int
	Redirects       int
	Status5xx       int
	// Slowest is the longest time an answered read took.
	Slowest time.Duration
	// Invalidations are those acknowledged in the phase.
	Invalidations int
	// Checked are the answers the bound applies to: reads that started
	// later than the bound after a covering invalidation was
	// acknowledged. Late are those of them that were 302s.
	Checked int
	Late    int
	// WorstLate is the largest Lateness of the phase's late reads.
	WorstLate time.Duration
	// UpstreamCalls is how many metadata GETs the app received while the
	// faults of this kind were in effect (NoFault: during the phase).
	UpstreamCalls int
	// Live are the reads of a pair no invalidation had been sent for
	// before the read ended, through a node that had answered a read of
	// that pair before this one started (a node's first read of a pair is
	// a miss whatever the fleet does); Hits those of them answered from
	// the node's own cache.
	Live, Hits int
}

// HitRatio is Hits / Live, or 0 without live reads.
func (r Row) HitRatio() float64 {
	if r.Live == 0 {
		return 0
	}
	return float64(r.Hits) / float64(r.Live)
}

// Report is the outcome of Check.
type Report struct {
	Bound time.Duration
	// Rows holds NoFault, then each FaultKind of FaultKinds that was
	// injected or had reads, in that order.
	Rows  []Row
	Total Row
	// Late lists every late read, the latest first.
	Late []Late
}

// Row returns the row of a phase, and false if the report has none.
func (r Report) Row(phase string) (Row, bool) {
	for _, row := range r.Rows {
		if row.Phase == phase {
			return row, true
		}
	}
	return Row{}, false
}

// Check counts, in h, every redirect for (export e, key k) that started
// later than bound after the acknowledgement of an invalidation covering
// (e, k): a DELETE of e, or a purge or in-band invalidation of k's tag.
// The one exception: an invalidation acknowledged by a node while that
// node's link to Redis was cut (LinkBlackhole, LinkFreeze) counts from the
// end of that fault, since the node cannot tell the others before. Redis
// being down for every node is no exception: nodes must stop trusting
// their caches once bound has passed.
func Check(h *History, bound time.Duration) Report {
	faults := slices.Clone(h.Faults)
	slices.SortStableFunc(faults, func(a, b Fault) int { return cmp.Compare(a.Start, b.Start) })

	// Exports and keys never come back once invalidated, so the earliest
	// binding moment per export and per key decides every later read.
	type binding struct {
		from time.Duration
		by   Invalidation
	}
	byExport, byKey := map[string]binding{}, map[string]binding{}
	sentExport, sentKey := map[string]time.Duration{}, map[string]time.Duration{}
	earliest := func(m map[string]time.Duration, k string, t time.Duration) {
		if old, ok := m[k]; !ok || t < old {
			m[k] = t
		}
	}
	for _, inv := range h.Invalidations {
		if inv.Kind == Delete {
			earliest(sentExport, inv.Export, inv.Start)
		} else {
			earliest(sentKey, inv.Key, inv.Start)
		}
		if !inv.Acked() {
			continue
		}
		b := binding{from: countsFrom(inv, faults), by: inv}
		m, k := byKey, inv.Key
		if inv.Kind == Delete {
			m, k = byExport, inv.Export
		}
		if old, ok := m[k]; !ok || b.from < old.from {
			m[k] = b
		}
	}

	rows := map[string]*Row{NoFault: {Phase: NoFault}}
	row := func(phase string) *Row {
		if rows[phase] == nil {
			rows[phase] = &Row{Phase: phase}
		}
		return rows[phase]
	}
	for _, f := range faults {
		r := row(string(f.Kind))
		r.Faults++
		r.Time += f.End - f.Start
	}
	firstFault := h.Length
	if len(faults) > 0 {
		firstFault = faults[0].Start
	}
	rows[NoFault].Time = firstFault

	// The end of each node's first read of each pair that it answered
	// (not with a 5xx, which caches nothing).
	type nodePair struct {
		node        int
		export, key string
	}
	firstEnd := map[nodePair]time.Duration{}
	for _, rd := range h.Reads {
		k := nodePair{rd.Node, rd.Export, rd.Key}
		if t, ok := firstEnd[k]; rd.Status != 0 && rd.Status < 500 && (!ok || rd.End < t) {
			firstEnd[k] = rd.End
		}
	}

	rep := Report{Bound: bound}
	for _, rd := range h.Reads {
		phase := phaseAt(faults, rd.Start)
		r := row(phase)
		if rd.Status == 0 {
			r.Errors++
			continue
		}
		r.Answers++
		r.Slowest = max(r.Slowest, rd.End-rd.Start)
		if rd.Status >= 500 {
			r.Status5xx++
		}
		warm := false
		if t, ok := firstEnd[nodePair{rd.Node, rd.Export, rd.Key}]; ok && t < rd.Start {
			warm = true
		}
		if t, ok := sentExport[rd.Export]; warm && (!ok || t > rd.End) {
			if t, ok := sentKey[rd.Key]; !ok || t > rd.End {
				r.Live++
				if rd.CacheStatus == HitCacheStatus {
					r.Hits++
				}
			}
		}
		var worst *binding
		for _, b := range []binding{byExport[rd.Export], byKey[rd.Key]} {
			if b.by.Kind != "" && (worst == nil || b.from < worst.from) {
				worst = &b
			}
		}
		checked := worst != nil && rd.Start > worst.from+bound
		if checked {
			r.Checked++
		}
		if !rd.Redirect() {
			continue
		}
		r.Redirects++
		if !checked {
			continue
		}
		l := Late{Read: rd, By: worst.by, From: worst.from, Lateness: rd.Start - worst.from - bound, Phase: phase}
		rep.Late = append(rep.Late, l)
		r.Late++
		r.WorstLate = max(r.WorstLate, l.Lateness)
	}
	for _, inv := range h.Invalidations {
		if inv.Acked() {
			row(phaseAt(faults, inv.End)).Invalidations++
		}
	}
	for _, t := range h.UpstreamCalls {
		if t < firstFault {
			rows[NoFault].UpstreamCalls++
		}
		for _, f := range faults {
			if f.Start <= t && t <= f.End {
				row(string(f.Kind)).UpstreamCalls++
				break
			}
		}
	}
	slices.SortStableFunc(rep.Late, func(a, b Late) int { return cmp.Compare(b.Lateness, a.Lateness) })

	order := []string{NoFault}
	for _, k := range FaultKinds {
		order = append(order, string(k))
	}
	for p := range rows {
		if !slices.Contains(order, p) {
			order = append(order, p) // a kind this version does not list
		}
	}
	rep.Total = Row{Phase: "all", Time: h.Length}
	for _, p := range order {
		r, ok := rows[p]
		if !ok {
			continue
		}
		rep.Rows = append(rep.Rows, *r)
		t := &rep.Total
		t.Faults += r.Faults
		t.Answers += r.Answers
		t.Errors += r.Errors
		t.Redirects += r.Redirects
		t.Status5xx += r.Status5xx
		t.Slowest = max(t.Slowest, r.Slowest)
		t.Invalidations += r.Invalidations
		t.Checked += r.Checked
		t.Late += r.Late
		t.WorstLate = max(t.WorstLate, r.WorstLate)
		t.Live += r.Live
		t.Hits += r.Hits
	}
	rep.Total.UpstreamCalls = len(h.UpstreamCalls)
	return rep
}

// countsFrom is when the bound starts for an acknowledged invalidation:
// its acknowledgement, or the end of a fault that had cut its node off
// from Redis at that moment.
func countsFrom(inv Invalidation, faults []Fault) time.Duration {
	from := inv.End
	for _, f := range faults {
		if f.Kind.CutsLink() && f.Node == inv.Node && f.Start <= inv.End && inv.End <= f.End {
			from = max(from, f.End)
		}
	}
	return from
}

// phaseAt is the phase t falls in: the kind of the last fault that started
// at or before t (its window and the healthy gap after it), or NoFault.
func phaseAt(sorted []Fault, t time.Duration) string {
	i, _ := slices.BinarySearchFunc(sorted, t, func(f Fault, t time.Duration) int {
		if f.Start <= t {
			return -1
		}
		return 1
	})
	if i == 0 {
		return NoFault
	}
	return string(sorted[i-1].Kind)
}

// Problems lists why the report breaks the promise: any late redirect,
// any 5xx, or a fault-free hit ratio under minHitRatio (also when the
// fault-free phase had no live read). Empty means it holds.
func (r Report) Problems(minHitRatio float64) []string {
	var out []string
	if r.Total.Late > 0 {
		out = append(out, fmt.Sprintf("%d redirects started later than %v after an invalidation covering them was acknowledged (worst %v past the bound)",
			r.Total.Late, r.Bound, r.Total.WorstLate.Round(time.Millisecond)))
	}
	if r.Total.Status5xx > 0 {
		out = append(out, fmt.Sprintf("%d answers were 5xx", r.Total.Status5xx))
	}
	if nf, _ := r.Row(NoFault); nf.Live == 0 {
		out = append(out, "the fault-free phase has no live read to measure the hit ratio on")
	} else if nf.HitRatio() < minHitRatio {
		out = append(out, fmt.Sprintf("fault-free hit ratio %.1f%% (%d of %d live reads), under %.0f%%",
			100*nf.HitRatio(), nf.Hits, nf.Live, 100*minHitRatio))
	}
	return out
}

// WriteTable writes the rows as an aligned table, the total last, then up
// to worst late reads in detail.
func (r Report) WriteTable(w io.Writer, worst int) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "phase\tfaults\ttime\tanswers\t302s\terrors\t5xx\tslowest\tinvalidations\tchecked\tlate 302s\tworst late\tapp calls\tapp calls/s\thit ratio\t\n")
	for _, row := range append(slices.Clone(r.Rows), r.Total) {
		worstLate, hits := "-", "-"
		if row.Late > 0 {
			worstLate = row.WorstLate.Round(time.Millisecond).String()
		}
		if row.Live > 0 {
			hits = fmt.Sprintf("%.1f%%", 100*row.HitRatio())
		}
		rate := "-"
		if row.Time > 0 {
			rate = fmt.Sprintf("%.1f", float64(row.UpstreamCalls)/row.Time.Seconds())
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%d\t%s\t%d\t%s\t%s\t\n", row.Phase, row.Faults,
			row.Time.Round(100*time.Millisecond), row.Answers, row.Redirects, row.Errors, row.Status5xx,
			row.Slowest.Round(time.Millisecond),
			row.Invalidations, row.Checked, row.Late, worstLate, row.UpstreamCalls, rate, hits)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Late) == 0 || worst <= 0 {
		return nil
	}
	fmt.Fprintf(w, "\nlatest redirects (of %d late; bound %v; times since the start of the run):\n", len(r.Late), r.Bound)
	for _, l := range r.Late[:min(worst, len(r.Late))] {
		what := "export …" + short(l.By.Export)
		if l.By.Kind != Delete {
			what = "key " + l.By.Key
		}
		from := "its ack"
		if l.From != l.By.End {
			from = "the end of its node's link fault"
		}
		fmt.Fprintf(w, "  node%d export …%s key %s at %s (phase %s, Cache-Status %q): %v late; %s of %s via node%d acked at %s, counted from %s\n",
			l.Read.Node, short(l.Read.Export), l.Read.Key, l.Read.Start.Round(time.Millisecond), l.Phase,
			l.Read.CacheStatus, l.Lateness.Round(time.Millisecond),
			l.By.Kind, what, l.By.Node, l.By.End.Round(time.Millisecond), from)
	}
	return nil
}

// short is the last segment of a UUID, enough to tell exports apart in a
// report.
func short(id string) string {
	if i := strings.LastIndexByte(id, '-'); i >= 0 {
		return id[i+1:]
	}
	return id
}
