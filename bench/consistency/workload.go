package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/exportedge/caddy-export-download/internal/checker"
)

// recorder collects the history; nothing is recorded before start.
type recorder struct {
	epoch atomic.Pointer[time.Time] // nil until recording starts

	mu     sync.Mutex
	reads  []checker.Read
	invs   []checker.Invalidation
	faults []checker.Fault
}

func (r *recorder) start(epoch time.Time) { r.epoch.Store(&epoch) }

// since is t as an offset from the epoch (monotonic: t and the epoch both
// come from time.Now in this process); 0 before recording starts.
func (r *recorder) since(t time.Time) time.Duration {
	if e := r.epoch.Load(); e != nil {
		return t.Sub(*e)
	}
	return 0
}

// read records a read that started at start and ended at end, unless it
// started before recording did.
func (r *recorder) read(rd checker.Read, start, end time.Time) {
	e := r.epoch.Load()
	if e == nil || start.Before(*e) {
		return
	}
	rd.Start, rd.End, rd.Wall = start.Sub(*e), end.Sub(*e), start.Round(0)
	r.mu.Lock()
	r.reads = append(r.reads, rd)
	r.mu.Unlock()
}

// invalidation records an invalidation sent at start and answered (or
// failed) at end, and returns it with its times; invalidations are only
// made while recording.
func (r *recorder) invalidation(inv checker.Invalidation, start, end time.Time) checker.Invalidation {
	inv.Start, inv.End, inv.Wall = r.since(start), r.since(end), start.Round(0)
	r.mu.Lock()
	r.invs = append(r.invs, inv)
	r.mu.Unlock()
	return inv
}

func (r *recorder) fault(f checker.Fault) {
	r.mu.Lock()
	r.faults = append(r.faults, f)
	r.mu.Unlock()
}

// pool holds the live exports (by popularity rank: readers pick them with
// a Zipf distribution, so there are hits) and the live keys (picked
// uniformly), and what was invalidated lately, which readers keep asking
// for: a late redirect can only be seen by asking, and best through a node
// that redirected for the pair before the invalidation.
type pool struct {
	nodes       int
	probeShare  float64       // share of reads that ask for something invalidated
	probeWindow time.Duration // how long after its invalidation it is asked for

	mu          sync.Mutex
	rng         *rand.Rand
	zipf        *rand.Zipf
	runTag      uint32
	exports     []string
	keys        []string
	live        map[string]bool // exports and key ids still live
	goneExports []gone
	goneKeys    []gone
	// redirected holds the (node, export, key) that got a 302 while live:
	// the node may have cached it. It grows by what the run reads, tens of
	// thousands of entries in a long run.
	redirected map[served]bool
	made       int
}

type gone struct {
	id string
	at time.Time
}

type served struct {
	node        int
	export, key string
}

func newPool(seed uint64, nodes, exports, keys int, probeShare float64, probeWindow time.Duration) *pool {
	rng := rand.New(rand.NewPCG(seed, 0x706f6f6c))
	p := &pool{nodes: nodes, probeShare: probeShare, probeWindow: probeWindow, rng: rng, runTag: rng.Uint32(),
		live: map[string]bool{}, redirected: map[served]bool{}}
	p.zipf = newZipf(rng, exports)
	for range exports {
		p.exports = append(p.exports, p.newExport())
	}
	for range keys {
		p.keys = append(p.keys, p.newKey())
	}
	return p
}

// newZipf picks ranks 0..n-1, rank 0 the most popular.
func newZipf(rng *rand.Rand, n int) *rand.Zipf {
	return rand.NewZipf(rng, 1.1, 1, uint64(max(n, 2)-1))
}

// newExport makes a live export id never used before (a UUID, as the
// nodes require).
func (p *pool) newExport() string {
	p.made++
	id := fmt.Sprintf("%08x-c4ec-7000-8000-%012x", p.runTag, p.made)
	p.live[id] = true
	return id
}

// newKey makes a live key id never used before.
func (p *pool) newKey() string {
	p.made++
	id := fmt.Sprintf("%08x%06d", p.runTag, p.made)
	p.live[id] = true
	return id
}

func (p *pool) prune(now time.Time) {
	expired := func(g gone) bool { return now.Sub(g.at) > p.probeWindow }
	p.goneExports = slices.DeleteFunc(p.goneExports, expired)
	p.goneKeys = slices.DeleteFunc(p.goneKeys, expired)
}

