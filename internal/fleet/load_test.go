package fleet

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

func TestNewRejectsBadConfig(t *testing.T) {
	good := func() Config { return Config{Addrs: []string{"127.0.0.1:1"}, Secret: testSecret} }
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no address", func(c *Config) { c.Addrs = nil }, "at least one redis address"},
		{"address without port", func(c *Config) { c.Addrs = []string{"localhost"} }, "host:port"},
		{"short secret", func(c *Config) { c.Secret = []byte("short") }, "at least 32 bytes"},
		{"prefix with brace", func(c *Config) { c.Prefix = "a{b" }, "prefix"},
		{"negative timeout", func(c *Config) { c.Timeout = -1 }, "negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			cfg.Password = "hunter2-password"
			tc.mod(&cfg)
			c, err := New(cfg)
			if err == nil {
				c.Close()
				t.Fatal("New accepted a bad config")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), string(testSecret)) {
				t.Errorf("error leaks a secret: %q", err)
			}
		})
	}
}

func TestMACIsHMACOfDigest(t *testing.T) {
	c := node(t, "127.0.0.1:1")
	d := cred("sk_live_abc")
	m := c.mac(d)
	if len(m) != 64 || strings.ToLower(m) != m {
		t.Fatalf("MAC %q is not lowercase hex SHA-256", m)
	}
	if _, err := hex.DecodeString(m); err != nil {
		t.Fatal(err)
	}
	if m == hex.EncodeToString(d[:]) {
		t.Fatal("MAC is the digest itself")
	}
	other := node(t, "127.0.0.1:1", func(c *Config) { c.Secret = bytes.Repeat([]byte("x"), 32) })
	if other.mac(d) == m {
		t.Fatal("MAC does not depend on the secret")
	}
	// A site's scope is an HMAC too: 16 hex digits that depend on the
	// secret and the settings' digest.
	s1, s2 := c.Site(cred("site one")), c.Site(cred("site two"))
	if len(s1) != 16 || s1 == s2 || other.Site(cred("site one")) == s1 {
		t.Fatalf("Site scopes %q %q (other secret %q): want distinct 16-digit HMACs", s1, s2, other.Site(cred("site one")))
	}
}

func TestSharedHitAcrossNodes(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	key := cred("sk_live_key_one")

	fa := newFetcher(`{"outcome":"completed"}`)
	p, src := load(t, a, "exp_1", key, fa)
	if src != Stored || string(p) != `{"outcome":"completed"}` || fa.calls.Load() != 1 {
		t.Fatalf("first node: src %v payload %q calls %d, want stored after one fetch", src, p, fa.calls.Load())
	}

	fb := newFetcher("must not be asked")
	ctx := context.Background()
	before := time.Now()
	d, err := b.Load(ctx, query("exp_1", key), fb.fetch)
	if err != nil || d.Source != Hit || string(d.Payload) != `{"outcome":"completed"}` || fb.calls.Load() != 0 {
		t.Fatalf("second node: src %v payload %q err %v calls %d, want a shared hit", d.Source, d.Payload, err, fb.calls.Load())
	}
	fresh := d.FreshUntil
	if left := time.Until(fresh); left < 50*time.Second || left > time.Minute {
		t.Errorf("freshUntil is %v away, want about the fetch's TTL (1m)", left)
	}
	if d.DecidedAt.After(before) || time.Since(d.DecidedAt) > 10*time.Second {
		t.Errorf("DecidedAt %v: want when node a asked the upstream", d.DecidedAt)
	}
	if b.Stats().Lookups.Hit != 1 || a.Stats().Lookups.Miss != 1 {
		t.Errorf("stats: a %+v b %+v", a.Stats().Lookups, b.Stats().Lookups)
	}

	// Refresh-ahead: a shared decision that is not fresh past minFresh is
	// not taken; the node fetches a newer one.
	q := query("exp_1", key)
	q.MinFresh = fresh.Add(time.Second)
	if d, _ = b.Load(ctx, q, fb.fetch); d.Source != Stored || fb.calls.Load() != 1 {
		t.Errorf("refresh-ahead past the shared freshness: src %v calls %d, want a new fetch", d.Source, fb.calls.Load())
	}

	// Key isolation: another credential's MAC names another key.
	fo := newFetcher("other")
	if p, src := load(t, b, "exp_1", cred("sk_live_key_two"), fo); src == Hit || string(p) != "other" || fo.calls.Load() != 1 {
		t.Fatalf("another credential: src %v payload %q, want a miss and its own fetch", src, p)
	}
	// Another secret (another fleet) does not read this fleet's decisions.
	c := node(t, r.Addr, func(c *Config) { c.Secret = bytes.Repeat([]byte("s"), 40) })
	fc := newFetcher("fleet two")
	if _, src := load(t, c, "exp_1", key, fc); src == Hit {
		t.Fatal("a node with another secret used this fleet's decision")
	}
	// Another site (other upstream, headers or TTLs) does not either: a site
	// whose app would answer 404 must not redirect from this site's 302.
	fs := newFetcher(`{"outcome":"not_found"}`)
	qs := query("exp_1", key)
	qs.Site = b.Site(cred("another site's decision settings"))
	if d := loadQ(t, b, qs, fs); d.Source == Hit || fs.calls.Load() != 1 || string(d.Payload) != `{"outcome":"not_found"}` {
		t.Fatalf("another site: src %v payload %q, want its own upstream call", d.Source, d.Payload)
	}
}

func TestNothingSecretReachesRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	raw := "sk_live_TOPSECRET_credential_value"
	d := cred(raw)
	load(t, a, "exp_secret", d, newFetcher(`{"outcome":"completed","filename":"report.csv"}`))
	load(t, b, "exp_secret", d, newFetcher("x"))
	a.Publish(context.Background(), Event{IDs: []string{"exp_secret"}, Tags: []string{"key_8f2a"}})

	keys := strings.Split(r.MustDo(t, "KEYS", "*"), "\n")
	if len(keys) < 4 {
		t.Fatalf("expected decision, generation, stream and boot keys, got %q", keys)
	}
	forbidden := [][]byte{[]byte(raw), d[:], []byte(hex.EncodeToString(d[:])), testSecret}
	for _, k := range keys {
		if !strings.HasPrefix(k, DefaultPrefix+":") {
			t.Errorf("key %q is outside the prefix", k)
		}
		dump := r.MustDo(t, "DUMP", k)
		for _, f := range forbidden {
			if bytes.Contains([]byte(k), f) || bytes.Contains([]byte(dump), f) {
				t.Errorf("key %q or its value holds a secret (%q)", k, f)
			}
		}
	}
	want := DefaultPrefix + ":d:{exp_secret}:" + testSite + ":" + a.mac(d)
	if !strings.Contains("\n"+strings.Join(keys, "\n")+"\n", "\n"+want+"\n") {
		t.Errorf("decision key %q not found among %q", want, keys)
	}
}

func TestColdBurstOneFetch(t *testing.T) {
	r := testenv.StartRedis(t)
	// Waiters give up on the lease after LockWait and ask the upstream
	// themselves: the test is of the collapsing, not of that bound, which
	// a loaded machine could reach.
	patient := func(c *Config) { c.LockWait = 5 * time.Second }
	nodes := []*Client{node(t, r.Addr, patient), node(t, r.Addr, patient), node(t, r.Addr, patient)}
	waitUp(t, nodes...)
	key := cred("burst")
	f := newFetcher(`{"outcome":"completed"}`)
	f.delay = 50 * time.Millisecond // an upstream call
	var wg sync.WaitGroup
	var mu sync.Mutex
	bySource := map[Source]int{}
	start := make(chan struct{})
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			d, err := nodes[i%3].Load(context.Background(), query("exp_burst", key), f.fetch)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || string(d.Payload) != `{"outcome":"completed"}` {
				t.Errorf("Load: %q %v", d.Payload, err)
			}
			bySource[d.Source]++
		}()
	}
	close(start)
	wg.Wait()
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("a cold burst of 50 over 3 nodes made %d upstream calls, want 1 (sources %v)", n, bySource)
	}
	if bySource[Stored] != 1 {
		t.Errorf("sources %v, want exactly one stored", bySource)
	}
	t.Logf("sources of 50 concurrent loads over 3 nodes: %v", bySource)
	if n := r.MustDo(t, "EXISTS", leaseKey(nodes[0], "exp_burst", key)); n != "0" {
		t.Errorf("lease still held after the fill (EXISTS = %s)", n)
	}

	// After an invalidation the next miss takes the lease at once: it is the
	// holder and stores, rather than waiting on a lease left behind.
	if !nodes[0].Publish(context.Background(), Event{IDs: []string{"exp_burst"}}) {
		t.Fatal("Publish queued with Redis up")
	}
	f2 := newFetcher(`{"outcome":"failed"}`)
	start2 := time.Now()
	if _, src := load(t, nodes[1], "exp_burst", key, f2); src != Stored || f2.calls.Load() != 1 {
		t.Fatalf("miss after an invalidation: src %v calls %d, want this node to hold the lease and store", src, f2.calls.Load())
	}
	t.Logf("miss after an invalidation took %v", time.Since(start2))
}

