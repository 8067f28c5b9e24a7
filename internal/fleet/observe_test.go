package fleet

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

type fakeObserver struct {
	mu      sync.Mutex
	lookups map[string]int
	inval   map[string]int
	lags    []time.Duration
	ups     []bool
}

func newFakeObserver() *fakeObserver {
	return &fakeObserver{lookups: map[string]int{}, inval: map[string]int{}}
}

func (o *fakeObserver) Lookup(r string)       { o.mu.Lock(); o.lookups[r]++; o.mu.Unlock() }
func (o *fakeObserver) Invalidation(d string) { o.mu.Lock(); o.inval[d]++; o.mu.Unlock() }
func (o *fakeObserver) Lag(d time.Duration)   { o.mu.Lock(); o.lags = append(o.lags, d); o.mu.Unlock() }
func (o *fakeObserver) Up(up bool)            { o.mu.Lock(); o.ups = append(o.ups, up); o.mu.Unlock() }

func (o *fakeObserver) snapshot() (map[string]int, map[string]int, int, []bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	l, i := map[string]int{}, map[string]int{}
	for k, v := range o.lookups {
		l[k] = v
	}
	for k, v := range o.inval {
		i[k] = v
	}
	return l, i, len(o.lags), append([]bool(nil), o.ups...)
}

func TestObserverSeesLookupsAndInvalidations(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	oa, ob := newFakeObserver(), newFakeObserver()
	removeA := a.AddObserver(oa)
	b.AddObserver(ob)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	key := cred("obs")
	load(t, a, "exp_obs", key, newFetcher("v"))
	load(t, b, "exp_obs", key, newFetcher("v"))
	a.Publish(context.Background(), Event{IDs: []string{"exp_obs"}})
	waitFor(t, 5*time.Second, "the event", func() bool { return rb.has(hasID("exp_obs")) })

	la, ia, _, upsA := oa.snapshot()
	lb, ib, lags, _ := ob.snapshot()
	if la["miss"] != 1 || lb["hit"] != 1 || ia["sent"] != 1 || ib["received"] != 1 || lags != 1 {
		t.Fatalf("observer a %v %v, b %v %v lags %d", la, ia, lb, ib, lags)
	}
	if len(upsA) == 0 || !upsA[len(upsA)-1] {
		// Told the state when added, and every change since.
		t.Errorf("Up reports %v, want the last to be true", upsA)
	}
	// A second observer (a config being loaded) counts too; removing it (the
	// load failed, its Cleanup ran) leaves the first one counting.
	oc := newFakeObserver()
	removeC := a.AddObserver(oc)
	load(t, a, "exp_obs", key, newFetcher("v"))
	removeC()
	load(t, a, "exp_obs", key, newFetcher("v"))
	if l, _, _, _ := oc.snapshot(); l["miss"]+l["hit"] != 1 {
		t.Errorf("the second observer counted %v, want the one lookup made while it was added", l)
	}
	if l, _, _, _ := oa.snapshot(); l["miss"]+l["hit"] != 3 {
		t.Errorf("the first observer stopped counting when another was added and removed: %v", l)
	}
	removeA()
	load(t, a, "exp_obs", key, newFetcher("v"))
	if l, _, _, _ := oa.snapshot(); l["miss"]+l["hit"] != 3 {
		t.Errorf("removed observer still counted: %v", l)
	}
	if s := a.Stats(); s.Lookups.Miss+s.Lookups.Hit != 4 || !s.Up {
		t.Errorf("stats %+v", s)
	}
}

func TestWaiterGivesUpWithItsCaller(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	key := cred("cancel")
	fa := newFetcher("slow")
	fa.gate = make(chan struct{})
	defer close(fa.gate)
	go a.Load(context.Background(), query("exp_c", key), fa.fetch)
	waitFor(t, 5*time.Second, "the holder's fetch", func() bool { return fa.calls.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	fb := newFetcher("x")
	_, err := b.Load(ctx, query("exp_c", key), fb.fetch)
	if err != context.DeadlineExceeded || fb.calls.Load() != 0 {
		t.Fatalf("err %v calls %d, want the caller's deadline and no fetch", err, fb.calls.Load())
	}
}

// TestSizing measures what Redis holds per shared decision and per stream
// event (MEMORY USAGE), for the README's sizing section.
func TestSizing(t *testing.T) {
	r := testenv.StartRedis(t)
	a := node(t, r.Addr)
	waitUp(t, a)
	for _, size := range []int{100, 300, 1000} {
		payload := strings.Repeat("x", size)
		const n = 100
		var total int
		for i := range n {
			id := fmt.Sprintf("exp_%d_%06d", size, i)
			load(t, a, id, cred(id), newFetcher(payload))
			u, err := strconv.Atoi(r.MustDo(t, "MEMORY", "USAGE", decisionKey(a, id, cred(id)), "SAMPLES", "0"))
			if err != nil {
				t.Fatal(err)
			}
			total += u
		}
		per := total / n
		if per < size || per > size+600 {
			t.Errorf("payload %d B: %d B per shared decision, want payload + a bounded overhead", size, per)
		}
		t.Logf("shared decision, payload %4d B: MEMORY USAGE %d B per key (key name %d B, value %d B)",
			size, per, len(decisionKey(a, "exp_100_000000", cred("x"))), 2+16+16+1+size+macLen)
	}
	a.Publish(context.Background(), Event{IDs: []string{"exp_x"}})
	g := r.MustDo(t, "MEMORY", "USAGE", DefaultPrefix+":g:{exp_x}")
	before, _ := strconv.Atoi(r.MustDo(t, "MEMORY", "USAGE", DefaultPrefix+":inv", "SAMPLES", "0"))
	for i := range 1000 {
		a.Publish(context.Background(), Event{IDs: []string{fmt.Sprintf("exp_%024d", i)}})
	}
	after, _ := strconv.Atoi(r.MustDo(t, "MEMORY", "USAGE", DefaultPrefix+":inv", "SAMPLES", "0"))
	perEvent := (after - before) / 1000
	if perEvent <= 0 || perEvent > 2000 {
		t.Errorf("%d B per stream event", perEvent)
	}
	t.Logf("generation key: %s B; stream: %d B per event of one 28-byte id (at MAXLEN ~%d: about %d MiB)",
		g, perEvent, streamMaxLen, perEvent*streamMaxLen>>20)

	f := newFetcher("v")
	f.gate = make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); load(t, a, "exp_lease_0000000000", cred("l"), f) }()
	waitFor(t, 5*time.Second, "the fill", func() bool { return f.calls.Load() == 1 })
	lease := r.MustDo(t, "MEMORY", "USAGE", leaseKey(a, "exp_lease_0000000000", cred("l")), "SAMPLES", "0")
	close(f.gate)
	<-done
	if n, _ := strconv.Atoi(lease); n <= 0 {
		t.Fatalf("lease MEMORY USAGE %q", lease)
	}
	t.Logf("fill lease: %s B while the upstream call lasts", lease)
}
