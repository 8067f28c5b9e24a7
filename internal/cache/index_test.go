package cache

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"
)

// tagged is a value with surrogate keys and a refutation, as the handler's
// records are.
type tagged struct {
	v       string
	tags    []string
	refutes Refutation
}

func (t tagged) CacheTags() []string      { return t.tags }
func (t tagged) CacheRefutes() Refutation { return t.refutes }

func taggedAnswer(v tagged, ttl time.Duration) Loader[tagged] {
	return func(context.Context) (tagged, time.Duration, error) { return v, ttl, nil }
}

func newTaggedCache(t testing.TB, clock *fakeClock, maxEntries int) *Cache[tagged] {
	t.Helper()
	cfg := Config{MaxEntries: maxEntries, StaleIfError: time.Minute}
	if clock != nil {
		cfg.Now = clock.Now
	}
	c := New[tagged](cfg)
	t.Cleanup(c.Close)
	return c
}

func mustStore[V any](t testing.TB, c *Cache[V], k Key, load Loader[V]) {
	t.Helper()
	if _, how, err := c.Load(context.Background(), k, load); err != nil || how != Stored {
		t.Fatalf("Load(%x…, %s) = %v, %v; want Stored", k.Cred[:1], k.ID, how, err)
	}
}

func present[V any](c *Cache[V], keys ...Key) (n int) {
	for _, k := range keys {
		if _, st := c.Peek(k); st != Absent {
			n++
		}
	}
	return n
}

// TestPurges: by id, credential and surrogate key, each dropping exactly
// what it names, and the indexes empty once the entries are gone.
func TestPurges(t *testing.T) {
	c := newTaggedCache(t, newFakeClock(), 1000)
	// Credential 1 (tag key_1) and credential 2 (tag key_2), exports a–c,
	// all in project p.
	var keys []Key
	for cred := byte(1); cred <= 2; cred++ {
		for _, id := range []string{"a", "b", "c"} {
			k := testKey(cred, id)
			keys = append(keys, k)
			mustStore(t, c, k, taggedAnswer(tagged{v: id, tags: []string{fmt.Sprintf("key_%d", cred), "proj_p"}}, time.Minute))
		}
	}
	if n := c.InvalidateID("b"); n != 2 {
		t.Fatalf("InvalidateID(b) dropped %d, want 2", n)
	}
	if n := present(c, keys...); n != 4 {
		t.Fatalf("%d entries left after dropping one export of two credentials, want 4", n)
	}
	if n := c.InvalidateCredential(testKey(1, "").Cred); n != 2 {
		t.Fatalf("InvalidateCredential dropped %d, want 2 (a and c of credential 1)", n)
	}
	if n := c.PurgeTags("key_1", "nope"); n != 0 {
		t.Fatalf("PurgeTags of a credential already dropped = %d, want 0", n)
	}
	if n := c.PurgeTags("key_2"); n != 2 {
		t.Fatalf("PurgeTags(key_2) dropped %d, want 2", n)
	}
	if n := present(c, keys...); n != 0 {
		t.Fatalf("%d entries left, want none", n)
	}
	c.idx.mu.Lock()
	sizes := [3]int{len(c.idx.ids), len(c.idx.creds), len(c.idx.tags)}
	c.idx.mu.Unlock()
	if sizes != [3]int{} {
		t.Fatalf("index maps (ids, creds, tags) = %v after every entry was dropped, want empty", sizes)
	}

	mustStore(t, c, testKey(3, "d"), taggedAnswer(tagged{v: "d", tags: []string{"proj_p"}}, time.Minute))
	mustStore(t, c, testKey(3, "e"), taggedAnswer(tagged{v: "e"}, time.Minute))
	if n := c.PurgeAll(); n != 2 {
		t.Fatalf("PurgeAll = %d, want 2", n)
	}
	if n := present(c, testKey(3, "d"), testKey(3, "e")); n != 0 {
		t.Fatalf("%d entries left after PurgeAll", n)
	}
}

