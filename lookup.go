package exportdownload

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/upstream"
)

// A lookup goes through tiers, each wrapping the next: this node's cache
// (internal/cache), then the fleet's shared decisions when a fleet block
// is configured (the sharedTier of fleet.go, over Redis), then the
// application's metadata API (internal/upstream). lookupExport is the
// first tier; a fill asks the two below it for one miss.

// answeredBy is how the tiers answered one request. It gives the
// Cache-Status header, the cache_lookups_total label and the
// {http.export_download.cache} placeholder.
type answeredBy struct {
	local  localAnswer
	shared sharedAnswer
}

// localAnswer is the local cache's part of an answer.
type localAnswer uint8

const (
	localBypass             localAnswer = iota // no lookup: rules 1–2 of the decision table, or the cache off
	localHit                                   // a fresh entry
	localStale                                 // a stale entry served: the tiers below failed (RFC 5861)
	localStored                                // a miss, answered below and stored
	localNotStored                             // a miss, answered below; the answer is not cacheable
	localFailed                                // a miss; the tiers below failed
	localCollapsed                             // waited on another request's call
	localRefreshed                             // past freshness, answered below and stored
	localRefreshedNotStored                    // past freshness, answered below; not cacheable
	numLocalAnswers
)

// sharedAnswer is the shared tier's part of an answer (internal/fleet's
// Source, as fleet.go names it here).
type sharedAnswer uint8

const (
	sharedNotAsked    sharedAnswer = iota
	sharedHit                      // a valid shared decision
	sharedStored                   // this node asked the upstream and shared the answer
	sharedCollapsed                // waited on another node's upstream call and took its answer
	sharedFetched                  // this node asked the upstream and did not share the answer
	sharedUnavailable              // Redis failed: this node asked the upstream directly
	numSharedAnswers
)

// Cache-Status members (RFC 9211; docs/caching.md, "Caching"), and the
// cache_lookups_total label of each local answer.
var (
	localStatus = [numLocalAnswers]string{
		localBypass:             "export_download; fwd=bypass",
		localHit:                "export_download; hit",
		localStale:              "export_download; hit; detail=stale",
		localStored:             "export_download; fwd=miss; stored",
		localNotStored:          "export_download; fwd=miss; detail=not-cacheable",
		localFailed:             "export_download; fwd=miss; detail=upstream-error",
		localCollapsed:          "export_download; fwd=miss; collapsed",
		localRefreshed:          "export_download; fwd=stale; stored",
		localRefreshedNotStored: "export_download; fwd=stale; detail=not-cacheable",
	}
	sharedStatus = [numSharedAnswers]string{
		sharedHit:         "export_download_fleet; hit",
		sharedStored:      "export_download_fleet; fwd=miss; stored",
		sharedCollapsed:   "export_download_fleet; fwd=miss; collapsed",
		sharedFetched:     "export_download_fleet; fwd=miss",
		sharedUnavailable: "export_download_fleet; fwd=miss; detail=unavailable",
	}
	lookupLabels = [numLocalAnswers]string{
		localBypass: "bypass", localHit: "hit", localStale: "stale",
		localStored: "miss", localNotStored: "miss", localFailed: "miss",
		localCollapsed: "collapsed", localRefreshed: "refreshed", localRefreshedNotStored: "refreshed",
	}
)

// cacheStatuses and cacheWords hold every combination, built once: the
// hit path reads them without building a string or an `any`. RFC 9211
// lists caches from the origin's side, so the fleet's member comes first.
// The placeholder's word is the shared tier's when it gave the answer
// (fleet_hit, fleet_collapsed), else the local label.
var cacheStatuses, cacheWords = func() (st [numLocalAnswers][numSharedAnswers]string, words [numLocalAnswers][numSharedAnswers]any) {
	for l := range numLocalAnswers {
		for s := range numSharedAnswers {
			st[l][s], words[l][s] = localStatus[l], lookupLabels[l]
			if s != sharedNotAsked {
				st[l][s] = sharedStatus[s] + ", " + localStatus[l]
			}
			switch s {
			case sharedHit:
				words[l][s] = "fleet_hit"
			case sharedCollapsed:
				words[l][s] = "fleet_collapsed"
			}
		}
	}
	return st, words
}()

func (a answeredBy) cacheStatus() string { return cacheStatuses[a.local][a.shared] }
func (a answeredBy) label() string       { return lookupLabels[a.local] }
func (a answeredBy) word() any           { return cacheWords[a.local][a.shared] }

