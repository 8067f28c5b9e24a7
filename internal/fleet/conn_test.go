package fleet

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// rootChildren is how many contexts and AfterFuncs hang on c.rootCtx, read
// under its lock (the standard library's cancelCtx).
func rootChildren(c *Client) int {
	v := reflect.ValueOf(c.rootCtx).Elem()
	mu := (*sync.Mutex)(unsafe.Pointer(v.FieldByName("mu").UnsafeAddr()))
	mu.Lock()
	defer mu.Unlock()
	return v.FieldByName("children").Len()
}

// Each connection the client dials is closed when the client closes; the
// registration goes when the connection does, so reconnects (Redis
// restarts, idle timeouts of a managed service, a flapping link) do not
// keep closed connections reachable.
func TestRedialsDoNotAccumulate(t *testing.T) {
	r := testenv.StartRedis(t)
	a := node(t, r.Addr)
	waitUp(t, a)
	confirmedSince(t, a, time.Now())
	before := rootChildren(a)
	const redials = 20
	for range redials {
		killed := time.Now()
		r.ClientKill(t, "TYPE", "normal")
		confirmedSince(t, a, killed) // the reader dialled again
	}
	if after := rootChildren(a); after-before >= redials {
		t.Fatalf("%d redials left %d more registrations on the client's context (%d before)", redials, after-before, before)
	}
}

// A publish that Redis answered but could not confirm (no replica yet, a
// slot that moved) does not open the breaker: shared lookups keep going to
// a Redis that answers. Failures to get an answer do.
func TestUnconfirmedPublishesDoNotOpenTheBreaker(t *testing.T) {
	c := &Client{cfg: Config{Timeout: time.Second}}
	for _, err := range []error{errNotReplicated, errRedirected, fmt.Errorf("publish: %w", errNotReplicated)} {
		for range breakerFailures + 1 {
			_ = c.call(context.Background(), func(context.Context) error { return err })
		}
		if !c.breaker.allow() {
			t.Fatalf("%d publishes answered with %q opened the breaker", breakerFailures+1, err)
		}
	}
	for range breakerFailures {
		_ = c.call(context.Background(), func(context.Context) error { return errors.New("i/o timeout") })
	}
	if c.breaker.allow() {
		t.Fatalf("%d failures in a row left the breaker closed", breakerFailures)
	}
}
