package exportdownload

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/presign"
)

// pool holds the caches across config reloads: the next config is
// provisioned before the old one is cleaned up, so a config with the same
// settings loads the same caches, and the last Cleanup closes them.
var pool = caddy.NewUsagePool()

// record is a cached upstream answer, with the object it grants rendered
// once when it was stored.
type record struct {
	answer *decision.Answer
	obj    presign.Object
	objErr error // a template named a field the answer lacks
	url    atomic.Pointer[memoURL]
}

// memoURL is the last presigned URL a record handed out, valid until until.
type memoURL struct {
	urls   *cache.URLs // the URL cache it came from
	signed *presign.Signed
	until  time.Time
}

type caches struct {
	decisions *cache.Cache[*record]
	urls      *cache.URLs
	release   func()
}

type pooledDecisions struct{ *cache.Cache[*record] }

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

func loadCaches(h *Handler) (*caches, error) {
	dKey := poolKey("decisions", []any{h.Upstream, h.UpstreamPath, h.UpstreamHeader, h.forward,
		h.Bucket, h.ObjectKey, h.Filename, h.ContentType, h.Cache.MaxEntries, h.Cache.StaleIfError})
	uKey := poolKey("urls", []any{h.Region, h.Endpoint, h.PathStyle, h.AccessKeyID, h.SecretAccessKey, h.SessionToken,
		h.PresignExpiry, h.Cache.PresignReuse, h.Cache.MaxEntries})
	d, _, err := pool.LoadOrNew(dKey, func() (caddy.Destructor, error) {
		return pooledDecisions{cache.New[*record](cache.Config{
			MaxEntries:   h.Cache.MaxEntries,
			StaleIfError: time.Duration(*h.Cache.StaleIfError),
			Now:          h.now,
		})}, nil
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
