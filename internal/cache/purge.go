package cache

import (
	"time"

	"github.com/maypok86/otter/v2"
)

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
