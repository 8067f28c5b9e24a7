package presign

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/encoding/httpbinding"
)

// The lean presign must return exactly what the SDK's PresignGetObject
// returns. Signed by the same keys at the same second, the two URLs must be
// the same string, signature included.

type equivConfig struct {
	name      string
	region    string
	endpoint  string
	pathStyle bool
	// host is where the URL must point for bucket "exports" (a check that
	// the matrix covers what its name says, independent of both paths).
	host string
}

var equivConfigs = []equivConfig{
	{"aws virtual-hosted", "eu-west-3", "", false, "exports.s3.eu-west-3.amazonaws.com"},
	{"aws virtual-hosted us-east-1", "us-east-1", "", false, "exports.s3.us-east-1.amazonaws.com"},
	{"aws path style", "eu-west-3", "", true, "s3.eu-west-3.amazonaws.com"},
	{"aws-global region", "aws-global", "", false, "exports.s3.amazonaws.com"},
	{"fips- region name", "fips-us-east-1", "", false, "exports.s3-fips.us-east-1.amazonaws.com"},
	{"custom endpoint, path style", "us-east-1", "http://s3.test:9000", true, "s3.test:9000"},
	{"custom endpoint, virtual-hosted", "us-east-1", "http://s3.test:9000", false, "exports.s3.test:9000"},
	{"custom endpoint with a path", "us-east-1", "http://s3.test:9000/storage", true, "s3.test:9000"},
	{"custom endpoint with a path and a slash", "us-east-1", "http://s3.test:9000/storage/", true, "s3.test:9000"},
	{"custom endpoint with a path, virtual-hosted", "us-east-1", "https://s3.test/prefix/v1", false, "exports.s3.test"},
	{"custom https endpoint on the default port", "eu-central-1", "https://s3.test:443", true, "s3.test:443"},
	{"custom endpoint on an IP address", "us-east-1", "http://127.0.0.1:9000", false, "127.0.0.1:9000"},
}

var equivBuckets = []string{"exports", "my.dotted.bucket", "exports-2026"}

// equivKeys include keys that Presign refuses (CheckObject): the escaping
// is compared through the unchecked presign, so it stays right for any key.
var equivKeys = []string{
	"plain.csv",
	"exports/proj_1/2026-11/export 42.csv",
	"spaces  and\ttabs .csv",
	"Ünïcødé/報告 📊.csv",
	"a+b=c&d;e,f.csv",
	"100%.csv",
	"%2F%20already-escaped.csv",
	"a//b",
	"/leading slash",
	"//two leading slashes",
	"trailing/",
	"x?y#z",
	"~!*'()[]@:$.csv",
	"\x7f\x01control",
	"invalid \xff UTF-8",
}