func TestHolderFailureReleasesWaiters(t *testing.T) {
	r := testenv.StartRedis(t)
	long := func(c *Config) { c.LockWait = time.Minute } // a waiter that waited it out would time out below
	a, b := node(t, r.Addr, long), node(t, r.Addr, long)
	waitUp(t, a, b)
	key := cred("failing")
	fa := newFetcher("")
	fa.gate = make(chan struct{})
	fa.err = errors.New("upstream 503")
	resA := make(chan error, 1)
	go func() {
		_, err := a.Load(context.Background(), query("exp_f", key), fa.fetch)
		resA <- err
	}()
	waitFor(t, 5*time.Second, "the holder's fetch", func() bool { return fa.calls.Load() == 1 })

	fb := newFetcher(`{"outcome":"completed"}`)
	resB := make(chan Source, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d, err := b.Load(ctx, query("exp_f", key), fb.fetch)
		if err != nil {
			t.Errorf("waiter: %v", err)
		}
		resB <- d.Source
	}()
	time.Sleep(50 * time.Millisecond) // b is now polling: it must not fetch meanwhile
	if fb.calls.Load() != 0 {
		t.Fatal("the waiter fetched while the holder was still working")
	}
	released := time.Now()
	close(fa.gate)
	if err := <-resA; err == nil || err.Error() != "upstream 503" {
		t.Fatalf("holder error %v, want the fetch's own", err)
	}
	src := <-resB
	if fb.calls.Load() != 1 || (src != Stored && src != Fetched) {
		t.Fatalf("waiter: src %v calls %d, want its own fetch", src, fb.calls.Load())
	}
	t.Logf("waiter fetched %v after the holder failed", time.Since(released))
}

func TestLockWaitBoundsTheWait(t *testing.T) {
	r := testenv.StartRedis(t)
	short := func(c *Config) { c.LockWait = 100 * time.Millisecond }
	a, b := node(t, r.Addr), node(t, r.Addr, short)
	waitUp(t, a, b)
	key := cred("slow")
	fa := newFetcher("slow")
	fa.gate = make(chan struct{})
	defer close(fa.gate)
	go a.Load(context.Background(), query("exp_slow", key), fa.fetch)
	waitFor(t, 5*time.Second, "the holder's fetch", func() bool { return fa.calls.Load() == 1 })
	fb := newFetcher("own")
	start := time.Now()
	p, src := load(t, b, "exp_slow", key, fb)
	took := time.Since(start)
	if string(p) != "own" || fb.calls.Load() != 1 || src == Collapsed {
		t.Fatalf("src %v payload %q: want the waiter's own fetch after lock_wait", src, p)
	}
	t.Logf("waiter gave up on a slow holder after %v (lock_wait 100ms)", took)
}

