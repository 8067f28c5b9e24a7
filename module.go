// Package exportdownload is a Caddy HTTP handler that answers
// GET /v1/exports/{id}/download at the edge: it checks the caller's API key
// and the export's status through the application's metadata API (cached),
// then redirects to a presigned S3 URL. See README.md.
package exportdownload

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/presign"
	"github.com/exportedge/caddy-export-download/internal/route"
	"github.com/exportedge/caddy-export-download/internal/tmpl"
	"github.com/exportedge/caddy-export-download/internal/upstream"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Version is sent in the upstream User-Agent.
const Version = "0.1.0"

// Defaults, as the README's configuration reference lists them.
const (
	defaultPath            = "/v1/exports/{id}/download"
	defaultUpstreamPath    = "/v1/exports/{id}"
	defaultUpstreamTimeout = 2 * time.Second
	defaultRegion          = "us-east-1"
	defaultPresignExpiry   = 15 * time.Minute
	defaultFilename        = "export-{id}.csv"
	defaultContentType     = "text/csv"
	defaultInvalidatePath  = "/v1/exports/{id}"
	defaultMaxEntries      = 100_000
	defaultStaleIfError    = 10 * time.Minute

	defaultSurrogateKeyHeader = "Surrogate-Key"
)

// Handler answers export downloads at the edge. Requests that do not match
// Path with GET or HEAD go to the next handler untouched.
type Handler struct {
	// Path is the download path; it must hold {id} as a whole segment.
	// Default: /v1/exports/{id}/download
	Path string `json:"path,omitempty"`

	// Upstream is the base URL of the application's metadata API, such as
	// http://127.0.0.1:9080; it may carry a path prefix, but no query,
	// fragment or user info. Required.
	Upstream string `json:"upstream,omitempty"`

	// UpstreamPath is the "Get export" path on the upstream; {id} must fill
	// one whole path segment. Default: /v1/exports/{id}
	UpstreamPath string `json:"upstream_path,omitempty"`

	// UpstreamTimeout bounds each upstream call. Default: 2s
	UpstreamTimeout caddy.Duration `json:"upstream_timeout,omitempty"`

	// UpstreamHeader holds extra headers sent on every upstream call, such
	// as a shared secret under a name of its own (X-Edge-Token). A value may
	// hold request placeholders, e.g. {http.vars.client_ip} (Caddyfile:
	// {client_ip}), expanded per request and then part of the cache key.
	// Authorization, Host, X-Request-Id and forward_header names are
	// refused: they would replace the caller's credential or do nothing.
	// Default: none
	UpstreamHeader map[string]string `json:"upstream_header,omitempty"`

	// ForwardHeader lists client request headers passed to the upstream and
	// hashed into the cache key, in addition to Authorization, which is
	// always forwarded. Headers that claim the client's address
	// (X-Forwarded-For, X-Real-IP, Forwarded), trace context and Host are
	// refused: use upstream_header X-Real-IP {client_ip} instead.
	// Default: Authorization only
	ForwardHeader []string `json:"forward_header,omitempty"`

	// KeyPrefixes, when set, are the only API key prefixes accepted
	// (e.g. hb_live_ hb_test_); other keys get 401 without an upstream
	// call. Default: any key
	KeyPrefixes []string `json:"key_prefixes,omitempty"`

	// Bucket is the S3 bucket, a name or a template with {id} and
	// {export.<field>}. Required.
	Bucket string `json:"bucket,omitempty"`

	// ObjectKey is the object key template, e.g.
	// exports/{export.project_id}/{id}.csv. Required.
	ObjectKey string `json:"object_key,omitempty"`

	// Region is the S3 signing region. Default: us-east-1
	Region string `json:"region,omitempty"`

	// Endpoint is an S3-compatible endpoint URL. Default: AWS S3
	Endpoint string `json:"endpoint,omitempty"`

	// PathStyle puts the bucket in the URL path instead of the host name
	// (most S3-compatible stores need it). Default: false
	PathStyle bool `json:"path_style,omitempty"`

	// AccessKeyID, SecretAccessKey and SessionToken are static signing
	// credentials. Default: the AWS default credential chain (environment,
	// shared config, web identity, ECS/EC2 roles)
	AccessKeyID     string `json:"access_key_id,omitempty"`
	SecretAccessKey string `json:"secret_access_key,omitempty"`
	SessionToken    string `json:"session_token,omitempty"`

	// PresignExpiry is the longest lifetime of a presigned URL, from 1s to
	// 7 days; shorter when the export or the credentials expire sooner.
	// Default: 15m
	PresignExpiry caddy.Duration `json:"presign_expiry,omitempty"`

	// Filename is the download's file name template (Content-Disposition).
	// Default: export-{id}.csv
	Filename string `json:"filename,omitempty"`

	// ContentType is the download's Content-Type. Default: text/csv
	ContentType string `json:"content_type,omitempty"`

	// OnUpstreamError is "error" (503 SERVICE_UNAVAILABLE when nothing stale
	// can be served) or "passthrough" (hand the request to the next
	// handler). Default: error
	OnUpstreamError string `json:"on_upstream_error,omitempty"`

	// InvalidatePath is where a DELETE that passes through and gets a 2xx
	// drops every cached answer for that export on this node; {id} must
	// fill one whole path segment. Default: /v1/exports/{id}
	InvalidatePath string `json:"invalidate_path,omitempty"`

	// Cache configures the edge cache. Default: on, with the defaults of
	// each CacheConfig field
	Cache *CacheConfig `json:"cache,omitempty"`

	// SurrogateKeyHeader names the upstream response header whose
	// space-separated tags are kept with a cached answer, so that an
	// operator can purge every answer of a tag (README, "Operating the
	// cache"). At most 16 tags of 128 bytes each are kept per answer.
	// Default: Surrogate-Key
	SurrogateKeyHeader string `json:"surrogate_key_header,omitempty"`

	// Fleet shares decisions and invalidations with every node of the
	// fleet through Redis or Valkey (README, "Running a fleet"). Default:
	// off (node-local cache only)
	Fleet *FleetConfig `json:"fleet,omitempty"`

	// Runtime state.
	path, invalidate  route.Template
	bucket, key, file tmpl.Template
	forward           []string // canonical names, Authorization first
	perRequest        []perRequestHeader
	templateFields    []string // the export fields the templates name
	maxTTL            time.Duration
	fleet             *fleetTier
	fleetMetrics      *fleetMetrics
	upstream          *upstream.Client
	presigner         *presign.Presigner
	caches            *caches
	ttls              decision.TTLs
	passthrough       bool
	metrics           *metrics
	logger            *zap.Logger
	now               func() time.Time
}

