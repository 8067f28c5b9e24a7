package exportdownload

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/presign"
	"github.com/exportedge/caddy-export-download/internal/requestid"
	"github.com/exportedge/caddy-export-download/internal/route"
)

// Cache-Status values (RFC 9211, SPEC §4).
const (
	csHit          = "export_download; hit"
	csStale        = "export_download; hit; detail=stale"
	csStored       = "export_download; fwd=miss; stored"
	csCollapsed    = "export_download; fwd=miss; collapsed"
	csRefreshed    = "export_download; fwd=stale; stored"
	csBypass       = "export_download; fwd=bypass"
	csFailed       = "export_download; fwd=miss; detail=upstream-error"
	csNotStored    = "export_download; fwd=miss; detail=not-cacheable"
	csStaleNoStore = "export_download; fwd=stale; detail=not-cacheable"
)

// ServeHTTP answers GET and HEAD on the download path; it passes every
// other request on untouched, watching DELETEs on the invalidation path.
// The steps, in order: path → API key → id → cached or upstream answer →
// decision → presigned URL → response.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodDelete:
		return h.serveDelete(w, r, next)
	default:
		return next.ServeHTTP(w, r)
	}
	rawID, ok := h.path.Match(r.URL.Path)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	reqID := requestid.FromHeader(r.Header.Get("X-Request-Id"))
	if !h.apiKeyOK(r.Header) {
		return h.finish(w, r, decision.BadKey, reqID, rawID, csBypass, lookupBypass, "", 0)
	}
	id, ok := route.ParseID(rawID)
	if !ok {
		return h.finish(w, r, decision.BadID, reqID, rawID, csBypass, lookupBypass, "", 0)
	}

	now := h.now() // read once: the clock is slow on some hosts
	rec, cacheStatus, lookup, waited, err := h.lookupExport(r, id, reqID, now)
	if err != nil {
		if r.Context().Err() != nil {
			// The client went away while waiting: not an outage, and
			// nobody reads an answer.
			h.logger.Debug("client gone while waiting for the upstream", zap.String("request_id", reqID), zap.String("export_id", id))
			return nil
		}
		if h.passthrough {
			h.metrics.outcomes[decision.Passthrough].Inc()
			h.metrics.lookups[lookup].Inc()
			h.logRequest(reqID, id, decision.Passthrough, lookup, waited)
			return next.ServeHTTP(w, r)
		}
		return h.finish(w, r, decision.Down, reqID, id, cacheStatus, lookup, "1", waited)
	}

	if waited > 0 {
		now = h.now()
	}
	verdict := decision.Decide(rec.answer, now)
	if verdict != decision.Found {
		return h.finish(w, r, verdict, reqID, id, cacheStatus, lookup, rec.answer.RetryAfter, waited)
	}
	if rec.objErr != nil {
		h.logger.Error("cannot build the object to download", zap.String("request_id", reqID),
			zap.String("export_id", id), zap.Error(rec.objErr))
		return h.finish(w, r, decision.Internal, reqID, id, cacheStatus, lookup, "", waited)
	}
	signed, err := h.presignURL(r.Context(), rec, now)
	if err != nil {
		v := decision.LinkExpired
		if !errors.Is(err, presign.ErrExportExpired) {
			v = decision.Internal
			h.logger.Error("presigning failed", zap.String("request_id", reqID),
				zap.String("export_id", id), zap.Error(err))
		}
		return h.finish(w, r, v, reqID, id, cacheStatus, lookup, "", waited)
	}

	// One allocation holds every header value of the reply; the slices are
	// the request's own, so a later handler may edit them in place.
	vals := &[6]string{signed.URL, reqID, "private, no-store", "no-referrer", cacheStatus, "0"}
	hdr := w.Header()
	hdr["Location"] = vals[0:1:1]
	hdr["X-Request-Id"] = vals[1:2:2]
	hdr["Cache-Control"] = vals[2:3:3]
	hdr["Referrer-Policy"] = vals[3:4:4]
	hdr["Cache-Status"] = vals[4:5:5]
	hdr["Content-Length"] = vals[5:6:6]
	w.WriteHeader(http.StatusFound)
	h.metrics.outcomes[decision.Redirect].Inc()
	h.metrics.lookups[lookup].Inc()
	h.logRequest(reqID, id, decision.Redirect, lookup, waited)
	return nil
}

// apiKeyOK applies SPEC §2 rule 1: one Authorization header, scheme Bearer
// in any case, a non-empty key without blanks, and one of key_prefixes.
func (h *Handler) apiKeyOK(hdr http.Header) bool {
	vals := hdr["Authorization"]
	if len(vals) != 1 {
		return false
	}
	v := vals[0]
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return false
	}
	key := strings.TrimLeft(v[len(scheme):], " ")
	if key == "" {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] == 0x7f {
			return false
		}
	}
	if len(h.KeyPrefixes) == 0 {
		return true
	}
	for _, p := range h.KeyPrefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// cacheKey digests the forwarded credential headers with the id; the
// buffer lives on the stack for any usual key.
func (h *Handler) cacheKey(hdr http.Header, id string) cache.Key {
	var buf [512]byte
	b := buf[:0]
	for _, name := range h.forward {
		b = append(b, name...)
		b = append(b, ':')
		for _, v := range hdr[name] {
			b = append(b, v...)
			b = append(b, 0)
		}
		b = append(b, '\n')
	}
	return cache.Key{Cred: sha256.Sum256(b), ID: id}
}