func TestGenerationFencesAFill(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b, c := node(t, r.Addr), node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b, c)
	key := cred("gen")

	// A fill that started before an invalidation is not shared.
	fa := newFetcher("before the delete")
	fa.gate = make(chan struct{})
	res := make(chan Source, 1)
	go func() {
		d, _ := a.Load(context.Background(), query("exp_g", key), fa.fetch)
		res <- d.Source
	}()
	waitFor(t, 5*time.Second, "the fill to start", func() bool { return fa.calls.Load() == 1 })
	if !b.Publish(context.Background(), Event{IDs: []string{"exp_g"}}) {
		t.Fatal("Publish queued with Redis up")
	}
	close(fa.gate)
	if src := <-res; src != Fetched {
		t.Fatalf("fill across an invalidation: src %v, want fetched (not shared)", src)
	}
	fc := newFetcher("after")
	if _, src := load(t, c, "exp_g", key, fc); src == Hit || fc.calls.Load() != 1 {
		t.Fatalf("the answer fetched before the invalidation was shared after it (src %v)", src)
	}

	// A stored decision is not used after an invalidation.
	if _, src := load(t, a, "exp_g", key, newFetcher("x")); src != Hit {
		t.Fatalf("src %v, want the decision just stored", src)
	}
	b.Publish(context.Background(), Event{IDs: []string{"exp_g"}})
	fa2 := newFetcher("new")
	if _, src := load(t, a, "exp_g", key, fa2); src == Hit || fa2.calls.Load() != 1 {
		t.Fatalf("decision used after Publish: src %v", src)
	}
}

// A purge by surrogate key retires the shared decisions that carry the key,
// and no other; a purge of all retires every one.
func TestPurgeRetiresOnlyWhatItCovers(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	tagged, untagged := cred("revoked key"), cred("another key")
	ft := newFetcher("tagged")
	ft.tags = []string{"key_8f2a", "proj_91c0"}
	const n = 100
	for i := range n {
		id := fmt.Sprintf("exp_tag_%d", i)
		load(t, a, id, tagged, ft)
		load(t, a, id, untagged, newFetcher("untagged"))
	}
	// Let a decision be made after... nothing yet: both are shared hits.
	hits := func(c *Client, cr [32]byte) int {
		k := 0
		for i := range n {
			f := newFetcher("refetched")
			if _, src := load(t, c, fmt.Sprintf("exp_tag_%d", i), cr, f); src == Hit {
				k++
			}
		}
		return k
	}
	if h1, h2 := hits(b, tagged), hits(b, untagged); h1 != n || h2 != n {
		t.Fatalf("before the purge: %d and %d of %d shared hits", h1, h2, n)
	}
	if !a.Publish(context.Background(), Event{Tags: []string{"key_8f2a"}}) {
		t.Fatal("Publish queued with Redis up")
	}
	waitFor(t, 5*time.Second, "the tag purge on node b", func() bool {
		return rb.has(func(ev Event) bool { return slices.Contains(ev.Tags, "key_8f2a") })
	})
	// The untagged decisions stay shared hits on both nodes; the tagged
	// ones go back to the app once (and are shared again afterwards).
	untaggedHits, taggedHits := hits(b, untagged), hits(b, tagged)
	t.Logf("after a purge of one surrogate key: %d/%d untagged decisions still shared hits, %d/%d tagged", untaggedHits, n, taggedHits, n)
	if untaggedHits != n {
		t.Errorf("a tag purge retired %d untagged shared decisions", n-untaggedHits)
	}
	if taggedHits != 0 {
		t.Errorf("%d tagged decisions were still used after their tag's purge", taggedHits)
	}
	if h := hits(a, tagged); h != n {
		t.Errorf("the refetched tagged decisions: %d of %d shared again", h, n)
	}

	// All retires every decision, on the publisher at once and on the
	// other node once the event arrives.
	if !a.Publish(context.Background(), Event{All: true}) {
		t.Fatal("Publish queued with Redis up")
	}
	if h := hits(a, untagged); h != 0 {
		t.Errorf("a purge of all: %d decisions still used on the publishing node", h)
	}
	waitFor(t, 5*time.Second, "the purge of all on node b", func() bool {
		return rb.has(func(ev Event) bool { return ev.All })
	})
	if h := hits(b, tagged); h != 0 {
		t.Errorf("a purge of all: %d decisions still used on another node", h)
	}
}

