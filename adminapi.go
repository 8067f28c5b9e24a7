package exportdownload

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/fleet"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the operator's controls of export_download on Caddy's
// admin endpoint (README, "Operating the cache"):
//
//	GET  /export_download/stats   every decisions cache of this process
//	POST /export_download/purge   drop entries by export id, surrogate key, or all
//
// It has no access control of its own: it inherits the admin endpoint's
// (the Host and Origin checks of the local endpoint, and the mTLS and
// per-path permissions of remote admin). Keep the admin endpoint on
// localhost or a Unix socket, or behind remote admin.
type adminAPI struct {
	log *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.export_download",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision gets the admin logger.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	// An admin router is not in a config's module tree, so it names
	// itself, as Caddy's own admin.api.pki does.
	a.log = ctx.Logger(a)
	return nil
}

// adminEndpointBase is the prefix of every route of this module.
const adminEndpointBase = "/export_download/"

// Paths under adminEndpointBase.
const (
	adminStatsPath = adminEndpointBase + "stats"
	adminPurgePath = adminEndpointBase + "purge"
)

// Bounds of a purge request: a body beyond maxPurgeBody gets 413, a list
// longer than maxPurgeValues gets 400. An invalid value is quoted in the
// error up to maxQuotedValue bytes.
const (
	maxPurgeBody   = 1 << 20
	maxQuotedValue = 64
)

// Routes returns the admin routes, all under adminEndpointBase.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: adminEndpointBase,
		Handler: caddy.AdminHandlerFunc(a.serveAdmin),
	}}
}

func (a *adminAPI) serveAdmin(w http.ResponseWriter, r *http.Request) error {
	switch r.URL.Path {
	case adminStatsPath:
		if err := allowMethod(w, r, http.MethodGet); err != nil {
			return err
		}
		return writeAdminJSON(w, statsOf(cachesStats()))
	case adminPurgePath:
		if err := allowMethod(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.handlePurge(w, r)
	}
	return caddy.APIError{
		HTTPStatus: http.StatusNotFound,
		Err:        fmt.Errorf("resource not found: %s", r.URL.Path),
	}
}

// statsResponse is the answer of GET /export_download/stats.
type statsResponse struct {
	// Caches lists every decisions cache of this process, sorted by name;
	// sites whose settings agree share one.
	Caches []cacheStats `json:"caches"`
}

// cacheStats is one decisions cache. The counters count since the cache
// was created: it outlives config reloads that keep its settings.
type cacheStats struct {
	Name        string     `json:"name"` // a digest of the settings that share the cache
	Entries     int        `json:"entries"`
	Hits        int64      `json:"hits"`
	Misses      int64      `json:"misses"`
	Collapsed   int64      `json:"collapsed"`      // requests that waited on another's upstream call
	StaleServed int64      `json:"stale_served"`   // stale answers served while the upstream failed
	Tags        int        `json:"surrogate_keys"` // distinct surrogate keys held
	Fleet       fleetStats `json:"fleet"`
}

// fleetStats is the fleet tier's state for one cache. It is an object so
// that it can grow fields without breaking clients.
type fleetStats struct {
	State string `json:"state"` // "off" without the fleet tier, else "up" (reading the invalidation stream) or "down"
	// The fleet client's counters (lookups, invalidations, outbox), inline.
	*fleet.Stats
}

func fleetStateOf(s *fleet.Stats) fleetStats {
	switch {
	case s == nil:
		return fleetStats{State: "off"}
	case s.Up:
		return fleetStats{State: "up", Stats: s}
	}
	return fleetStats{State: "down", Stats: s}
}

func statsOf(reports []cacheReport) statsResponse {
	out := statsResponse{Caches: make([]cacheStats, 0, len(reports))}
	for _, r := range reports {
		out.Caches = append(out.Caches, cacheStats{
			Name:        r.Name,
			Entries:     r.Entries,
			Hits:        r.Hits,
			Misses:      r.Misses,
			Collapsed:   r.Collapsed,
			StaleServed: r.StaleServed,
			Tags:        r.Tags,
			Fleet:       fleetStateOf(r.Fleet),
		})
	}
	return out
}

// purgeRequest is the body of POST /export_download/purge: export ids,
// surrogate keys, or all, the last alone.
type purgeRequest struct {
	ExportIDs     []string `json:"export_ids,omitempty"`
	SurrogateKeys []string `json:"surrogate_keys,omitempty"`
	All           bool     `json:"all,omitempty"`
}

// purgeResponse is the answer of POST /export_download/purge.
type purgeResponse struct {
	Dropped int `json:"dropped"` // entries dropped on this node
	Caches  int `json:"caches"`  // decisions caches visited on this node
	// Fleet is "off" (no fleet tier: this node only), "published" (on the
	// invalidation stream, for every node) or "queued" (Redis unreachable:
	// published when it answers).
	Fleet string `json:"fleet"`
}

func (a *adminAPI) handlePurge(w http.ResponseWriter, r *http.Request) error {
	sel, err := readPurgeRequest(w, r)
	if err != nil {
		return err
	}
	out := purge(r.Context(), sel)
	a.log.Info("purge",
		zap.Bool("all", sel.All),
		zap.Int("export_ids", len(sel.IDs)),
		zap.Strings("export_ids_first", firstN(sel.IDs, 10)),
		zap.Int("surrogate_keys", len(sel.Tags)),
		zap.Strings("surrogate_keys_first", firstN(sel.Tags, 10)),
		zap.Int("dropped", out.Dropped),
		zap.Int("caches", out.Caches),
		zap.String("fleet", out.Fleet),
	)
	return writeAdminJSON(w, purgeResponse{Dropped: out.Dropped, Caches: out.Caches, Fleet: out.Fleet})
}

// readPurgeRequest decodes and checks a purge body. It wants
// Content-Type application/json, as Caddy's /load does: a browser cannot
// send that cross-origin without a preflight, which the admin endpoint
// refuses. Errors are caddy.APIErrors.
func readPurgeRequest(w http.ResponseWriter, r *http.Request) (purgeSelection, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		w.Header().Set("Accept-Post", "application/json")
		return purgeSelection{}, badRequest(http.StatusUnsupportedMediaType,
			"Content-Type must be application/json, got %q", clip(r.Header.Get("Content-Type")))
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxPurgeBody))
	req, err := decodePurgeRequest(dec)
	if err != nil {
		return purgeSelection{}, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return purgeSelection{}, bodyError(err)
		}
		return purgeSelection{}, badRequest(http.StatusBadRequest, "invalid JSON body: data after the object")
	}
	return req.selection()
}