// TestIndexFollowsEvictionAndReplacement: entries the store evicts or
// replaces leave the indexes; nothing leaks when the bound is reached.
func TestIndexFollowsEvictionAndReplacement(t *testing.T) {
	const limit = 500
	c := newTaggedCache(t, nil, limit)
	for i := range 20 * limit {
		k := testKey(byte(i%7), fmt.Sprintf("id-%d", i))
		mustStore(t, c, k, taggedAnswer(tagged{v: "v", tags: []string{fmt.Sprintf("t%d", i), "all"}}, time.Hour))
	}
	// Replace one entry many times: still one entry in its lists.
	k := testKey(9, "replaced")
	for i := range 50 {
		mustStore(t, c, k, taggedAnswer(tagged{v: fmt.Sprint(i), tags: []string{"r"}}, time.Hour))
	}
	c.store.CleanUp()
	if got := len(c.idx.byTag("r")); got != 1 {
		t.Fatalf("an entry replaced 50 times is %d times in its tag's list, want 1", got)
	}
	stored := c.Stats().Entries
	c.idx.mu.Lock()
	ids, tags := len(c.idx.ids), len(c.idx.tags)
	c.idx.mu.Unlock()
	if ids > stored || tags > stored+2 {
		t.Fatalf("index holds %d ids and %d tags for %d stored entries: evicted entries leaked", ids, tags, stored)
	}
	if got := len(c.idx.byTag("all")); got > stored {
		t.Fatalf("tag list of %d entries for %d stored", got, stored)
	}
}

// TestRefutations: a 401-like answer drops every entry of its credential
// and a 404-like one its own entry, whether or not it is stored itself
// (TTL 0), so stale-if-error cannot bring the refuted answer back.
func TestRefutations(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Minute} {
		t.Run(fmt.Sprintf("ttl %v", ttl), func(t *testing.T) {
			clock := newFakeClock()
			c := newTaggedCache(t, clock, 100)
			a1, b1, a2 := testKey(1, "a"), testKey(1, "b"), testKey(2, "a")
			for _, k := range []Key{a1, b1, a2} {
				mustStore(t, c, k, taggedAnswer(tagged{v: "completed"}, time.Second))
			}
			clock.Advance(2 * time.Second) // past freshness: only stale-if-error would serve them
			if _, _, err := c.Load(context.Background(), a1, taggedAnswer(tagged{v: "401", refutes: RefutesCredential}, ttl)); err != nil {
				t.Fatal(err)
			}
			if e, st := c.Peek(b1); st != Absent {
				t.Fatalf("credential 1's other export is %v (%v) after a 401, want Absent", st, e.Value)
			}
			if e, st := c.Peek(a1); (ttl == 0 && st != Absent) || (ttl > 0 && (st != Fresh || e.Value.v != "401")) {
				t.Fatalf("the refused key's entry is %v after a 401 with ttl %v", st, ttl)
			}
			if _, st := c.Peek(a2); st != Stale {
				t.Fatalf("another credential's entry is %v after credential 1's 401, want it kept (Stale)", st)
			}
			if _, _, err := c.Load(context.Background(), a2, taggedAnswer(tagged{v: "404", refutes: RefutesEntry}, ttl)); err != nil {
				t.Fatal(err)
			}
			if _, st := c.Peek(a2); (ttl == 0) != (st == Absent) {
				t.Fatalf("after a 404 with ttl %v the entry is %v", ttl, st)
			}
		})
	}
}

// TestPurgeBetweenCheckAndStore forces a purge into the window between a
// fill's generation check and its store: the purge still wins.
func TestPurgeBetweenCheckAndStore(t *testing.T) {
	for name, purge := range map[string]func(c *Cache[tagged]){
		"id":         func(c *Cache[tagged]) { c.InvalidateID("a") },
		"credential": func(c *Cache[tagged]) { c.InvalidateCredential(testKey(1, "").Cred) },
		"tag":        func(c *Cache[tagged]) { c.PurgeTags("t") },
		"all":        func(c *Cache[tagged]) { c.PurgeAll() },
		"demote":     func(c *Cache[tagged]) { c.Demote() },
	} {
		t.Run(name, func(t *testing.T) {
			c := newTaggedCache(t, nil, 100)
			c.beforeStore = func() { purge(c) }
			k := testKey(1, "a")
			_, how, err := c.Load(context.Background(), k, taggedAnswer(tagged{v: "v", tags: []string{"t"}}, time.Minute))
			if err != nil || how != NotStored {
				t.Fatalf("a fill overtaken by a purge = %v, %v; want NotStored", how, err)
			}
			if _, st := c.Peek(k); st != Absent {
				t.Fatalf("the purged answer is %v, want Absent", st)
			}
		})
	}
}

func TestDemote(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[string](Config{MaxEntries: 100, StaleIfError: time.Minute})
		defer c.Close()
		k := testKey(1, "a")
		mustStore(t, c, k, answer("v", time.Hour))
		if n := c.Demote(); n != 1 {
			t.Fatalf("Demote = %d, want 1", n)
		}
		if e, st := c.Peek(k); st != Stale || e.Value != "v" {
			t.Fatalf("a demoted entry is %v, want Stale (asked again, served only if the upstream fails)", st)
		}
		mustStore(t, c, k, answer("new", time.Hour))
		if _, st := c.Peek(k); st != Fresh {
			t.Fatalf("the answer stored after Demote is %v, want Fresh", st)
		}
	})
}

