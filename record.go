package exportdownload

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/presign"
)

// record is a cached upstream answer, with the object it grants rendered
// once when it was stored.
type record struct {
	answer decision.Answer // in the record: one allocation less per entry
	obj    presign.Object
	objErr error // a template named a field the answer lacks
	url    atomic.Pointer[memoURL]
}

// CacheTags are the answer's surrogate keys.
func (r *record) CacheTags() []string { return r.answer.SurrogateKeys }

// CacheRefutes says what a refusal proves: a 401/403 revokes every cached
// answer of the credential, a 404 the credential's answer for the export
// (README, "Revoking a key").
func (r *record) CacheRefutes() cache.Refutation {
	switch r.answer.Kind {
	case decision.KindUnauthorized:
		return cache.RefutesCredential
	case decision.KindNotFound:
		return cache.RefutesEntry
	}
	return cache.RefutesNothing
}

// memoURL is the last presigned URL a record handed out, valid until until.
type memoURL struct {
	urls   *cache.URLs // the URL cache it came from
	signed *presign.Signed
	until  time.Time
}

// newRecord renders the object a completed export grants, once per answer.
func (h *Handler) newRecord(id string, a *decision.Answer) *record {
	rec := &record{answer: *a}
	rec.answer.Fields = nil // only this function reads them: the cache need not keep them
	if a.Kind != decision.KindExport || a.Export.Status != "completed" {
		return rec
	}
	rec.obj.ContentType = h.ContentType
	if rec.obj.Bucket, rec.objErr = h.bucket.Render(id, a.Fields); rec.objErr != nil {
		return rec
	}
	if rec.obj.Key, rec.objErr = h.key.Render(id, a.Fields); rec.objErr != nil {
		return rec
	}
	if rec.obj.Key == "" || rec.obj.Bucket == "" {
		rec.objErr = errors.New("the bucket or object key rendered empty")
		return rec
	}
	rec.obj.Filename, rec.objErr = h.file.Render(id, a.Fields)
	return rec
}

// presignURL returns a URL for the record's object: a reused one while its
// reuse window lasts, else a new one (one presign per object at a time).
func (h *Handler) presignURL(ctx context.Context, rec *record, now time.Time) (*presign.Signed, error) {
	exp := rec.answer.Export.ExpiresAt
	if h.caches != nil {
		urls := h.caches.urls
		// The record remembers the last URL it handed out: a hit then
		// needs no second lookup. It is the shared cache's URL, with the
		// shared window, and only from this config's URL cache (a reload
		// with other S3 settings has another one).
		if m := rec.url.Load(); m != nil && m.urls == urls && now.Before(m.until) {
			h.metrics.presignReused.Inc()
			return m.signed, nil
		}
		if s, until, ok := urls.LookupAt(rec.obj, exp, now); ok {
			rec.url.Store(&memoURL{urls: urls, signed: s, until: until})
			h.metrics.presignReused.Inc()
			return s, nil
		}
	}
	sign := func(ctx context.Context) (*presign.Signed, error) {
		h.metrics.presignNew.Inc()
		return h.presigner.Presign(ctx, rec.obj, h.now(), exp)
	}
	if h.caches == nil {
		return sign(ctx)
	}
	urls := h.caches.urls
	s, reused, err := urls.Sign(ctx, rec.obj, exp, sign)
	if err != nil {
		return nil, err
	}
	if reused {
		h.metrics.presignReused.Inc()
	}
	if until := urls.ReuseUntil(s); now.Before(until) {
		rec.url.Store(&memoURL{urls: urls, signed: s, until: until})
	}
	return s, nil
}
