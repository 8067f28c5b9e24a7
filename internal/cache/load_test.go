package cache

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestLoadOutcomes(t *testing.T) {
	boom := errors.New("upstream down")
	tests := []struct {
		name      string
		load      Loader[string]
		wantHow   Outcome
		wantErr   error
		wantState State // Peek right after
	}{
		{"cacheable answer is stored", answer("v", time.Minute), Stored, nil, Fresh},
		{"ttl 0 is not stored", answer("v", 0), NotStored, nil, Absent},
		{"negative ttl is not stored", answer("v", -time.Second), NotStored, nil, Absent},
		{"failure is not stored", func(context.Context) (string, time.Duration, error) { return "", time.Minute, boom }, NotStored, boom, Absent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, newFakeClock(), 100, time.Minute)
			k := testKey(1, "a")
			v, how, err := c.Load(context.Background(), k, tt.load)
			if how != tt.wantHow || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Load = %q, %v, %v; want %v, %v", v, how, err, tt.wantHow, tt.wantErr)
			}
			if tt.wantErr == nil && v != "v" {
				t.Fatalf("Load value = %q, want v", v)
			}
			if _, st := c.Peek(k); st != tt.wantState {
				t.Fatalf("Peek after Load = %v, want %v", st, tt.wantState)
			}
		})
	}

	t.Run("failure keeps the stale entry", func(t *testing.T) {
		clock := newFakeClock()
		c := newTestCache(t, clock, 100, time.Minute)
		k := testKey(1, "a")
		if _, _, err := c.Load(context.Background(), k, answer("old", time.Second)); err != nil {
			t.Fatal(err)
		}
		clock.Advance(2 * time.Second)
		if _, _, err := c.Load(context.Background(), k, func(context.Context) (string, time.Duration, error) { return "", 0, boom }); !errors.Is(err, boom) {
			t.Fatalf("Load error = %v, want %v", err, boom)
		}
		if e, st := c.Peek(k); st != Stale || e.Value != "old" {
			t.Fatalf("Peek after a failed reload = %v, %v; want the old entry, Stale", e, st)
		}
	})
}

// TestLoadCollapsed piles callers behind one slow load: the loader runs once,
// one caller gets Stored and every other one Collapsed with the same value.
// synctest.Wait makes "every caller is waiting" certain instead of likely.
func TestLoadCollapsed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[string](Config{MaxEntries: 100, StaleIfError: time.Minute})
		defer c.Close()
		g := newGate("v", time.Minute)
		k := testKey(1, "a")
		const n = 100
		type res struct {
			v   string
			how Outcome
			err error
		}
		results := make(chan res, n)
		for range n {
			go func() {
				v, how, err := c.Load(context.Background(), k, g.load)
				results <- res{v, how, err}
			}()
		}
		synctest.Wait() // every caller is blocked: one in the loader, the others on it
		close(g.release)
		count := map[Outcome]int{}
		for range n {
			r := <-results
			if r.err != nil || r.v != "v" {
				t.Fatalf("Load = %q, %v; want v", r.v, r.err)
			}
			count[r.how]++
		}
		if got := g.calls.Load(); got != 1 {
			t.Fatalf("loader ran %d times for %d concurrent callers, want 1", got, n)
		}
		if count[Stored] != 1 || count[Collapsed] != n-1 {
			t.Fatalf("outcomes = %v, want 1 Stored and %d Collapsed", count, n-1)
		}
	})
}