func TestStats(t *testing.T) {
	c := newTaggedCache(t, newFakeClock(), 100)
	k := testKey(1, "a")
	c.Peek(k) // miss
	mustStore(t, c, k, taggedAnswer(tagged{v: "v", tags: []string{"x", "y"}}, time.Minute))
	c.Peek(k)
	c.Peek(k)
	c.ServedStale()
	got := c.Stats()
	want := Stats{Entries: 1, Hits: 2, Misses: 1, StaleServed: 1, Tags: 2}
	if got != want {
		t.Fatalf("Stats = %+v, want %+v", got, want)
	}
}

// BenchmarkInvalidateID1M: dropping one export (two credentials) from a
// cache of 1,000,000 entries costs what it drops.
func BenchmarkInvalidateID1M(b *testing.B) {
	const n = 1_000_000
	c := New[tagged](Config{MaxEntries: 2 * n, StaleIfError: time.Minute})
	defer c.Close()
	ids := make([]string, n/2)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
	}
	fill := func(i int) {
		for cred := byte(1); cred <= 2; cred++ {
			k := testKey(cred, ids[i]).stored()
			c.store.Set(c.hash(&k), &Entry[tagged]{key: k, freshUntil: 1 << 62, refreshAt: 1 << 62})
			e, _ := c.store.GetIfPresent(c.hash(&k))
			c.idx.link(e, []string{fmt.Sprintf("key_%d", cred), "proj_" + ids[i][:4]})
		}
	}
	for i := range ids {
		fill(i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % len(ids)
		if got := c.InvalidateID(ids[j]); got != 2 {
			b.Fatalf("dropped %d, want 2", got)
		}
		b.StopTimer()
		fill(j)
		b.StartTimer()
	}
}

// TestStoredKeys: a canonical UUID is kept as its 16 bytes and any other
// id as a digest, so ids that differ in any way stay apart, including a
// UUID in upper case (the handler lowercases ids before the cache).
func TestStoredKeys(t *testing.T) {
	const id = "01935abc-def0-7123-4567-890abcdef012"
	b := idOf(id)
	if want := [16]byte{0x01, 0x93, 0x5a, 0xbc, 0xde, 0xf0, 0x71, 0x23, 0x45, 0x67, 0x89, 0x0a, 0xbc, 0xde, 0xf0, 0x12}; b != want {
		t.Fatalf("idOf(%q) = %x, want %x", id, b, want)
	}
	ids := []string{id, "01935ABC-DEF0-7123-4567-890ABCDEF012", "01935abc-def0-7123-4567-890abcdef013",
		"01935abcdef0-7123-4567-890abcdef012-", "a", "b", ""}
	c := newTestCache(t, newFakeClock(), 100, time.Minute)
	for i, id := range ids {
		mustStore(t, c, testKey(1, id), answer(id, time.Minute))
		for _, other := range ids[:i] {
			if idOf(other) == idOf(id) {
				t.Fatalf("ids %q and %q are kept alike", other, id)
			}
		}
	}
	for _, id := range ids {
		if e, st := c.Peek(testKey(1, id)); st != Fresh || e.Value != id {
			t.Fatalf("Peek(%q) = %v, want its own answer", id, st)
		}
	}
	if n := c.InvalidateID(ids[1]); n != 1 {
		t.Fatalf("InvalidateID(%q) dropped %d entries, want 1", ids[1], n)
	}
	if _, st := c.Peek(testKey(1, ids[0])); st != Fresh {
		t.Fatalf("the lowercase id went with the uppercase one: %v", st)
	}
}

// TestHashCollision: the store is keyed by a 64-bit hash of the key. An
// entry found under a key's hash that belongs to another key is a miss,
// and dropping a key never drops another key's entry.
func TestHashCollision(t *testing.T) {
	c := newTaggedCache(t, newFakeClock(), 100)
	a, b := testKey(1, "a"), testKey(2, "b")
	mustStore(t, c, b, taggedAnswer(tagged{v: "b"}, time.Minute))
	eb, _ := c.Peek(b)
	// Put b's entry where a's hash leads, as a collision would.
	ka := a.stored()
	c.store.Set(c.hash(&ka), eb)
	if e, st := c.Peek(a); st != Absent || e != nil {
		t.Fatalf("Peek(a) found b's entry under a colliding hash: %v", st)
	}
	if c.drop(ka, nil) {
		t.Fatal("dropping a removed b's entry stored under a colliding hash")
	}
	if _, _, err := c.Load(context.Background(), a, taggedAnswer(tagged{v: "a"}, 0)); err != nil {
		t.Fatal(err)
	}
	if e, st := c.Peek(b); st != Fresh || e.Value.v != "b" {
		t.Fatalf("b's own entry: %v", st)
	}
}
