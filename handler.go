package exportdownload

import (
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/presign"
	"github.com/exportedge/caddy-export-download/internal/requestid"
	"github.com/exportedge/caddy-export-download/internal/route"
)

// exchange is one download request's state, carried through its steps.
type exchange struct {
	w      http.ResponseWriter
	r      *http.Request
	reqID  string
	apiKey string        // the caller's API key, as the key rule read it
	id     string        // the export id: lowercased once it is valid
	extra  []string      // upstream_header values expanded for this request
	key    cache.Key     // the credential digest and the id: computed once, with the cache on
	now    time.Time     // read once: the clock is slow on some hosts
	by     answeredBy    // how the tiers answered (lookup.go)
	asked  bool          // the lookup went below the local cache
	waited time.Duration // time spent below the local cache (or on another's call)
	rec    *record       // the answer, once there is one
	span   trace.Span    // the request's span when tracing records; else nil
}

// ServeHTTP answers GET and HEAD on the download path; it passes every
// other request on untouched, watching the answers to unsafe requests for
// invalidations (invalidate.go). The steps, in order: path → API key → id → cached or
// upstream answer (lookup.go) → decision → presigned URL → response.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodDelete, http.MethodPost, http.MethodPut, http.MethodPatch:
		return h.serveUnsafe(w, r, next)
	default:
		return next.ServeHTTP(w, r)
	}
	rawID, ok := h.path.Match(r.URL.Path)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	x := &exchange{w: w, r: r, reqID: requestid.FromHeader(r.Header.Get("X-Request-Id")), id: rawID, span: requestSpan(r)}
	if x.apiKey, ok = h.apiKey(r.Header); !ok {
		return h.finish(x, decision.BadKey, "")
	}
	if x.id, ok = route.ParseID(rawID); !ok {
		x.id = rawID
		return h.finish(x, decision.BadID, "")
	}
	x.extra = h.expandUpstreamHeaders(r)
	if h.caches != nil {
		x.key = h.cacheKey(x)
	}

	x.now = h.now()
	rec, err := h.lookupExport(x)
	traceLookup(x.span, x.id, x.by.label())
	if err != nil {
		if r.Context().Err() != nil {
			// The client went away while waiting: not an outage, and
			// nobody reads an answer.
			h.logger.Debug("client gone while waiting for the upstream", zap.String("request_id", x.reqID), zap.String("export_id", x.id))
			return nil
		}
		if h.passthrough {
			h.count(x, decision.Passthrough)
			return next.ServeHTTP(w, r)
		}
		return h.finish(x, decision.Down, "1")
	}
	x.rec = rec

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
	h.redirect(x, signed)
	return nil
}

// apiKeyOK applies the first rule of the decision table (docs/configuration.md,
// "Error responses").
func (h *Handler) apiKeyOK(hdr http.Header) bool {
	_, ok := h.apiKey(hdr)
	return ok
}

// apiKey applies the first rule of that decision table and returns
// the key: one Authorization header, scheme Bearer in any case (RFC 9110
// §11.1), a non-empty key without blanks, and one of key_prefixes.
func (h *Handler) apiKey(hdr http.Header) (string, bool) {
	vals := hdr["Authorization"]
	if len(vals) != 1 {
		return "", false
	}
	v := vals[0]
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	key := strings.TrimLeft(v[len(scheme):], " ")
	if key == "" {
		return "", false
	}
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] == 0x7f {
			return "", false
		}
	}
	if len(h.KeyPrefixes) == 0 {
		return key, true
	}
	for _, p := range h.KeyPrefixes {
		if strings.HasPrefix(key, p) {
			return key, true
		}
	}
	return "", false
}

// bearerPrefix starts the one spelling of a key's credential that the
// cache key digests and the app receives: "bearer K", "BEARER  K" and
// "Bearer K" are one credential, so a refusal of one drops them all.
const bearerPrefix = "Bearer "

