package exportdownload

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/fleet"
)

// Defaults of the cache block, as docs/configuration.md's "Configuration
// reference" lists them.
const (
	defaultMaxEntries   = 100_000
	defaultStaleIfError = 10 * time.Minute
)

// CacheConfig is the `cache` block.
type CacheConfig struct {
	// Disabled turns caching off: every request asks the upstream and
	// presigns (Caddyfile: `cache off`). Default: false
	Disabled bool `json:"disabled,omitempty"`

	// MaxEntries bounds the answers kept (and, separately, the presigned
	// URLs kept). Default: 100000
	MaxEntries int `json:"max_entries,omitempty"`

	// TTL is the fresh lifetime per outcome: completed, pending,
	// processing (also unknown statuses), failed, expired, not_found,
	// unauthorized. 0 means "do not cache". Defaults: completed 5m,
	// pending 1s, processing 1s, failed 30s, expired 5m, not_found 5s,
	// unauthorized 5s
	TTL map[string]caddy.Duration `json:"ttl,omitempty"`

	// StaleIfError is how long past freshness an answer may still be
	// served while the upstream fails (RFC 5861). 0 disables. Default: 10m
	StaleIfError *caddy.Duration `json:"stale_if_error,omitempty"`

	// PresignReuse is how long one presigned URL is reused per object
	// (never more than a third of its lifetime). 0 disables.
	// Default: a third of presign_expiry
	PresignReuse *caddy.Duration `json:"presign_reuse,omitempty"`
}

func (c *CacheConfig) setDefaults(presignExpiry caddy.Duration) {
	if c.MaxEntries == 0 {
		c.MaxEntries = defaultMaxEntries
	}
	if c.StaleIfError == nil {
		d := caddy.Duration(defaultStaleIfError)
		c.StaleIfError = &d
	}
	if c.PresignReuse == nil {
		d := presignExpiry / 3
		c.PresignReuse = &d
	}
}

// validate checks the block; messages name the subdirective.
func (c *CacheConfig) validate(errs *configErrors) {
	at := func(sub, item string) where { return where{block: "cache", sub: sub, item: item} }
	if c.MaxEntries < 0 {
		errs.add(at("max_entries", ""), "must be positive")
	}
	for _, name := range slices.Sorted(maps.Keys(c.TTL)) {
		if _, err := decision.ParseClass(name); err != nil {
			errs.add(at("ttl", name), "%v", err)
		} else if c.TTL[name] < 0 {
			errs.add(at("ttl", name), "%s: must not be negative", name)
		}
	}
	if c.StaleIfError != nil && *c.StaleIfError < 0 {
		errs.add(at("stale_if_error", ""), "must not be negative")
	}
	if c.PresignReuse != nil && *c.PresignReuse < 0 {
		errs.add(at("presign_reuse", ""), "must not be negative")
	}
}

// lifetimes returns the fresh lifetime of each class of answer (the
// defaults with the block's ttl lines over them) and the longest.
func (c *CacheConfig) lifetimes() (decision.TTLs, time.Duration) {
	ttls := decision.DefaultTTLs()
	for name, d := range c.TTL {
		class, _ := decision.ParseClass(name) // checked by validate
		ttls[class] = time.Duration(d)
	}
	return ttls, slices.Max(ttls[:])
}

// caches are one config's hold on its pooled caches.
type caches struct {
	decisions *cache.Cache[*record]
	urls      *cache.URLs
	release   func()
}

