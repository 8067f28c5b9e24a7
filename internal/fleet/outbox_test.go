package fleet

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

func TestOutboxCoalescesWhenFull(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr, fast), node(t, r.Addr)
	waitUp(t, a, b)
	rb := subscribe(t, b)
	r.Kill()
	// Bounded by what it holds, not by events: 11 events of 10,000 ids are
	// over the bound.
	for i := range 11 {
		ids := make([]string, 10_000)
		for j := range ids {
			ids[j] = fmt.Sprintf("exp_%d_%d", i, j)
		}
		a.Publish(context.Background(), Event{IDs: ids})
	}
	if n := a.Stats().OutboxLen; n > 20 {
		t.Fatalf("outbox holds %d events after overflowing, want them coalesced", n)
	}
	a.Publish(context.Background(), Event{IDs: []string{"exp_last"}})
	r.Restart()
	waitFor(t, 10*time.Second, "a purge of all entries", func() bool {
		return rb.has(func(ev Event) bool { return ev.All })
	})
	waitFor(t, 10*time.Second, "the last event", func() bool { return rb.has(hasID("exp_last")) })
	waitFor(t, 5*time.Second, "an empty outbox", func() bool { return a.Stats().OutboxLen == 0 })
}

// The retry loop removes exactly the event it published: one that
// coalesced meanwhile into a purge of all (with the same write time) stays.
func TestOutboxRemovesWhatItPublished(t *testing.T) {
	var o outbox
	at := time.Now()
	o.push(Event{All: true, Written: at})
	head, _ := o.head()
	// Meanwhile the outbox overflows and coalesces into a new purge of all
	// with the same write time.
	big := make([]string, outboxMaxItems+1)
	for i := range big {
		big[i] = strconv.Itoa(i)
	}
	if _, coalesced, _ := o.push(Event{IDs: big, Written: at}); !coalesced {
		t.Fatal("the outbox did not coalesce past its bound")
	}
	o.push(Event{IDs: []string{"later"}, Written: at})
	o.remove(head.seq) // the published event is gone already
	if n := o.len(); n != 2 {
		t.Fatalf("outbox holds %d events, want the coalesced purge and the later event", n)
	}
	if ev := o.drain(); !ev[0].All || ev[1].IDs[0] != "later" {
		t.Fatalf("outbox %+v", ev)
	}
}

// A flood of refusals while Redis is away (a client trying random keys) is
// bounded apart from ids and tags: up to outboxMaxCreds are held one by one,
// past that everything coalesces into one purge of all (no refusal is
// dropped), and the count starts again from there.
func TestOutboxBoundsRefusalsApart(t *testing.T) {
	var o outbox
	at := time.Now()
	o.push(Event{IDs: []string{"exp_deleted"}, Creds: [][32]byte{cred("first")}, Written: at})
	for i := range outboxMaxCreds - 1 {
		if _, coalesced, _ := o.push(Event{Creds: [][32]byte{cred(fmt.Sprint("random-key-", i))}, Written: at}); coalesced {
			t.Fatalf("refusals coalesced into a purge of all after %d, below the bound %d", i+2, outboxMaxCreds)
		}
	}
	if o.creds != outboxMaxCreds || o.len() != outboxMaxCreds {
		t.Fatalf("%d refusals in %d events held, want the bound %d", o.creds, o.len(), outboxMaxCreds)
	}
	n, coalesced, _ := o.push(Event{CredNames: []string{"one-too-many"}, Written: at.Add(time.Second)})
	if !coalesced || n != 1 {
		t.Fatalf("past the bound: coalesced %v, %d events; want one purge of all", coalesced, n)
	}
	// What the purge of all covers is no longer counted: the next refusals
	// are held one by one again.
	for i := range 20_000 {
		if _, coalesced, _ := o.push(Event{Creds: [][32]byte{cred(fmt.Sprint("later-key-", i))}, Written: at}); coalesced {
			t.Fatalf("coalesced again after %d later refusals", i+1)
		}
	}
	evs := o.drain()
	if len(evs) != 20_001 || !evs[0].All || !evs[0].Written.Equal(at.Add(time.Second)) {
		t.Fatalf("%d events, the first %+v; want the purge of all (written as the newest refusal it covers) and 20,000 refusals", len(evs), evs[0])
	}
	for _, ev := range evs[1:] {
		if ev.All || len(ev.Creds) != 1 {
			t.Fatalf("a later event %+v, want one refusal each", ev)
		}
	}
}

// Close hands back what the outbox holds, and another client publishes it
// (a reload that changes the fleet settings loses nothing).
func TestOutboxSurvivesTheClient(t *testing.T) {
	r := testenv.StartRedis(t)
	b := node(t, r.Addr)
	waitUp(t, b)
	rb := subscribe(t, b)
	r.Kill()
	old, err := New(Config{Addrs: []string{r.Addr}, Secret: testSecret, Timeout: DefaultTimeout})
	if err != nil {
		t.Fatal(err)
	}
	old.Publish(context.Background(), Event{IDs: []string{"exp_queued_1"}})
	old.Publish(context.Background(), Event{Tags: []string{"key_queued"}})
	left := old.Close()
	if len(left) != 2 {
		t.Fatalf("Close handed back %d events, want 2", len(left))
	}
	if again := old.Close(); len(again) != 0 {
		t.Fatalf("a second Close handed back %d events", len(again))
	}
	successor := node(t, r.Addr)
	successor.Adopt(left)
	r.Restart()
	waitFor(t, 10*time.Second, "the handed-over events", func() bool {
		return rb.has(hasID("exp_queued_1")) && rb.has(func(ev Event) bool { return slices.Contains(ev.Tags, "key_queued") })
	})
}
