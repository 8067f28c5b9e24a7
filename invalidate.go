package exportdownload

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/route"
	"github.com/exportedge/caddy-export-download/internal/upstream"
)

// Invalidation, four ways in: a DELETE on invalidate_path that the
// application answers 2xx (serveUnsafe), an application answer to an
// unsafe request that names cache groups to invalidate (RFC 9875,
// serveUnsafe too), the admin API's purge (adminapi.go), and the fleet's
// invalidation stream (fleet.go). Each drops entries with dropLocal; the
// first three go through purge, which also publishes to the fleet before
// the client gets its answer.

// serveUnsafe passes a DELETE, POST, PUT or PATCH on and watches its
// answer: a 2xx to a DELETE on invalidate_path drops every cached answer
// of that export, and a 2xx carrying Cache-Group-Invalidation purges those
// groups (surrogate keys), here and on every node of the fleet, before the
// status reaches the client.
func (h *Handler) serveUnsafe(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.caches == nil {
		return next.ServeHTTP(w, r)
	}
	var id string
	if r.Method == http.MethodDelete {
		if raw, ok := h.invalidate.Match(r.URL.Path); ok {
			id, _ = route.ParseID(raw)
		}
	}
	sw := &successWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	sw.onSuccess = func() { h.invalidateAnswered(r, id, sw.Header()) }
	err := next.ServeHTTP(sw, r)
	if err == nil && !sw.decided {
		// The next handler wrote nothing: the server answers 200 once the
		// chain returns, so this is still before the client sees it.
		sw.decide(http.StatusOK)
	}
	return err
}

// maxInvalidationGroups bounds the groups one in-band invalidation purges
// by name; past it, it purges everything.
const maxInvalidationGroups = 10_000

// invalidateAnswered purges what a successful unsafe request invalidates:
// export id (when it was a DELETE on invalidate_path) and the groups its
// answer names in Cache-Group-Invalidation.
func (h *Handler) invalidateAnswered(r *http.Request, id string, answer http.Header) {
	var sel purgeSelection
	if id != "" {
		sel.IDs = []string{id}
	}
	groups, invalid, cut := upstream.CacheGroups(answer.Values("Cache-Group-Invalidation"), maxInvalidationGroups)
	sel.Tags = groups
	if invalid > 0 {
		// Not surrogate keys: no cached answer can carry them.
		h.logger.Debug("cache groups ignored", zap.String("method", r.Method), zap.Int("ignored", invalid))
	}
	if cut > 0 {
		// More than one invalidation should name: drop everything rather
		// than leave answers of the groups past the bound served.
		h.logger.Warn("Cache-Group-Invalidation names too many groups: purging every entry",
			zap.String("method", r.Method), zap.Int("groups", len(groups)+cut), zap.Int("limit", maxInvalidationGroups))
		sel = purgeSelection{All: true}
	}
	if len(sel.IDs) == 0 && len(sel.Tags) == 0 && !sel.All {
		return
	}
	// Every cache of this node first (other sites may hold them too): this
	// node never answers from them again. Then the fleet, still before the
	// client sees its 2xx (each Redis call is bounded; unreachable, it
	// waits in the outbox).
	out := purge(context.WithoutCancel(r.Context()), sel)
	h.logger.Debug("invalidated", zap.Strings("export_ids", sel.IDs), zap.Strings("cache_groups", firstN(sel.Tags, 16)),
		zap.Int("entries", out.Dropped), zap.Int("caches", out.Caches), zap.String("fleet", out.Fleet))
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
	// Creds are credential digests the application refused: each one's
	// entries, for every export, are dropped.
	Creds [][32]byte
}

// The rules of a purge's selection: the admin API's and the CLI's, so that
// the CLI refuses a mistake before sending anything and both say the same
// thing, each in its own words.

// maxPurgeValues bounds each list of a purge.
const maxPurgeValues = 10_000