// cacheKey digests the forwarded credential headers and the request's
// expanded upstream_header values with the id; the buffer lives on the
// stack for any usual key.
func (h *Handler) cacheKey(x *exchange) cache.Key {
	var buf [512]byte
	b := buf[:0]
	for _, name := range h.forward {
		b = append(b, name...)
		b = append(b, ':')
		if name == "Authorization" {
			// One spelling per key (bearerPrefix).
			b = append(b, bearerPrefix...)
			b = append(b, x.apiKey...)
			b = append(b, 0)
		} else {
			for _, v := range x.r.Header[name] {
				b = append(b, v...)
				b = append(b, 0)
			}
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

// redirect writes the 302 to the presigned URL.
func (h *Handler) redirect(x *exchange, signed *presign.Signed) {
	vals := &[6]string{signed.URL, x.reqID, "private, no-store", "no-referrer", x.by.cacheStatus(), "0"}
	setEach(x.w.Header(), redirectHeaders[:], vals[:])
	x.w.WriteHeader(http.StatusFound)
	h.answered(x, decision.Redirect)
}

// finish writes an error envelope (docs/configuration.md, "Responses") directly: an
// error returned from ServeHTTP would go to handle_errors instead of the
// client.
func (h *Handler) finish(x *exchange, v *decision.Verdict, retryAfter string) error {
	writeAPIError(x.w, x.r.Method == http.MethodHead, v, x.reqID, x.by.cacheStatus(), retryAfter)
	h.answered(x, v.Outcome)
	return nil
}

// answered records what a request this handler answered got: its
// placeholders, then the metrics and the log line that every request gets.
func (h *Handler) answered(x *exchange, o decision.Outcome) {
	if repl, _ := x.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); repl != nil {
		repl.Set(placeholderOutcome, outcomeWords[o])
		repl.Set(placeholderCache, x.by.word())
		if x.rec != nil {
			repl.Set(placeholderExportID, (*exportIDOf)(x.rec)) // a pointer: no allocation
		} else {
			repl.Set(placeholderExportID, boundedID(x.id))
		}
		if x.asked {
			repl.Set(placeholderUpstreamMS, milliseconds(x.waited))
		}
	}
	h.count(x, o)
}

// count updates the metrics and writes the per-request log line.
func (h *Handler) count(x *exchange, o decision.Outcome) {
	h.metrics.outcomes[o].Inc()
	h.metrics.lookups[x.by.local].Inc()
	traceOutcome(x.span, x.id, o.String())
	if ce := h.logger.Check(zap.DebugLevel, "export download"); ce != nil {
		ce.Write(zap.String("request_id", x.reqID), zap.String("export_id", boundedID(x.id)), zap.String("outcome", o.String()),
			zap.String("cache", x.by.label()), zap.Float64("upstream_ms", milliseconds(x.waited)))
	}
}

// The request placeholders this handler sets (listed in Handler's doc).
const (
	placeholderOutcome    = "http.export_download.outcome"
	placeholderExportID   = "http.export_download.export_id"
	placeholderCache      = "http.export_download.cache"
	placeholderUpstreamMS = "http.export_download.upstream_ms"
)

// outcomeWords are the outcome placeholder's values, made `any` once: a
// string made `any` while serving would cost an allocation per request.
// An invalid id is "bad_request" (docs/configuration.md, "Request
// placeholders"; its metric label is invalid_request).
var outcomeWords = [...]any{
	decision.Redirect: "redirect", decision.NotReady: "not_ready", decision.Expired: "expired",
	decision.NotFound: "not_found", decision.Unauthorized: "unauthorized", decision.InvalidRequest: "bad_request",
	decision.RateLimited: "rate_limited", decision.Unavailable: "unavailable", decision.InternalError: "internal_error",
}

// exportIDOf is a record seen as its export id: the export_id placeholder
// holds a pointer to it, which costs nothing, and the text is made only
// when something (an access log line) reads it.
type exportIDOf record

func (r *exportIDOf) String() string { return (*record)(r).exportID() }

// boundedID is an export id for a log line or a placeholder: an invalid
// id is the caller's text, so it is cut to 64 bytes.
func boundedID(id string) string { return id[:min(len(id), 64)] }

func milliseconds(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