// pick chooses what a reader asks for next, with the reader's own random
// source: mostly a live pair, sometimes one invalidated lately, then
// through a node that redirected for it while it was live (node -1: any
// node).
func (p *pool) pick(rng *rand.Rand, zipf *rand.Zipf) (node int, export, keyID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.prune(time.Now())
	gone := len(p.goneExports) + len(p.goneKeys)
	if gone == 0 || rng.Float64() >= p.probeShare {
		return -1, p.exports[zipf.Uint64()], p.keys[rng.IntN(len(p.keys))]
	}
	var cands []served
	if i := rng.IntN(gone); i < len(p.goneExports) {
		export = p.goneExports[i].id
		for n := range p.nodes {
			for _, k := range p.keys {
				if p.redirected[served{n, export, k}] {
					cands = append(cands, served{n, export, k})
				}
			}
		}
		if len(cands) == 0 {
			return -1, export, p.keys[rng.IntN(len(p.keys))]
		}
	} else {
		keyID = p.goneKeys[i-len(p.goneExports)].id
		for n := range p.nodes {
			for _, e := range p.exports {
				if p.redirected[served{n, e, keyID}] {
					cands = append(cands, served{n, e, keyID})
				}
			}
		}
		if len(cands) == 0 {
			return -1, p.exports[zipf.Uint64()], keyID
		}
	}
	c := cands[rng.IntN(len(cands))]
	return c.node, c.export, c.key
}

// answered notes a read's answer: a 302 for a live pair means the node may
// hold it in its cache.
func (p *pool) answered(rd checker.Read) {
	if !rd.Redirect() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live[rd.Export] && p.live[rd.Key] {
		p.redirected[served{rd.Node, rd.Export, rd.Key}] = true
	}
}

// takeExport removes an export from the live ones (popular ones more
// often, so that it is cached on every node) and puts a new one in its
// place.
func (p *pool) takeExport() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.zipf.Uint64()
	id := p.exports[i]
	delete(p.live, id)
	p.exports[i] = p.newExport()
	p.goneExports = append(p.goneExports, gone{id, time.Now()})
	return id
}

// takeKey removes a key from the live ones and puts a new one in its place.
func (p *pool) takeKey() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.rng.IntN(len(p.keys))
	id := p.keys[i]
	delete(p.live, id)
	p.keys[i] = p.newKey()
	p.goneKeys = append(p.goneKeys, gone{id, time.Now()})
	return id
}

// workload runs the readers and the invalidations against the nodes.
type workload struct {
	nodes []*node
	app   *fakeApp
	pool  *pool
	rec   *recorder
	// client never follows redirects: a 302 is what is checked.
	client *http.Client

	readers int
	rate    float64 // reads per second, all readers together
	seed    uint64

	// every is the mean time between invalidations, in nanoseconds; the
	// run lowers it once the faults begin.
	every  atomic.Int64
	invMu  sync.Mutex
	invRng *rand.Rand
	ops    sync.WaitGroup
}

func newClient() *http.Client {
	return &http.Client{
		Timeout:       15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
	}
}

// upNode picks a node that is not down (killed), or nil.
func (w *workload) upNode(rng *rand.Rand) *node {
	start := rng.IntN(len(w.nodes))
	for k := range w.nodes {
		if n := w.nodes[(start+k)%len(w.nodes)]; !n.down.Load() {
			return n
		}
	}
	return nil
}

// runReaders runs the readers until stop is closed and returns when each
// has finished its last request.
func (w *workload) runReaders(stop <-chan struct{}) {
	var wg sync.WaitGroup
	interval := time.Duration(float64(w.readers) / w.rate * float64(time.Second))
	for i := range w.readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(w.seed, uint64(i)+1))
			zipf := newZipf(rng, len(w.pool.exports))
			// Start apart, so that the readers do not tick together.
			next := time.Now().Add(time.Duration(rng.Int64N(int64(interval))))
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Until(next)):
				}
				next = next.Add(interval)
				if behind := time.Since(next); behind > interval {
					next = time.Now() // a slow answer: do not burst to catch up
				}
				at, export, keyID := w.pool.pick(rng, zipf)
				n := w.upNode(rng)
				if at >= 0 && !w.nodes[at].down.Load() {
					n = w.nodes[at]
				}
				if n == nil {
					continue
				}
				rd, start, end := w.read(n, export, keyID)
				w.pool.answered(rd)
				w.rec.read(rd, start, end)
			}
		}()
	}
	wg.Wait()
}

