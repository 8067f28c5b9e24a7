// Package upstream asks the application's metadata API about an export
// (docs/configuration.md "The upstream contract") and classifies the reply into a decision.Answer or a failure.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/route"
)

// MaxBody is the most of a reply's body that is read (1 MiB).
const MaxBody = 1 << 20

// Config configures a Client.
type Config struct {
	// BaseURL is the upstream's scheme://host[:port][/prefix].
	BaseURL string
	// Path holds one {id}, e.g. /v1/exports/{id}.
	Path string
	// Timeout bounds each call, from connecting to reading the body.
	Timeout time.Duration
	// Headers are sent on every call (upstream_header).
	Headers http.Header
	// Forward lists the client headers to pass on; Authorization first.
	Forward []string
	// UserAgent names the module and its version.
	UserAgent string
	// SurrogateKeyHeader names the response header whose space-separated
	// tags are kept with the answer (e.g. Surrogate-Key); empty: none.
	SurrogateKeyHeader string
	// Fields names the data fields the templates use: only those are kept
	// in Answer.Fields (status, expires_at and id are always checked). Nil
	// keeps every string and number field.
	Fields []string
	// Transport is the round tripper; nil uses a dedicated http.Transport.
	Transport http.RoundTripper
}

// Client calls the metadata API. It is safe for concurrent use.
type Client struct {
	url       url.URL // the request URL with the id left out, see urlFor
	pathPre   string  // url.Path around the id
	pathSuf   string
	rawPre    string // url.RawPath around the id, when the base needs one
	rawSuf    string
	timeout   time.Duration
	static    []headerValues // configured headers, Accept and User-Agent
	forward   []string       // canonical names
	fields    []string       // data fields kept for templates; nil: all
	surrogate string         // canonical header name, or ""
	rt        http.RoundTripper
	transport *http.Transport // owned, closed by Close
}

// headerValues is one header prepared at New: a call shares the values.
type headerValues struct {
	name   string
	values []string
}

// CheckBaseURL checks an upstream base URL: http:// or https:// with a
// host, and no query, fragment or user info. Its errors never quote the URL
// unredacted: it may hold a password.
func CheckBaseURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("must be an http:// or https:// URL with a host")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q must be an http:// or https:// URL with a host", u.Redacted())
	}
	if strings.ContainsAny(raw, "?#") || u.User != nil {
		// Not quoted: a query or user info may hold a secret.
		return errors.New("must not hold a query, fragment or user info")
	}
	return nil
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if err := CheckBaseURL(cfg.BaseURL); err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if _, err := route.Parse(cfg.Path); err != nil {
		return nil, fmt.Errorf("upstream_path: %v", err)
	}
	if cfg.Timeout <= 0 {
		return nil, errors.New("upstream_timeout: must be positive")
	}
	c := &Client{timeout: cfg.Timeout}
	for _, name := range cfg.Forward {
		name = http.CanonicalHeaderKey(name)
		if name == "Traceparent" || name == "Tracestate" {
			// The trace context of the call is the edge's own span
			// (W3C Trace Context), never a client's header passed on.
			return nil, fmt.Errorf("forward_header: %s is set by tracing, it cannot be forwarded", name)
		}
		if !slices.Contains(c.forward, name) {
			c.forward = append(c.forward, name)
		}
	}
	if err := c.prepareURL(strings.TrimSuffix(cfg.BaseURL, "/"), cfg.Path); err != nil {
		return nil, err
	}
	static := cfg.Headers.Clone()
	if static == nil {
		static = http.Header{}
	}
	static.Set("Accept", "application/json")
	if cfg.UserAgent != "" {
		static.Set("User-Agent", cfg.UserAgent)
	}
	for name, v := range static {
		c.static = append(c.static, headerValues{name: name, values: slices.Clip(v)})
	}
	if cfg.Fields != nil {
		c.fields = slices.Clone(cfg.Fields)
		if c.fields == nil {
			c.fields = []string{}
		}
	}
	if cfg.SurrogateKeyHeader != "" {
		c.surrogate = http.CanonicalHeaderKey(cfg.SurrogateKeyHeader)
	}
	rt := cfg.Transport
	if rt == nil {
		c.transport = &http.Transport{
			// No HTTP_PROXY: the caller's credential goes to the configured
			// upstream and nowhere else.
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          256,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   cfg.Timeout,
			ResponseHeaderTimeout: cfg.Timeout,
		}
		rt = c.transport
	}
	// The round tripper is called directly, not through an http.Client:
	// redirects are never followed (a 3xx is a failure, see the README),
	// so the client's redirect machinery, and the copy of every request's
	// headers it keeps for it, would be pure cost.
	c.rt = rt
	return c, nil
}

