// Package cache keeps the upstream's answers at the edge (docs/caching.md, "Caching"):
// fresh lifetimes per entry, one upstream call per burst of misses,
// stale-if-error (RFC 5861), refresh-ahead, and purges by export id,
// credential or surrogate key that cost what they drop. It knows nothing of
// HTTP: the caller supplies a Loader and decides what an answer means.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/maypok86/otter/v2"
	"golang.org/x/sync/singleflight"

	"github.com/exportedge/caddy-export-download/internal/route"
)

// Key identifies an answer: a digest of the caller's credentials and the
// export id. Raw credentials are never stored.
type Key struct {
	Cred [32]byte
	ID   string
}

func (k Key) flightKey() string { return hex.EncodeToString(k.Cred[:]) + k.ID }

// skey is a Key as the cache keeps it: the id as 16 bytes, so that an
// entry holds no string (and no slice of a request's URL path). A
// canonical (lowercase) UUID is its own 16 bytes; any other id is the
// first half of its SHA-256, as collision-free in practice as the
// credential digest beside it.
type skey struct {
	cred [32]byte
	id   idBytes
}

type idBytes [16]byte

func (k Key) stored() skey { return skey{k.Cred, idOf(k.ID)} }

func idOf(id string) idBytes {
	var b idBytes
	if route.ParseUUID(id, (*[16]byte)(&b)) {
		return b
	}
	sum := sha256.Sum256([]byte(id))
	copy(b[:], sum[:])
	return b
}

// Entry is a stored answer. Value and the times never change after it is
// stored; a purge or a fleet resync only demotes it.
type Entry[V any] struct {
	Value V
	key   skey
	// Unix nanoseconds: a third of the size of time.Time, and the hit path
	// compares integers. Stale-if-error ends staleIfError after freshUntil.
	freshUntil, refreshAt int64
	flags                 atomic.Uint32
	state                 linkState // guarded by the index's mutex
	links                 links[V]  // guarded by the index's mutex
}

const (
	flagRefreshing = 1 << iota // a background refresh runs or failed
	flagDemoted                // treat as past freshness: ask before use
)

// FreshUntil is when the entry stops being fresh.
func (e *Entry[V]) FreshUntil() time.Time { return time.Unix(0, e.freshUntil) }

// Loader asks the upstream. It returns the value and how long it stays
// fresh (0: do not store), or an error for an upstream failure, which is
// never stored.
type Loader[V any] func(ctx context.Context) (V, time.Duration, error)

// Refutation says what an answer proves about answers stored before it.
type Refutation uint8

// Refutations.
const (
	RefutesNothing    Refutation = iota
	RefutesEntry                 // e.g. 404: drop this credential's entry of this export
	RefutesCredential            // e.g. 401/403: drop every entry of this credential
)

// Described is implemented by values that carry surrogate keys or refute
// earlier answers. Values that do not implement it have neither.
type Described interface {
	// CacheTags are the surrogate keys the entry can be purged by. The
	// cache asks once, before anyone else sees the value, and keeps its
	// own copy: the value may forget them then.
	CacheTags() []string
	// CacheRefutes says which stored answers this one proves wrong; they
	// are dropped whether or not this one is stored.
	CacheRefutes() Refutation
}

// Config configures a Cache.
type Config struct {
	MaxEntries   int
	StaleIfError time.Duration
	// Now is the clock; nil means time.Now. Tests pass a fake one.
	Now func() time.Time
	// OnRefused, when set, is told of every credential an answer refuted
	// (RefutesCredential), after its entries were dropped: a tier that
	// shares answers with other nodes tells them too.
	OnRefused func(cred [32]byte)
}

// Cache is safe for concurrent use. Close stops its goroutines.
type Cache[V any] struct {
	// The store is keyed by a seeded 64-bit hash of the key, and an entry
	// found is checked against the full key (a mismatch is a miss; a
	// store over a colliding key replaces it): the store's node holds 8
	// bytes of key, not 48.
	store *otter.Cache[uint64, *Entry[V]]
	// refused remembers when each credential was last refused (a 401/403
	// dropped its entries), bounded: for a tier below this cache that must
	// not hand back an answer from before the refusal (RefusedAt).
	refused      *otter.Cache[[32]byte, int64]
	flights      singleflight.Group
	staleIfError time.Duration
	now          func() time.Time
	onRefused    func(cred [32]byte)
	idx          index[V]

	// Generations count purges, striped by export id and by credential,
	// plus one epoch for purges by surrogate key and of everything: an
	// answer fetched before a purge that covers it is not stored. Bounded
	// memory, and a DELETE of one export does not keep the answers of
	// (nearly) every other from being cached.
	idGens, credGens [genStripes]atomic.Uint64
	epoch            atomic.Uint64
	seed             maphash.Seed

	stats counters

	// beforeStore, when set by a test, runs between a fill's generation
	// check and its store: the window a purge must not slip through.
	beforeStore func()

	base   context.Context // canceled by Close; the context of background refreshes
	cancel context.CancelFunc
	mu     sync.Mutex // guards closed and wg.Add against Close
	closed bool
	wg     sync.WaitGroup
}

