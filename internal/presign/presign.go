// Package presign makes presigned S3 GetObject URLs: SigV4 query
// authentication signing only the host header (a plain GET works), with a
// lifetime that never outlives presign_expiry, the export or the signing
// credentials (docs/configuration.md's "Configuration reference", and SECURITY.md's
// "URL lifetime guarantees").
//
// A URL is the one the SDK's PresignGetObject would return, computed
// without the SDK's per-call middleware stack: see endpoint.go.
package presign

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// MaxLifetime is SigV4's longest presigned URL lifetime.
const MaxLifetime = 7 * 24 * time.Hour

// Config configures a Presigner.
type Config struct {
	Region    string
	Endpoint  string // S3-compatible endpoint; "" for AWS
	PathStyle bool
	// Static keys; when AccessKeyID is empty the AWS default credential
	// chain is used (environment, shared files, web identity, IMDS, …).
	AccessKeyID, SecretAccessKey, SessionToken string
	// Credentials overrides both, for tests and embedders.
	Credentials aws.CredentialsProvider
	// Expiry is the longest lifetime to give a URL (presign_expiry).
	Expiry time.Duration
	// Timeout is the longest a Presign waits for credentials, fetch and
	// refresh together. A first fetch that takes longer fails the Presign;
	// a refresh that does not end by then leaves the URL to the credentials
	// in hand (still valid: the URL ends with them). A provider that is not an aws.CredentialsCache
	// also gets it as the deadline of each retrieval; the default chain's
	// providers have their own HTTP timeouts. Default: DefaultTimeout (5s).
	Timeout time.Duration
}

// Object is what a URL grants: one object, downloaded under a file name
// with a content type.
type Object struct {
	Bucket, Key, Filename, ContentType string
}

// Presigner signs GetObject URLs. It is safe for concurrent use.
type Presigner struct {
	creds     *credentialSource
	endpoints *endpoints
	signer    *v4.Signer
	sdk       *s3.PresignClient // for what the lean path does not cover
	expiry    time.Duration
}

// ErrExportExpired means less than one second of URL lifetime would remain
// before the export's expiry: the answer is 410.
var ErrExportExpired = errors.New("less than one second left before the export expires")

// New builds a Presigner. It does not contact AWS: credentials are fetched
// at the first Presign.
func New(ctx context.Context, cfg Config) (*Presigner, error) {
	if cfg.Expiry <= 0 {
		return nil, errors.New("presign_expiry: must be positive")
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("presign timeout: must not be negative")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	var provider aws.CredentialsProvider
	switch {
	case cfg.Credentials != nil:
		provider = cfg.Credentials
	case cfg.AccessKeyID != "":
		provider = credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)
	default:
		awsCfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(cfg.Region))
		if err != nil {
			return nil, fmt.Errorf("loading the AWS default credential chain: %v", err)
		}
		provider = awsCfg.Credentials
	}
	if provider == nil {
		return nil, errors.New("no AWS credentials: set access_key_id/secret_access_key or configure the AWS default credential chain")
	}
	creds := newCredentialSource(provider, cfg.Timeout)
	// The S3 client's presigner options: S3 keys are signed as sent.
	signer := v4.NewSigner(func(so *v4.SignerOptions) { so.DisableURIPathEscaping = true })
	client := s3.New(s3.Options{
		Region:       cfg.Region,
		Credentials:  creds.cache,
		UsePathStyle: cfg.PathStyle,
		// Checksum validation "when supported" would add an
		// x-amz-checksum-mode header to the signature, and a plain browser
		// GET would then fail: sign the host header only.
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
	}, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	pc := s3.NewPresignClient(client, func(o *s3.PresignOptions) {
		o.Presigner = clockedSigner{signer}
	})
	return &Presigner{
		creds:     creds,
		endpoints: newEndpoints(cfg),
		signer:    signer,
		sdk:       pc,
		expiry:    cfg.Expiry,
	}, nil
}

// Signed is a presigned URL and its validity.
type Signed struct {
	URL      string
	SignedAt time.Time     // X-Amz-Date, whole seconds
	Lifetime time.Duration // X-Amz-Expires, whole seconds
}

// Expires returns when the URL stops working.
func (s *Signed) Expires() time.Time { return s.SignedAt.Add(s.Lifetime) }

// Presign signs obj at time now. exportExpires (zero: none) bounds the URL's
// lifetime, as do the Presigner's expiry, the credentials' expiry (temporary
// credentials that would expire sooner are refreshed first, at most once
// per set: see credentialSource) and 7 days. It waits for credentials until
// ctx ends or the Presigner's timeout passes, whichever comes first: one
// deadline for the fetch and the refresh together. An object that
// CheckObject refuses is never signed.
func (p *Presigner) Presign(ctx context.Context, obj Object, now, exportExpires time.Time) (*Signed, error) {
	if err := CheckObject(obj); err != nil {
		return nil, err
	}
	return p.presign(ctx, obj, now, exportExpires)
}

// presign is Presign without the object check: the tests use it to show
// what a store does with a URL that Presign would refuse.
func (p *Presigner) presign(ctx context.Context, obj Object, now, exportExpires time.Time) (*Signed, error) {
	// The URL is valid from X-Amz-Date, now rounded down to the second.
	signAt := now.Truncate(time.Second)
	want := Lifetime(signAt, p.expiry, exportExpires, time.Time{})
	if !exportExpires.IsZero() && Lifetime(now, p.expiry, exportExpires, time.Time{}) < time.Second {
		return nil, ErrExportExpired
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("presigning: %w", context.Cause(ctx))
	}
	creds, err := p.creds.forURL(ctx, now, signAt.Add(want))
	if err != nil {
		return nil, err
	}
	var credsExpire time.Time
	if creds.CanExpire {
		credsExpire = creds.Expires
	}
	life := Lifetime(now, p.expiry, exportExpires, credsExpire)
	if life < time.Second {
		return nil, errors.New("S3 credentials expire in under a second, even after a refresh")
	}
	var signedURL string
	if ep := p.endpoints.get(ctx, obj.Bucket); !ep.viaSDK && obj.Key != "" {
		signedURL, err = p.presignLean(ctx, ep, obj, creds, signAt, life)
	} else {
		signedURL, err = p.presignSDK(ctx, obj, creds, signAt, life)
	}
	if err != nil {
		return nil, err
	}
	return &Signed{URL: signedURL, SignedAt: signAt, Lifetime: life}, nil
}

