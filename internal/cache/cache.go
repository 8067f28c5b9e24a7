// Package cache keeps the upstream's answers at the edge (SPEC §4): fresh
// lifetimes per entry, one upstream call per burst of misses, stale-if-error,
// refresh-ahead, and invalidation by export id. It knows nothing of HTTP:
// the caller supplies a Loader and decides what an answer means.
package cache

import (
	"context"
	"encoding/hex"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"golang.org/x/sync/singleflight"
)

// Key identifies an answer: a digest of the caller's credentials and the
// export id. Raw credentials are never stored.
type Key struct {
	Cred [32]byte
	ID   string
}

func (k Key) flightKey() string { return hex.EncodeToString(k.Cred[:]) + k.ID }

// Entry is a stored answer. Its fields never change after it is stored.
type Entry[V any] struct {
	Value      V
	StoredAt   time.Time
	FreshUntil time.Time
	StaleUntil time.Time // FreshUntil + stale_if_error
	refreshAt  time.Time // 80% of the fresh lifetime
	refreshing atomic.Bool
}

// Loader asks the upstream. It returns the value and how long it stays
// fresh (0: do not store), or an error for an upstream failure, which is
// never stored.
type Loader[V any] func(ctx context.Context) (V, time.Duration, error)

// Config configures a Cache.
type Config struct {
	MaxEntries   int
	StaleIfError time.Duration
	// Now is the clock; nil means time.Now. Tests pass a fake one.
	Now func() time.Time
}

// Cache is safe for concurrent use. Close stops its goroutines.
type Cache[V any] struct {
	store        *otter.Cache[Key, *Entry[V]]
	flights      singleflight.Group
	staleIfError time.Duration
	now          func() time.Time

	// gens count invalidations, striped by export id: an answer fetched
	// before an invalidation of its id (or of an id sharing its stripe) is
	// not stored. Bounded memory, and a DELETE of one export does not keep
	// the answers of (nearly) every other from being cached.
	gens [genStripes]atomic.Uint64
	seed maphash.Seed

	base   context.Context // canceled by Close; the context of background refreshes
	cancel context.CancelFunc
	mu     sync.Mutex // guards closed and wg.Add against Close
	closed bool
	wg     sync.WaitGroup
}

// New returns an empty cache.
func New[V any](cfg Config) *Cache[V] {
	c := &Cache[V]{
		seed:         maphash.MakeSeed(),
		staleIfError: cfg.StaleIfError,
		now:          cfg.Now,
	}
	if c.now == nil {
		c.now = time.Now
	}
	opts := &otter.Options[Key, *Entry[V]]{
		MaximumSize: cfg.MaxEntries,
		// Freshness is the entries' own (checked against c.now, so a fake
		// clock drives tests); the store only bounds the count. Without
		// expiry it needs no time: a clock that is never read keeps
		// time.Now, slow on some hosts, off the hit path.
		Clock: noClock{},
	}
	c.store = otter.Must(opts)
	c.base, c.cancel = context.WithCancel(context.Background())
	return c
}

// Close stops background refreshes and waits for them. Requests still
// draining may use the cache afterwards; it starts no goroutine then.
func (c *Cache[V]) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	// Entries stay: requests of the old config may still be draining
	// (Caddy cleans a config up before its servers finish); the garbage
	// collector takes the store with the last of them.
	c.store.StopAllGoroutines()
}

// State says what Peek found.
type State uint8

// Peek results.
const (
	Absent  State = iota // nothing usable: load
	Fresh                // serve it
	Refresh              // serve it; past 80% of its lifetime: RefreshAsync
	Stale                // past freshness, within stale_if_error: load, and serve it if that fails
)

// Peek looks key up without calling anything.
func (c *Cache[V]) Peek(key Key) (*Entry[V], State) { return c.PeekAt(key, c.now()) }

// PeekAt is Peek at time now, read once by the caller: the hit path.
func (c *Cache[V]) PeekAt(key Key, now time.Time) (*Entry[V], State) {
	e, ok := c.store.GetIfPresent(key)
	if !ok {
		return nil, Absent
	}
	switch {
	case now.Before(e.refreshAt):
		return e, Fresh
	case now.Before(e.FreshUntil):
		return e, Refresh
	case now.Before(e.StaleUntil):
		return e, Stale
	}
	return nil, Absent
}