// purgeWords names the parts of a purge in an error message, as the
// admin API's JSON fields or as the CLI's flags.
type purgeWords struct {
	ids, keys string                                    // the lists: "export_ids", "--id"
	all       string                                    // "all" alone: `"all"`, "--all"
	allOn     string                                    // asking for all: `"all": true`, "--all"
	many      func(list string) string                  // a list counted: "export_ids", "--id values"
	value     func(list string, i int, v string) string // a list's value i, quoted: `export_ids[1]: "nope"`, `--id "nope"`
}

// checkPurge checks a purge's selection: export ids, surrogate keys, or
// all, the last alone, each list at most maxPurgeValues long. It returns
// the ids in canonical form (route.ParseID) and both lists without
// duplicates; an error names the mistake in w's words.
func checkPurge(ids, keys []string, all bool, w purgeWords) (checkedIDs, checkedKeys []string, err error) {
	switch {
	case all && (len(ids) > 0 || len(keys) > 0):
		return nil, nil, fmt.Errorf("%s purges everything: name no %s or %s with it", w.all, w.ids, w.keys)
	case all:
		return nil, nil, nil
	case len(ids) == 0 && len(keys) == 0:
		return nil, nil, fmt.Errorf("nothing to purge: name %s, %s, or %s", w.ids, w.keys, w.allOn)
	case len(ids) > maxPurgeValues:
		return nil, nil, fmt.Errorf("too many %s: %d, at most %d per request", w.many(w.ids), len(ids), maxPurgeValues)
	case len(keys) > maxPurgeValues:
		return nil, nil, fmt.Errorf("too many %s: %d, at most %d per request", w.many(w.keys), len(keys), maxPurgeValues)
	}
	seen := make(map[string]bool, len(ids)+len(keys))
	for i, s := range ids {
		id, ok := route.ParseID(s)
		if !ok {
			return nil, nil, fmt.Errorf("%s is not an export id (a UUID, e.g. 01935abc-def0-7123-4567-890abcdef012)", w.value(w.ids, i, s))
		}
		if !seen[id] {
			seen[id] = true
			checkedIDs = append(checkedIDs, id)
		}
	}
	clear(seen)
	for i, k := range keys {
		if !upstream.ValidSurrogateKey(k) {
			return nil, nil, fmt.Errorf("%s is not a surrogate key (1 to %d bytes of visible ASCII, no spaces)", w.value(w.keys, i, k), upstream.MaxSurrogateKeyLen)
		}
		if !seen[k] {
			seen[k] = true
			checkedKeys = append(checkedKeys, k)
		}
	}
	return checkedIDs, checkedKeys, nil
}

// purgeOutcome is what a purge did on this node.
type purgeOutcome struct {
	Dropped int    // local entries dropped, over every cache
	Caches  int    // decision caches visited
	Fleet   string // "off" (no fleet tier), "published", or "queued" (Redis unreachable: sent when it answers)
}

// purge drops what sel names from every decisions cache of this process
// (each config and site that shares one), tells every fleet this process
// belongs to, then drops again: a fill that raced the invalidation may
// have stored the old answer meanwhile (one it read from Redis before the
// new generation was written). The pools are only read under their locks:
// the drops and the Redis calls run outside them, so a reload does not wait
// for a purge (nor a purge for a reload).
func purge(ctx context.Context, sel purgeSelection) purgeOutcome {
	caches := collect[*pooledDecisions](decisionCaches)
	out := purgeOutcome{Caches: len(caches)}
	for _, d := range caches {
		out.Dropped += dropLocal(d.value.Cache, sel)
	}
	out.Fleet = publish(ctx, sel)
	if out.Fleet != "off" {
		for _, d := range caches {
			out.Dropped += dropLocal(d.value.Cache, sel)
		}
	}
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
	for _, cred := range sel.Creds {
		n += c.InvalidateCredential(cred)
	}
	return n
}
