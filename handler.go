package exportdownload

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/fleet"
	"github.com/exportedge/caddy-export-download/internal/presign"
	"github.com/exportedge/caddy-export-download/internal/requestid"
	"github.com/exportedge/caddy-export-download/internal/route"
)

// Cache-Status values (RFC 9211; README, "Caching").
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

// exchange is one download request's state, carried through its steps.
type exchange struct {
	w      http.ResponseWriter
	r      *http.Request
	reqID  string
	id     string        // the export id: lowercased once it is valid
	extra  []string      // upstream_header values expanded for this request
	now    time.Time     // read once: the clock is slow on some hosts
	status string        // Cache-Status
	lookup lookupResult  // the cache_lookups_total label
	waited time.Duration // time spent on the upstream (or another's call)
	fleet  fleet.Source  // how the fleet tier answered; 0: not asked
	span   trace.Span    // the request's span when tracing records; else nil
}

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
	x := &exchange{w: w, r: r, reqID: requestid.FromHeader(r.Header.Get("X-Request-Id")),
		id: rawID, status: csBypass, lookup: lookupBypass, span: requestSpan(r)}
	if !h.apiKeyOK(r.Header) {
		return h.finish(x, decision.BadKey, "")
	}
	if x.id, ok = route.ParseID(rawID); !ok {
		x.id = rawID
		return h.finish(x, decision.BadID, "")
	}
	x.extra = h.expandUpstreamHeaders(r)

	x.now = h.now()
	rec, err := h.lookupExport(x)
	traceLookup(x.span, x.id, x.lookup.String())
	if err != nil {
		if r.Context().Err() != nil {
			// The client went away while waiting: not an outage, and
			// nobody reads an answer.
			h.logger.Debug("client gone while waiting for the upstream", zap.String("request_id", x.reqID), zap.String("export_id", x.id))
			return nil
		}
		if h.passthrough {
			h.metrics.outcomes[decision.Passthrough].Inc()
			h.metrics.lookups[x.lookup].Inc()
			h.logRequest(x, decision.Passthrough)
			return next.ServeHTTP(w, r)
		}
		return h.finish(x, decision.Down, "1")
	}

	if x.waited > 0 {
		x.now = h.now()
	}
	verdict := decision.Decide(&rec.answer, x.now)
	if verdict != decision.Found {
		return h.finish(x, verdict, rec.answer.RetryAfter)
	}
	if rec.objErr != nil {
		h.logger.Error("cannot build the object to download", zap.String("request_id", x.reqID),
			zap.String("export_id", x.id), zap.Error(rec.objErr))
		return h.finish(x, decision.Internal, "")
	}
	signed, reused, err := h.presignURL(r.Context(), rec, x.now)
	tracePresign(x.span, reused)
	if err != nil {
		if r.Context().Err() != nil {
			return nil // the client left while the URL was being signed
		}
		v := decision.LinkExpired
		if !errors.Is(err, presign.ErrExportExpired) {
			v = decision.Internal
			h.logger.Error("presigning failed", zap.String("request_id", x.reqID),
				zap.String("export_id", x.id), zap.Error(err))
		}
		return h.finish(x, v, "")
	}

	// One allocation holds every header value of the reply; the slices are
	// the request's own, so a later handler may edit them in place.
	vals := &[6]string{signed.URL, x.reqID, "private, no-store", "no-referrer", x.status, "0"}
	hdr := w.Header()
	hdr["Location"] = vals[0:1:1]
	hdr["X-Request-Id"] = vals[1:2:2]
	hdr["Cache-Control"] = vals[2:3:3]
	hdr["Referrer-Policy"] = vals[3:4:4]
	hdr["Cache-Status"] = vals[4:5:5]
	hdr["Content-Length"] = vals[5:6:6]
	w.WriteHeader(http.StatusFound)
	h.metrics.outcomes[decision.Redirect].Inc()
	h.metrics.lookups[x.lookup].Inc()
	h.logRequest(x, decision.Redirect)
	return nil
}

// apiKeyOK applies the first rule of the README's decision table: one
// Authorization header, scheme Bearer in any case (RFC 9110 §11.1), a
// non-empty key without blanks, and one of key_prefixes.
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

