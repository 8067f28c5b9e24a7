package exportdownload

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("export_download", parseCaddyfile)
	// In front of reverse_proxy, so no global `order` is needed.
	httpcaddyfile.RegisterDirectiveOrder("export_download", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	export_download [<matcher>] {
//	    path              /v1/exports/{id}/download
//	    upstream          <base URL>                     # required
//	    upstream_path     /v1/exports/{id}
//	    upstream_timeout  2s
//	    upstream_header   <name> <value>                 # repeatable
//	    forward_header    <name>                         # repeatable; Authorization always
//	    key_prefixes      <prefix...>
//	    bucket            <name or template>             # required
//	    object_key        <template>                     # required
//	    region            <region>                       # default us-east-1
//	    endpoint          <URL>
//	    path_style
//	    access_key_id     <id>
//	    secret_access_key <secret>
//	    session_token     <token>
//	    presign_expiry    15m
//	    filename          <template>                     # default export-{id}.csv
//	    content_type      <type>                         # default text/csv
//	    on_upstream_error error|passthrough
//	    invalidate_path   /v1/exports/{id}
//	    cache off
//	    cache {
//	        max_entries    100000
//	        ttl            <outcome> <duration>
//	        stale_if_error 10m
//	        presign_reuse  5m
//	    }
//	    surrogate_key_header Surrogate-Key
//	    fleet {
//	        redis      <host:port ...>                   # required; repeatable
//	        username   <user>
//	        password   <password>
//	        tls        [ca_file <pem>] [server_name <name>]
//	        prefix     export_download
//	        secret     <at least 32 bytes>               # required
//	        timeout    50ms
//	        lock_wait  750ms
//	        sentinel   <master_name>                     # the redis addresses are Sentinels
//	        sentinel_username <user>
//	        sentinel_password <password>
//	        max_staleness 5s                             # or off
//	    }
//	}
//
// Placeholders such as {env.S3_SECRET} are expanded at provision.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	lines := settingLines{directive: d.Token(), at: map[where]caddyfile.Token{}}
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	var prev string
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		repeatable := name == "upstream_header" || name == "forward_header" || name == "key_prefixes"
		if seen[name] && !repeatable {
			return d.Errf("%s: duplicate subdirective", name)
		}
		seen[name] = true
		lines.note(d, where{sub: name})
		switch name {
		case "path":
			if err := oneArg(d, &h.Path); err != nil {
				return err
			}
		case "upstream":
			if err := oneArg(d, &h.Upstream); err != nil {
				return err
			}
		case "upstream_path":
			if err := oneArg(d, &h.UpstreamPath); err != nil {
				return err
			}
		case "upstream_timeout":
			if err := durationArg(d, &h.UpstreamTimeout); err != nil {
				return err
			}
		case "upstream_header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("upstream_header: want <name> <value>, got %d arguments", len(args))
			}
			if h.UpstreamHeader == nil {
				h.UpstreamHeader = map[string]string{}
			}
			if _, dup := h.UpstreamHeader[args[0]]; dup {
				return d.Errf("upstream_header: %s given twice", args[0])
			}
			h.UpstreamHeader[args[0]] = args[1]
			lines.noteItems(where{sub: name}, args[:1])
		case "forward_header":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("forward_header: want at least one header name")
			}
			h.ForwardHeader = append(h.ForwardHeader, args...)
			lines.noteItems(where{sub: name}, args)
		case "key_prefixes":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("key_prefixes: want at least one prefix")
			}
			h.KeyPrefixes = append(h.KeyPrefixes, args...)
			lines.noteItems(where{sub: name}, args)
		case "bucket":
			if err := oneArg(d, &h.Bucket); err != nil {
				return err
			}
		case "object_key":
			if err := oneArg(d, &h.ObjectKey); err != nil {
				return err
			}
		case "region":
			if err := oneArg(d, &h.Region); err != nil {
				return err
			}
		case "endpoint":
			if err := oneArg(d, &h.Endpoint); err != nil {
				return err
			}
		case "path_style":
			if d.NextArg() {
				return d.Errf("path_style: takes no argument")
			}
			h.PathStyle = true
		case "access_key_id":
			if err := oneArg(d, &h.AccessKeyID); err != nil {
				return err
			}
		case "secret_access_key":
			if err := oneArg(d, &h.SecretAccessKey); err != nil {
				return err
			}
		case "session_token":
			if err := oneArg(d, &h.SessionToken); err != nil {
				return err
			}
		case "presign_expiry":
			if err := durationArg(d, &h.PresignExpiry); err != nil {
				return err
			}
		case "filename":
			if err := oneArg(d, &h.Filename); err != nil {
				return err
			}
		case "content_type":
			if err := oneArg(d, &h.ContentType); err != nil {
				return err
			}
		case "on_upstream_error":
			if err := oneArg(d, &h.OnUpstreamError); err != nil {
				return err
			}
		case "invalidate_path":
			if err := oneArg(d, &h.InvalidatePath); err != nil {
				return err
			}
		case "cache":
			if err := h.unmarshalCache(d, &lines); err != nil {
				return err
			}
		case "surrogate_key_header":
			if err := oneArg(d, &h.SurrogateKeyHeader); err != nil {
				return err
			}
		case "fleet":
			if err := h.unmarshalFleet(d, &lines); err != nil {
				return err
			}
		case "{":
			// The block of a one-line subdirective: blame that one.
			return d.Errf("%s: takes no block", prev)
		default:
			return d.Errf("unrecognized subdirective %q", name)
		}
		prev = name
	}
	// `caddy adapt` does not provision: report missing essentials here,
	// and every other mistake at the line of the setting at fault.
	for _, req := range [...]struct{ name, value string }{{"upstream", h.Upstream}, {"bucket", h.Bucket}, {"object_key", h.ObjectKey}} {
		if req.value == "" {
			return errorAt(lines.directive, fmt.Errorf("export_download: %s is required", req.name))
		}
	}
	if err := h.validate(false); err != nil {
		return lines.wrap(err)
	}
	return nil
}

