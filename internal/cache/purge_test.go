package cache

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"
)

// TestInvalidateID drops every credential's entry of one export and only
// those, and an answer fetched across an invalidation is not stored (it may
// predate the change that caused it).
func TestInvalidateID(t *testing.T) {
	t.Run("drops one id for every credential", func(t *testing.T) {
		c := newTestCache(t, newFakeClock(), 100, time.Minute)
		keep := testKey(1, "b")
		drop := []Key{testKey(1, "a"), testKey(2, "a"), testKey(3, "a")}
		for _, k := range append(drop, keep) {
			if _, _, err := c.Load(context.Background(), k, answer("v", time.Minute)); err != nil {
				t.Fatal(err)
			}
		}
		if n := c.InvalidateID("a"); n != len(drop) {
			t.Fatalf("InvalidateID dropped %d entries, want %d", n, len(drop))
		}
		for _, k := range drop {
			if _, st := c.Peek(k); st != Absent {
				t.Fatalf("Peek(%x…, %s) = %v after InvalidateID, want Absent", k.Cred[:1], k.ID, st)
			}
		}
		if _, st := c.Peek(keep); st != Fresh {
			t.Fatalf("another export's entry is %v after InvalidateID, want Fresh", st)
		}
		if n := c.InvalidateID("nothing-cached"); n != 0 {
			t.Fatalf("InvalidateID of an uncached id dropped %d", n)
		}
	})

	t.Run("a load in flight is not stored", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := New[string](Config{MaxEntries: 100, StaleIfError: time.Minute})
			defer c.Close()
			g := newGate("before-delete", time.Minute)
			k := testKey(1, "a")
			done := make(chan Outcome, 1)
			go func() {
				v, how, err := c.Load(context.Background(), k, g.load)
				if err != nil || v != "before-delete" {
					t.Errorf("Load = %q, %v", v, err)
				}
				done <- how
			}()
			<-g.entered
			c.InvalidateID("a")
			close(g.release)
			if how := <-done; how != NotStored {
				t.Fatalf("a load that spanned InvalidateID reports %v, want NotStored", how)
			}
			if _, st := c.Peek(k); st != Absent {
				t.Fatalf("a load that spanned InvalidateID was stored (Peek = %v)", st)
			}
			// The next load, after the invalidation, is stored again.
			if _, how, _ := c.Load(context.Background(), k, answer("after", time.Minute)); how != Stored {
				t.Fatalf("the load after the invalidation = %v, want Stored", how)
			}
		})
	})

	t.Run("a load in flight for another export is stored", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := New[string](Config{MaxEntries: 100, StaleIfError: time.Minute})
			defer c.Close()
			// Generations are striped by id: pick an id in another stripe.
			other := "b"
			for i := 0; c.idStripe(other) == c.idStripe("a"); i++ {
				other = fmt.Sprintf("b%d", i)
			}
			g := newGate("v", time.Minute)
			k := testKey(1, other)
			done := make(chan Outcome, 1)
			go func() {
				_, how, _ := c.Load(context.Background(), k, g.load)
				done <- how
			}()
			<-g.entered
			c.InvalidateID("a")
			close(g.release)
			if how := <-done; how != Stored {
				t.Fatalf("a load of %q that spanned InvalidateID(a) = %v, want Stored", other, how)
			}
		})
	})
}