// lookupExport returns the answer for x's credential and export: from the
// local cache when fresh, else from the tiers below (one call per burst),
// else a stale answer if they failed. It notes in x how it was answered
// and the time spent below the local cache.
func (h *Handler) lookupExport(x *exchange) (*record, error) {
	ctx := x.r.Context()
	if h.caches == nil {
		start := time.Now()
		rec, _, err := h.newFill(x, x.now).load(ctx)
		x.asked, x.waited = true, time.Since(start)
		return rec, err
	}
	c := h.caches.decisions
	// Read before the lookup: a confirmation seen here covers invalidations
	// applied before it, so the lookup cannot find what they dropped.
	current := h.shared == nil || h.shared.current()
	e, state := c.PeekAt(x.key, x.now)
	if !current && (state == cache.Fresh || state == cache.Refresh) && !h.shared.recent(e.Value, x.now) {
		// The fleet has not confirmed lately that every invalidation
		// reached this node, and this answer is older than the bound: ask
		// again before answering from it, as for a stale entry
		// (docs/fleet.md, "Bounded staleness").
		state = cache.Stale
	}
	switch state {
	case cache.Fresh:
		x.by.local = localHit
		return e.Value, nil
	case cache.Refresh:
		// Only the shared decisions fresher than this entry may replace it.
		if c.RefreshAsync(x.key, e, linkRefresh(x.span, h.newFill(x, e.FreshUntil()).load)) {
			h.metrics.refreshes.Inc()
		}
		x.by.local = localHit
		return e.Value, nil
	}
	f := h.newFill(x, x.now)
	start := time.Now()
	v, how, err := c.Load(ctx, x.key, f.load)
	x.asked, x.waited = true, time.Since(start)
	if ctx.Err() == nil {
		// Load returned with the call's result, so f.load has ended (if it
		// ran: a collapsed request's never does). A client that left may
		// have left while it still runs.
		x.by.shared = f.shared
	}
	switch {
	case err != nil && ctx.Err() != nil:
		// The client left: serve nothing, count nothing as an outage.
		x.by.local = localFailed
		return nil, err
	case err != nil && state == cache.Stale && c.Holds(x.key, e):
		// Only if nothing dropped it meanwhile: a DELETE or a refusal
		// that landed during the failed call must win.
		c.ServedStale()
		x.by.local = localStale
		return e.Value, nil
	case err != nil:
		x.by.local = localFailed
		return nil, err
	case how == cache.Collapsed:
		x.by.local = localCollapsed
	case state == cache.Stale && how == cache.Stored:
		x.by.local = localRefreshed
	case state == cache.Stale:
		x.by.local = localRefreshedNotStored
	case how == cache.Stored:
		x.by.local = localStored
	default:
		x.by.local = localNotStored
	}
	return v, nil
}

// fill asks the tiers below the local cache about one export, for one
// request's miss or one entry's refresh. It copies what it needs from the
// request: the call may outlive it (a shared call, a background refresh).
type fill struct {
	h        *Handler
	id       string
	reqID    string
	cred     [32]byte     // the credential digest of the cache key
	fwd      http.Header  // the forwarded headers and expanded upstream_header values
	minFresh time.Time    // a shared decision is taken only if fresh past it
	shared   sharedAnswer // how the shared tier answered; written by load
}

func (h *Handler) newFill(x *exchange, minFresh time.Time) *fill {
	fwd := make(http.Header, len(h.forward)+len(x.extra))
	for _, name := range h.forward {
		if name == "Authorization" {
			fwd[name] = []string{bearerPrefix + x.apiKey} // the spelling the cache key digests
		} else if v := x.r.Header[name]; len(v) > 0 {
			fwd[name] = append([]string(nil), v...)
		}
	}
	for i, v := range x.extra {
		fwd[h.perRequest[i].name] = []string{v}
	}
	return &fill{h: h, id: x.id, reqID: x.reqID, cred: x.key.Cred, fwd: fwd, minFresh: minFresh}
}

// load is the local cache's Loader: the shared tier over the upstream
// when a fleet is configured, else the upstream. The record keeps when its
// answer was decided, for the bound on staleness.
func (f *fill) load(ctx context.Context) (*record, time.Duration, error) {
	h := f.h
	if h.shared == nil {
		decided := h.now()
		a, ttl, err := f.ask(ctx)
		if err != nil {
			return nil, 0, err
		}
		return h.newRecord(f.id, a, decided), ttl, nil
	}
	res, err := h.shared.load(ctx, f.id, f.cred, f.minFresh, h.refusedAt(f.cred), f.ask)
	f.shared = res.by
	if err != nil {
		return nil, 0, err
	}
	rec := h.newRecord(f.id, res.answer, res.decided)
	// Tagged with the credential's fleet name: another node's refusal of
	// it (an event that can only name it) finds this entry.
	rec.answer.SurrogateKeys = append(rec.answer.SurrogateKeys[:len(rec.answer.SurrogateKeys):len(rec.answer.SurrogateKeys)], h.shared.tagOf(f.cred))
	return rec, res.ttl, nil
}

// ask is the last tier: one upstream call, and how long its answer stays
// fresh here (0: not cacheable).
func (f *fill) ask(ctx context.Context) (*decision.Answer, time.Duration, error) {
	h := f.h
	a, res, err := h.upstream.Fetch(ctx, f.id, f.fwd, f.reqID)
	h.metrics.observeUpstream(res.Status, res.Duration, err)
	if err != nil {
		h.logger.Warn("upstream failure", zap.String("request_id", f.reqID), zap.String("export_id", f.id),
			zap.Int("upstream_status", res.Status), zap.Error(err))
		return nil, 0, err
	}
	// A purge of a tag it could not keep would miss the entry: served, not
	// cached (nor shared).
	if res.BadSurrogateKeys > 0 {
		h.logger.Warn("answer not cached: a surrogate key an entry cannot keep", zap.String("request_id", f.reqID),
			zap.String("export_id", f.id), zap.Int("unkeepable", res.BadSurrogateKeys))
		return a, 0, nil
	}
	if res.TagsCut > 0 {
		h.logger.Warn("answer not cached: more surrogate keys than an entry keeps", zap.String("request_id", f.reqID),
			zap.String("export_id", f.id), zap.Int("tags", len(a.SurrogateKeys)+res.TagsCut), zap.Int("limit", upstream.MaxSurrogateKeys))
		return a, 0, nil
	}
	return a, h.ttls.FreshFor(a, h.now()), nil
}

// refusedAt is when this node last saw the credential refused (a 401/403
// dropped its entries), or zero: no shared decision made before it is
// taken, so a revoked key is not brought back by Redis.
func (h *Handler) refusedAt(cred [32]byte) time.Time {
	if h.caches != nil {
		if at, ok := h.caches.decisions.RefusedAt(cred); ok {
			return at
		}
	}
	return time.Time{}
}
