package exportdownload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/fleet"
)

// pool holds the caches across config reloads: the next config is
// provisioned before the old one is cleaned up, so a config with the same
// settings loads the same caches, and the last Cleanup closes them.
var pool = caddy.NewUsagePool()

type caches struct {
	decisions *cache.Cache[*record]
	urls      *cache.URLs
	release   func()
}

type pooledDecisions struct {
	*cache.Cache[*record]
	fleet *fleet.Client // the fleet whose stream it follows; nil: none
}

func fleetClientOf(h *Handler) *fleet.Client {
	if h.fleet == nil {
		return nil
	}
	return h.fleet.client
}

func (p pooledDecisions) Destruct() error { p.Close(); return nil }

type pooledURLs struct{ *cache.URLs }

func (p pooledURLs) Destruct() error { p.Close(); return nil }

// poolKey digests the settings that change what an entry holds, so that a
// reload with other settings gets a cache of its own. Secrets are digested
// with the rest, never kept in the key.
func poolKey(kind string, settings any) string {
	b, _ := json.Marshal(settings)
	sum := sha256.Sum256(b)
	return kind + ":" + hex.EncodeToString(sum[:])
}

func loadCaches(h *Handler, fleetKey string) (*caches, error) {
	// Everything that changes what an entry holds or how long it may be
	// served: two sites that differ in a TTL must not serve each other's
	// answers.
	dKey := poolKey("decisions", []any{h.Upstream, h.UpstreamPath, h.UpstreamHeader, h.forward,
		h.Bucket, h.ObjectKey, h.Filename, h.ContentType, h.Cache.MaxEntries, h.Cache.StaleIfError,
		h.ttls, h.SurrogateKeyHeader, fleetKey})
	uKey := poolKey("urls", []any{h.Region, h.Endpoint, h.PathStyle, h.AccessKeyID, h.SecretAccessKey, h.SessionToken,
		h.PresignExpiry, h.Cache.PresignReuse, h.Cache.MaxEntries})
	d, _, err := pool.LoadOrNew(dKey, func() (caddy.Destructor, error) {
		return pooledDecisions{Cache: cache.New[*record](cache.Config{
			MaxEntries:   h.Cache.MaxEntries,
			StaleIfError: time.Duration(*h.Cache.StaleIfError),
			Now:          h.now,
		}), fleet: fleetClientOf(h)}, nil
	})
	if err != nil {
		return nil, err
	}
	u, _, err := pool.LoadOrNew(uKey, func() (caddy.Destructor, error) {
		return pooledURLs{cache.NewURLs(h.Cache.MaxEntries, time.Duration(*h.Cache.PresignReuse), h.now)}, nil
	})
	if err != nil {
		_, _ = pool.Delete(dKey)
		return nil, err
	}
	return &caches{
		decisions: d.(pooledDecisions).Cache,
		urls:      u.(pooledURLs).URLs,
		release: sync.OnceFunc(func() {
			_, _ = pool.Delete(dKey)
			_, _ = pool.Delete(uKey)
		}),
	}, nil
}

// purgeSelection names what a purge drops: export ids (canonical, lower
// case), surrogate keys, or everything.
type purgeSelection struct {
	IDs  []string
	Tags []string
	All  bool
}

// purgeOutcome is what a purge did on this node.
type purgeOutcome struct {
	Dropped int    // local entries dropped, over every cache
	Caches  int    // decision caches visited
	Fleet   string // "off" (no fleet tier), "published", or "queued" (Redis unreachable: sent when it answers)
}

// purgeCaches drops what sel names from every decisions cache of this
// process (each config and site that shares one), then tells the fleet.
// It costs what it drops, except for All.
func purgeCaches(ctx context.Context, sel purgeSelection) purgeOutcome {
	var out purgeOutcome
	pool.Range(func(_, v any) bool {
		d, ok := v.(pooledDecisions)
		if !ok {
			return true
		}
		out.Caches++
		out.Dropped += d.purge(sel)
		return true
	})
	out.Fleet = publishPurge(ctx, sel)
	return out
}

// purge drops what sel names from one cache.
func (d pooledDecisions) purge(sel purgeSelection) int {
	if sel.All {
		return d.PurgeAll()
	}
	n := 0
	for _, id := range sel.IDs {
		n += d.InvalidateID(id)
	}
	if len(sel.Tags) > 0 {
		n += d.PurgeTags(sel.Tags...)
	}
	return n
}

// cacheReport is one decisions cache in the admin API's stats.
type cacheReport struct {
	Name string // the pool key: a digest of the settings that share it
	cache.Stats
	Fleet *fleet.Stats // nil without the fleet tier
}

// cachesStats reports every decisions cache of this process, sorted by name.
func cachesStats() []cacheReport {
	var out []cacheReport
	pool.Range(func(k, v any) bool {
		if d, ok := v.(pooledDecisions); ok {
			r := cacheReport{Name: k.(string), Stats: d.Stats()}
			if d.fleet != nil {
				fs := d.fleet.Stats()
				r.Fleet = &fs
			}
			out = append(out, r)
		}
		return true
	})
	slices.SortFunc(out, func(a, b cacheReport) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// publishPurge sends a purge to every fleet this process belongs to:
// "published", "queued" (Redis unreachable: it is sent when Redis answers
// again) or "off" without the fleet tier.
func publishPurge(ctx context.Context, sel purgeSelection) string {
	state := "off"
	pool.Range(func(_, v any) bool {
		f, ok := v.(pooledFleet)
		if !ok {
			return true
		}
		if f.Publish(ctx, fleet.Event{IDs: sel.IDs, Tags: sel.Tags, All: sel.All}) {
			if state == "off" {
				state = "published"
			}
		} else {
			state = "queued"
		}
		return true
	})
	return state
}