type counters struct {
	hits, misses, staleServed, collapsed atomic.Int64
}

// Stats is a snapshot of a cache's counters.
type Stats struct {
	Entries     int   `json:"entries"`
	Hits        int64 `json:"hits"`
	Misses      int64 `json:"misses"`
	Collapsed   int64 `json:"collapsed"`
	StaleServed int64 `json:"stale_served"`
	Tags        int   `json:"surrogate_keys"`
}

// New returns an empty cache.
func New[V any](cfg Config) *Cache[V] {
	c := &Cache[V]{
		seed:         maphash.MakeSeed(),
		staleIfError: cfg.StaleIfError,
		now:          cfg.Now,
		onRefused:    cfg.OnRefused,
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.idx.init(c.seed)
	opts := &otter.Options[uint64, *Entry[V]]{
		MaximumSize: cfg.MaxEntries,
		// Freshness is the entries' own (checked against c.now, so a fake
		// clock drives tests); the store only bounds the count. Without
		// expiry it needs no time: a clock that is never read keeps
		// time.Now, slow on some hosts, off the hit path.
		Clock: noClock{},
		// Runs atomically with every deletion (eviction, replacement,
		// purge), so the indexes never hold an entry the store dropped.
		OnAtomicDeletion: func(ev otter.DeletionEvent[uint64, *Entry[V]]) { c.idx.unlink(ev.Value) },
	}
	c.store = otter.Must(opts)
	c.refused = otter.Must(&otter.Options[[32]byte, int64]{MaximumSize: min(max(cfg.MaxEntries, 1), maxRefused), Clock: noClock{}})
	c.base, c.cancel = context.WithCancel(context.Background())
	return c
}

// maxRefused bounds the credentials whose refusal time is remembered.
const maxRefused = 100_000

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
	c.refused.StopAllGoroutines()
}

// State says what Peek found.
type State uint8

// Peek results.
const (
	Absent  State = iota // nothing usable: load
	Fresh                // serve it
	Refresh              // serve it; past 80% of its lifetime and no refresh started yet: RefreshAsync
	Stale                // past freshness, within stale_if_error: load, and serve it if that fails
)

// PeekAt is Peek at time now, read once by the caller: the hit path.
func (c *Cache[V]) PeekAt(key Key, now time.Time) (*Entry[V], State) {
	k := key.stored()
	e, ok := c.store.GetIfPresent(c.hash(&k))
	if !ok || e.key != k {
		c.stats.misses.Add(1)
		return nil, Absent
	}
	n := now.UnixNano()
	staleUntil := e.freshUntil + int64(c.staleIfError)
	flags := e.flags.Load()
	if flags&flagDemoted != 0 {
		if n < staleUntil {
			return e, Stale
		}
		return nil, Absent
	}
	switch {
	case n < e.refreshAt:
		c.stats.hits.Add(1)
		return e, Fresh
	case n < e.freshUntil && flags&flagRefreshing != 0:
		// A refresh runs (or failed): the caller need not build the
		// loader of another, which costs allocations on every hit.
		c.stats.hits.Add(1)
		return e, Fresh
	case n < e.freshUntil:
		c.stats.hits.Add(1)
		return e, Refresh
	case n < staleUntil:
		return e, Stale
	}
	c.stats.misses.Add(1)
	return nil, Absent
}

// Holds reports whether e is still key's entry: not dropped (a purge, an
// invalidation, a refusal) nor replaced since it was looked up. A stale
// answer is served only while it holds.
func (c *Cache[V]) Holds(key Key, e *Entry[V]) bool {
	k := key.stored()
	cur, ok := c.store.GetIfPresent(c.hash(&k))
	return ok && cur == e
}