// prepareURL parses the request URL once, with a placeholder for the id,
// and keeps the parts around it: a call then only joins strings.
func (c *Client) prepareURL(base, path string) error {
	const mark = "00000000-0000-0000-0000-000000000000" // a valid id: never escaped
	i := strings.Index(path, "{id}")
	u, err := url.Parse(base + path[:i] + mark + path[i+len("{id}"):])
	if err != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return errors.New("upstream: must be an http:// or https:// URL with a host")
	}
	var ok bool
	if c.pathPre, c.pathSuf, ok = strings.Cut(u.Path, mark); !ok {
		return errors.New("upstream_path: cannot place {id}")
	}
	if u.RawPath != "" {
		if c.rawPre, c.rawSuf, ok = strings.Cut(u.RawPath, mark); !ok {
			return errors.New("upstream_path: cannot place {id}")
		}
	}
	u.Path, u.RawPath = "", ""
	c.url = *u
	return nil
}

// urlFor returns the request URL for id, a UUID (never escaped).
func (c *Client) urlFor(id string) *url.URL {
	u := new(url.URL)
	*u = c.url
	u.Path = c.pathPre + id + c.pathSuf
	if c.rawPre != "" || c.rawSuf != "" {
		u.RawPath = c.rawPre + id + c.rawSuf
	}
	return u
}

// Close releases idle connections.
func (c *Client) Close() {
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
}

// Failure is an upstream failure (docs/configuration.md "The upstream contract"): the caller may serve a stale
// answer, answer 503, or pass the request on.
type Failure struct {
	Reason string
	Status int // the upstream's status, 0 when there was none
	Err    error
}

func (f *Failure) Error() string {
	var b strings.Builder
	b.WriteString("upstream failure: ")
	b.WriteString(f.Reason)
	if f.Status != 0 {
		fmt.Fprintf(&b, " (status %d)", f.Status)
	}
	if f.Err != nil {
		b.WriteString(": ")
		b.WriteString(f.Err.Error())
	}
	return b.String()
}

func (f *Failure) Unwrap() error { return f.Err }

// Result is what one call returned, for metrics and logs.
type Result struct {
	Status   int // 0 when no response arrived
	Duration time.Duration
	// BadSurrogateKeys counts the tags of the reply that were ignored as
	// invalid (too long, or not visible ASCII): no purge can name them.
	BadSurrogateKeys int
	// TagsCut counts valid tags past MaxSurrogateKeys. A purge may name
	// one, so an answer with any is not to be cached.
	TagsCut int
}