// cacheKey digests the forwarded credential headers and the request's
// expanded upstream_header values with the id; the buffer lives on the
// stack for any usual key.
func (h *Handler) cacheKey(x *exchange) cache.Key {
	var buf [512]byte
	b := buf[:0]
	for _, name := range h.forward {
		b = append(b, name...)
		b = append(b, ':')
		for _, v := range x.r.Header[name] {
			b = append(b, v...)
			b = append(b, 0)
		}
		b = append(b, '\n')
	}
	for i, v := range x.extra {
		b = append(b, h.perRequest[i].name...)
		b = append(b, '=')
		b = append(b, v...)
		b = append(b, '\n')
	}
	return cache.Key{Cred: sha256.Sum256(b), ID: x.id}
}

// lookupExport returns the answer for (credentials, id): from the cache
// when fresh, else from the upstream (one call per burst), else a stale
// answer if the upstream failed. It sets x's Cache-Status, lookup result
// and time waited.
func (h *Handler) lookupExport(x *exchange) (*record, error) {
	if h.caches == nil {
		start := time.Now()
		rec, _, err := h.loader(x)(x.r.Context())
		x.waited = time.Since(start)
		return rec, err
	}
	key := h.cacheKey(x)
	c := h.caches.decisions
	e, state := c.PeekAt(key, x.now)
	switch state {
	case cache.Fresh:
		x.status, x.lookup = csHit, lookupHit
		return e.Value, nil
	case cache.Refresh:
		if c.RefreshAsync(key, e, linkRefresh(x.span, h.refresher(x, e))) {
			h.metrics.refreshes.Inc()
		}
		x.status, x.lookup = csHit, lookupHit
		return e.Value, nil
	}
	start := time.Now()
	var note *fleet.Source // how the fleet tier answered; allocated on a miss only
	if h.fleet != nil {
		note = new(fleet.Source)
	}
	v, how, err := c.Load(x.r.Context(), key, h.loaderNoting(x, note))
	if note != nil && x.r.Context().Err() == nil {
		// Load returned after the call ended (unless this client left:
		// then the call may still be writing note).
		x.fleet = *note
	}
	x.waited = time.Since(start)
	switch {
	case err != nil && x.r.Context().Err() != nil:
		// The client left: serve nothing, count nothing as an outage.
		x.status, x.lookup = csFailed, lookupMiss
		return nil, err
	case err != nil && state == cache.Stale && c.Holds(key, e):
		// Only if nothing dropped it meanwhile: a DELETE or a refusal
		// that landed during the failed call must win.
		c.ServedStale()
		x.status, x.lookup = csStale, lookupStale
		if fs := fleetStatus[x.fleet]; fs != "" {
			x.status = fs + ", " + x.status
		}
		return e.Value, nil
	case err != nil:
		x.status, x.lookup = csFailed, lookupMiss
		if fs := fleetStatus[x.fleet]; fs != "" {
			x.status = fs + ", " + x.status
		}
		return nil, err
	case how == cache.Collapsed:
		x.status, x.lookup = csCollapsed, lookupCollapsed
	case state == cache.Stale && how == cache.Stored:
		x.status, x.lookup = csRefreshed, lookupRefreshed
	case state == cache.Stale:
		x.status, x.lookup = csStaleNoStore, lookupRefreshed
	case how == cache.Stored:
		x.status, x.lookup = csStored, lookupMiss
	default:
		x.status, x.lookup = csNotStored, lookupMiss
	}
	if fs := fleetStatus[x.fleet]; fs != "" {
		x.status = fs + ", " + x.status
	}
	return v, nil
}

// loader returns the call that fills a miss: the fleet tier over the
// upstream when configured, else the upstream.
func (h *Handler) loader(x *exchange) cache.Loader[*record] { return h.loaderNoting(x, nil) }

// loaderNoting is loader; note, when not nil, learns how the fleet tier
// answered. (x itself must not escape: the hit path would allocate it.)
func (h *Handler) loaderNoting(x *exchange, note *fleet.Source) cache.Loader[*record] {
	if h.fleet != nil {
		return h.fleetLoader(x, x.now, note)
	}
	fetch := h.fetcher(x)
	id := x.id
	return func(ctx context.Context) (*record, time.Duration, error) {
		a, err := fetch(ctx)
		if err != nil {
			return nil, 0, err
		}
		return h.newRecord(id, a), h.ttls.FreshFor(a, h.now()), nil
	}
}

// refresher is loader for a background refresh of entry e: it reports to
// no request, and takes a shared decision only if it is newer than e.
func (h *Handler) refresher(x *exchange, e *cache.Entry[*record]) cache.Loader[*record] {
	if h.fleet != nil {
		return h.fleetLoader(x, e.FreshUntil(), nil)
	}
	return h.loader(x)
}

