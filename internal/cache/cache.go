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
