package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestRegressionLeaseReleasedWhenBreakerOpensDuringFill: the node that holds
// the lease must release it when its fill ends (README, "Running a fleet":
// a lease left to expire makes every later miss of that key wait it out).
// If the breaker opened while the upstream call ran (other calls of this
// node timed out meanwhile), fill returns before the store script, which
// is also the release, and leaves the lease to expire (upstream timeout +
// 1s), although Redis answers.
func TestRegressionLeaseReleasedWhenBreakerOpensDuringFill(t *testing.T) {
	r := testenv.StartRedis(t)
	c := node(t, r.Addr)
	waitUp(t, c)
	id, cr := "01935abc-def0-7123-4567-890abcdef012", cred("Bearer hb_test_lease")
	fetch := func(context.Context) ([]byte, time.Duration, error) {
		// Meanwhile three Redis calls of other requests timed out.
		c.breaker.fail()
		c.breaker.fail()
		c.breaker.fail()
		return []byte("payload"), time.Minute, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, _, err := c.Load(ctx, id, cr, time.Now(), fetch); err != nil {
		t.Fatalf("Load: %v", err)
	}
	lease := c.keysFor(id, c.MAC(cr)).lease
	if n := r.MustDo(t, "EXISTS", lease); n != "0" {
		ttl := r.MustDo(t, "PTTL", lease)
		t.Fatalf("the lease %s is still held after the fill ended (PTTL %s ms): every other node's miss waits for it", lease, ttl)
	}
}
