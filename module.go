// Package exportdownload is a Caddy HTTP handler that answers
// GET /v1/exports/{id}/download at the edge: it checks the caller's API key
// and the export's status through the application's metadata API (cached),
// then redirects to a presigned S3 URL. See README.md.
package exportdownload

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/fleet"
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

// Defaults, as docs/configuration.md's "Configuration reference" lists them.
const (
	defaultPath            = "/v1/exports/{id}/download"
	defaultUpstreamPath    = "/v1/exports/{id}"
	defaultUpstreamTimeout = 2 * time.Second
	defaultRegion          = "us-east-1"
	defaultPresignExpiry   = 15 * time.Minute
	defaultFilename        = "export-{id}.csv"
	defaultContentType     = "text/csv"
	defaultInvalidatePath  = "/v1/exports/{id}"

	defaultSurrogateKeyHeader = "Surrogate-Key"
)

// Handler answers export downloads at the edge. Requests that do not match
// Path with GET or HEAD go to the next handler untouched.
//
// This handler sets the following placeholders on every request it
// answers (not on those it passes on), for the access log (log_append) or
// later handlers:
//
// Placeholder | Description
// ------------|-------------
// `{http.export_download.outcome}` | What the request got, one word: `redirect`, `not_ready`, `expired`, `not_found`, `unauthorized`, `bad_request` (an invalid id), `rate_limited`, `unavailable` or `internal_error`
// `{http.export_download.export_id}` | The export id of the path, lowercased (an invalid one as sent, cut to 64 bytes)
// `{http.export_download.cache}` | How it was answered: `hit`, `miss`, `stale`, `collapsed` (waited on another request's call), `refreshed` (past freshness, asked again), `bypass` (no lookup: the key rule, an invalid id, or the cache off), `fleet_hit` or `fleet_collapsed` (the fleet's shared decision)
// `{http.export_download.upstream_ms}` | Milliseconds spent below the local cache (the fleet and the upstream); unset when the local cache answered
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
	// (X-Forwarded-For, X-Real-IP, Forwarded, True-Client-IP, X-Client-IP),
	// Host, X-Request-Id and trace context are refused: use upstream_header
	// X-Real-IP {client_ip} instead.
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
	// drops every cached answer for that export on this node (on every node
	// with a fleet block); {id} must
	// fill one whole path segment. Default: /v1/exports/{id}
	InvalidatePath string `json:"invalidate_path,omitempty"`

	// Cache configures the edge cache. Default: on, with the defaults of
	// each CacheConfig field
	Cache *CacheConfig `json:"cache,omitempty"`

	// SurrogateKeyHeader names the upstream response header whose
	// space-separated tags are kept with a cached answer, so that an
	// operator can purge every answer of a tag (README, "Operating the
	// cache"). An answer with a tag over 128 bytes or outside visible ASCII,
	// or with more than 16 tags (with those of Cache-Groups), is served but
	// not cached: a purge of that tag could not find it.
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
	shared            *sharedTier // the fleet's shared decisions; nil: no fleet (fleet.go)
	upstream          *upstream.Client
	presigner         *presign.Presigner
	caches            *caches
	ttls              decision.TTLs
	passthrough       bool
	metrics           *metrics
	logger            *zap.Logger
	now               func() time.Time
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
	h.passthrough = h.OnUpstreamError == "passthrough"
	h.provisionTemplates()
	fixed, perRequest := h.provisionHeaders()
	var err error
	h.upstream, err = upstream.New(upstream.Config{
		BaseURL:            h.Upstream,
		Path:               h.UpstreamPath,
		Timeout:            time.Duration(h.UpstreamTimeout),
		Headers:            fixed,
		Forward:            perRequest,
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
	h.ttls, h.maxTTL = h.Cache.lifetimes()
	if h.metrics, err = newMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if !h.Cache.Disabled {
		// The tiers under the request (lookup.go): the fleet's shared
		// decisions, when configured, then this node's caches over them.
		fleetKey, client := "", (*fleet.Client)(nil)
		if h.Fleet != nil {
			if h.shared, fleetKey, err = h.Fleet.provision(ctx, h); err != nil {
				return err
			}
			client = h.shared.client
		}
		if h.caches, err = h.Cache.provision(h, fleetKey, client); err != nil {
			return err
		}
		if h.shared != nil {
			h.shared.subscribe(h.caches.decisions)
		}
	}
	h.logger.Info("export_download provisioned",
		zap.String("path", h.Path), zap.String("upstream", h.Upstream+h.UpstreamPath),
		zap.Duration("upstream_timeout", time.Duration(h.UpstreamTimeout)), zap.Strings("forward_header", h.forward),
		zap.String("bucket", h.Bucket), zap.String("object_key", h.ObjectKey),
		zap.String("region", h.Region), zap.String("endpoint", h.Endpoint),
		zap.Bool("static_credentials", h.AccessKeyID != ""), zap.Duration("presign_expiry", time.Duration(h.PresignExpiry)),
		zap.String("on_upstream_error", h.OnUpstreamError), zap.Bool("cache", !h.Cache.Disabled),
		zap.Int("max_entries", h.Cache.MaxEntries), zap.Bool("fleet", h.shared != nil),
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
	for _, d := range [...]struct {
		field *string
		value string
	}{
		{&h.Path, defaultPath}, {&h.UpstreamPath, defaultUpstreamPath}, {&h.Region, defaultRegion},
		{&h.Filename, defaultFilename}, {&h.ContentType, defaultContentType}, {&h.OnUpstreamError, "error"},
		{&h.InvalidatePath, defaultInvalidatePath}, {&h.SurrogateKeyHeader, defaultSurrogateKeyHeader},
	} {
		if *d.field == "" {
			*d.field = d.value
		}
	}
	if h.UpstreamTimeout == 0 {
		h.UpstreamTimeout = caddy.Duration(defaultUpstreamTimeout)
	}
	if h.PresignExpiry == 0 {
		h.PresignExpiry = caddy.Duration(defaultPresignExpiry)
	}
	if h.Fleet != nil {
		h.Fleet.setDefaults()
	}
	if h.Cache == nil {
		h.Cache = new(CacheConfig)
	}
	h.Cache.setDefaults(h.PresignExpiry)
}

// Validate checks the configuration; each message names the subdirective.
// It only reads fields, so it also runs on a config that was not
// provisioned.
func (h *Handler) Validate() error { return h.validate(true) }

// validate checks the configuration. Before provision (expanded false, as
// when parsing a Caddyfile), a value holding a global placeholder such as
// {env.S3_ENDPOINT} cannot be checked yet and is left to Provision. Every
// mistake is a *configError, so the Caddyfile adapter can say where it was
// written (caddyfile.go).
func (h *Handler) validate(expanded bool) error {
	var errs configErrors
	known := func(s string) bool { return expanded || !hasCaddyPlaceholder(s) }
	at := func(sub string) where { return where{sub: sub} }
	if h.Upstream == "" {
		errs.add(at("upstream"), "required")
	} else if known(h.Upstream) {
		if err := upstream.CheckBaseURL(h.Upstream); err != nil {
			errs.add(at("upstream"), "%v", err)
		}
	}
	for _, t := range [...]struct {
		name, value string
		required    bool
	}{{"bucket", h.Bucket, true}, {"object_key", h.ObjectKey, true}, {"filename", h.Filename, false}} {
		if t.value == "" {
			if t.required {
				errs.add(at(t.name), "required")
			}
		} else if _, err := tmpl.Parse(t.value); err != nil && known(t.value) {
			errs.add(at(t.name), "%v", err)
		}
	}
	for _, p := range [...]struct{ name, value string }{{"path", h.Path}, {"upstream_path", h.UpstreamPath}, {"invalidate_path", h.InvalidatePath}} {
		if p.value != "" && known(p.value) {
			if _, err := route.Parse(p.value); err != nil {
				errs.add(at(p.name), "%q %v", p.value, err)
			}
		}
	}
	if h.UpstreamTimeout < 0 {
		errs.add(at("upstream_timeout"), "must be positive")
	}
	if h.PresignExpiry < 0 {
		errs.add(at("presign_expiry"), "must be positive")
	} else if time.Duration(h.PresignExpiry) > presign.MaxLifetime {
		errs.add(at("presign_expiry"), "%v is over SigV4's 7 days", time.Duration(h.PresignExpiry))
	} else if h.PresignExpiry != 0 && time.Duration(h.PresignExpiry) < time.Second {
		errs.add(at("presign_expiry"), "must be at least 1s")
	}
	if h.Endpoint != "" && known(h.Endpoint) {
		if u, err := url.Parse(h.Endpoint); err != nil {
			errs.add(at("endpoint"), "must be an http:// or https:// URL with a host")
		} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs.add(at("endpoint"), "%q must be an http:// or https:// URL with a host", u.Redacted())
		} else if u.User != nil || strings.ContainsAny(h.Endpoint, "?#") {
			errs.add(at("endpoint"), "%q must not hold user info, a query or a fragment", u.Redacted())
		}
	}
	if (h.AccessKeyID == "") != (h.SecretAccessKey == "") {
		given := "access_key_id"
		if h.AccessKeyID == "" {
			given = "secret_access_key"
		}
		errs.add(at(given), "access_key_id and secret_access_key go together")
	}
	if h.SessionToken != "" && h.AccessKeyID == "" {
		errs.add(at("session_token"), "needs access_key_id and secret_access_key")
	}
	if strings.ContainsAny(h.ContentType, "\r\n") {
		errs.add(at("content_type"), "must be one line")
	}
	switch h.OnUpstreamError {
	case "", "error", "passthrough":
	default:
		errs.add(at("on_upstream_error"), "%q is not error or passthrough", h.OnUpstreamError)
	}
	for _, p := range h.KeyPrefixes {
		if p == "" || strings.ContainsAny(p, " \t\r\n") {
			errs.add(where{sub: "key_prefixes", item: p}, "%q is not a usable prefix", p)
		}
	}
	h.validateHeaders(&errs)
	if h.Cache != nil {
		h.Cache.validate(&errs)
	}
	if h.Fleet != nil {
		h.Fleet.validate(&errs, known)
	}
	return errors.Join(errs...)
}

// Cleanup releases this config's hold on the caches and closes the
// upstream client's idle connections. It is safe after a failed Provision.
// It changes no field: requests of this config may still be finishing
// (Caddy drains the old servers after cleaning the old config up).
func (h *Handler) Cleanup() error {
	h.shared.close()
	if h.caches != nil {
		h.caches.release()
	}
	if h.upstream != nil {
		h.upstream.Close()
	}
	return nil
}

// Interface guards of the package.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
	_ caddy.AdminRouter           = (*adminAPI)(nil)
	_ caddy.Provisioner           = (*adminAPI)(nil)
	_ io.ReaderFrom               = (*successWriter)(nil)
	_ http.Flusher                = (*successWriter)(nil)
	_ caddy.Destructor            = (*pooledDecisions)(nil)
	_ caddy.Destructor            = (*pooledURLs)(nil)
	_ caddy.Destructor            = pooledFleet{}
	_ fleet.Observer              = (*fleetMetrics)(nil)
	_ fmt.Stringer                = (*exportIDOf)(nil)
)
