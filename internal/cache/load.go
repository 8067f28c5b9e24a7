package cache

import (
	"context"
	"errors"
)

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
