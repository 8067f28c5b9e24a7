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
	// Close hands back what the outbox still holds, for a successor client.
	defer func() { _ = c.Close() }()

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

	// A local hit is served while the fleet trusts it (max_staleness).
	// if !c.Trusts(entry.decidedAt, now) { treat the entry as stale }

	// A local miss: the shared decision, or one upstream call fleet-wide.
	digest := sha256.Sum256([]byte("Bearer sk_live_..."))
	site := c.Site(sha256.Sum256([]byte("upstream, headers, TTLs, template fields")))
	d, err := c.Load(context.Background(), fleet.Query{ID: "exp_123", Cred: digest, Site: site, MinFresh: time.Now()},
		func(ctx context.Context) (fleet.Fill, error) {
			// Ask the app; encode what the templates need; TTL 0 = do not share.
			return fleet.Fill{Payload: []byte(`{"outcome":"completed"}`), Tags: []string{"key_8f2a"}, TTL: 5 * time.Minute}, nil
		})
	_, _ = d, err // store d.Payload locally until d.FreshUntil, decided at d.DecidedAt

	// A DELETE answered 2xx: drop local entries, tell the fleet, drop them
	// again (a fill may have raced), then let the 2xx go to the client.
	// localCache.Drop([]string{"exp_123"})
	// false means queued: it goes out as soon as Redis answers again.
	published := c.Publish(context.Background(), fleet.Event{IDs: []string{"exp_123"}})
	// localCache.Drop([]string{"exp_123"})
	_ = published
}