// lookupExport returns the answer for (credentials, id): from the cache
// when fresh, else from the upstream (one call per burst), else a stale
// answer if the upstream failed. waited is the time spent on the upstream.
func (h *Handler) lookupExport(r *http.Request, id, reqID string, now time.Time) (rec *record, cacheStatus string, lookup lookupResult, waited time.Duration, err error) {
	if h.caches == nil {
		start := time.Now()
		rec, _, err = h.loader(id, r.Header, reqID)(r.Context())
		return rec, csBypass, lookupBypass, time.Since(start), err
	}
	key := h.cacheKey(r.Header, id)
	c := h.caches.decisions
	e, state := c.PeekAt(key, now)
	switch state {
	case cache.Fresh:
		return e.Value, csHit, lookupHit, 0, nil
	case cache.Refresh:
		if c.RefreshAsync(key, e, h.loader(id, r.Header, reqID)) {
			h.metrics.refreshes.Inc()
		}
		return e.Value, csHit, lookupHit, 0, nil
	}
	start := time.Now()
	v, how, err := c.Load(r.Context(), key, h.loader(id, r.Header, reqID))
	waited = time.Since(start)
	if err != nil {
		if state == cache.Stale {
			return e.Value, csStale, lookupStale, waited, nil
		}
		return nil, csFailed, lookupMiss, waited, err
	}
	switch {
	case how == cache.Collapsed:
		return v, csCollapsed, lookupCollapsed, waited, nil
	case state == cache.Stale && how == cache.Stored:
		return v, csRefreshed, lookupRefreshed, waited, nil
	case state == cache.Stale:
		return v, csStaleNoStore, lookupRefreshed, waited, nil
	case how == cache.Stored:
		return v, csStored, lookupMiss, waited, nil
	}
	return v, csNotStored, lookupMiss, waited, nil
}

// loader returns the upstream call for one export with this request's
// forwarded headers. The headers are copied: the call may outlive the
// request (a shared call, or a background refresh).
func (h *Handler) loader(id string, from http.Header, reqID string) cache.Loader[*record] {
	fwd := make(http.Header, len(h.forward))
	for _, name := range h.forward {
		if v := from[name]; len(v) > 0 {
			fwd[name] = append([]string(nil), v...)
		}
	}
	return func(ctx context.Context) (*record, time.Duration, error) {
		a, res, err := h.upstream.Fetch(ctx, id, fwd, reqID)
		h.metrics.observeUpstream(res.Status, res.Duration, err)
		if err != nil {
			h.logger.Warn("upstream failure", zap.String("request_id", reqID), zap.String("export_id", id),
				zap.Int("upstream_status", res.Status), zap.Error(err))
			return nil, 0, err
		}
		rec := h.newRecord(id, a)
		a.Fields = nil // only newRecord reads them: the cache need not keep them
		return rec, h.ttls.FreshFor(a, h.now()), nil
	}
}

// newRecord renders the object a completed export grants, once per answer.
func (h *Handler) newRecord(id string, a *decision.Answer) *record {
	rec := &record{answer: a}
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

// finish writes an error envelope (SPEC §2) directly: an error returned
// from ServeHTTP would go to handle_errors instead of the client.
func (h *Handler) finish(w http.ResponseWriter, r *http.Request, v *decision.Verdict, reqID, id, cacheStatus string, lookup lookupResult, retryAfter string, waited time.Duration) error {
	writeAPIError(w, r.Method == http.MethodHead, v, reqID, cacheStatus, retryAfter)
	h.metrics.outcomes[v.Outcome].Inc()
	h.metrics.lookups[lookup].Inc()
	h.logRequest(reqID, id, v.Outcome, lookup, waited)
	return nil
}

func (h *Handler) logRequest(reqID, id string, o decision.Outcome, lookup lookupResult, waited time.Duration) {
	if ce := h.logger.Check(zap.DebugLevel, "export download"); ce != nil {
		if len(id) > 64 {
			id = id[:64] // an invalid id is the caller's text: bound it
		}
		ce.Write(zap.String("request_id", reqID), zap.String("export_id", id), zap.String("outcome", o.String()),
			zap.String("cache", lookup.String()), zap.Float64("upstream_ms", float64(waited.Microseconds())/1000))
	}
}

// serveDelete passes a DELETE on; when it hits invalidate_path and the next
// handler answers 2xx, every cached answer of that export is dropped.
func (h *Handler) serveDelete(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.caches == nil {
		return next.ServeHTTP(w, r)
	}
	raw, ok := h.invalidate.Match(r.URL.Path)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	id, ok := route.ParseID(raw)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	sw := &successWriter{
		ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		onSuccess: func() {
			n := h.caches.decisions.InvalidateID(id)
			h.logger.Debug("export invalidated", zap.String("export_id", id), zap.Int("entries", n))
		},
	}
	return next.ServeHTTP(sw, r)
}

// successWriter calls onSuccess when the final status is 2xx, before the
// status reaches the client: a client that sees its DELETE succeed and
// asks again at once must not get the dropped answer.
type successWriter struct {
	*caddyhttp.ResponseWriterWrapper
	onSuccess func()
	decided   bool
}

func (s *successWriter) WriteHeader(code int) {
	if !s.decided && code >= 200 {
		s.decided = true
		if code < 300 {
			s.onSuccess()
		}
	}
	s.ResponseWriterWrapper.WriteHeader(code)
}

func (s *successWriter) Write(b []byte) (int, error) {
	if !s.decided {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriterWrapper.Write(b)
}