var equivCreds = []aws.Credentials{
	{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
	{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "s", SessionToken: "FwoGZXIvYXdzE//token+/= with space&amp"},
}

var equivOverrides = []struct{ filename, contentType string }{
	{"report.csv", "text/csv"},
	{"Résumé – Q3 📊.csv", "text/csv; charset=utf-8"},
	{"報告 \"quoted\" 100%.csv", ""},
	{"", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
}

func newEquiv(t testing.TB, c equivConfig, creds aws.Credentials) *Presigner {
	t.Helper()
	p, err := New(context.Background(), Config{
		Region: c.region, Endpoint: c.endpoint, PathStyle: c.pathStyle,
		Credentials: credentials.StaticCredentialsProvider{Value: creds}, Expiry: 15 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLeanEqualsSDK: through presign (the lean path, unchecked) and through
// PresignGetObject at the same second with the same keys, every URL of the
// matrix is the same string.
func TestLeanEqualsSDK(t *testing.T) {
	ctx := context.Background()
	n := 0
	for _, c := range equivConfigs {
		for _, creds := range equivCreds {
			p := newEquiv(t, c, creds)
			for _, bucket := range equivBuckets {
				if ep := p.endpoints.get(ctx, bucket); ep.viaSDK {
					t.Errorf("%s, bucket %s: left to the SDK, want the lean path", c.name, bucket)
				}
				for _, key := range equivKeys {
					for i, o := range equivOverrides {
						obj := Object{Bucket: bucket, Key: key, Filename: o.filename, ContentType: o.contentType}
						export := time.Time{}
						if i%2 == 1 { // a lifetime other than presign_expiry
							export = t0.Add(2 * time.Minute)
						}
						s, err := p.presign(ctx, obj, t0, export)
						if err != nil {
							t.Fatalf("%s %q: %v", c.name, key, err)
						}
						want, err := p.presignSDK(ctx, obj, creds, s.SignedAt, s.Lifetime)
						if err != nil {
							t.Fatalf("%s %q: SDK: %v", c.name, key, err)
						}
						if s.URL != want {
							t.Errorf("%s, bucket %q, key %q, session token %v:\nlean %s\n SDK %s", c.name, bucket, key, creds.SessionToken != "", s.URL, want)
						}
						n++
					}
				}
			}
			// The matrix covers what it claims.
			s, err := p.Presign(ctx, Object{Bucket: "exports", Key: "k"}, t0, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if u, _ := url.Parse(s.URL); u.Host != c.host {
				t.Errorf("%s: URL on %s, want %s: %s", c.name, u.Host, c.host, s.URL)
			}
		}
	}
	t.Logf("%d URLs compared", n)
}

var dateAndSignature = regexp.MustCompile(`&?X-Amz-(Date|Signature)=[^&]*`)

// TestLeanEqualsIndependentSDK compares with a presign client built here,
// with the SDK's own default signer and clock (nothing shared with the
// Presigner): the URLs differ at most in X-Amz-Date and X-Amz-Signature.
func TestLeanEqualsIndependentSDK(t *testing.T) {
	ctx := context.Background()
	for _, c := range equivConfigs {
		for _, creds := range equivCreds {
			p := newEquiv(t, c, creds)
			ref := s3.NewPresignClient(s3.New(s3.Options{
				Region:                     c.region,
				Credentials:                credentials.StaticCredentialsProvider{Value: creds},
				UsePathStyle:               c.pathStyle,
				ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
				RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
			}, func(o *s3.Options) {
				if c.endpoint != "" {
					o.BaseEndpoint = aws.String(c.endpoint)
				}
			}))
			for _, key := range equivKeys {
				o := equivOverrides[1]
				obj := Object{Bucket: equivBuckets[1], Key: key, Filename: o.filename, ContentType: o.contentType}
				s, err := p.presign(ctx, obj, time.Now(), time.Time{})
				if err != nil {
					t.Fatal(err)
				}
				req, err := ref.PresignGetObject(ctx, &s3.GetObjectInput{
					Bucket: aws.String(obj.Bucket), Key: aws.String(obj.Key),
					ResponseContentDisposition: aws.String(ContentDisposition(obj.Filename)),
					ResponseContentType:        aws.String(obj.ContentType),
				}, func(po *s3.PresignOptions) { po.Expires = s.Lifetime })
				if err != nil {
					t.Fatal(err)
				}
				got, want := dateAndSignature.ReplaceAllString(s.URL, ""), dateAndSignature.ReplaceAllString(req.URL, "")
				if got != want {
					t.Errorf("%s, key %q:\nlean %s\n SDK %s", c.name, key, got, want)
				}
				if len(req.SignedHeader) != 1 || req.SignedHeader.Get("Host") == "" {
					t.Errorf("%s: the SDK signed %v, want host only", c.name, headerNames(req.SignedHeader))
				}
			}
		}
	}
}

// TestLeanURLShape checks the lean URL against what the README promises,
// independently of the SDK: the key escaped as S3 expects, host the only
// signed header, the response overrides and the session token in the
// query.
func TestLeanURLShape(t *testing.T) {
	creds := equivCreds[1]
	p := newEquiv(t, equivConfigs[5], creds) // custom endpoint, path style
	obj := Object{Bucket: "exports", Key: "a b/Ü+%/x", Filename: "Résumé.csv", ContentType: "text/csv"}
	s, err := p.Presign(context.Background(), obj, t0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	const wantPrefix = "http://s3.test:9000/exports/a%20b/%C3%9C%2B%25/x?"
	if !strings.HasPrefix(s.URL, wantPrefix) {
		t.Errorf("URL = %s, want it to start with %s", s.URL, wantPrefix)
	}
	checkURL(t, s, obj, "http://s3.test:9000", "ASIAEXAMPLE/20261129/us-east-1/s3/aws4_request")
	q := mustQuery(t, s.URL)
	if got := q.Get("X-Amz-Security-Token"); got != creds.SessionToken {
		t.Errorf("X-Amz-Security-Token = %q, want %q", got, creds.SessionToken)
	}
	if got := q.Get("x-id"); got != "GetObject" {
		t.Errorf("x-id = %q, want GetObject", got)
	}
}

// FuzzEscapeKey: whatever the key, the lean URL's path is the SDK's
// escaping of it, and parses back to the key.
func FuzzEscapeKey(f *testing.F) {
	for _, k := range equivKeys {
		f.Add(k)
	}
	p := newEquiv(f, equivConfigs[5], equivCreds[0])
	ep := p.endpoints.get(context.Background(), "exports")
	f.Fuzz(func(t *testing.T, key string) {
		if key == "" {
			return // the SDK refuses an empty key; Presign leaves it to the SDK
		}
		r := ep.request(Object{Bucket: "exports", Key: key}, time.Minute)
		if want := "/exports/" + httpbinding.EscapePath(key, false); r.URL.EscapedPath() != want {
			t.Fatalf("path %q, want %q", r.URL.EscapedPath(), want)
		}
		u, err := url.Parse(r.URL.String())
		if err != nil {
			t.Fatalf("%s: %v", r.URL, err)
		}
		if u.Path != "/exports/"+key {
			t.Fatalf("path parses back to %q, want %q", u.Path, "/exports/"+key)
		}
	})
}

// TestSDKFallback: a bucket the lean path does not sign (an S3 Express
// directory bucket, signed with session credentials from the SDK) goes
// through PresignGetObject, and errors are the SDK's.
func TestSDKFallback(t *testing.T) {
	p := newEquiv(t, equivConfigs[0], equivCreds[0])
	if ep := p.endpoints.get(context.Background(), "exports--euw3-az1--x-s3"); !ep.viaSDK {
		t.Error("an S3 Express bucket took the lean path")
	}
	bad, err := New(context.Background(), Config{Region: "not a region", AccessKeyID: "a", SecretAccessKey: "b", Expiry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.Presign(context.Background(), Object{Bucket: "b", Key: "k"}, t0, time.Time{})
	if err == nil || !strings.Contains(err.Error(), "invalid input region") {
		t.Errorf("invalid region: err = %v, want the SDK's", err)
	}
	_, err = p.Presign(context.Background(), Object{Bucket: "b", Key: ""}, t0, time.Time{})
	if err == nil {
		t.Error("an empty key was signed")
	}
}

// TestEndpointCacheBounded: bucket names from a template cannot grow the
// endpoint cache without bound.
func TestEndpointCacheBounded(t *testing.T) {
	p := newEquiv(t, equivConfigs[5], equivCreds[0])
	for i := range 3 * maxEndpoints {
		p.endpoints.get(context.Background(), fmt.Sprintf("bucket-%d", i))
	}
	n := 0
	p.endpoints.m.Range(func(any, any) bool { n++; return true })
	if n > maxEndpoints {
		t.Errorf("%d endpoints cached, want at most %d", n, maxEndpoints)
	}
}