// CacheConfig is the `cache` block.
type CacheConfig struct {
	// Disabled turns caching off: every request asks the upstream and
	// presigns (Caddyfile: `cache off`). Default: false
	Disabled bool `json:"disabled,omitempty"`

	// MaxEntries bounds the answers kept (and, separately, the presigned
	// URLs kept). Default: 100000
	MaxEntries int `json:"max_entries,omitempty"`

	// TTL is the fresh lifetime per outcome: completed, pending,
	// processing (also unknown statuses), failed, expired, not_found,
	// unauthorized. 0 means "do not cache". Defaults: completed 5m,
	// pending 1s, processing 1s, failed 30s, expired 5m, not_found 5s,
	// unauthorized 5s
	TTL map[string]caddy.Duration `json:"ttl,omitempty"`

	// StaleIfError is how long past freshness an answer may still be
	// served while the upstream fails (RFC 5861). 0 disables. Default: 10m
	StaleIfError *caddy.Duration `json:"stale_if_error,omitempty"`

	// PresignReuse is how long one presigned URL is reused per object
	// (never more than a third of its lifetime). 0 disables.
	// Default: a third of presign_expiry
	PresignReuse *caddy.Duration `json:"presign_reuse,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.export_download",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision expands global placeholders ({env.*}, …), applies defaults,
// and builds the upstream client, the presigner, the caches and the
// metrics. The caches come from a pool, so they survive config reloads.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	h.expandPlaceholders()
	h.setDefaults()
	if err := h.Validate(); err != nil {
		return err
	}
	h.path, _ = route.Parse(h.Path) // checked by Validate
	h.invalidate, _ = route.Parse(h.InvalidatePath)
	h.bucket, _ = tmpl.Parse(h.Bucket)
	h.key, _ = tmpl.Parse(h.ObjectKey)
	h.file, _ = tmpl.Parse(h.Filename)
	h.passthrough = h.OnUpstreamError == "passthrough"
	h.templateFields = []string{} // none named: the upstream keeps none
	for _, t := range []tmpl.Template{h.bucket, h.key, h.file} {
		for _, f := range t.Fields() {
			if !slices.Contains(h.templateFields, f) {
				h.templateFields = append(h.templateFields, f)
			}
		}
	}

	h.forward = []string{"Authorization"}
	for _, name := range h.ForwardHeader {
		name = http.CanonicalHeaderKey(name)
		if name != "Authorization" {
			h.forward = append(h.forward, name)
		}
	}
	extra := http.Header{}
	sent := slices.Clone(h.forward)
	for _, name := range slices.Sorted(maps.Keys(h.UpstreamHeader)) {
		v := h.UpstreamHeader[name]
		if hasRequestPlaceholder(v) {
			// Expanded per request and passed like a forwarded header.
			name = http.CanonicalHeaderKey(name)
			h.perRequest = append(h.perRequest, perRequestHeader{name: name, value: v})
			sent = append(sent, name)
			continue
		}
		extra.Set(name, v)
	}
	var err error
	h.upstream, err = upstream.New(upstream.Config{
		BaseURL:            h.Upstream,
		Path:               h.UpstreamPath,
		Timeout:            time.Duration(h.UpstreamTimeout),
		Headers:            extra,
		Forward:            sent,
		UserAgent:          "caddy-export-download/" + Version,
		SurrogateKeyHeader: h.SurrogateKeyHeader,
		Fields:             h.templateFields,
	})
	if err != nil {
		return err
	}
	h.presigner, err = presign.New(ctx, presign.Config{
		Region:          h.Region,
		Endpoint:        h.Endpoint,
		PathStyle:       h.PathStyle,
		AccessKeyID:     h.AccessKeyID,
		SecretAccessKey: h.SecretAccessKey,
		SessionToken:    h.SessionToken,
		Expiry:          time.Duration(h.PresignExpiry),
	})
	if err != nil {
		return err
	}
	h.ttls = decision.DefaultTTLs()
	for name, d := range h.Cache.TTL {
		c, _ := decision.ParseClass(name) // checked by Validate
		h.ttls[c] = time.Duration(d)
	}
	h.maxTTL = slices.Max(h.ttls[:])
	if h.metrics, err = newMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	fleetKey := ""
	if h.Fleet != nil && !h.Cache.Disabled {
		if h.fleetMetrics, err = newFleetMetrics(ctx.GetMetricsRegistry()); err != nil {
			return err
		}
		if h.fleet, fleetKey, err = loadFleet(h); err != nil {
			return err
		}
		h.fleet.client.SetObserver(h.fleetMetrics)
		h.fleetMetrics.Up(h.fleet.client.Up())
	}
	if !h.Cache.Disabled {
		if h.caches, err = loadCaches(h, fleetKey); err != nil {
			return err
		}
		if h.fleet != nil {
			h.fleet.subscribe(h, h.caches.decisions)
		}
	}
	h.logger.Info("export_download provisioned",
		zap.String("path", h.Path),
		zap.String("upstream", h.Upstream+h.UpstreamPath),
		zap.Duration("upstream_timeout", time.Duration(h.UpstreamTimeout)),
		zap.Strings("forward_header", h.forward),
		zap.String("bucket", h.Bucket),
		zap.String("object_key", h.ObjectKey),
		zap.String("region", h.Region),
		zap.String("endpoint", h.Endpoint),
		zap.Bool("static_credentials", h.AccessKeyID != ""),
		zap.Duration("presign_expiry", time.Duration(h.PresignExpiry)),
		zap.String("on_upstream_error", h.OnUpstreamError),
		zap.Bool("cache", !h.Cache.Disabled),
		zap.Int("max_entries", h.Cache.MaxEntries),
		zap.Bool("fleet", h.fleet != nil),
	)
	return nil
}

// expandPlaceholders replaces Caddy's global placeholders ({env.*},
// {file.*}, …) once; {id} and {export.*} are not Caddy's and stay for the
// templates.
func (h *Handler) expandPlaceholders() {
	repl := caddy.NewReplacer()
	for _, s := range []*string{&h.Path, &h.Upstream, &h.UpstreamPath, &h.Bucket, &h.ObjectKey, &h.Region,
		&h.Endpoint, &h.AccessKeyID, &h.SecretAccessKey, &h.SessionToken, &h.Filename, &h.ContentType, &h.InvalidatePath} {
		*s = repl.ReplaceKnown(*s, "")
	}
	if len(h.UpstreamHeader) > 0 {
		expanded := make(map[string]string, len(h.UpstreamHeader))
		for k, v := range h.UpstreamHeader {
			expanded[k] = repl.ReplaceKnown(v, "")
		}
		h.UpstreamHeader = expanded
	}
	for i, p := range h.KeyPrefixes {
		h.KeyPrefixes[i] = repl.ReplaceKnown(p, "")
	}
	if h.Fleet != nil {
		h.Fleet.expand(repl)
	}
}

func (h *Handler) setDefaults() {
	if h.Path == "" {
		h.Path = defaultPath
	}
	if h.UpstreamPath == "" {
		h.UpstreamPath = defaultUpstreamPath
	}
	if h.UpstreamTimeout == 0 {
		h.UpstreamTimeout = caddy.Duration(defaultUpstreamTimeout)
	}
	if h.Region == "" {
		h.Region = defaultRegion
	}
	if h.PresignExpiry == 0 {
		h.PresignExpiry = caddy.Duration(defaultPresignExpiry)
	}
	if h.Filename == "" {
		h.Filename = defaultFilename
	}
	if h.ContentType == "" {
		h.ContentType = defaultContentType
	}
	if h.OnUpstreamError == "" {
		h.OnUpstreamError = "error"
	}
	if h.InvalidatePath == "" {
		h.InvalidatePath = defaultInvalidatePath
	}
	if h.SurrogateKeyHeader == "" {
		h.SurrogateKeyHeader = defaultSurrogateKeyHeader
	}
	if h.Fleet != nil {
		h.Fleet.setDefaults()
	}
	if h.Cache == nil {
		h.Cache = new(CacheConfig)
	}
	if h.Cache.MaxEntries == 0 {
		h.Cache.MaxEntries = defaultMaxEntries
	}
	if h.Cache.StaleIfError == nil {
		d := caddy.Duration(defaultStaleIfError)
		h.Cache.StaleIfError = &d
	}
	if h.Cache.PresignReuse == nil {
		d := h.PresignExpiry / 3
		h.Cache.PresignReuse = &d
	}
}

// Validate checks the configuration; each message names the subdirective.
// It only reads fields, so it also runs on a config that was not
// provisioned.
func (h *Handler) Validate() error { return h.validate(true) }

// validate checks the configuration. Before provision (expanded false, as
// when parsing a Caddyfile), a value holding a global placeholder such as
// {env.S3_ENDPOINT} cannot be checked yet and is left to Provision.
func (h *Handler) validate(expanded bool) error {
	var errs []error
	known := func(s string) bool { return expanded || !hasCaddyPlaceholder(s) }
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("export_download: %s: %s", name, fmt.Sprintf(format, args...)))
	}
	if h.Upstream == "" {
		bad("upstream", "required")
	} else if known(h.Upstream) {
		if err := upstream.CheckBaseURL(h.Upstream); err != nil {
			bad("upstream", "%v", err)
		}
	}
	if h.Bucket == "" {
		bad("bucket", "required")
	} else if _, err := tmpl.Parse(h.Bucket); err != nil && known(h.Bucket) {
		bad("bucket", "%v", err)
	}
	if h.ObjectKey == "" {
		bad("object_key", "required")
	} else if _, err := tmpl.Parse(h.ObjectKey); err != nil && known(h.ObjectKey) {
		bad("object_key", "%v", err)
	}
	if h.Filename != "" {
		if _, err := tmpl.Parse(h.Filename); err != nil && known(h.Filename) {
			bad("filename", "%v", err)
		}
	}
	for _, p := range [...]struct{ name, value string }{{"path", h.Path}, {"upstream_path", h.UpstreamPath}, {"invalidate_path", h.InvalidatePath}} {
		if p.value != "" && known(p.value) {
			if _, err := route.Parse(p.value); err != nil {
				bad(p.name, "%q %v", p.value, err)
			}
		}
	}
	if h.UpstreamTimeout < 0 {
		bad("upstream_timeout", "must be positive")
	}
	if h.PresignExpiry < 0 {
		bad("presign_expiry", "must be positive")
	} else if time.Duration(h.PresignExpiry) > presign.MaxLifetime {
		bad("presign_expiry", "%v is over SigV4's 7 days", time.Duration(h.PresignExpiry))
	} else if h.PresignExpiry != 0 && time.Duration(h.PresignExpiry) < time.Second {
		bad("presign_expiry", "must be at least 1s")
	}
	if h.Endpoint != "" && known(h.Endpoint) {
		if u, err := url.Parse(h.Endpoint); err != nil {
			bad("endpoint", "must be an http:// or https:// URL with a host")
		} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("endpoint", "%q must be an http:// or https:// URL with a host", u.Redacted())
		} else if u.User != nil || strings.ContainsAny(h.Endpoint, "?#") {
			bad("endpoint", "%q must not hold user info, a query or a fragment", u.Redacted())
		}
	}
	if (h.AccessKeyID == "") != (h.SecretAccessKey == "") {
		bad("access_key_id", "access_key_id and secret_access_key go together")
	}
	if h.SessionToken != "" && h.AccessKeyID == "" {
		bad("session_token", "needs access_key_id and secret_access_key")
	}
	if strings.ContainsAny(h.ContentType, "\r\n") {
		bad("content_type", "must be one line")
	}
	switch h.OnUpstreamError {
	case "", "error", "passthrough":
	default:
		bad("on_upstream_error", "%q is not error or passthrough", h.OnUpstreamError)
	}
	forwarded := map[string]bool{"Authorization": true}
	for _, name := range h.ForwardHeader {
		canon := http.CanonicalHeaderKey(name)
		switch {
		case !validHeaderName(name):
			bad("forward_header", "%q is not a valid header name", name)
		case clientAddressHeaders[canon]:
			// What the client claims about its own address: an app that
			// restricts keys by IP would trust it.
			bad("forward_header", "%s is the client's own claim about its address; send the connection's with upstream_header %s {client_ip}", canon, canon)
		case canon == "Host" || canon == "X-Request-Id" || canon == "Traceparent" || canon == "Tracestate":
			bad("forward_header", "%s is set by the edge, not forwarded", canon)
		}
		forwarded[canon] = true
	}
	for _, name := range slices.Sorted(maps.Keys(h.UpstreamHeader)) {
		v, canon := h.UpstreamHeader[name], http.CanonicalHeaderKey(name)
		switch {
		case !validHeaderName(name):
			bad("upstream_header", "%q is not a valid header name", name)
		case canon == "Authorization":
			// It would replace every caller's credential: the app would
			// then grant every export to any well-formed key.
			bad("upstream_header", "Authorization is the caller's credential and is always forwarded; authenticate the edge with a header of its own (e.g. X-Edge-Token)")
		case forwarded[canon]:
			bad("upstream_header", "%s is a forward_header: a fixed value would replace the caller's", canon)
		case canon == "Host" || canon == "X-Request-Id":
			bad("upstream_header", "%s is set by the edge and cannot be replaced", canon)
		case strings.ContainsAny(v, "\r\n\x00"):
			bad("upstream_header", "the value of %s must be one line", name)
		}
		if bad := unknownPlaceholder(v); bad != "" {
			errs = append(errs, fmt.Errorf("export_download: upstream_header: the value of %s holds {%s}, which is neither a global placeholder ({env.*}, {file.*}) nor a request one ({http.*}, e.g. {http.vars.client_ip})", name, bad))
		}
	}
	if h.Fleet != nil {
		errs = append(errs, h.Fleet.validate(known)...)
	}
	if h.SurrogateKeyHeader != "" && !validHeaderName(h.SurrogateKeyHeader) {
		bad("surrogate_key_header", "%q is not a valid header name", h.SurrogateKeyHeader)
	}
	for _, p := range h.KeyPrefixes {
		if p == "" || strings.ContainsAny(p, " \t\r\n") {
			bad("key_prefixes", "%q is not a usable prefix", p)
		}
	}
	if c := h.Cache; c != nil {
		if c.MaxEntries < 0 {
			bad("max_entries", "must be positive")
		}
		for name, d := range c.TTL {
			if _, err := decision.ParseClass(name); err != nil {
				bad("ttl", "%v", err)
			} else if d < 0 {
				bad("ttl", "%s: must not be negative", name)
			}
		}
		if c.StaleIfError != nil && *c.StaleIfError < 0 {
			bad("stale_if_error", "must not be negative")
		}
		if c.PresignReuse != nil && *c.PresignReuse < 0 {
			bad("presign_reuse", "must not be negative")
		}
	}
	return errors.Join(errs...)
}

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

// clientAddressHeaders carry a client's claim about its own address.
var clientAddressHeaders = map[string]bool{"X-Forwarded-For": true, "X-Real-Ip": true, "Forwarded": true, "True-Client-Ip": true, "X-Client-Ip": true}

// perRequestHeader is an upstream_header whose value holds request
// placeholders.
type perRequestHeader struct{ name, value string }

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

// Cleanup releases this config's hold on the caches and closes the
// upstream client's idle connections. It is safe after a failed Provision.
// It changes no field: requests of this config may still be finishing
// (Caddy drains the old servers after cleaning the old config up).
func (h *Handler) Cleanup() error {
	if h.fleet != nil {
		h.fleet.close()
	}
	if h.caches != nil {
		h.caches.release()
	}
	if h.upstream != nil {
		h.upstream.Close()
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