// presignLean signs the GET that PresignGetObject would build, with the
// same signer settings and an unsigned payload, as PresignGetObject does.
func (p *Presigner) presignLean(ctx context.Context, ep *endpoint, obj Object, creds aws.Credentials, signAt time.Time, life time.Duration) (string, error) {
	url, signed, err := p.signer.PresignHTTP(ctx, creds, ep.request(obj, life), unsignedPayload, ep.signingName, ep.signingRegion, signAt)
	if err != nil {
		return "", fmt.Errorf("presigning: %w", err)
	}
	if len(signed) > 1 {
		return "", fmt.Errorf("presigning: the signer signed headers beyond host: %v", headerNames(signed))
	}
	return url, nil
}

// unsignedPayload is the payload hash of a presigned S3 GET.
const unsignedPayload = "UNSIGNED-PAYLOAD"

// presignSDK is PresignGetObject itself, for the endpoints the lean path
// leaves to the SDK (and the benchmark that compares both).
func (p *Presigner) presignSDK(ctx context.Context, obj Object, creds aws.Credentials, signAt time.Time, life time.Duration) (string, error) {
	req, err := p.sdk.PresignGetObject(context.WithValue(ctx, signAtKey{}, signAt), &s3.GetObjectInput{
		Bucket:                     aws.String(obj.Bucket),
		Key:                        aws.String(obj.Key),
		ResponseContentDisposition: aws.String(ContentDisposition(obj.Filename)),
		ResponseContentType:        aws.String(obj.ContentType),
	}, func(o *s3.PresignOptions) {
		o.Expires = life
		// Sign with exactly the credentials whose expiry was checked.
		o.ClientOptions = append(o.ClientOptions, func(so *s3.Options) {
			so.Credentials = credentials.StaticCredentialsProvider{Value: creds}
		})
	})
	if err != nil {
		return "", fmt.Errorf("presigning: %w", err)
	}
	if req.Method != http.MethodGet || len(req.SignedHeader) > 1 {
		// Anything but host would make a plain GET fail at S3.
		return "", fmt.Errorf("presigning: the SDK signed headers beyond host: %v", headerNames(req.SignedHeader))
	}
	return req.URL, nil
}

func headerNames(h http.Header) []string {
	var names []string
	for k := range h {
		names = append(names, k)
	}
	return names
}

// Lifetime is the whole-second lifetime of a URL signed at now: the
// smallest of expiry, 7 days, and the time left before exportExpires and
// credsExpire (each zero: no bound). It is never negative.
func Lifetime(now time.Time, expiry time.Duration, exportExpires, credsExpire time.Time) time.Duration {
	life := min(expiry, MaxLifetime)
	for _, t := range [2]time.Time{exportExpires, credsExpire} {
		if !t.IsZero() {
			life = min(life, t.Sub(now))
		}
	}
	return max(life.Truncate(time.Second), 0)
}

type signAtKey struct{}

// clockedSigner signs at the time the Presigner chose, so that X-Amz-Date
// plus X-Amz-Expires is exactly what Lifetime computed (the SDK would
// otherwise read its own clock a moment later).
type clockedSigner struct{ *v4.Signer }

func (s clockedSigner) PresignHTTP(ctx context.Context, creds aws.Credentials, r *http.Request, payloadHash, service, region string, signingTime time.Time, optFns ...func(*v4.SignerOptions)) (string, http.Header, error) {
	if t, ok := ctx.Value(signAtKey{}).(time.Time); ok {
		signingTime = t
	}
	return s.Signer.PresignHTTP(ctx, creds, r, payloadHash, service, region, signingTime, optFns...)
}

// ContentDisposition returns the header value
//
//	attachment; filename="<ASCII fallback>"; filename*=UTF-8''<RFC 5987 encoding>
//
// for name. Control characters are
// dropped first, so no value can break the header.
func ContentDisposition(name string) string {
	name = strings.ToValidUTF8(name, "\uFFFD")
	name = strings.Map(func(r rune) rune {
		// Controls, line separators and format characters (bidi overrides
		// such as U+202E could make "report\u202Evsc.exe" display as
		// "reportexe.csv").
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Cf, r) {
			return -1
		}
		return r
	}, name)
	if name == "" {
		name = "download"
	}
	var b strings.Builder
	b.Grow(len(`attachment; filename=""; filename*=UTF-8''`) + 4*len(name))
	b.WriteString(`attachment; filename="`)
	for _, r := range name {
		switch {
		case r == '"' || r == '\\' || r == '%' || r > 0x7e:
			// % is replaced too: some browsers percent-decode the fallback.
			b.WriteByte('_')
		default:
			b.WriteRune(r)
		}
	}
	b.WriteString(`"; filename*=UTF-8''`)
	const hex = "0123456789ABCDEF"
	for _, c := range []byte(name) {
		if isAttrChar(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

// isAttrChar is RFC 5987's attr-char.
func isAttrChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$&+-.^_`|~", c) >= 0
}