// Fetch asks about export id (already validated and lowercased) with the
// client's headers from (only the forwarded ones are read) and requestID.
// A usable reply returns an Answer; anything else a *Failure.
//
// When ctx carries a recording span (Caddy's tracing directive), the call
// is a child span, export_download.lookup, and carries its W3C traceparent
// (see tracing.go).
func (c *Client) Fetch(ctx context.Context, id string, from http.Header, requestID string) (a *decision.Answer, res Result, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	ctx, span, propagate := startSpan(ctx, id)
	if span != nil {
		defer func() { endSpan(span, res, err) }()
	}

	hdr := make(http.Header, len(c.static)+len(c.forward)+3)
	for _, name := range c.forward {
		if v := from[name]; len(v) > 0 {
			hdr[name] = v
		}
	}
	// Configured headers win over forwarded ones: a client must not be able
	// to replace a shared secret set with upstream_header.
	for _, h := range c.static {
		hdr[h.name] = h.values
	}
	hdr["X-Request-Id"] = []string{requestID}
	if propagate {
		injectTraceContext(ctx, hdr)
	}
	u := c.urlFor(id)
	req := (&http.Request{
		Method:     http.MethodGet,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     hdr,
		Host:       u.Host,
	}).WithContext(ctx)

	resp, err := c.rt.RoundTrip(req)
	if err != nil {
		reason := "connection error"
		if errors.Is(err, context.DeadlineExceeded) {
			reason = "timeout"
		} else if errors.Is(err, context.Canceled) {
			reason = "canceled"
		}
		return nil, Result{Duration: time.Since(start)}, &Failure{Reason: reason, Err: scrub(err)}
	}
	defer resp.Body.Close()
	res = Result{Status: resp.StatusCode}
	buf := bodyPool.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= maxPooledBody {
			*buf = (*buf)[:0]
			bodyPool.Put(buf)
		}
	}()
	*buf, err = readBody(resp.Body, (*buf)[:0])
	res.Duration = time.Since(start)
	if err == errTooBig {
		return nil, res, &Failure{Reason: "body over 1 MiB", Status: resp.StatusCode}
	}
	if err != nil {
		return nil, res, &Failure{Reason: "reading body", Status: resp.StatusCode, Err: scrub(err)}
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if a, err = parseExportFields(*buf, id, c.fields); err != nil {
			return nil, res, &Failure{Reason: "unusable body", Status: resp.StatusCode, Err: err}
		}
	case http.StatusUnauthorized, http.StatusForbidden:
		a = &decision.Answer{Kind: decision.KindUnauthorized}
	case http.StatusNotFound:
		a = &decision.Answer{Kind: decision.KindNotFound}
	case http.StatusTooManyRequests:
		return &decision.Answer{Kind: decision.KindRateLimited, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}, res, nil
	default:
		return nil, res, &Failure{Reason: "unexpected status", Status: resp.StatusCode}
	}
	tags := tagSet{limit: MaxSurrogateKeys}
	if c.surrogate != "" {
		for _, v := range resp.Header.Values(c.surrogate) {
			for _, k := range strings.Fields(v) {
				tags.add(k)
			}
		}
	}
	// RFC 9875's tags, beside Surrogate-Key's: an in-band invalidation
	// (Cache-Group-Invalidation) or a purge of one drops the answer.
	for _, g := range cacheGroupStrings(resp.Header.Values("Cache-Groups")) {
		tags.add(g)
	}
	a.SurrogateKeys, res.BadSurrogateKeys, res.TagsCut = tags.keys, tags.invalid, tags.cut
	return a, res, nil
}

// errTooBig is a body over MaxBody.
var errTooBig = errors.New("body over 1 MiB")

// Bodies are read into pooled buffers: the parse copies what it keeps.
const maxPooledBody = 64 << 10

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// readBody appends r to b, at most MaxBody bytes; one more is a Failure.
func readBody(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			if len(b) > MaxBody {
				return b, errTooBig
			}
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if len(b) > MaxBody {
			return b, errTooBig
		}
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// Bounds on the surrogate keys kept per answer.
const (
	MaxSurrogateKeys   = 16
	MaxSurrogateKeyLen = 128
)

// SurrogateKeys splits Surrogate-Key header values (space-separated tags,
// the Fastly/Varnish convention) into at most MaxSurrogateKeys distinct
// tags of visible ASCII, each at most MaxSurrogateKeyLen bytes. It returns
// how many tags it ignored.
func SurrogateKeys(values []string) (keys []string, ignored int) {
	s := tagSet{limit: MaxSurrogateKeys}
	for _, v := range values {
		for _, k := range strings.Fields(v) {
			s.add(k)
		}
	}
	return s.keys, s.invalid + s.cut
}

// ValidSurrogateKey reports whether k could be kept as a surrogate key.
func ValidSurrogateKey(k string) bool {
	return k != "" && len(k) <= MaxSurrogateKeyLen && visibleASCII(k)
}

func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// scrub drops the URL from a *url.Error: it holds nothing secret here, but
// the error stays short and stable for logs.
func scrub(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// retryAfter keeps a Retry-After that is delay-seconds or an HTTP-date
// (RFC 9110 §10.2.3) and drops anything else rather than pass it on.
func retryAfter(v string) string {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > 64 {
		return ""
	}
	digits := true
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			digits = false
			break
		}
	}
	if digits {
		return v
	}
	if _, err := http.ParseTime(v); err == nil {
		return v
	}
	return ""
}
