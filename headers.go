package exportdownload

import (
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// The headers of an upstream call: Authorization and the forward_header
// names come from the client's request; upstream_header values are the
// edge's own, fixed or filled per request from placeholders. Every header
// that differs per request is part of the cache key (handler.go).

// provisionHeaders sets the canonical forward_header list (Authorization
// first) and the upstream_header values that hold request placeholders,
// and returns the fixed upstream_header values and every header name that
// the upstream client passes per request.
func (h *Handler) provisionHeaders() (fixed http.Header, perRequest []string) {
	h.forward = []string{"Authorization"}
	for _, name := range h.ForwardHeader {
		name = http.CanonicalHeaderKey(name)
		if name != "Authorization" {
			h.forward = append(h.forward, name)
		}
	}
	fixed = http.Header{}
	perRequest = slices.Clone(h.forward)
	for _, name := range slices.Sorted(maps.Keys(h.UpstreamHeader)) {
		v := h.UpstreamHeader[name]
		if hasRequestPlaceholder(v) {
			// Expanded per request and passed like a forwarded header.
			name = http.CanonicalHeaderKey(name)
			h.perRequest = append(h.perRequest, perRequestHeader{name: name, value: v})
			perRequest = append(perRequest, name)
			continue
		}
		fixed.Set(name, v)
	}
	return fixed, perRequest
}

// validateHeaders checks forward_header, upstream_header and
// surrogate_key_header: a header that would replace the caller's
// credential, do nothing, or forward what the client claims about itself
// is refused.
func (h *Handler) validateHeaders(errs *configErrors) {
	forwarded := map[string]bool{"Authorization": true}
	for _, name := range h.ForwardHeader {
		at, canon := where{sub: "forward_header", item: name}, http.CanonicalHeaderKey(name)
		switch {
		case !validHeaderName(name):
			errs.add(at, "%q is not a valid header name", name)
		case clientAddressHeaders[canon]:
			// What the client claims about its own address: an app that
			// restricts keys by IP would trust it.
			errs.add(at, "%s is the client's own claim about its address; send the connection's with upstream_header %s {client_ip}", canon, canon)
		case canon == "Host" || canon == "X-Request-Id" || canon == "Traceparent" || canon == "Tracestate":
			errs.add(at, "%s is set by the edge, not forwarded", canon)
		}
		forwarded[canon] = true
	}
	for _, name := range slices.Sorted(maps.Keys(h.UpstreamHeader)) {
		v, canon := h.UpstreamHeader[name], http.CanonicalHeaderKey(name)
		at := where{sub: "upstream_header", item: name}
		switch {
		case !validHeaderName(name):
			errs.add(at, "%q is not a valid header name", name)
		case canon == "Authorization":
			// It would replace every caller's credential: the app would
			// then grant every export to any well-formed key.
			errs.add(at, "Authorization is the caller's credential and is always forwarded; authenticate the edge with a header of its own (e.g. X-Edge-Token)")
		case forwarded[canon]:
			errs.add(at, "%s is a forward_header: a fixed value would replace the caller's", canon)
		case canon == "Host" || canon == "X-Request-Id":
			errs.add(at, "%s is set by the edge and cannot be replaced", canon)
		case strings.ContainsAny(v, "\r\n\x00"):
			errs.add(at, "the value of %s must be one line", name)
		}
		if bad := unknownPlaceholder(v); bad != "" {
			errs.add(at, "the value of %s holds {%s}, which is neither a global placeholder ({env.*}, {file.*}) nor a request one ({http.*}, e.g. {http.vars.client_ip})", name, bad)
		}
	}
	if h.SurrogateKeyHeader != "" && !validHeaderName(h.SurrogateKeyHeader) {
		errs.add(where{sub: "surrogate_key_header"}, "%q is not a valid header name", h.SurrogateKeyHeader)
	}
}

// clientAddressHeaders carry a client's claim about its own address.
var clientAddressHeaders = map[string]bool{"X-Forwarded-For": true, "X-Real-Ip": true, "Forwarded": true, "True-Client-Ip": true, "X-Client-Ip": true}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// perRequestHeader is an upstream_header whose value holds request
// placeholders.
type perRequestHeader struct{ name, value string }

// expandUpstreamHeaders fills the request placeholders of upstream_header
// values with this request's values; nil when there are none.
func (h *Handler) expandUpstreamHeaders(r *http.Request) []string {
	if len(h.perRequest) == 0 {
		return nil
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	out := make([]string, len(h.perRequest))
	for i, p := range h.perRequest {
		// A request's values are its own text: keep the header one line.
		out[i] = strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == 0 {
				return -1
			}
			return r
		}, repl.ReplaceAll(p.value, ""))
	}
	return out
}

// Placeholders come in three kinds here: the templates' own {id} and
// {export.<field>}; Caddy's global ones ({env.*}, {file.*}, …), expanded
// once at provision; and request ones ({http.*}), which only
// upstream_header values may hold, expanded per request.

// hasCaddyPlaceholder reports whether s holds a {…} that is Caddy's, not
// one of the templates' own {id} and {export.<field>}.
func hasCaddyPlaceholder(s string) bool {
	for p := range placeholders(s) {
		if isGlobalPlaceholder(p) {
			return true
		}
	}
	return false
}

// isGlobalPlaceholder reports whether name is one that caddy.NewReplacer()
// knows without a request, so that Provision expands it. Anything else, a
// typo like {exportid} or a request placeholder like {http.request.uri.path}
// (what the Caddyfile shorthand {path} becomes), is rejected while adapting.
func isGlobalPlaceholder(name string) bool {
	for _, prefix := range [...]string{"env.", "file.", "system.", "time."} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// hasRequestPlaceholder reports whether s holds a request placeholder
// ({http.*}), which only a request can fill.
func hasRequestPlaceholder(s string) bool {
	for p := range placeholders(s) {
		if strings.HasPrefix(p, "http.") {
			return true
		}
	}
	return false
}

// unknownPlaceholder returns the first placeholder of an upstream_header
// value that is neither global nor a request one, or "".
func unknownPlaceholder(s string) string {
	for p := range placeholders(s) {
		if !isGlobalPlaceholder(p) && !strings.HasPrefix(p, "http.") {
			return p
		}
	}
	return ""
}

// placeholders yields the names inside {…} in s.
func placeholders(s string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for {
			open := strings.IndexByte(s, '{')
			if open < 0 {
				return
			}
			end := strings.IndexByte(s[open:], '}')
			if end < 0 {
				return
			}
			if !yield(s[open+1 : open+end]) {
				return
			}
			s = s[open+end+1:]
		}
	}
}
