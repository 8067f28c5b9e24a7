package fleet

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
	"go.uber.org/goleak"
)

func TestInvalidationReachesOtherNodes(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	ra, rb := subscribe(t, a), subscribe(t, b)

	const n = 200
	lat := make([]time.Duration, 0, n)
	for i := range n {
		id := fmt.Sprintf("exp_%d", i)
		start := time.Now()
		if !a.Publish(context.Background(), Event{IDs: []string{id}}) {
			t.Fatalf("event %d queued with Redis up", i)
		}
		waitFor(t, 5*time.Second, "event "+id+" on the other node", func() bool { return rb.has(hasID(id)) })
		lat = append(lat, rb.arrival(i).Sub(start))
	}
	t.Logf("Publish → delivered on another node, %d events: p50 %v, p99 %v, max %v",
		n, percentile(lat, 0.50), percentile(lat, 0.99), percentile(lat, 1))

	got := rb.all()
	if len(got) != n {
		t.Fatalf("other node got %d events, want %d", len(got), n)
	}
	for i, ev := range got {
		if want := fmt.Sprintf("exp_%d", i); !slices.Equal(ev.IDs, []string{want}) || ev.Demote {
			t.Fatalf("event %d is %+v, want ids [%s] in order", i, ev, want)
		}
		if ev.Written.IsZero() || time.Since(ev.Written) > time.Minute {
			t.Fatalf("event %d has Written %v", i, ev.Written)
		}
	}
	// Own events are not delivered to the publishing node.
	if evs := ra.all(); len(evs) != 0 {
		t.Fatalf("publishing node received its own events: %+v", evs[:1])
	}
	// Tags and All travel too.
	b.Publish(context.Background(), Event{Tags: []string{"key_8f2a", "proj_91c0"}, All: false})
	b.Publish(context.Background(), Event{All: true})
	waitFor(t, 5*time.Second, "tag and all events", func() bool { return len(ra.all()) == 2 })
	evs := ra.all()
	if !slices.Equal(evs[0].Tags, []string{"key_8f2a", "proj_91c0"}) || !evs[1].All {
		t.Fatalf("events %+v", evs)
	}
	if s := b.Stats(); s.Invalidations.Received != n || s.Invalidations.Sent != 2 {
		t.Errorf("stats %+v", s.Invalidations)
	}
}

func TestForgedEventsAreIgnored(t *testing.T) {
	r := testenv.StartRedis(t)
	withLog, logs := logged()
	a, b := node(t, r.Addr), node(t, r.Addr, withLog)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	stream := DefaultPrefix + ":inv"
	r.MustDo(t, "XADD", stream, "*", "n", "intruder", "p", `{"a":true,"w":1}`, "m", strings.Repeat("00", 32))
	r.MustDo(t, "XADD", stream, "*", "garbage", "1")
	a.Publish(context.Background(), Event{IDs: []string{"exp_real"}})
	waitFor(t, 5*time.Second, "the genuine event", func() bool { return rb.has(hasID("exp_real")) })
	if evs := rb.all(); len(evs) != 1 {
		t.Fatalf("forged events delivered: %+v", evs)
	}
	if n := b.Stats().Invalidations.Invalid; n != 2 {
		t.Errorf("invalid events counted %d, want 2", n)
	}
	if logs.FilterMessageSnippet("failed authentication").Len() != 2 {
		t.Errorf("want a warn line per forged event")
	}
}

func TestRedisKilledAndRestarted(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr, fast), node(t, r.Addr, fast)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	key := cred("outage")
	load(t, a, "exp_o", key, newFetcher("shared"))

	r.Kill()
	// Loads go to the upstream directly, bounded by Timeout, and never fail.
	var worst time.Duration
	for i := range 10 {
		f := newFetcher("direct")
		start := time.Now()
		p, src := load(t, a, fmt.Sprintf("exp_o%d", i), key, f)
		if d := time.Since(start); d > worst {
			worst = d
		}
		if src != Unavailable || string(p) != "direct" || f.calls.Load() != 1 {
			t.Fatalf("with Redis down: src %v payload %q calls %d", src, p, f.calls.Load())
		}
	}
	t.Logf("Redis killed: slowest of 10 Loads took %v (timeout 50ms)", worst)
	if !a.Stats().BreakerOpen {
		t.Error("breaker not open after repeated failures")
	}
	if a.Publish(context.Background(), Event{IDs: []string{"exp_o"}}) {
		t.Fatal("Publish reported success with Redis down")
	}
	if s := a.Stats(); s.OutboxLen != 1 || s.Invalidations.Queued != 1 {
		t.Fatalf("outbox %d queued %d, want 1", s.OutboxLen, s.Invalidations.Queued)
	}
	waitFor(t, 5*time.Second, "the reader to notice", func() bool { return !b.Up() })

	r.Restart() // empty
	back := time.Now()
	waitFor(t, 10*time.Second, "the queued event on the other node", func() bool { return rb.has(hasID("exp_o")) })
	t.Logf("queued invalidation delivered %v after Redis came back", time.Since(back))
	waitFor(t, 10*time.Second, "a demotion (Redis restarted empty)", func() bool { return rb.has(isDemote) })
	// The event can reach b before a has the reply that confirms it (or
	// a's call ran out, and it sends the event again): a's outbox empties
	// soon after, not necessarily before.
	waitFor(t, 5*time.Second, "an empty outbox after delivery", func() bool { return a.Stats().OutboxLen == 0 })
	waitUp(t, a, b)
	// And the tier works again.
	waitFor(t, 5*time.Second, "the breaker to close", func() bool { return !a.Stats().BreakerOpen })
	if _, src := load(t, a, "exp_after", key, newFetcher("v")); src != Stored {
		t.Fatalf("after the restart: src %v, want stored", src)
	}
}

func TestNodeStartsWithoutRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	r.Kill()
	a := node(t, r.Addr, fast)
	b := node(t, r.Addr)
	rb := subscribe(t, b)
	f := newFetcher("direct")
	if p, src := load(t, a, "exp_s", cred("k"), f); src != Unavailable || string(p) != "direct" {
		t.Fatalf("Redis down at start: src %v payload %q", src, p)
	}
	if a.Publish(context.Background(), Event{IDs: []string{"exp_s"}}) {
		t.Fatal("Publish reported success with Redis down")
	}
	r.Restart()
	waitUp(t, a, b)
	waitFor(t, 5*time.Second, "the event queued before Redis existed", func() bool { return rb.has(hasID("exp_s")) })
	if _, src := load(t, a, "exp_s2", cred("k"), newFetcher("v")); src != Stored {
		t.Fatalf("src %v, want stored once Redis is up", src)
	}
}

// Close does not wait for a Redis that accepted the connection but never
// answers (a reload must not stall behind it).
func TestCloseDoesNotWaitForASilentRedis(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	c, err := New(Config{Addrs: []string{ln.Addr().String()}, Secret: testSecret, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the dial", func() bool { mu.Lock(); defer mu.Unlock(); return len(conns) > 0 })
	start := time.Now()
	c.Close()
	took := time.Since(start)
	t.Logf("Close with a silent Redis took %v (timeout 200ms, dial timeout 2s)", took)
	if took > time.Second {
		t.Fatalf("Close waited %v for a silent Redis", took)
	}
}

// A purge of 10,000 ids goes out in events of at most 1,000 ids and
// pipelines of bounded size, each within the default 50 ms timeout: it is
// published, not wedged in the outbox.
func TestLargePurgeIsChunked(t *testing.T) {
	r := testenv.StartRedis(t)
	a := node(t, r.Addr, func(c *Config) { c.Timeout = DefaultTimeout })
	b := node(t, r.Addr)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	ids := make([]string, 10_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("01935abc-def0-7123-4567-%012d", i)
	}
	start := time.Now()
	published := a.Publish(context.Background(), Event{IDs: ids})
	t.Logf("a purge of %d ids: published now %v, after %v", len(ids), published, time.Since(start))
	waitFor(t, 20*time.Second, "every id on the other node", func() bool {
		n := 0
		for _, ev := range rb.all() {
			n += len(ev.IDs)
		}
		return n == len(ids)
	})
	waitFor(t, 10*time.Second, "an empty outbox", func() bool { return a.Stats().OutboxLen == 0 })
	for _, ev := range rb.all() {
		if len(ev.IDs) > maxEventItems {
			t.Fatalf("an event of %d ids", len(ev.IDs))
		}
	}
}

// A stream that went back (a failover lost entries the reader had read, or
// the stream was recreated) is a gap: the reader demotes and goes on.
func TestStreamWentBackDemotes(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	a.Publish(context.Background(), Event{IDs: []string{"exp_1"}})
	waitFor(t, 5*time.Second, "the first event", func() bool { return rb.has(hasID("exp_1")) })
	r.MustDo(t, "DEL", DefaultPrefix+":inv")
	r.MustDo(t, "XADD", DefaultPrefix+":inv", "1-1", "n", "x", "p", "{}", "m", "00")
	waitFor(t, 5*time.Second, "a demotion", func() bool { return rb.has(isDemote) })
	a.Publish(context.Background(), Event{IDs: []string{"exp_2"}})
	waitFor(t, 5*time.Second, "an event after the demotion", func() bool { return rb.has(hasID("exp_2")) })
}

func TestPartitionLooksLikeSilence(t *testing.T) {
	r := testenv.StartRedis(t)
	p := testenv.StartTCPProxy(t, r.Addr)
	a := node(t, p.Addr, fast)
	b := node(t, r.Addr)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	key := cred("partition")
	load(t, a, "exp_p0", key, newFetcher("v")) // the pooled connection exists

	p.Freeze()
	var worst time.Duration
	for i := range 10 {
		f := newFetcher("direct")
		start := time.Now()
		pl, src := load(t, a, fmt.Sprintf("exp_p%d", i+1), key, f)
		if d := time.Since(start); d > worst {
			worst = d
		}
		if string(pl) != "direct" || f.calls.Load() != 1 || (src != Unavailable && src != Fetched) {
			t.Fatalf("partitioned: src %v payload %q", src, pl)
		}
	}
	t.Logf("partitioned: slowest of 10 Loads took %v (timeout 50ms, lock_wait 750ms)", worst)
	if a.Publish(context.Background(), Event{IDs: []string{"exp_p0"}}) {
		t.Fatal("Publish reported success through a frozen proxy")
	}
	time.Sleep(300 * time.Millisecond) // a retry or two into the silence
	if rb.has(hasID("exp_p0")) {
		t.Fatal("event crossed a frozen proxy")
	}
	p.Resume()
	back := time.Now()
	waitFor(t, 5*time.Second, "the queued event after the partition", func() bool { return rb.has(hasID("exp_p0")) })
	t.Logf("partition healed: queued invalidation delivered after %v", time.Since(back))
}

func TestStreamTrimmedPastReaderDemotes(t *testing.T) {
	r, p, a, b, rb := proxiedPair(t, "exp_before")

	p.Freeze()
	for i := range 5 {
		a.Publish(context.Background(), Event{IDs: []string{fmt.Sprintf("exp_lost%d", i)}})
	}
	r.MustDo(t, "XTRIM", DefaultPrefix+":inv", "MAXLEN", "0")
	p.Resume()
	waitFor(t, 10*time.Second, "a demotion", func() bool { return rb.has(isDemote) })
	if rb.has(hasID("exp_lost0")) {
		t.Fatal("a trimmed event was delivered")
	}
	// The reader goes on after the demotion.
	a.Publish(context.Background(), Event{IDs: []string{"exp_after"}})
	waitFor(t, 5*time.Second, "an event after the demotion", func() bool { return rb.has(hasID("exp_after")) })
	if n := b.Stats().Invalidations.Demotes; n != 1 {
		t.Errorf("demotes %d, want 1", n)
	}
}

// aclRules is the minimal rule set the README documents for the fleet user.
const aclRules = "~export_download:* -@all +get +set +del +exists +pttl +pexpire +eval +evalsha +xadd +xread +xinfo|stream +multi +exec +time +role +info +wait +ping +cluster|slots +cluster|shards"

func TestTLSAndACLUser(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisTLS(), testenv.RedisUser("fleet", "s3cret-pass", aclRules))
	tlsUser := func(c *Config) {
		c.TLS = r.TLSConfig()
		c.Username = "fleet"
		c.Password = "s3cret-pass"
	}
	a, b := node(t, r.Addr, tlsUser), node(t, r.Addr, tlsUser)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	key := cred("tls")
	if _, src := load(t, a, "exp_tls", key, newFetcher("v")); src != Stored {
		t.Fatalf("first load over TLS as the ACL user: src %v", src)
	}
	if _, src := load(t, b, "exp_tls", key, newFetcher("x")); src != Hit {
		t.Fatalf("second node: src %v, want a shared hit", src)
	}
	if !a.Publish(context.Background(), Event{IDs: []string{"exp_tls"}, Tags: []string{"t"}}) {
		t.Fatal("Publish failed as the ACL user")
	}
	waitFor(t, 5*time.Second, "the event over TLS", func() bool { return rb.has(hasID("exp_tls")) })
	// A cold burst (lease) works too.
	if _, src := load(t, b, "exp_tls", key, newFetcher("v2")); src != Stored {
		t.Fatalf("after the invalidation: src %v, want stored", src)
	}
	for _, c := range []*Client{a, b} {
		if s := c.Stats(); s.Lookups.Unavailable != 0 || s.OutboxLen != 0 {
			t.Fatalf("a command was refused: %+v", s)
		}
	}
	if got := r.MustDo(t, "ACL", "LOG"); strings.Contains(got, "fleet") {
		t.Fatalf("ACL denials logged for the fleet user:\n%s", got)
	}

	// A wrong password is never an error to the caller.
	bad := node(t, r.Addr, tlsUser, fast, func(c *Config) { c.Password = "wrong" })
	f := newFetcher("direct")
	if p, src := load(t, bad, "exp_tls", key, f); src != Unavailable || string(p) != "direct" {
		t.Fatalf("wrong password: src %v payload %q", src, p)
	}
	if bad.Publish(context.Background(), Event{IDs: []string{"x"}}) {
		t.Fatal("Publish succeeded with a wrong password")
	}
}

func TestNoGoroutineLeakAcrossRestarts(t *testing.T) {
	r := testenv.StartRedis(t)
	p := testenv.StartTCPProxy(t, r.Addr)
	ignore := goleak.IgnoreCurrent()
	for range 2 {
		a, err := New(Config{Addrs: []string{r.Addr}, Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		b, err := New(Config{Addrs: []string{p.Addr}, Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		waitUp(t, a, b)
		unsub := b.Subscribe(func(Event) {})
		load(t, a, "exp_l", cred("k"), newFetcher("v"))
		r.Restart()
		load(t, a, "exp_l", cred("k"), newFetcher("v"))
		a.Publish(context.Background(), Event{IDs: []string{"exp_l"}})
		p.Freeze()
		load(t, b, "exp_l", cred("k"), newFetcher("v"))
		unsub()
		start := time.Now()
		a.Close()
		b.Close() // while partitioned
		t.Logf("Close of two clients (one partitioned) took %v", time.Since(start))
		p.Resume()
	}
	p.Close()
	// The restarted redis-server's own process watchers belong to testenv
	// and end with the test.
	goleak.VerifyNone(t, ignore,
		goleak.IgnoreAnyFunction("github.com/exportedge/caddy-export-download/internal/testenv.(*Redis).start.func1"),
		goleak.IgnoreAnyFunction("os/exec.(*Cmd).Start.func2"))
}

func TestReaderResumesAfterPartition(t *testing.T) {
	_, p, a, b, rb := proxiedPair(t, "exp_0")

	p.Freeze()
	// Long enough for the blocking read to time out: the reader errors,
	// drops its connection and reconnects through the silent proxy.
	waitFor(t, 5*time.Second, "the reader to go down", func() bool { return !b.Up() })
	for i := 1; i <= 3; i++ {
		a.Publish(context.Background(), Event{IDs: []string{fmt.Sprintf("exp_%d", i)}})
	}
	p.Resume()
	waitFor(t, 10*time.Second, "the events published during the partition", func() bool { return rb.has(hasID("exp_3")) })
	var ids []string
	for _, ev := range rb.all() {
		if ev.Demote {
			t.Fatal("demoted although the stream still held every missed event")
		}
		ids = append(ids, ev.IDs...)
	}
	if !slices.Equal(ids, []string{"exp_0", "exp_1", "exp_2", "exp_3"}) {
		t.Fatalf("events %v, want each once, in order", ids)
	}
	waitUp(t, b)
}

// A publish that fails because its client closed meanwhile (a reload) is
// not lost: the event goes to Orphaned, for another client to publish,
// as the outbox did when Close handed it back.
func TestPublishOnAClosingClientIsHandedOver(t *testing.T) {
	r := testenv.StartRedis(t)
	var mu sync.Mutex
	var orphans []Event
	c, err := New(Config{Addrs: []string{r.Addr}, Secret: testSecret, Orphaned: func(evs []Event) {
		mu.Lock()
		orphans = append(orphans, evs...)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	waitUp(t, c)
	c.Close()
	if c.Publish(context.Background(), Event{IDs: []string{"exp_late"}}) {
		t.Fatal("a closed client reported the event published")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(orphans) != 1 || !slices.Equal(orphans[0].IDs, []string{"exp_late"}) {
		t.Fatalf("orphaned events %+v, want the one published after Close", orphans)
	}
}

// A refusal travels as the credential's name, and every node delivers it
// by that name: what the node looked up before does not matter (its cache
// finds its entries by a tag of the name).
func TestRefusalIsDeliveredByName(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	key := cred("revoked")
	if !a.Publish(context.Background(), Event{Creds: [][32]byte{key}}) {
		t.Fatal("the refusal was not published")
	}
	name := b.CredentialName(key)
	waitFor(t, 5*time.Second, "the refusal, by name", func() bool {
		return rb.has(func(ev Event) bool { return slices.Contains(ev.CredNames, name) })
	})
	if name != a.CredentialName(key) {
		t.Fatal("two nodes of one fleet name a credential differently")
	}
}
