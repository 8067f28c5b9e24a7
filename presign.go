package exportdownload

import (
	"context"
	"time"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/presign"
)

// memoURL is the last presigned URL a record handed out, valid until until.
type memoURL struct {
	urls   *cache.URLs // the URL cache it came from
	signed *presign.Signed
	until  time.Time
}

// presignURL returns a URL for the record's object: a reused one while its
// reuse window lasts, else a new one (one presign per object at a time).
func (h *Handler) presignURL(ctx context.Context, rec *record, now time.Time) (s *presign.Signed, reused bool, err error) {
	exp := rec.answer.Export.ExpiresAt
	// The record remembers the last URL it handed out: a hit then needs no
	// second lookup, nor the object rendered. It is the shared cache's URL,
	// with the shared window, and only from this config's URL cache (a
	// reload with other S3 settings has another one).
	if h.caches != nil {
		if m := rec.url.Load(); m != nil && m.urls == h.caches.urls && now.Before(m.until) {
			h.metrics.presignReused.Inc()
			return m.signed, true, nil
		}
	}
	obj, err := h.object(rec)
	if err != nil {
		return nil, false, err
	}
	if h.caches != nil {
		urls := h.caches.urls
		if s, until, ok := urls.LookupAt(obj, exp, now); ok {
			rec.url.Store(&memoURL{urls: urls, signed: s, until: until})
			h.metrics.presignReused.Inc()
			return s, true, nil
		}
	}
	sign := func(ctx context.Context) (*presign.Signed, error) {
		h.metrics.presignNew.Inc()
		return h.presigner.Presign(ctx, obj, h.now(), exp)
	}
	if h.caches == nil {
		s, err = sign(ctx)
		return s, false, err
	}
	urls := h.caches.urls
	s, reused, err = urls.Sign(ctx, obj, exp, sign)
	if err != nil {
		return nil, false, err
	}
	if reused {
		h.metrics.presignReused.Inc()
	}
	if until := urls.ReuseUntil(s); now.Before(until) {
		rec.url.Store(&memoURL{urls: urls, signed: s, until: until})
	}
	return s, reused, nil
}
