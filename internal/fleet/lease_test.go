package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestLeaseReleasedWhenBreakerOpensDuringFill: the node that holds the
// lease releases it when its fill ends (a lease left to expire makes every
// later miss of that key wait it out), also when the breaker opened while
// the upstream call ran (other calls of this node timed out meanwhile) so
// that the store is skipped.
func TestLeaseReleasedWhenBreakerOpensDuringFill(t *testing.T) {
	r := testenv.StartRedis(t)
	c := node(t, r.Addr)
	waitUp(t, c)
	id, cr := "01935abc-def0-7123-4567-890abcdef012", cred("Bearer hb_test_lease")
	fetch := func(context.Context) (Fill, error) {
		// Meanwhile three Redis calls of other requests timed out.
		c.breaker.fail()
		c.breaker.fail()
		c.breaker.fail()
		return Fill{Payload: []byte("payload"), TTL: time.Minute}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Load(ctx, query(id, cr), fetch); err != nil {
		t.Fatalf("Load: %v", err)
	}
	lease := leaseKey(c, id, cr)
	if n := r.MustDo(t, "EXISTS", lease); n != "0" {
		ttl := r.MustDo(t, "PTTL", lease)
		t.Fatalf("the lease %s is still held after the fill ended (PTTL %s ms): every other node's miss waits for it", lease, ttl)
	}
}
