package fleet

import (
	"context"
	"crypto/sha256"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

func TestMain(m *testing.M) {
	// rueidis leaves a delayed retry and a topology refresh running for up
	// to 1 s and 5 s after Close (after a connection error); they end by
	// themselves.
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"))
}

var testSecret = []byte("0123456789abcdef0123456789abcdef-fleet-test")

// node starts a Client (one Caddy node of the fleet) and closes it when the
// test ends. mod changes the config before New.
func node(t testing.TB, addr string, mod ...func(*Config)) *Client {
	t.Helper()
	// A generous Timeout: two shared cores under -race miss 50 ms now and
	// then, and most tests check what is shared, not the bounds. The tests
	// of outages and partitions set the default back (fast).
	// A tiny clock skew: the nodes share one clock, and decisions made
	// right after an invalidation are what most tests look at.
	cfg := Config{Addrs: []string{addr}, Secret: testSecret, Logger: zap.NewNop(), Timeout: time.Second, ClockSkew: time.Millisecond}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testSite is the site scope of the tests' decisions.
const testSite = "0123456789abcdef"

// query is a miss's Query of (id, cr) in testSite.
func query(id string, cr [32]byte) Query {
	return Query{ID: id, Cred: cr, Site: testSite, MinFresh: time.Now()}
}

// fast restores the default Timeout (50ms) for tests of the bounds.
func fast(c *Config) { c.Timeout = DefaultTimeout }

// logged returns a config change that sends the node's log to an observer,
// and the observer.
func logged() (func(*Config), *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return func(c *Config) { c.Logger = zap.New(core) }, logs
}

// cred is the digest of a test credential, as the handler computes it.
func cred(raw string) [32]byte { return sha256.Sum256([]byte(raw)) }

// fetcher is a FetchFunc that counts its calls.
type fetcher struct {
	calls   atomic.Int32
	payload []byte
	tags    []string
	ttl     time.Duration
	refutes bool
	err     error
	delay   time.Duration
	gate    chan struct{} // when set, each call waits for it to close
}

func (f *fetcher) fetch(ctx context.Context) (Fill, error) {
	f.calls.Add(1)
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return Fill{}, ctx.Err()
		}
	}
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	return Fill{Payload: f.payload, Tags: f.tags, TTL: f.ttl, Refutes: f.refutes}, f.err
}

func newFetcher(payload string) *fetcher {
	return &fetcher{payload: []byte(payload), ttl: time.Minute}
}

// waitFor polls cond until it holds or limit passes.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitUp waits until the node's stream reader has started, so that events
// published from now on reach it.
func waitUp(t testing.TB, cs ...*Client) {
	t.Helper()
	for _, c := range cs {
		waitFor(t, 10*time.Second, "the fleet client to be up", c.Up)
	}
}

// recorder collects the events delivered to a subscriber.
type recorder struct {
	mu     sync.Mutex
	events []Event
	at     []time.Time
}

func subscribe(t testing.TB, c *Client) *recorder {
	r := &recorder{}
	unsub := c.Subscribe(func(ev Event) {
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.at = append(r.at, time.Now())
		r.mu.Unlock()
	})
	t.Cleanup(unsub)
	return r
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// arrival is when the i-th event was delivered.
func (r *recorder) arrival(i int) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.at[i]
}

func (r *recorder) has(pred func(Event) bool) bool {
	for _, ev := range r.all() {
		if pred(ev) {
			return true
		}
	}
	return false
}

func hasID(id string) func(Event) bool {
	return func(ev Event) bool { return slices.Contains(ev.IDs, id) }
}

func isDemote(ev Event) bool { return ev.Demote }

// load calls Load with a generous deadline and fails the test on an error
// the fetcher did not cause.
func load(t testing.TB, c *Client, id string, cr [32]byte, f *fetcher) ([]byte, Source) {
	t.Helper()
	d := loadQ(t, c, query(id, cr), f)
	return d.Payload, d.Source
}

// loadQ is load with a whole Query, returning the whole Decision.
func loadQ(t testing.TB, c *Client, q Query, f *fetcher) Decision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := c.Load(ctx, q, f.fetch)
	if err != nil && err != f.err {
		t.Fatalf("Load(%s): unexpected error %v", q.ID, err)
	}
	return d
}

// decisionKey is the Redis key of (id, cr)'s decision in testSite.
func decisionKey(c *Client, id string, cr [32]byte) string {
	q := query(id, cr)
	return c.keysFor(&q).decision
}

// leaseKey is the Redis key of (id, cr)'s fill lease in testSite.
func leaseKey(c *Client, id string, cr [32]byte) string {
	q := query(id, cr)
	return c.keysFor(&q).lease
}

// percentile of sorted durations.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// proxiedPair starts a Redis and two nodes: a connected directly, b through
// a TCP proxy (a link a test can freeze or cut) with fast timeouts, b's
// deliveries recorded; a publishes event first and b has received it.
func proxiedPair(t *testing.T, first string) (*testenv.Redis, *testenv.TCPProxy, *Client, *Client, *recorder) {
	t.Helper()
	r := testenv.StartRedis(t)
	p := testenv.StartTCPProxy(t, r.Addr)
	a := node(t, r.Addr)
	b := node(t, p.Addr, fast)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	a.Publish(context.Background(), Event{IDs: []string{first}})
	waitFor(t, 5*time.Second, "the first event", func() bool { return rb.has(hasID(first)) })
	return r, p, a, b, rb
}