// read GETs the download of export with keyID's key through n; it returns
// the answer and when the request was sent and its answer arrived.
func (w *workload) read(n *node, export, keyID string) (rd checker.Read, start, end time.Time) {
	rd = checker.Read{Node: n.i, Export: export, Key: keyID}
	req, err := http.NewRequest(http.MethodGet, n.base+"/v1/exports/"+export+"/download", nil)
	if err != nil {
		panic(err) // only a malformed base URL gets here
	}
	req.Header.Set("Authorization", "Bearer "+apiKey(keyID))
	start = time.Now()
	resp, err := w.client.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	end = time.Now()
	if err != nil {
		rd.Err = err.Error()
		return rd, start, end
	}
	rd.Status, rd.CacheStatus, rd.Location = resp.StatusCode, resp.Header.Get("Cache-Status"), resp.Header.Get("Location") != ""
	return rd, start, end
}

// warmAll reads every live pair once through every node (not recorded),
// so that the fault-free phase starts with warm caches rather than with
// the long tail of first reads.
func (w *workload) warmAll() {
	w.pool.mu.Lock()
	exports, keys := slices.Clone(w.pool.exports), slices.Clone(w.pool.keys)
	w.pool.mu.Unlock()
	jobs := make(chan func())
	var wg sync.WaitGroup
	for range w.readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for job := range jobs {
				job()
			}
		}()
	}
	for _, n := range w.nodes {
		for _, e := range exports {
			for _, k := range keys {
				jobs <- func() {
					rd, _, _ := w.read(n, e, k)
					w.pool.answered(rd)
				}
			}
		}
	}
	close(jobs)
	wg.Wait()
}

// invalidationKinds are the invalidations the run makes, with their
// weights; in-band revocations only when the product honours them.
func invalidationKinds(inband bool) []checker.InvalidationKind {
	if inband {
		return []checker.InvalidationKind{checker.Delete, checker.Delete, checker.Purge, checker.InBand}
	}
	return []checker.InvalidationKind{checker.Delete, checker.Delete, checker.Purge}
}

// runInvalidations makes invalidations at random moments (exponential
// gaps of mean w.every) through random nodes until stop is closed, then
// waits for those in flight.
func (w *workload) runInvalidations(stop <-chan struct{}, inband bool) {
	kinds := invalidationKinds(inband)
	for {
		w.invMu.Lock()
		wait := time.Duration(w.invRng.ExpFloat64() * float64(w.every.Load()))
		kind := kinds[w.invRng.IntN(len(kinds))]
		n := w.upNode(w.invRng)
		w.invMu.Unlock()
		select {
		case <-stop:
			w.ops.Wait()
			return
		case <-time.After(wait):
		}
		if n == nil || n.down.Load() {
			continue
		}
		w.ops.Add(1)
		go func() {
			defer w.ops.Done()
			w.invalidate(kind, n)
		}()
	}
}

// invalidate makes one invalidation of kind through n and records it.
func (w *workload) invalidate(kind checker.InvalidationKind, n *node) checker.Invalidation {
	inv := checker.Invalidation{Kind: kind, Node: n.i}
	var req *http.Request
	var err error
	switch kind {
	case checker.Delete:
		inv.Export = w.pool.takeExport()
		req, err = http.NewRequest(http.MethodDelete, n.base+"/v1/exports/"+inv.Export, nil)
	case checker.Purge:
		// The app revokes the key first, then asks the edge to forget
		// what it cached for it (README, "Operating the cache").
		inv.Key = w.pool.takeKey()
		w.app.revoke(inv.Key)
		body := fmt.Sprintf(`{"surrogate_keys":[%q]}`, tag(inv.Key))
		req, err = http.NewRequest(http.MethodPost, n.admin+"/export_download/purge", strings.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
	case checker.InBand:
		inv.Key = w.pool.takeKey()
		req, err = http.NewRequest(http.MethodPost, n.base+"/v1/keys/"+inv.Key+"/revoke", nil)
	}
	if err != nil {
		panic(err) // only a malformed base URL gets here
	}
	if kind != checker.Purge {
		req.Header.Set("Authorization", "Bearer "+apiKey("operator"))
	}
	start := time.Now()
	resp, err := w.client.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	end := time.Now()
	if err != nil {
		inv.Err = err.Error()
	} else {
		inv.Status = resp.StatusCode
	}
	return w.rec.invalidation(inv, start, end)
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