// TestLoadCallerGivesUp: a caller whose context ends gets ctx.Err() at once,
// and the shared call goes on for the others and is stored, whether the
// caller that gave up was the leader or a waiter.
func TestLoadCallerGivesUp(t *testing.T) {
	for _, leaderGivesUp := range []bool{true, false} {
		t.Run(fmt.Sprintf("leader gives up %v", leaderGivesUp), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := New[string](Config{MaxEntries: 100, StaleIfError: time.Minute})
				defer c.Close()
				g := newGate("v", time.Minute)
				k := testKey(1, "a")

				quitter, quit := context.WithCancel(context.Background())
				first, second := context.Background(), quitter
				if leaderGivesUp {
					first, second = quitter, context.Background()
				}
				type res struct {
					how Outcome
					err error
				}
				firstRes, secondRes := make(chan res, 1), make(chan res, 1)
				go func() {
					_, how, err := c.Load(first, k, g.load)
					firstRes <- res{how, err}
				}()
				<-g.entered // the first caller leads
				go func() {
					_, how, err := c.Load(second, k, g.load)
					secondRes <- res{how, err}
				}()
				synctest.Wait()
				quit()
				synctest.Wait()

				quitterRes, stayerRes := secondRes, firstRes
				if leaderGivesUp {
					quitterRes, stayerRes = firstRes, secondRes
				}
				select {
				case r := <-quitterRes:
					if !errors.Is(r.err, context.Canceled) {
						t.Fatalf("the caller that gave up got %v, want context.Canceled", r.err)
					}
				default:
					t.Fatal("the caller that gave up is still waiting on the shared call")
				}
				if ctx := <-g.sawCtx; ctx.Err() != nil {
					t.Fatalf("the shared call's context ended with a caller's: %v", ctx.Err())
				}
				close(g.release)
				r := <-stayerRes
				if r.err != nil {
					t.Fatalf("the caller that stayed got %v", r.err)
				}
				if g.calls.Load() != 1 {
					t.Fatalf("loader ran %d times, want 1", g.calls.Load())
				}
				synctest.Wait() // the detached call has finished storing
				if e, st := c.Peek(k); st != Fresh || e.Value != "v" {
					t.Fatalf("Peek = %v, %v; want the shared call's answer stored", e, st)
				}
			})
		})
	}
}

// TestRefreshAsync: one background refresh per entry at a time, and its
// answer replaces the entry.
func TestRefreshAsync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clock := newFakeClock()
		c := New[string](Config{MaxEntries: 100, StaleIfError: time.Minute, Now: clock.Now})
		defer c.Close()
		k := testKey(1, "a")
		if _, _, err := c.Load(context.Background(), k, answer("old", 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		clock.Advance(9 * time.Second)
		e, st := c.Peek(k)
		if st != Refresh {
			t.Fatalf("Peek at 90%% of the lifetime = %v, want Refresh", st)
		}
		g := newGate("new", 10*time.Second)
		if !c.RefreshAsync(k, e, g.load) {
			t.Fatal("the first RefreshAsync did not start a refresh")
		}
		<-g.entered
		for range 5 {
			// Peek says so first: a hit need not build another loader.
			if _, st := c.Peek(k); st != Fresh {
				t.Fatalf("Peek while a refresh runs = %v, want Fresh (nothing to start)", st)
			}
			if c.RefreshAsync(k, e, g.load) {
				t.Fatal("a second refresh started while one is running")
			}
		}
		close(g.release)
		synctest.Wait()
		if got := g.calls.Load(); got != 1 {
			t.Fatalf("loader ran %d times, want 1", got)
		}
		if e, st := c.Peek(k); st != Fresh || e.Value != "new" {
			t.Fatalf("after the refresh Peek = %+v, %v; want the new answer, Fresh", e, st)
		}
	})
}

func TestRefreshErrorReported(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clock := newFakeClock()
		boom := errors.New("down")
		c := New[string](Config{MaxEntries: 100, StaleIfError: time.Minute, Now: clock.Now})
		defer c.Close()
		k := testKey(1, "a")
		if _, _, err := c.Load(context.Background(), k, answer("old", 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		clock.Advance(9 * time.Second)
		e, _ := c.Peek(k)
		var calls atomic.Int32
		fail := func(context.Context) (string, time.Duration, error) { calls.Add(1); return "", 0, boom }
		c.RefreshAsync(k, e, fail)
		synctest.Wait()
		// A failed refresh is not retried on every later hit of the entry:
		// Peek no longer asks for one.
		e, st := c.Peek(k)
		if st != Fresh || e.Value != "old" {
			t.Fatalf("after a failed refresh Peek = %v, %v; want the old entry, Fresh", e, st)
		}
		if c.RefreshAsync(k, e, fail) {
			t.Fatal("a failed refresh is retried on the next hit")
		}
		synctest.Wait()
		if calls.Load() != 1 {
			t.Fatalf("loader calls = %d, want 1", calls.Load())
		}
	})
}