// A decision made before an invalidation this node knows of is refused even
// when the generation in Redis no longer says so: the generation key
// evicted and recreated, or set back by a failover that lost its write.
func TestKnownInvalidationRefusesOlderDecisions(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	key := cred("evicted")
	load(t, a, "exp_ev", key, newFetcher("before the delete"))
	gen := r.MustDo(t, "GET", DefaultPrefix+":g:{exp_ev}")
	old := r.MustDo(t, "GET", decisionKey(a, "exp_ev", key))
	a.Publish(context.Background(), Event{IDs: []string{"exp_ev"}})
	waitFor(t, 5*time.Second, "the event on node b", func() bool { return rb.has(hasID("exp_ev")) })

	// A missing generation makes every decision unusable.
	r.MustDo(t, "SET", decisionKey(a, "exp_ev", key), old, "PX", "60000")
	r.MustDo(t, "DEL", DefaultPrefix+":g:{exp_ev}")
	f := newFetcher("after")
	if _, src := load(t, b, "exp_ev", key, f); src == Hit {
		t.Fatal("a decision was used although its generation key is missing")
	}
	// The old generation restored with the old decision (a failover that
	// lost the bump): still refused, from the purge log.
	for _, c := range []*Client{a, b} {
		r.MustDo(t, "SET", DefaultPrefix+":g:{exp_ev}", gen, "PX", "60000")
		r.MustDo(t, "SET", decisionKey(a, "exp_ev", key), old, "PX", "60000")
		f := newFetcher("after")
		if p, src := load(t, c, "exp_ev", key, f); src == Hit || string(p) != "after" {
			t.Fatalf("a decision made before a known invalidation was used (src %v payload %q)", src, p)
		}
	}
}

// While the stream reader has not confirmed within MaxStaleness, Trusts
// refuses answers decided before the bound and Load takes only decisions
// made within it; once the reader confirms again, both trust as before.
func TestBoundedStaleness(t *testing.T) {
	r := testenv.StartRedis(t)
	p := testenv.StartTCPProxy(t, r.Addr)
	ms := 400 * time.Millisecond
	a := node(t, r.Addr)
	b := node(t, p.Addr, fast, func(c *Config) { c.MaxStaleness = ms })
	waitUp(t, a, b)
	key := cred("bound")
	load(t, a, "exp_b", key, newFetcher("shared"))
	now := time.Now()
	old := now.Add(-time.Hour).UnixNano()
	waitFor(t, 5*time.Second, "a confirmation", func() bool { return b.Trusts(old, time.Now().UnixNano()) })
	if s := b.Stats(); s.ConfirmedAgoMS < 0 || s.ConfirmedAgoMS > int64(ms/time.Millisecond) {
		t.Errorf("confirmed %d ms ago, want within %v", s.ConfirmedAgoMS, ms)
	}

	p.Freeze()
	frozen := time.Now()
	waitFor(t, 5*time.Second, "the bound to pass without a confirmation", func() bool { return !b.Trusts(old, time.Now().UnixNano()) })
	t.Logf("link frozen: an old answer stopped being trusted %v later (max_staleness %v)", time.Since(frozen), ms)
	if since := time.Since(frozen); since < ms/2 {
		t.Errorf("distrusted after %v: the reader confirms at least every max_staleness/4", since)
	}
	if !b.Trusts(time.Now().UnixNano(), time.Now().UnixNano()) {
		t.Error("an answer decided just now is not trusted")
	}
	p.Resume()
	waitFor(t, 10*time.Second, "the reader to confirm again", func() bool { return b.Trusts(old, time.Now().UnixNano()) })

	// Load refuses a shared decision older than the bound while unconfirmed.
	r.Kill()
	waitFor(t, 5*time.Second, "the bound to pass", func() bool { return !b.Trusts(old, time.Now().UnixNano()) })
	if nb := b.notBefore(time.Now()); nb.IsZero() || time.Since(nb) > ms+100*time.Millisecond {
		t.Errorf("notBefore %v while unconfirmed, want about now - %v", nb, ms)
	}
	off := node(t, r.Addr, func(c *Config) { c.MaxStaleness = -1 })
	if !off.Trusts(old, time.Now().UnixNano()) || !off.notBefore(time.Now()).IsZero() {
		t.Error("max_staleness off: answers must be trusted until their TTL")
	}
}