// provision loads this config's caches from the pools: those of the
// config it replaces when the settings agree. Everything that changes what
// an entry holds or how long it may be served is in the key: two sites that
// differ in a TTL must not serve each other's answers. A fleet's decisions
// cache follows that fleet's stream, so the fleet client's key is in it
// too (fleetKey; "" without a fleet).
func (c *CacheConfig) provision(h *Handler, fleetKey string, client *fleet.Client) (*caches, error) {
	dKey := poolKey("decisions", []any{h.Upstream, h.UpstreamPath, h.UpstreamHeader, h.forward,
		h.Bucket, h.ObjectKey, h.Filename, h.ContentType, c.MaxEntries, c.StaleIfError,
		h.ttls, h.SurrogateKeyHeader, fleetKey})
	uKey := poolKey("urls", []any{h.Region, h.Endpoint, h.PathStyle, h.AccessKeyID, h.SecretAccessKey, h.SessionToken,
		h.PresignExpiry, c.PresignReuse, c.MaxEntries})
	d, _, err := decisionCaches.LoadOrNew(dKey, func() (caddy.Destructor, error) {
		cfg := cache.Config{
			MaxEntries:   c.MaxEntries,
			StaleIfError: time.Duration(*c.StaleIfError),
			Now:          h.now,
		}
		if client != nil {
			// A refusal (401/403) revokes the credential on every node,
			// not only on the one that asked the app (docs/fleet.md, "Bounded
			// staleness").
			cfg.OnRefused = publishRefusal
		}
		return &pooledDecisions{Cache: cache.New[*record](cfg), fleet: client}, nil
	})
	if err != nil {
		return nil, err
	}
	u, _, err := urlCaches.LoadOrNew(uKey, func() (caddy.Destructor, error) {
		return &pooledURLs{cache.NewURLs(c.MaxEntries, time.Duration(*c.PresignReuse), h.now)}, nil
	})
	if err != nil {
		_, _ = decisionCaches.Delete(dKey)
		return nil, err
	}
	return &caches{
		decisions: d.(*pooledDecisions).Cache,
		urls:      u.(*pooledURLs).URLs,
		release: sync.OnceFunc(func() {
			_, _ = decisionCaches.Delete(dKey)
			_, _ = urlCaches.Delete(uKey)
		}),
	}, nil
}

// The pools hold what outlives a config reload: the next config is
// provisioned before the old one is cleaned up, so a config with the same
// settings loads the same values, and the last Cleanup closes them. One
// pool per kind of value.
var (
	decisionCaches = caddy.NewUsagePool() // *pooledDecisions, by poolKey("decisions", …)
	urlCaches      = caddy.NewUsagePool() // *pooledURLs, by poolKey("urls", …)
	fleetClients   = caddy.NewUsagePool() // pooledFleet, by poolKey("fleet", …) (fleet.go)
)

// pooledDecisions is a decisions cache and the fleet client whose stream
// it follows (nil: none), for the stats.
type pooledDecisions struct {
	*cache.Cache[*record]
	fleet *fleet.Client
}

func (p *pooledDecisions) Destruct() error { p.Close(); return nil }

type pooledURLs struct{ *cache.URLs }

func (p *pooledURLs) Destruct() error { p.Close(); return nil }

// pooled is one value of a pool, with its key.
type pooled[T any] struct {
	key   string
	value T
}

// collect returns what pool holds, read under the pool's lock; the caller
// works on the values after, outside it, so a reload never waits for that
// work. T is the one type the pool holds.
func collect[T any](pool *caddy.UsagePool) []pooled[T] {
	var out []pooled[T]
	pool.Range(func(k, v any) bool {
		out = append(out, pooled[T]{key: k.(string), value: v.(T)})
		return true
	})
	return out
}

// poolKeySecret keys poolKey's digests, which the admin API shows as cache
// names. The settings include upstream_header values and the fleet's
// secret: an unkeyed digest would let whoever may read the stats test
// guesses of them offline. One key per process, so a name is stable across
// the reloads that keep its cache.
var poolKeySecret = func() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return b
}()

// poolKey names the settings that share a pooled value: kind, then a
// keyed digest of them. Secrets are digested with the rest, never kept.
func poolKey(kind string, settings any) string {
	b, _ := json.Marshal(settings)
	m := hmac.New(sha256.New, poolKeySecret)
	m.Write(b)
	return kind + ":" + hex.EncodeToString(m.Sum(nil))
}

// cacheReport is one decisions cache in the admin API's stats.
type cacheReport struct {
	Name string // its pool key
	cache.Stats
	Fleet *fleet.Stats // nil without the fleet tier
}

// cachesStats reports every decisions cache of this process, sorted by name.
func cachesStats() []cacheReport {
	all := collect[*pooledDecisions](decisionCaches)
	out := make([]cacheReport, 0, len(all))
	for _, d := range all {
		out = append(out, cacheReport{Name: d.key, Stats: d.value.Stats(), Fleet: statsOfFleet(d.value.fleet)})
	}
	slices.SortFunc(out, func(a, b cacheReport) int { return strings.Compare(a.Name, b.Name) })
	return out
}