// TestCloseStopsRefreshes: Close ends a background refresh that is still
// waiting on the upstream (its loader's context is cancelled) and nothing
// of the cache keeps running. synctest.Test fails with "deadlock" if a
// goroutine of the bubble is still blocked when the test function returns.
func TestCloseStopsRefreshes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, k, e := inRefreshWindow(t)
		entered := make(chan struct{})
		var cancelled atomic.Bool
		// Like an HTTP call: it returns when its context ends, or after a
		// long upstream delay otherwise.
		slow := func(ctx context.Context) (string, time.Duration, error) {
			close(entered)
			select {
			case <-ctx.Done():
				cancelled.Store(true)
				return "", 0, ctx.Err()
			case <-time.After(time.Hour):
				return "late", time.Minute, nil
			}
		}
		c.RefreshAsync(k, e, slow)
		<-entered
		c.Close()
		synctest.Wait()
		if !cancelled.Load() {
			t.Error("Close returned while a background refresh still waits on the upstream: its context was not cancelled")
			// Let the stray loader finish so that the bubble can end.
			time.Sleep(2 * time.Hour)
		}
	})
}

// TestCloseDoesNotCancelJoinedRequests: a request that joined a background
// refresh's call is not handed that call's cancellation when a reload
// closes the cache: it asks on its own behalf.
func TestCloseDoesNotCancelJoinedRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, k, e := inRefreshWindow(t)
		entered := make(chan struct{})
		slow := func(ctx context.Context) (string, time.Duration, error) {
			close(entered)
			<-ctx.Done() // only Close ends it
			return "", 0, ctx.Err()
		}
		c.RefreshAsync(k, e, slow)
		<-entered
		type res struct {
			v   string
			err error
		}
		got := make(chan res, 1)
		go func() {
			v, _, err := c.Load(context.Background(), k, answer("own", 10*time.Second))
			got <- res{v, err}
		}()
		synctest.Wait() // the request waits on the refresh's call
		c.Close()
		r := <-got
		if r.err != nil || r.v != "own" {
			t.Fatalf("a request that joined a refresh got %q, %v when the cache closed; want its own answer", r.v, r.err)
		}
	})
}

// A caller that joins a call which started before a purge it has seen asks
// again rather than take an answer that may predate the purge; a caller
// that joined before the purge takes the shared answer.
func TestLoadAfterAPurgeDoesNotJoinAnOlderCall(t *testing.T) {
	for _, purge := range []struct {
		name string
		run  func(c *Cache[string], k Key)
	}{
		{"export id", func(c *Cache[string], k Key) { c.InvalidateID(k.ID) }},
		{"credential", func(c *Cache[string], k Key) { c.InvalidateCredential(k.Cred) }},
		{"surrogate key", func(c *Cache[string], k Key) { c.PurgeTags("key_8f2a") }},
		{"all", func(c *Cache[string], k Key) { c.PurgeAll() }},
	} {
		t.Run(purge.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := New[string](Config{MaxEntries: 100})
				defer c.Close()
				k := testKey(1, "exp_joined")
				old := newGate("before the purge", time.Minute)
				early := make(chan string, 1)
				go func() {
					v, _, _ := c.Load(context.Background(), k, old.load)
					early <- v
				}()
				<-old.entered
				joined := make(chan string, 1)
				go func() { // joins before the purge: takes the shared answer
					v, _, _ := c.Load(context.Background(), k, answer("joined early: must not run", time.Minute))
					joined <- v
				}()
				synctest.Wait() // both wait on the one call
				purge.run(c, k)
				late := make(chan string, 1)
				go func() {
					v, how, _ := c.Load(context.Background(), k, answer("after the purge", time.Minute))
					if how == Collapsed {
						t.Errorf("the caller after the purge was collapsed onto the older call")
					}
					late <- v
				}()
				synctest.Wait() // it joined the older call too
				close(old.release)
				if v := <-early; v != "before the purge" {
					t.Fatalf("the first caller got %q", v)
				}
				if v := <-joined; v != "before the purge" {
					t.Fatalf("a caller that joined before the purge got %q", v)
				}
				if v := <-late; v != "after the purge" {
					t.Fatalf("the caller after the purge got %q, want its own answer", v)
				}
			})
		})
	}
}

// inRefreshWindow returns a cache holding one entry, k, 9 s into its 10 s
// of freshness (due for a refresh), and that entry.
func inRefreshWindow(t *testing.T) (*Cache[string], Key, *Entry[string]) {
	t.Helper()
	clock := newFakeClock()
	c := New[string](Config{MaxEntries: 100, StaleIfError: time.Minute, Now: clock.Now})
	k := testKey(1, "a")
	if _, _, err := c.Load(context.Background(), k, answer("old", 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(9 * time.Second)
	e, _ := c.Peek(k)
	return c, k, e
}