// decodePurgeRequest reads the body's object member by member: a member
// name must be one of purgeRequest's exactly and come once. (encoding/json
// alone would take "ALL" for "all", and keep the last of a repeated member,
// so the ids of the first would never be purged.)
func decodePurgeRequest(dec *json.Decoder) (purgeRequest, error) {
	var req purgeRequest
	tok, err := dec.Token()
	switch {
	case err != nil:
		return req, bodyError(err)
	case tok == nil:
		return req, nil // null names nothing: selection says so
	case tok != json.Delim('{'):
		return req, badRequest(http.StatusBadRequest, "invalid JSON body: want an object, got %s", jsonKindOf(tok))
	}
	seen := make(map[string]bool, 3)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return req, bodyError(unexpectedEnd(err))
		}
		name, _ := tok.(string) // a member name: the decoder yields nothing else here
		if seen[name] {
			return req, badRequest(http.StatusBadRequest, "invalid JSON body: %q given twice", clip(name))
		}
		seen[name] = true
		var dst any
		var kind string
		switch name {
		case "export_ids":
			dst, kind = &req.ExportIDs, "a list of strings"
		case "surrogate_keys":
			dst, kind = &req.SurrogateKeys, "a list of strings"
		case "all":
			dst, kind = &req.All, "true or false"
		default:
			return req, badRequest(http.StatusBadRequest, "invalid JSON body: unknown field %q", clip(name))
		}
		if err := dec.Decode(dst); err != nil {
			var wrongType *json.UnmarshalTypeError
			if errors.As(err, &wrongType) {
				return req, badRequest(http.StatusBadRequest, "invalid JSON body: %s wants %s, got %s", name, kind, wrongType.Value)
			}
			return req, bodyError(unexpectedEnd(err))
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return req, bodyError(unexpectedEnd(err))
	}
	return req, nil
}

// selection checks req and returns what it names, ids in canonical form
// and without duplicates (the rules the CLI applies too: checkPurge).
func (req purgeRequest) selection() (purgeSelection, error) {
	ids, keys, err := checkPurge(req.ExportIDs, req.SurrogateKeys, req.All, apiWords)
	if err != nil {
		return purgeSelection{}, badRequest(http.StatusBadRequest, "%v", err)
	}
	return purgeSelection{IDs: ids, Tags: keys, All: req.All}, nil
}

// apiWords are the admin API's words: its JSON members, a value quoted up
// to maxQuotedValue bytes.
var apiWords = purgeWords{
	ids: "export_ids", keys: "surrogate_keys", all: `"all"`, allOn: `"all": true`,
	many:  func(list string) string { return list },
	value: func(list string, i int, v string) string { return fmt.Sprintf("%s[%d]: %q", list, i, clip(v)) },
}

// bodyError turns a reading or syntax error into the API error the client
// gets; what it quotes of the body is bounded.
func bodyError(err error) error {
	var tooBig *http.MaxBytesError
	var syntax *json.SyntaxError
	switch {
	case errors.As(err, &tooBig):
		return badRequest(http.StatusRequestEntityTooLarge, "body larger than %d bytes", tooBig.Limit)
	case errors.Is(err, io.EOF):
		return badRequest(http.StatusBadRequest, "empty body: want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest(http.StatusBadRequest, "invalid JSON body: unexpected end")
	case errors.As(err, &syntax):
		return badRequest(http.StatusBadRequest, "invalid JSON body: %s", clip(syntax.Error()))
	}
	return badRequest(http.StatusBadRequest, "invalid JSON body: %s", clip(err.Error()))
}

// unexpectedEnd is err, except that the body's end inside the object is an
// unexpected one.
func unexpectedEnd(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// jsonKindOf names what a JSON token is, in JSON's words.
func jsonKindOf(tok json.Token) string {
	switch tok.(type) {
	case json.Delim:
		return "array"
	case string:
		return "string"
	case bool:
		return "bool"
	}
	return "number"
}

func badRequest(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

// allowMethod answers 405 with Allow unless r's method is method.
func allowMethod(w http.ResponseWriter, r *http.Request, method string) error {
	if r.Method == method {
		return nil
	}
	w.Header().Set("Allow", method)
	return caddy.APIError{
		HTTPStatus: http.StatusMethodNotAllowed,
		Err:        fmt.Errorf("method not allowed: %s (allowed: %s)", clip(r.Method), method),
	}
}

func writeAdminJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
	return nil
}

// clip bounds a client's value quoted back in an error or a log.
func clip(s string) string {
	if len(s) <= maxQuotedValue {
		return s
	}
	return s[:maxQuotedValue] + "..."
}

func firstN(s []string, n int) []string { return s[:min(len(s), n)] }
