package presign

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	smithyauth "github.com/aws/smithy-go/auth"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// The lean presign: what the SDK's PresignGetObject computes from the
// operation's settings alone (the endpoint, the auth scheme) is computed
// once per bucket with the SDK's own endpoint resolver; what depends on the
// object (the path, the response overrides) is laid out the way the SDK's
// GetObject serializer lays it out; the SDK's SigV4 signer signs. The
// result is the URL PresignGetObject returns, without its middleware stack
// per call. Anything the lean path does not reproduce (S3 Express, SigV4a
// for multi-Region access points, endpoints that add headers) goes through
// PresignGetObject itself.

// maxEndpoints bounds the per-bucket cache (bucket names can come from a
// template); past it the cache starts over.
const maxEndpoints = 1024

// endpoints resolves and caches, per bucket, where a GetObject goes and how
// it is signed.
type endpoints struct {
	resolver s3.EndpointResolverV2
	params   s3.EndpointParameters // all but Bucket
	region   string                // the signing region unless the endpoint names one
	viaSDK   bool                  // a region the SDK would refuse: let it say so

	m sync.Map // bucket → *endpoint
	n atomic.Int32
}

// endpoint is one bucket's resolved endpoint.
type endpoint struct {
	scheme, host string
	// pathPrefix and rawPathPrefix are the endpoint's path joined with
	// "/{Key+}" the way the SDK joins them, up to the key.
	pathPrefix, rawPathPrefix  string
	signingName, signingRegion string
	viaSDK                     bool // presign with PresignGetObject
}

func newEndpoints(cfg Config) *endpoints {
	e := &endpoints{resolver: s3.NewDefaultEndpointResolverV2(), region: cfg.Region}
	// The parameters the S3 client binds for GetObject from the options
	// New gives it (the client's bindEndpointParams).
	e.params = s3.EndpointParameters{
		UseFIPS:                        aws.Bool(false),
		UseDualStack:                   aws.Bool(false),
		ForcePathStyle:                 aws.Bool(cfg.PathStyle),
		Accelerate:                     aws.Bool(false),
		DisableMultiRegionAccessPoints: aws.Bool(false),
		UseArnRegion:                   aws.Bool(false),
	}
	if cfg.Region != "" {
		if !validRegion(cfg.Region) {
			e.viaSDK = true
		}
		// A "fips-" region name is the plain region with FIPS endpoints
		// (the client's endpoint resolver options).
		region := mapFIPSRegion(cfg.Region)
		e.params.Region = aws.String(region)
		e.params.UseFIPS = aws.Bool(region != cfg.Region)
	}
	if cfg.Endpoint != "" {
		e.params.Endpoint = aws.String(cfg.Endpoint)
	}
	return e
}

// get returns bucket's endpoint, resolving it on first use.
func (e *endpoints) get(ctx context.Context, bucket string) *endpoint {
	if v, ok := e.m.Load(bucket); ok {
		return v.(*endpoint)
	}
	ep := e.resolve(ctx, bucket)
	if e.n.Add(1) > maxEndpoints {
		e.m.Clear()
		e.n.Store(1)
	}
	if v, loaded := e.m.LoadOrStore(bucket, ep); loaded {
		return v.(*endpoint)
	}
	return ep
}

var sdkEndpoint = &endpoint{viaSDK: true}

