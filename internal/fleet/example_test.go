package fleet_test

import (
	"context"
	"crypto/sha256"
	"log"
	"time"

	"github.com/exportedge/caddy-export-download/internal/fleet"
)

// How a node wires the fleet tier between its local cache and the upstream.
func Example() {
	c, err := fleet.New(fleet.Config{
		Addrs:    []string{"127.0.0.1:6379"},
		Secret:   []byte("a secret of at least thirty-two bytes, the same on every node"),
		LeaseTTL: 2*time.Second + 500*time.Millisecond, // upstream timeout + a margin
	})
	if err != nil {
		log.Fatal(err) // only a bad configuration; Redis may well be down
	}
	defer c.Close()

	// Other nodes' invalidations drop local entries; Demote marks them all stale.
	unsubscribe := c.Subscribe(func(ev fleet.Event) {
		switch {
		case ev.Demote:
			// localCache.DemoteAll()
		case ev.All:
			// localCache.PurgeAll()
		default:
			// localCache.Drop(ev.IDs); localCache.PurgeTags(ev.Tags)
		}
	})
	defer unsubscribe()

	// A local miss: the shared decision, or one upstream call fleet-wide.
	digest := sha256.Sum256([]byte("Bearer sk_live_..."))
	payload, freshUntil, src, err := c.Load(context.Background(), "exp_123", digest, time.Now(),
		func(ctx context.Context) ([]byte, time.Duration, error) {
			// Ask the app; encode what the templates need; TTL 0 = do not share.
			return []byte(`{"outcome":"completed"}`), 5 * time.Minute, nil
		})
	_, _, _, _ = payload, freshUntil, src, err // store locally until freshUntil

	// A DELETE answered 2xx: drop local entries first, then tell the fleet.
	// localCache.Drop([]string{"exp_123"})
	// false means queued: it goes out as soon as Redis answers again.
	published := c.Publish(context.Background(), fleet.Event{IDs: []string{"exp_123"}})
	_ = published
}