// Outcome says how Load got its value.
type Outcome uint8

// Load outcomes.
const (
	Stored    Outcome = iota // asked the upstream, stored the answer
	NotStored                // asked the upstream; the answer is not cacheable
	Collapsed                // waited on another caller's upstream call
)

// Load calls load once for all concurrent callers of key and stores a
// cacheable answer. The shared call runs detached from ctx: a caller that
// gives up (ctx done) gets ctx.Err() while the others still get the answer.
// The shared call is bounded by the loader's own timeout; closing the cache
// does not cancel it, so requests still draining after a reload get their
// answer.
func (c *Cache[V]) Load(ctx context.Context, key Key, load Loader[V]) (V, Outcome, error) {
	return c.load(ctx, key, load, context.WithoutCancel(ctx))
}

// load is Load with the context of the shared call: the caller's, detached,
// for a request; the cache's own, ended by Close, for a background refresh.
func (c *Cache[V]) load(ctx context.Context, key Key, load Loader[V], shared context.Context) (V, Outcome, error) {
	leader := false
	ch := c.flights.DoChan(key.flightKey(), func() (any, error) {
		leader = true
		return c.fetch(shared, key, load)
	})
	select {
	case r := <-ch:
		res := r.Val.(result[V])
		switch {
		case !leader:
			return res.v, Collapsed, r.Err
		case res.stored:
			return res.v, Stored, r.Err
		}
		return res.v, NotStored, r.Err
	case <-ctx.Done():
		var zero V
		return zero, NotStored, ctx.Err()
	}
}

type result[V any] struct {
	v      V
	stored bool
}

func (c *Cache[V]) fetch(ctx context.Context, key Key, load Loader[V]) (result[V], error) {
	stripe := c.stripe(key.ID)
	gen := stripe.Load()
	v, ttl, err := load(ctx)
	if err != nil || ttl <= 0 {
		return result[V]{v: v}, err
	}
	if stripe.Load() != gen || c.base.Err() != nil {
		// An invalidation ran meanwhile (this answer may predate it), or
		// the cache was closed.
		return result[V]{v: v}, nil
	}
	now := c.now()
	e := &Entry[V]{
		Value:      v,
		StoredAt:   now,
		FreshUntil: now.Add(ttl),
		StaleUntil: now.Add(ttl + c.staleIfError),
		refreshAt:  now.Add(ttl * 8 / 10),
	}
	c.store.Set(key, e)
	return result[V]{v: v, stored: true}, nil
}

// RefreshAsync refreshes e in the background unless a refresh of it is
// already running. It returns whether it started one.
func (c *Cache[V]) RefreshAsync(key Key, e *Entry[V], load Loader[V]) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false // a request still draining after a reload
	}
	if !e.refreshing.CompareAndSwap(false, true) {
		return false
	}
	c.wg.Add(1) // under mu: never concurrent with Close's Wait
	go func() {
		defer c.wg.Done()
		// e stays marked: a successful refresh replaces it, and a failed
		// one leaves it to expire rather than retrying on every hit.
		// A failure is the loader's to report (the handler's logs it).
		_, _, _ = c.load(c.base, key, load, c.base)
	}()
	return true
}

// InvalidateID drops every entry of export id, whatever the credentials,
// and keeps answers fetched before now from being stored.
func (c *Cache[V]) InvalidateID(id string) int {
	c.stripe(id).Add(1)
	n := 0
	for k := range c.store.Keys() {
		if k.ID == id {
			if _, ok := c.store.Invalidate(k); ok {
				n++
			}
		}
	}
	return n
}

// Len returns about how many entries are stored.
func (c *Cache[V]) Len() int { return c.store.EstimatedSize() }

const genStripes = 256

func (c *Cache[V]) stripe(id string) *atomic.Uint64 {
	return &c.gens[maphash.String(c.seed, id)%genStripes]
}

// noClock is the store's clock: with no expiry configured, otter never
// needs the time, and nothing in it ticks.
type noClock struct{}

func (noClock) NowNano() int64                      { return 0 }
func (noClock) Tick(time.Duration) <-chan time.Time { return nil }