// ServedStale counts an answer served past its freshness because the
// upstream failed.
func (c *Cache[V]) ServedStale() { c.stats.staleServed.Add(1) }

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
//
// A caller that joins a call which started before a purge this caller has
// already seen (an invalidation of the export or credential, a purge by
// tag or of all) does not take its answer, which may predate the purge: it
// asks again, in a call of its own.
func (c *Cache[V]) Load(ctx context.Context, key Key, load Loader[V]) (V, Outcome, error) {
	seen := c.gensOf(key)
	v, how, err := c.loadSeen(ctx, key, load, seen)
	if how == Collapsed && ctx.Err() == nil && c.base.Err() != nil && errors.Is(err, context.Canceled) {
		// Joined a background refresh that Close ended: that cancellation
		// is the old config's, not this request's. Ask on its own behalf.
		return c.loadSeen(ctx, key, load, seen)
	}
	return v, how, err
}

// loadSeen is Load for a caller that saw the purges seen: once more if the
// call it joined started before one of them.
func (c *Cache[V]) loadSeen(ctx context.Context, key Key, load Loader[V], seen gens) (V, Outcome, error) {
	v, how, before, err := c.load(ctx, key, load, context.WithoutCancel(ctx))
	if how == Collapsed && err == nil && before.predates(seen) {
		v, how, _, err = c.load(ctx, key, load, context.WithoutCancel(ctx))
	}
	return v, how, err
}

// load is Load with the context of the shared call: the caller's, detached,
// for a request; the cache's own, ended by Close, for a background refresh.
// before is what the shared call saw when it started.
func (c *Cache[V]) load(ctx context.Context, key Key, load Loader[V], shared context.Context) (V, Outcome, gens, error) {
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
			c.stats.collapsed.Add(1)
			return res.v, Collapsed, res.before, r.Err
		case res.stored:
			return res.v, Stored, res.before, r.Err
		}
		return res.v, NotStored, res.before, r.Err
	case <-ctx.Done():
		var zero V
		return zero, NotStored, gens{}, ctx.Err()
	}
}

type result[V any] struct {
	v      V
	stored bool
	before gens // what the call saw when it started
}

// gens is what a fill saw before it asked the upstream.
type gens struct{ id, cred, epoch uint64 }

// predates reports whether a call that saw g started before a purge that a
// caller who saw later did not: any count of later below its own.
func (g gens) predates(later gens) bool {
	return g.id < later.id || g.cred < later.cred || g.epoch < later.epoch
}

func (c *Cache[V]) gensOf(key Key) gens {
	return gens{c.idStripe(key.ID).Load(), c.credStripe(key.Cred).Load(), c.epoch.Load()}
}

func (c *Cache[V]) fetch(ctx context.Context, key Key, load Loader[V]) (result[V], error) {
	before := c.gensOf(key)
	v, ttl, err := load(ctx)
	if err != nil {
		return result[V]{v: v, before: before}, err
	}
	var tags []string
	if d, ok := any(v).(Described); ok {
		tags = d.CacheTags()
		switch d.CacheRefutes() {
		case RefutesCredential:
			c.InvalidateCredential(key.Cred)
			if c.onRefused != nil {
				c.onRefused(key.Cred) // may drop this credential here again
			}
			before = c.gensOf(key) // this answer postdates those purges
		case RefutesEntry:
			c.drop(key.stored(), nil)
		}
	}
	if ttl <= 0 || c.gensOf(key) != before || c.base.Err() != nil {
		// Not cacheable; or a purge ran meanwhile (this answer may
		// predate it); or the cache was closed.
		return result[V]{v: v, before: before}, nil
	}
	if c.beforeStore != nil {
		c.beforeStore()
	}
	now := c.now().UnixNano()
	e := &Entry[V]{
		Value:      v,
		key:        key.stored(),
		freshUntil: now + int64(ttl),
		refreshAt:  now + int64(ttl*8/10),
	}
	c.store.Set(c.hash(&e.key), e)
	c.idx.link(e, tags)
	// A purge that ran between the check above and the link did not see
	// this entry: its generation moved first, so look again.
	if c.gensOf(key) != before {
		c.drop(e.key, e)
		return result[V]{v: v, before: before}, nil
	}
	return result[V]{v: v, stored: true, before: before}, nil
}