func (e *endpoints) resolve(ctx context.Context, bucket string) *endpoint {
	if e.viaSDK {
		return sdkEndpoint
	}
	params := e.params
	params.Bucket = aws.String(bucket)
	res, err := e.resolver.ResolveEndpoint(ctx, params)
	if err != nil || len(res.Headers) > 0 {
		// PresignGetObject returns the error, or signs the headers.
		return sdkEndpoint
	}
	ep := &endpoint{scheme: res.URI.Scheme, host: res.URI.Host, signingName: "s3", signingRegion: e.region}
	if opts, ok := smithyauth.GetAuthOptions(&res.Properties); ok && len(opts) > 0 {
		// The SDK signs with the first option it supports; the lean path
		// does plain SigV4 only.
		if id := opts[0].SchemeID; id != "sigv4" && id != "aws.auth#sigv4" {
			return sdkEndpoint
		}
		if name, ok := smithyhttp.GetSigV4SigningName(&opts[0].SignerProperties); ok {
			ep.signingName = name
		}
		if region, ok := smithyhttp.GetSigV4SigningRegion(&opts[0].SignerProperties); ok {
			ep.signingRegion = region
		}
	}
	// As the S3 client's endpoint middleware does: the endpoint's path
	// joined with the operation's "/{Key+}", the raw path from the
	// endpoint's path when it has no raw form. "x" stands for the key,
	// which is never empty here.
	rawPath := res.URI.RawPath
	if rawPath == "" {
		rawPath = res.URI.Path
	}
	ep.pathPrefix = strings.TrimSuffix(smithyhttp.JoinPath(res.URI.Path, "/x"), "x")
	ep.rawPathPrefix = strings.TrimSuffix(smithyhttp.JoinPath(rawPath, "/x"), "x")
	return ep
}

// request is the GET PresignGetObject hands its signer, before signing:
// the key as the SDK escapes a greedy label ("/" kept, every byte but the
// unreserved characters percent-encoded: httpbinding.EscapePath, which
// FuzzEscapeKey holds this to), the query the SDK's serializer and its
// X-Amz-Expires step produce (the signer parses it, sorts and re-encodes
// it, so its order and escaping here do not matter, only its values).
func (ep *endpoint) request(obj Object, life time.Duration) *http.Request {
	cd := ContentDisposition(obj.Filename)
	var q strings.Builder
	q.Grow(len("X-Amz-Expires=604800&response-content-disposition=&response-content-type=&x-id=GetObject") +
		escapedLen(cd, false) + escapedLen(obj.ContentType, false))
	var n [20]byte
	q.WriteString("X-Amz-Expires=")
	q.Write(strconv.AppendInt(n[:0], int64(life/time.Second), 10))
	q.WriteString("&response-content-disposition=")
	writeEscaped(&q, cd, false)
	q.WriteString("&response-content-type=")
	writeEscaped(&q, obj.ContentType, false)
	q.WriteString("&x-id=GetObject")

	var raw strings.Builder
	raw.Grow(len(ep.rawPathPrefix) + escapedLen(obj.Key, true))
	raw.WriteString(ep.rawPathPrefix)
	writeEscaped(&raw, obj.Key, true)

	// One allocation for the request and its URL.
	r := &struct {
		req http.Request
		url url.URL
	}{}
	r.url = url.URL{
		Scheme:   ep.scheme,
		Host:     ep.host,
		Path:     ep.pathPrefix + obj.Key,
		RawPath:  raw.String(),
		RawQuery: q.String(),
	}
	r.req = http.Request{Method: http.MethodGet, URL: &r.url, Header: http.Header{}}
	return &r.req
}

// unreserved are the bytes AWS wants unescaped in a path (RFC 3986's
// unreserved characters), as in the SDK's httpbinding.EscapePath.
var unreserved = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
	}
	return t
}()

// escapedLen is the length of s escaped by writeEscaped.
func escapedLen(s string, keepSlash bool) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		if c := s[i]; !unreserved[c] && !(keepSlash && c == '/') {
			n += 2
		}
	}
	return n
}

// writeEscaped percent-encodes every byte of s but the unreserved ones
// (and "/" when keepSlash), in upper-case hex.
func writeEscaped(b *strings.Builder, s string, keepSlash bool) {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved[c] || keepSlash && c == '/' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
}

// mapFIPSRegion is the SDK's region binding: a "fips-" region is the
// plain one (FIPS is a separate setting, which such a name turns on).
func mapFIPSRegion(region string) string {
	if strings.Contains(region, "-fips-") || strings.Contains(region, "fips-") || strings.Contains(region, "-fips") {
		region = strings.ReplaceAll(region, "-fips-", "-")
		region = strings.ReplaceAll(region, "fips-", "")
		region = strings.ReplaceAll(region, "-fips", "")
	}
	return region
}

// validRegion is the SDK's test of a region: dot-separated host labels
// that neither start nor end with a hyphen.
func validRegion(s string) bool {
	for _, label := range strings.Split(s, ".") {
		if !smithyhttp.ValidHostLabel(label) || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
	}
	return true
}