// fetcher returns the upstream call for one export with this request's
// forwarded headers. The headers are copied: the call may outlive the
// request (a shared call, or a background refresh).
func (h *Handler) fetcher(x *exchange) func(context.Context) (*decision.Answer, error) {
	fwd := make(http.Header, len(h.forward)+len(x.extra))
	for _, name := range h.forward {
		if v := x.r.Header[name]; len(v) > 0 {
			fwd[name] = append([]string(nil), v...)
		}
	}
	for i, v := range x.extra {
		fwd[h.perRequest[i].name] = []string{v}
	}
	id, reqID := x.id, x.reqID
	return func(ctx context.Context) (*decision.Answer, error) {
		a, res, err := h.upstream.Fetch(ctx, id, fwd, reqID)
		h.metrics.observeUpstream(res.Status, res.Duration, err)
		if err != nil {
			h.logger.Warn("upstream failure", zap.String("request_id", reqID), zap.String("export_id", id),
				zap.Int("upstream_status", res.Status), zap.Error(err))
			return nil, err
		}
		if res.BadSurrogateKeys > 0 {
			h.logger.Debug("surrogate keys ignored", zap.String("request_id", reqID), zap.String("export_id", id),
				zap.Int("ignored", res.BadSurrogateKeys))
		}
		return a, nil
	}
}

// finish writes an error envelope (README, "Responses") directly: an
// error returned from ServeHTTP would go to handle_errors instead of the
// client.
func (h *Handler) finish(x *exchange, v *decision.Verdict, retryAfter string) error {
	writeAPIError(x.w, x.r.Method == http.MethodHead, v, x.reqID, x.status, retryAfter)
	h.metrics.outcomes[v.Outcome].Inc()
	h.metrics.lookups[x.lookup].Inc()
	h.logRequest(x, v.Outcome)
	return nil
}

func (h *Handler) logRequest(x *exchange, o decision.Outcome) {
	traceOutcome(x.span, x.id, o.String())
	if ce := h.logger.Check(zap.DebugLevel, "export download"); ce != nil {
		id := x.id
		if len(id) > 64 {
			id = id[:64] // an invalid id is the caller's text: bound it
		}
		ce.Write(zap.String("request_id", x.reqID), zap.String("export_id", id), zap.String("outcome", o.String()),
			zap.String("cache", x.lookup.String()), zap.Float64("upstream_ms", float64(x.waited.Microseconds())/1000))
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
			// Every cache of this node first (other sites may hold the
			// export too): this node never answers from them again. Then
			// the fleet, still before the client sees its 2xx (each Redis
			// call is bounded; unreachable, it waits in the outbox).
			out := purgeCaches(context.WithoutCancel(r.Context()), purgeSelection{IDs: []string{id}})
			h.logger.Debug("export invalidated", zap.String("export_id", id), zap.Int("entries", out.Dropped),
				zap.Int("caches", out.Caches), zap.String("fleet", out.Fleet))
		},
	}
	err := next.ServeHTTP(sw, r)
	if err == nil && !sw.decided {
		// The next handler wrote nothing: the server answers 200 once the
		// chain returns, so this is still before the client sees it.
		sw.decide(http.StatusOK)
	}
	return err
}

// successWriter calls onSuccess when the final status is 2xx, before the
// status reaches the client: a client that sees its DELETE succeed and
// asks again at once must not get the dropped answer. Every way a status
// can leave (WriteHeader, Write, ReadFrom, Flush, or nothing written at
// all) passes through decide.
type successWriter struct {
	*caddyhttp.ResponseWriterWrapper
	onSuccess func()
	decided   bool
}

func (s *successWriter) decide(code int) {
	if !s.decided && code >= 200 {
		s.decided = true
		if code < 300 {
			s.onSuccess()
		}
	}
}

func (s *successWriter) WriteHeader(code int) {
	s.decide(code)
	s.ResponseWriterWrapper.WriteHeader(code)
}

func (s *successWriter) Write(b []byte) (int, error) {
	s.decide(http.StatusOK)
	return s.ResponseWriterWrapper.Write(b)
}

// ReadFrom is io.Copy's path: the wrapper's own would write to the client
// without a status passing through here.
func (s *successWriter) ReadFrom(r io.Reader) (int64, error) {
	s.decide(http.StatusOK)
	return s.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError sends an implicit 200, so it decides first;
// http.ResponseController finds it before unwrapping.
func (s *successWriter) FlushError() error {
	s.decide(http.StatusOK)
	return http.NewResponseController(s.ResponseWriterWrapper.ResponseWriter).Flush()
}

func (s *successWriter) Flush() { _ = s.FlushError() }
