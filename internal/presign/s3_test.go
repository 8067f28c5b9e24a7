package presign

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// The tests in this file sign URLs with the Presigner and fetch them from a
// real S3 implementation (versitygw) that verifies SigV4: the only proof
// that a URL works is a server accepting it.

const s3Bucket = "exports"

// contentType holds ';' and '=', which must survive the query round trip.
const contentType = "text/csv; charset=utf-8"

func newS3Presigner(t *testing.T, srv *testenv.S3, expiry time.Duration, secret string) *Presigner {
	t.Helper()
	p, err := New(context.Background(), Config{
		Region:          srv.Region,
		Endpoint:        srv.Endpoint,
		PathStyle:       true,
		AccessKeyID:     srv.AccessKey,
		SecretAccessKey: secret,
		Expiry:          expiry,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fetch GETs rawURL with client and no header of its own, and returns the
// status, headers and body.
func fetch(t *testing.T, client *http.Client, rawURL string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := client.Get(rawURL)
	if err != nil {
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", rawURL, err)
	}
	return resp.StatusCode, resp.Header, body
}

// plainClient is what a user's browser or script amounts to: Go's default
// client, default redirect policy, no extra header.
func plainClient(t *testing.T) *http.Client {
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	return http.DefaultClient
}

func TestPresignedGetAgainstS3(t *testing.T) {
	srv := testenv.StartS3(t)
	srv.CreateBucket(t, s3Bucket)
	p := newS3Presigner(t, srv, 15*time.Minute, srv.SecretKey)
	if p.endpoints.get(context.Background(), s3Bucket).viaSDK {
		t.Fatal("the bucket is left to the SDK: this test would not exercise the lean presign")
	}
	creds := aws.Credentials{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}

	// Keys that are hard to escape: each character class that SigV4's
	// canonical URI, Go's URL handling or the S3 server might get wrong.
	for _, tc := range []struct {
		name, key, filename string
	}{
		{"plain", "exports/plain.csv", "export.csv"},
		{"spaces, sub-delims and unicode", "exports/proj 1/a+b=c&d;e,f/Ünïcødé ~ (1).csv", "Résumé – Q3 📊.csv"},
		{"query and fragment characters", "x?y#z", "x?y#z.csv"},
		{"an encoded slash in the key", "exports/one%2Ftwo.csv", "100%.csv"},
		{"more reserved characters", "odd/!$'()*@:[]^`{|}.csv", ""},
		{"leading and trailing spaces", "exports/ spaced .csv", " spaced .csv"},
		{"plus and percent", "exports/100% + 1.csv", "100% + 1.csv"},
		// CheckObject allows one leading slash (S3 keeps it as part of the
		// key; versitygw drops it).
		{"a leading slash", "/leading.csv", "leading.csv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := []byte("id,key\n1," + tc.key + "\n\x00\xff binary-safe\r\n")
			srv.PutObject(t, s3Bucket, tc.key, want)
			s, err := p.Presign(context.Background(), Object{Bucket: s3Bucket, Key: tc.key, Filename: tc.filename, ContentType: contentType}, time.Now(), time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if got := mustQuery(t, s.URL).Get("X-Amz-SignedHeaders"); got != "host" {
				t.Errorf("X-Amz-SignedHeaders = %q, want host", got)
			}
			// The URL fetched below is PresignGetObject's, to the byte.
			obj := Object{Bucket: s3Bucket, Key: tc.key, Filename: tc.filename, ContentType: contentType}
			if sdk, err := p.presignSDK(context.Background(), obj, creds, s.SignedAt, s.Lifetime); err != nil || sdk != s.URL {
				t.Errorf("lean URL %s\nSDK URL  %s (err %v)", s.URL, sdk, err)
			}
			status, h, body := fetch(t, plainClient(t), s.URL)
			if status != http.StatusOK {
				t.Fatalf("GET = %d, want 200; body: %s\nURL: %s", status, body, s.URL)
			}
			if !bytes.Equal(body, want) {
				t.Errorf("body = %q, want %q", body, want)
			}
			if got, want := h.Get("Content-Disposition"), ContentDisposition(tc.filename); got != want {
				t.Errorf("Content-Disposition = %q, want %q", got, want)
			}
			if got := h.Get("Content-Type"); got != contentType {
				t.Errorf("Content-Type = %q, want %q", got, contentType)
			}
		})
	}
}

// TestUnsafeKeysAgainstS3: a store that maps keys onto a file system
// (versitygw's posix backend) resolves dot segments and empty segments in
// a signed URL's path and serves another object: one outside the key's
// prefix, or one that another key names. Signed without CheckObject, each
// key below fetches that object (the attack works); Presign refuses them.
func TestUnsafeKeysAgainstS3(t *testing.T) {
	srv := testenv.StartS3(t)
	srv.CreateBucket(t, s3Bucket)
	secret, other := []byte("secret.csv, outside exports/\n"), []byte("exports/p/other.csv\n")
	srv.PutObject(t, s3Bucket, "secret.csv", secret)
	srv.PutObject(t, s3Bucket, "exports/p/other.csv", other)
	p := newS3Presigner(t, srv, 15*time.Minute, srv.SecretKey)
	for _, tc := range []struct {
		key    string
		served []byte
	}{
		// A field holding "p/../.." or "..", in exports/{export.project_id}/{id}.csv.
		{"exports/p/../../secret.csv", secret},
		{"exports/../secret.csv", secret},
		{"exports/./p/other.csv", other},
		{"exports/p//other.csv", other},
		{"exports//p/other.csv", other},
		{"//exports/p/other.csv", other},
	} {
		t.Run(tc.key, func(t *testing.T) {
			obj := Object{Bucket: s3Bucket, Key: tc.key, Filename: "report.csv", ContentType: contentType}
			unchecked, err := p.presign(context.Background(), obj, time.Now(), time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			status, _, body := fetch(t, plainClient(t), unchecked.URL)
			if status != http.StatusOK || !bytes.Equal(body, tc.served) {
				t.Fatalf("without the check: GET = %d %q, want 200 %q (the store no longer resolves this path: the test shows nothing)", status, body, tc.served)
			}
			s, err := p.Presign(context.Background(), obj, time.Now(), time.Time{})
			if !errors.Is(err, ErrUnsafeObject) || s != nil {
				t.Fatalf("Presign(%q) = %v, %v; want ErrUnsafeObject", tc.key, s, err)
			}
		})
	}
}

// TestPresignedURLRejected: S3 refuses a URL that was altered, has expired,
// or was signed with the wrong secret, and answers 404 for a missing key
// behind a valid signature.
func TestPresignedURLRejected(t *testing.T) {
	srv := testenv.StartS3(t)
	srv.CreateBucket(t, s3Bucket)
	const key = "exports/proj 1/Ünïcødé (1).csv"
	srv.PutObject(t, s3Bucket, key, []byte("a,b\n1,2\n"))
	obj := Object{Bucket: s3Bucket, Key: key, Filename: "report.csv", ContentType: contentType}
	good := newS3Presigner(t, srv, 15*time.Minute, srv.SecretKey)

	sign := func(t *testing.T, p *Presigner, obj Object, now time.Time) string {
		t.Helper()
		s, err := p.Presign(context.Background(), obj, now, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		return s.URL
	}
	// setQuery replaces one query parameter, keeping the rest of the URL.
	setQuery := func(t *testing.T, raw, name string, change func(string) string) string {
		t.Helper()
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set(name, change(q.Get(name)))
		u.RawQuery = q.Encode()
		return u.String()
	}
	flipLast := func(s string) string {
		last := s[len(s)-1]
		repl := byte('0')
		if last == '0' {
			repl = '1'
		}
		return s[:len(s)-1] + string(repl)
	}

	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
		want int
	}{
		// The controls: without them a 403 below might mean nothing.
		{"unaltered", func(t *testing.T) string { return sign(t, good, obj, time.Now()) }, http.StatusOK},
		{"signed 5s ago, 15 min lifetime", func(t *testing.T) string {
			return sign(t, good, obj, time.Now().Add(-5*time.Second))
		}, http.StatusOK},

		{"a signature byte changed", func(t *testing.T) string {
			return setQuery(t, sign(t, good, obj, time.Now()), "X-Amz-Signature", flipLast)
		}, http.StatusForbidden},
		{"the first signature byte changed", func(t *testing.T) string {
			return setQuery(t, sign(t, good, obj, time.Now()), "X-Amz-Signature", func(s string) string {
				if s[0] == 'a' {
					return "b" + s[1:]
				}
				return "a" + s[1:]
			})
		}, http.StatusForbidden},
		// The response overrides are signed: nobody can swap the file name.
		{"content disposition swapped", func(t *testing.T) string {
			return setQuery(t, sign(t, good, obj, time.Now()), "response-content-disposition", func(string) string {
				return ContentDisposition("evil.exe")
			})
		}, http.StatusForbidden},
		{"lifetime lengthened", func(t *testing.T) string {
			return setQuery(t, sign(t, good, obj, time.Now()), "X-Amz-Expires", func(string) string { return "604800" })
		}, http.StatusForbidden},
		{"another key, same signature", func(t *testing.T) string {
			return strings.Replace(sign(t, good, obj, time.Now()), "/exports/exports/", "/exports/other/", 1)
		}, http.StatusForbidden},
		{"expired: 1s lifetime, signed 5s ago", func(t *testing.T) string {
			return sign(t, newS3Presigner(t, srv, time.Second, srv.SecretKey), obj, time.Now().Add(-5*time.Second))
		}, http.StatusForbidden},
		{"wrong secret", func(t *testing.T) string {
			return sign(t, newS3Presigner(t, srv, time.Minute, "not-the-secret"), obj, time.Now())
		}, http.StatusForbidden},
		{"missing key, valid signature", func(t *testing.T) string {
			missing := obj
			missing.Key = "exports/proj 1/missing (1).csv"
			return sign(t, good, missing, time.Now())
		}, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := tc.url(t)
			status, _, body := fetch(t, plainClient(t), u)
			if status != tc.want {
				t.Errorf("GET = %d, want %d; body: %s\nURL: %s", status, tc.want, body, u)
			}
		})
	}
}

// TestPresignedURLBehindRedirect follows the real flow with a plain client:
// an API on 127.0.0.1 answers 302 to the presigned URL, the client follows
// it with its default policy, and S3 (on "localhost") serves the file. Go
// drops the client's Authorization on a redirect to another host; were it
// sent, S3 would reject a request holding both.
func TestPresignedURLBehindRedirect(t *testing.T) {
	srv := testenv.StartS3(t)
	srv.CreateBucket(t, s3Bucket)
	const key = "exports/redirected file.csv"
	want := []byte("id\n42\n")
	srv.PutObject(t, s3Bucket, key, want)
	p := newS3Presigner(t, srv, 15*time.Minute, srv.SecretKey)

	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := p.Presign(r.Context(), Object{Bucket: s3Bucket, Key: key, Filename: "Résumé.csv", ContentType: contentType}, time.Now(), time.Time{})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Location", s.URL)
		w.WriteHeader(http.StatusFound)
	}))
	t.Cleanup(api.Close)

	client := &http.Client{Timeout: 10 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	req, err := http.NewRequest(http.MethodGet, api.URL+"/v1/exports/x/download", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer hb_test_key")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("after the redirect: %d %q, want 200 %q", resp.StatusCode, body, want)
	}
	if got := resp.Header.Get("Content-Disposition"); got != ContentDisposition("Résumé.csv") {
		t.Errorf("Content-Disposition = %q", got)
	}
	if resp.Request.URL.Host == strings.TrimPrefix(api.URL, "http://") {
		t.Errorf("the final request went to the API, not to S3: %s", resp.Request.URL)
	}
}