// settingLines remembers where each setting was written, so that a
// mistake found once the whole block is read (validate) is reported at its
// own line rather than at the block's closing brace.
type settingLines struct {
	directive caddyfile.Token // export_download itself
	at        map[where]caddyfile.Token
}

// note keeps the line of the subdirective d is at.
func (l *settingLines) note(d *caddyfile.Dispenser, at where) { l.at[at] = d.Token() }

// noteItems gives each value of a repeatable subdirective its line.
func (l *settingLines) noteItems(at where, items []string) {
	for _, item := range items {
		l.at[where{at.block, at.sub, item}] = l.at[at]
	}
}

// wrap reports each mistake of err, as validate joined them, at the line
// of its setting: the value's, else the subdirective's, else its block's,
// else the directive's (a setting missing altogether).
func (l *settingLines) wrap(err error) error {
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		tok := l.directive
		var ce *configError
		if errors.As(e, &ce) {
			for _, w := range [...]where{ce.at, {ce.at.block, ce.at.sub, ""}, {"", ce.at.block, ""}} {
				if t, ok := l.at[w]; ok {
					tok = t
					break
				}
			}
		}
		out[i] = errorAt(tok, e)
	}
	return errors.Join(out...)
}

// errorAt is err as the Caddyfile adapter reports a mistake at tok.
func errorAt(tok caddyfile.Token, err error) error {
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.WrapErr(err)
}

func (h *Handler) unmarshalCache(d *caddyfile.Dispenser, lines *settingLines) error {
	h.Cache = new(CacheConfig)
	if d.NextArg() {
		if d.Val() != "off" || d.NextArg() {
			return d.Errf("cache: want `cache off` or a block")
		}
		h.Cache.Disabled = true
		if d.NextBlock(d.Nesting()) {
			return d.Errf("cache off: takes no block")
		}
		return nil
	}
	seen := map[string]bool{}
	var prev string
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] && name != "ttl" {
			return d.Errf("%s: duplicate subdirective", name)
		}
		seen[name] = true
		lines.note(d, where{block: "cache", sub: name})
		switch name {
		case "max_entries":
			var s string
			if err := oneArg(d, &s); err != nil {
				return err
			}
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return d.Errf("max_entries: %q is not a positive whole number", s)
			}
			h.Cache.MaxEntries = n
		case "ttl":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("ttl: want <outcome> <duration>, got %d arguments", len(args))
			}
			dur, err := caddy.ParseDuration(args[1])
			if err != nil {
				return d.Errf("ttl: %s: %v", args[0], err)
			}
			if h.Cache.TTL == nil {
				h.Cache.TTL = map[string]caddy.Duration{}
			}
			if _, dup := h.Cache.TTL[args[0]]; dup {
				return d.Errf("ttl: %s given twice", args[0])
			}
			h.Cache.TTL[args[0]] = caddy.Duration(dur)
			lines.noteItems(where{block: "cache", sub: name}, args[:1])
		case "stale_if_error":
			var dur caddy.Duration
			if err := durationArg(d, &dur); err != nil {
				return err
			}
			h.Cache.StaleIfError = &dur
		case "presign_reuse":
			var dur caddy.Duration
			if err := durationArg(d, &dur); err != nil {
				return err
			}
			h.Cache.PresignReuse = &dur
		case "{":
			return d.Errf("%s: takes no block", prev)
		default:
			return d.Errf("cache: unrecognized subdirective %q", name)
		}
		prev = name
	}
	return nil
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.Errf("%s: want exactly one argument, got %d", name, len(args))
	}
	*dst = args[0]
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %v", name, err)
	}
	if dur < 0 {
		return d.Errf("%s: must not be negative", name)
	}
	*dst = caddy.Duration(dur)
	return nil
}
