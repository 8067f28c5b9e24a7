package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// fakeClock drives the entries' freshness, so TTL boundaries are exact.
type fakeClock = testenv.Clock

func newFakeClock() *fakeClock { return testenv.NewClock(time.Unix(1_700_000_000, 0)) }

// newTestCache returns a cache on clock (nil: time.Now) that is closed
// when the test ends.
func newTestCache(t testing.TB, clock *fakeClock, maxEntries int, staleIfError time.Duration) *Cache[string] {
	t.Helper()
	cfg := Config{MaxEntries: maxEntries, StaleIfError: staleIfError}
	if clock != nil {
		cfg.Now = clock.Now
	}
	c := New[string](cfg)
	t.Cleanup(c.Close)
	return c
}

// testKey is the key of credential number cred for export id.
func testKey(cred byte, id string) Key {
	var k Key
	k.Cred[0] = cred
	k.ID = id
	return k
}

// answer is a loader that always returns v with the given fresh lifetime.
func answer(v string, ttl time.Duration) Loader[string] {
	return func(context.Context) (string, time.Duration, error) { return v, ttl, nil }
}

// gate is a loader that counts its calls and holds each one until release
// is closed, so that tests can pile callers up behind it.
type gate struct {
	calls   atomic.Int32
	entered chan struct{} // receives once per call, when it starts
	release chan struct{}
	value   string
	ttl     time.Duration
	sawCtx  chan context.Context // the loader's context, once per call
}

func newGate(value string, ttl time.Duration) *gate {
	return &gate{
		entered: make(chan struct{}, 1024),
		release: make(chan struct{}),
		value:   value,
		ttl:     ttl,
		sawCtx:  make(chan context.Context, 1024),
	}
}

func (g *gate) load(ctx context.Context) (string, time.Duration, error) {
	g.calls.Add(1)
	g.sawCtx <- ctx
	g.entered <- struct{}{}
	<-g.release
	return g.value, g.ttl, nil
}

func TestPeekStates(t *testing.T) {
	// ttl 10s: refresh-ahead from 8s (80%), stale from 10s, gone after
	// 10s + stale_if_error 1m.
	const ttl, staleIfError = 10 * time.Second, time.Minute
	tests := []struct {
		after time.Duration
		want  State
	}{
		{0, Fresh},
		{8*time.Second - time.Nanosecond, Fresh},
		{8 * time.Second, Refresh},
		{ttl - time.Nanosecond, Refresh},
		{ttl, Stale},
		{ttl + staleIfError - time.Nanosecond, Stale},
		{ttl + staleIfError, Absent},
		{time.Hour, Absent},
	}
	for _, tt := range tests {
		t.Run(tt.after.String(), func(t *testing.T) {
			clock := newFakeClock()
			c := newTestCache(t, clock, 100, staleIfError)
			k := testKey(1, "a")
			stored := clock.Now()
			if _, how, err := c.Load(context.Background(), k, answer("v", ttl)); err != nil || how != Stored {
				t.Fatalf("Load = %v, %v; want Stored", how, err)
			}
			clock.Advance(tt.after)
			e, got := c.Peek(k)
			if got != tt.want {
				t.Fatalf("Peek after %v = %v, want %v", tt.after, got, tt.want)
			}
			if got == Absent {
				if e != nil {
					t.Fatalf("Absent came with an entry %+v", e)
				}
				return
			}
			if e.Value != "v" || !e.FreshUntil().Equal(stored.Add(ttl)) ||
				e.freshUntil+int64(c.staleIfError) != stored.Add(ttl+staleIfError).UnixNano() {
				t.Fatalf("entry = %+v, want v stored at %v, fresh for %v, stale for %v more", e, stored, ttl, staleIfError)
			}
		})
	}
	t.Run("missing key", func(t *testing.T) {
		c := newTestCache(t, newFakeClock(), 100, staleIfError)
		if e, got := c.Peek(testKey(1, "nothing")); got != Absent || e != nil {
			t.Fatalf("Peek of a missing key = %v, %v; want nil, Absent", e, got)
		}
	})
}

// TestMaxEntries: the store holds about max_entries, however many keys pass.
func TestMaxEntries(t *testing.T) {
	const limit, inserted = 1000, 10_000
	c := newTestCache(t, nil, limit, time.Minute)
	for i := range inserted {
		k := testKey(byte(i), fmt.Sprintf("id-%d", i))
		if _, _, err := c.Load(context.Background(), k, answer("v", time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	c.store.CleanUp() // apply pending evictions; the bound is enforced asynchronously
	n := c.Stats().Entries
	t.Logf("%d entries kept of %d inserted with max_entries %d", n, inserted, limit)
	if n > limit*11/10 || n < limit/2 {
		t.Fatalf("Len = %d with max_entries %d, want about %d", n, limit, limit)
	}
}