func TestTTLZeroAndFailuresAreNotShared(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	key := cred("pending")
	f := newFetcher(`{"outcome":"pending"}`)
	f.ttl = 0
	if _, src := load(t, a, "exp_p", key, f); src != Fetched {
		t.Fatalf("TTL 0: src %v, want fetched", src)
	}
	fb := newFetcher(`{"outcome":"pending"}`)
	if _, src := load(t, b, "exp_p", key, fb); src == Hit || fb.calls.Load() != 1 {
		t.Fatalf("TTL 0 answer was shared (src %v)", src)
	}
	if n := r.MustDo(t, "EXISTS", leaseKey(a, "exp_p", key)); n != "0" {
		t.Errorf("lease left after a TTL-0 answer")
	}
}

func TestDecisionExpiresInRedisAtFreshness(t *testing.T) {
	r := testenv.StartRedis(t)
	a := node(t, r.Addr)
	waitUp(t, a)
	key := cred("pttl")
	f := newFetcher("v")
	f.ttl = 30 * time.Second
	load(t, a, "exp_x", key, f)
	pttl := r.MustDo(t, "PTTL", decisionKey(a, "exp_x", key))
	if pttl == "-1" || pttl == "-2" || len(pttl) != 5 || pttl > "30000" {
		t.Fatalf("PTTL %s, want about 30000 ms", pttl)
	}
}

// Redis keeps nothing longer than needed: every per-export key expires, and
// a generation outlives the decisions filled under it (a missing generation
// only costs misses, but would cost one per decision).
func TestKeysExpire(t *testing.T) {
	r := testenv.StartRedis(t)
	a := node(t, r.Addr, func(c *Config) { c.LeaseTTL = 2 * time.Second })
	waitUp(t, a)
	key := cred("ttl")
	f := newFetcher("v")
	f.ttl = 30 * time.Second
	load(t, a, "exp_k", key, f) // a generation created with the decision
	g := DefaultPrefix + ":g:{exp_k}"
	first := r.MustDo(t, "GET", g)
	a.Publish(context.Background(), Event{IDs: []string{"exp_k"}}) // a new one
	time.Sleep(5 * time.Millisecond)                               // decided after the invalidation
	load(t, a, "exp_k", key, f)                                    // stored under it
	a.Publish(context.Background(), Event{IDs: []string{"exp_never_cached"}, Tags: []string{"t"}})

	pttl := func(k string) int {
		n, err := strconv.Atoi(r.MustDo(t, "PTTL", k))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	d := decisionKey(a, "exp_k", key)
	if now := r.MustDo(t, "GET", g); now == first || len(now) != 16 {
		t.Fatalf("generation %q after an invalidation (was %q), want a new random token", now, first)
	}
	if r.MustDo(t, "EXISTS", d) != "1" {
		t.Fatal("the decision made after the invalidation was not stored")
	}
	if pd, pg := pttl(d), pttl(g); pd <= 0 || pg < pd {
		t.Fatalf("decision PTTL %d, generation PTTL %d: the generation must outlive the decision", pd, pg)
	}
	if p := pttl(DefaultPrefix + ":g:{exp_never_cached}"); p <= 0 || p > 4000 {
		t.Fatalf("generation of an export without decisions: PTTL %d, want about 2 leases (4s)", p)
	}
	for _, k := range strings.Split(r.MustDo(t, "KEYS", "*"), "\n") {
		switch k {
		case DefaultPrefix + ":boot", DefaultPrefix + ":inv":
			continue // one key each, bounded
		}
		if p := pttl(k); p <= 0 {
			t.Errorf("key %s never expires (PTTL %d)", k, p)
		}
	}
}