// drop removes key's entry if it is e (any entry of key when e is nil)
// and says whether it removed one.
func (c *Cache[V]) drop(key skey, e *Entry[V]) bool {
	dropped := false
	c.store.ComputeIfPresent(c.hash(&key), func(old *Entry[V]) (*Entry[V], otter.ComputeOp) {
		if (e != nil && old != e) || old.key != key {
			return old, otter.CancelOp
		}
		dropped = true
		return nil, otter.InvalidateOp
	})
	return dropped
}

// dropAll removes each of entries that is still stored.
func (c *Cache[V]) dropAll(entries []*Entry[V]) int {
	n := 0
	for _, e := range entries {
		if c.drop(e.key, e) {
			n++
		}
	}
	return n
}

// RefreshAsync refreshes e in the background unless a refresh of it is
// already running. It returns whether it started one.
func (c *Cache[V]) RefreshAsync(key Key, e *Entry[V], load Loader[V]) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false // a request still draining after a reload
	}
	if old := e.flags.Or(flagRefreshing); old&flagRefreshing != 0 {
		return false
	}
	c.wg.Add(1) // under mu: never concurrent with Close's Wait
	go func() {
		defer c.wg.Done()
		// e stays marked: a successful refresh replaces it, and a failed
		// one leaves it to expire rather than retrying on every hit.
		// A failure is the loader's to report (the handler's logs it).
		_, _, _, _ = c.load(c.base, key, load, c.base)
	}()
	return true
}

// InvalidateID drops every entry of export id, whatever the credentials,
// and keeps answers fetched before now from being stored. It costs what it
// drops, not what the cache holds.
func (c *Cache[V]) InvalidateID(id string) int {
	c.idStripe(id).Add(1)
	return c.dropAll(c.idx.byID(idOf(id)))
}

// InvalidateCredential drops every entry of one credential digest, for all
// exports: a revoked key stops downloading at once.
func (c *Cache[V]) InvalidateCredential(cred [32]byte) int {
	c.credStripe(cred).Add(1)
	c.refused.Set(cred, c.now().UnixNano())
	return c.dropAll(c.idx.byCred(cred))
}

// RefusedAt says when the credential was last refused (InvalidateCredential),
// if this cache still remembers it.
func (c *Cache[V]) RefusedAt(cred [32]byte) (time.Time, bool) {
	n, ok := c.refused.GetIfPresent(cred)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}

// PurgeTags drops every entry that carries one of tags (surrogate keys).
func (c *Cache[V]) PurgeTags(tags ...string) int {
	c.epoch.Add(1)
	n := 0
	for _, tag := range tags {
		n += c.dropAll(c.idx.byTag(tag))
	}
	return n
}

// PurgeAll drops every entry.
func (c *Cache[V]) PurgeAll() int {
	c.epoch.Add(1)
	n := c.store.EstimatedSize()
	c.store.InvalidateAll()
	return n
}

// Demote marks every entry as past its freshness: each is asked for again
// before its next use, and served only if the upstream fails. For when
// invalidations may have been missed (a fleet that cannot resume its
// stream). It returns how many entries it demoted.
func (c *Cache[V]) Demote() int {
	c.epoch.Add(1) // answers in flight may predate what was missed
	n := 0
	for _, e := range c.store.All() {
		e.flags.Or(flagDemoted)
		n++
	}
	return n
}

// Stats returns the cache's counters.
func (c *Cache[V]) Stats() Stats {
	return Stats{
		Entries:     c.store.EstimatedSize(),
		Hits:        c.stats.hits.Load(),
		Misses:      c.stats.misses.Load(),
		Collapsed:   c.stats.collapsed.Load(),
		StaleServed: c.stats.staleServed.Load(),
		Tags:        c.idx.tagCount(),
	}
}

const genStripes = 256

// hash is the store's key for k.
func (c *Cache[V]) hash(k *skey) uint64 {
	return maphash.Bytes(c.seed, unsafe.Slice((*byte)(unsafe.Pointer(k)), unsafe.Sizeof(*k)))
}

func (c *Cache[V]) idStripe(id string) *atomic.Uint64 {
	return &c.idGens[maphash.String(c.seed, id)%genStripes]
}

func (c *Cache[V]) credStripe(cred [32]byte) *atomic.Uint64 {
	return &c.credGens[credHash(cred)%genStripes]
}

// noClock is the store's clock: with no expiry configured, otter never
// needs the time, and nothing in it ticks.
type noClock struct{}

func (noClock) NowNano() int64                      { return 0 }
func (noClock) Tick(time.Duration) <-chan time.Time { return nil }
