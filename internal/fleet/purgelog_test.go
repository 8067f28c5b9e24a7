package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// A flood of refusals (a scanner's 401s: 201,000 within the horizon)
// overflows the purge log's bound without refusing shared decisions that
// no refusal covers.
func TestRefusalFloodKeepsUnrelatedSharedDecisions(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := node(t, r.Addr), node(t, r.Addr)
	waitUp(t, a, b)
	key := cred("bystander")
	if _, src := load(t, a, "exp_bystander", key, newFetcher("completed")); src != Stored {
		t.Fatalf("fill: %v, want stored", src)
	}
	scanned := cred("scan-0-0") // refused first: the first the log forgets
	if _, src := load(t, a, "exp_bystander", scanned, newFetcher("completed")); src != Stored {
		t.Fatalf("fill: %v, want stored", src)
	}
	time.Sleep(5 * time.Millisecond) // the refusals come after the decisions
	for i := range maxLogEntries/maxEventItems + 1 {
		creds := make([][32]byte, maxEventItems)
		for j := range creds {
			creds[j] = cred(fmt.Sprint("scan-", i, "-", j))
		}
		if !a.Publish(context.Background(), Event{Creds: creds}) {
			t.Fatalf("refusal event %d not published", i)
		}
	}
	confirmedSince(t, b, time.Now())
	if _, src := load(t, b, "exp_bystander", key, newFetcher("app")); src != Hit {
		t.Fatalf("B's lookup of a decision no refusal covers: %v, want a shared hit", src)
	}
	// The refused credentials past the bound are still refused.
	if _, src := load(t, b, "exp_bystander", scanned, newFetcher("app")); src == Hit {
		t.Fatal("a refused credential the log forgot was taken from Redis")
	}
}
