package exportdownload

import (
	"context"
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/route"
)

// Invalidation, three ways in: a DELETE that the application answers 2xx
// (serveDelete), the admin API's purge (adminapi.go) and the fleet's
// invalidation stream (fleet.go). Each drops entries with dropLocal; the
// first two then publish to the fleet (purge).

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
			out := purge(context.WithoutCancel(r.Context()), purgeSelection{IDs: []string{id}})
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

// purge drops what sel names from every decisions cache of this process
// (each config and site that shares one), then tells every fleet this
// process belongs to. The pools are only read under their locks: the
// drops and the Redis calls run outside them, so a reload does not wait
// for a purge (nor a purge for a reload).
func purge(ctx context.Context, sel purgeSelection) purgeOutcome {
	caches := collect[*pooledDecisions](decisionCaches)
	out := purgeOutcome{Caches: len(caches)}
	for _, d := range caches {
		out.Dropped += dropLocal(d.value.Cache, sel)
	}
	out.Fleet = publish(ctx, sel)
	return out
}

// dropLocal drops what sel names from one cache. It costs what it drops,
// except for All.
func dropLocal(c *cache.Cache[*record], sel purgeSelection) int {
	if sel.All {
		return c.PurgeAll()
	}
	n := 0
	for _, id := range sel.IDs {
		n += c.InvalidateID(id)
	}
	if len(sel.Tags) > 0 {
		n += c.PurgeTags(sel.Tags...)
	}
	return n
}
