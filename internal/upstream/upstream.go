// Package upstream asks the application's metadata API about an export
// (SPEC §3) and classifies the reply into a decision.Answer or a failure.
package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
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
	// Transport is the round tripper; nil uses a dedicated http.Transport.
	Transport http.RoundTripper
}

// Client calls the metadata API. It is safe for concurrent use.
type Client struct {
	prefix, suffix string // the URL around the id
	timeout        time.Duration
	headers        http.Header
	forward        []string
	surrogate      string // canonical header name, or ""
	http           *http.Client
	transport      *http.Transport // owned, closed by Close
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	// Errors never quote the URL back: it may hold a password.
	u, err := url.Parse(cfg.BaseURL)
	if err != nil {
		return nil, errors.New("upstream: must be an http:// or https:// URL with a host")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("upstream: %q must be an http:// or https:// URL with a host", u.Redacted())
	}
	if strings.ContainsAny(cfg.BaseURL, "?#") || u.User != nil {
		return nil, fmt.Errorf("upstream: %q must not hold a query, fragment or user info", u.Redacted())
	}
	if _, err := route.Parse(cfg.Path); err != nil {
		return nil, fmt.Errorf("upstream_path: %v", err)
	}
	if cfg.Timeout <= 0 {
		return nil, errors.New("upstream_timeout: must be positive")
	}
	base := strings.TrimSuffix(cfg.BaseURL, "/")
	i := strings.Index(cfg.Path, "{id}")
	c := &Client{
		prefix:  base + cfg.Path[:i],
		suffix:  cfg.Path[i+len("{id}"):],
		timeout: cfg.Timeout,
		headers: cfg.Headers.Clone(),
		forward: cfg.Forward,
	}
	if cfg.SurrogateKeyHeader != "" {
		c.surrogate = http.CanonicalHeaderKey(cfg.SurrogateKeyHeader)
	}
	if c.headers == nil {
		c.headers = http.Header{}
	}
	c.headers.Set("Accept", "application/json")
	if cfg.UserAgent != "" {
		c.headers.Set("User-Agent", cfg.UserAgent)
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
	c.http = &http.Client{
		Transport: rt,
		// Redirects are not followed (SPEC §3): a 3xx is a failure.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// Close releases idle connections.
func (c *Client) Close() {
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
}

// Failure is an upstream failure (SPEC §3): the caller may serve a stale
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
	// BadSurrogateKeys counts the tags of the reply that were ignored
	// (too many, too long, or not visible ASCII).
	BadSurrogateKeys int
}

// Fetch asks about export id (already validated and lowercased) with the
// client's headers from (only the forwarded ones are read) and requestID.
// A usable reply returns an Answer; anything else a *Failure.
func (c *Client) Fetch(ctx context.Context, id string, from http.Header, requestID string) (*decision.Answer, Result, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.prefix+id+c.suffix, nil)
	if err != nil {
		return nil, Result{}, &Failure{Reason: "building request", Err: err}
	}
	for _, name := range c.forward {
		if v := from.Values(name); len(v) > 0 {
			req.Header[http.CanonicalHeaderKey(name)] = v
		}
	}
	// Configured headers win over forwarded ones: a client must not be able
	// to replace a shared secret set with upstream_header.
	for name, v := range c.headers {
		req.Header[name] = v
	}
	req.Header.Set("X-Request-Id", requestID)

	resp, err := c.http.Do(req)
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
	res := Result{Status: resp.StatusCode}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	res.Duration = time.Since(start)
	if err != nil {
		return nil, res, &Failure{Reason: "reading body", Status: resp.StatusCode, Err: scrub(err)}
	}
	if len(body) > MaxBody {
		return nil, res, &Failure{Reason: "body over 1 MiB", Status: resp.StatusCode}
	}
	var a *decision.Answer
	switch resp.StatusCode {
	case http.StatusOK:
		if a, err = parseExport(body, id); err != nil {
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
	if c.surrogate != "" {
		a.SurrogateKeys, res.BadSurrogateKeys = SurrogateKeys(resp.Header.Values(c.surrogate))
	}
	return a, res, nil
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
	for _, v := range values {
		for _, k := range strings.Fields(v) {
			switch {
			case len(k) > MaxSurrogateKeyLen || !visibleASCII(k):
				ignored++
			case slices.Contains(keys, k):
			case len(keys) == MaxSurrogateKeys:
				ignored++
			default:
				keys = append(keys, k)
			}
		}
	}
	return keys, ignored
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

// parseExport reads the "Get export" envelope. data.status must be a string;
// expires_at null or absent means no expiry, otherwise RFC 3339. String and
// number fields of data are kept for templates.
func parseExport(body []byte, id string) (*decision.Answer, error) {
	var env struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("not JSON: %v", err)
	}
	if env.Data == nil {
		return nil, errors.New("no data object")
	}
	a := &decision.Answer{Kind: decision.KindExport, Fields: make(map[string]string, len(env.Data))}
	for name, raw := range env.Data {
		if v, ok := scalar(raw); ok {
			a.Fields[name] = v
		}
	}
	raw, ok := env.Data["status"]
	if !ok || !isString(raw) {
		return nil, errors.New("data.status missing or not a string")
	}
	a.Export.Status = intern(a.Fields["status"])
	if raw, ok := env.Data["expires_at"]; ok && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if !isString(raw) {
			return nil, errors.New("data.expires_at is neither null nor a string")
		}
		t, err := time.Parse(time.RFC3339, a.Fields["expires_at"])
		if err != nil {
			return nil, errors.New("data.expires_at is not RFC 3339")
		}
		if t.IsZero() {
			// 0001-01-01T00:00:00Z is a real, long past instant, but a zero
			// time.Time means "no expiry" here: keep it in the past.
			t = t.Add(time.Nanosecond)
		}
		a.Export.ExpiresAt = t
	}
	// An answer about another export must never send this caller there.
	if got, ok := a.Fields["id"]; ok && !strings.EqualFold(got, id) {
		return nil, errors.New("data.id names another export")
	}
	return a, nil
}

// intern returns the shared copy of a usual status, so that a cache of
// 100,000 answers does not hold 100,000 copies of "completed".
func intern(status string) string {
	for _, s := range [...]string{"completed", "pending", "processing", "failed", "expired"} {
		if status == s {
			return s
		}
	}
	return status
}

func isString(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && raw[0] == '"'
}

// scalar returns the text of a JSON string or number.
func scalar(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch c := raw[0]; {
	case c == '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	case c == '-' || ('0' <= c && c <= '9'):
		var n json.Number
		if json.Unmarshal(raw, &n) != nil {
			return "", false
		}
		return n.String(), true
	}
	return "", false
}
