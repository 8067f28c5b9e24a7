package presign

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// t0 is a fixed signing time with a fractional second, so that truncation
// to whole seconds shows.
var t0 = time.Date(2026, 11, 29, 12, 0, 0, 400_000_000, time.UTC)

func TestLifetime(t *testing.T) {
	whole := t0.Truncate(time.Second)
	for _, tc := range []struct {
		name          string
		now           time.Time
		expiry        time.Duration
		export, creds time.Time
		want          time.Duration
	}{
		{"presign_expiry alone", whole, 15 * time.Minute, time.Time{}, time.Time{}, 15 * time.Minute},
		{"presign_expiry over 7 days", whole, 30 * 24 * time.Hour, time.Time{}, time.Time{}, MaxLifetime},
		{"presign_expiry exactly 7 days", whole, MaxLifetime, time.Time{}, time.Time{}, MaxLifetime},
		{"everything past 7 days", whole, 10 * 24 * time.Hour, whole.Add(8 * 24 * time.Hour), whole.Add(9 * 24 * time.Hour), MaxLifetime},
		{"export sooner", whole, 15 * time.Minute, whole.Add(10 * time.Minute), time.Time{}, 10 * time.Minute},
		{"export sooner, fraction dropped", whole, 15 * time.Minute, whole.Add(10*time.Minute + 999*time.Millisecond), time.Time{}, 10 * time.Minute},
		{"now with a fraction", t0, 15 * time.Minute, whole.Add(10 * time.Second), time.Time{}, 9 * time.Second},
		{"creds sooner", whole, 15 * time.Minute, time.Time{}, whole.Add(90 * time.Second), 90 * time.Second},
		{"creds sooner than export", whole, 15 * time.Minute, whole.Add(5 * time.Minute), whole.Add(90 * time.Second), 90 * time.Second},
		{"export sooner than creds", whole, 15 * time.Minute, whole.Add(60 * time.Second), whole.Add(90 * time.Second), 60 * time.Second},
		{"presign_expiry sooner than both", whole, 30 * time.Second, whole.Add(time.Hour), whole.Add(time.Hour), 30 * time.Second},
		{"presign_expiry with a fraction", whole, 1500 * time.Millisecond, time.Time{}, time.Time{}, time.Second},
		{"export in exactly 1s", whole, 15 * time.Minute, whole.Add(time.Second), time.Time{}, time.Second},
		{"export in 999ms", whole, 15 * time.Minute, whole.Add(999 * time.Millisecond), time.Time{}, 0},
		{"export now", whole, 15 * time.Minute, whole, time.Time{}, 0},
		{"export past: never negative", whole, 15 * time.Minute, whole.Add(-time.Hour), time.Time{}, 0},
		{"creds past: never negative", whole, 15 * time.Minute, time.Time{}, whole.Add(-time.Hour), 0},
		{"export far past", whole, 15 * time.Minute, time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC), time.Time{}, 0},
		{"negative presign_expiry: never negative", whole, -time.Minute, time.Time{}, time.Time{}, 0},
		{"export far future", whole, 15 * time.Minute, time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), time.Time{}, 15 * time.Minute},
	} {
		got := Lifetime(tc.now, tc.expiry, tc.export, tc.creds)
		if got != tc.want {
			t.Errorf("%s: Lifetime = %v, want %v", tc.name, got, tc.want)
		}
		if got%time.Second != 0 || got < 0 {
			t.Errorf("%s: Lifetime = %v, want whole non-negative seconds", tc.name, got)
		}
	}
}

func TestContentDisposition(t *testing.T) {
	cd := func(fallback, ext string) string {
		return `attachment; filename="` + fallback + `"; filename*=UTF-8''` + ext
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain ASCII", "report.csv", cd("report.csv", "report.csv")},
		{"attr-chars kept", "a!#$&+-.^_`|~z.csv", cd("a!#$&+-.^_`|~z.csv", "a!#$&+-.^_`|~z.csv")},
		{"spaces", "my report 2026.csv", cd("my report 2026.csv", "my%20report%202026.csv")},
		{"double quotes", `say "hi".csv`, cd("say _hi_.csv", "say%20%22hi%22.csv")},
		{"single quotes", `it's.csv`, cd("it's.csv", "it%27s.csv")},
		{"backslash", `a\b.csv`, cd("a_b.csv", "a%5Cb.csv")},
		{"percent", "100%.csv", cd("100_.csv", "100%25.csv")},
		{"percent escape lookalike", "a%20b.csv", cd("a_20b.csv", "a%2520b.csv")},
		{"semicolon, equals, comma", "a;b=c,d.csv", cd("a;b=c,d.csv", "a%3Bb%3Dc%2Cd.csv")},
		{"header injection attempt", "x.csv\"; filename=evil.exe", cd("x.csv_; filename=evil.exe", "x.csv%22%3B%20filename%3Devil.exe")},
		{"CR LF NUL tab DEL removed", "a\r\nb\x00c\td\x7fe.csv", cd("abcde.csv", "abcde.csv")},
		{"response splitting removed", "x.csv\r\nSet-Cookie: a=b", cd("x.csvSet-Cookie: a=b", "x.csvSet-Cookie%3A%20a%3Db")},
		{"C1 controls removed", "a\u0085b\u009bc.csv", cd("abc.csv", "abc.csv")},
		{"line and paragraph separators removed", "a\u2028b\u2029c.csv", cd("abc.csv", "abc.csv")},
		{"bidi overrides and other format characters removed", "report\u202Evsc.exe\u200B.csv", cd("reportvsc.exe.csv", "reportvsc.exe.csv")},
		{"unicode", "Résumé – Q3 📊.csv", cd("R_sum_ _ Q3 _.csv", "R%C3%A9sum%C3%A9%20%E2%80%93%20Q3%20%F0%9F%93%8A.csv")},
		{"CJK", "報告.csv", cd("__.csv", "%E5%A0%B1%E5%91%8A.csv")},
		{"invalid UTF-8", "a\xffb.csv", cd("a_b.csv", "a%EF%BF%BDb.csv")},
		{"empty", "", cd("download", "download")},
		{"only controls", "\r\n\x00", cd("download", "download")},
		{"slashes kept as text", "../../etc/passwd", cd("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd")},
	} {
		if got := ContentDisposition(tc.in); got != tc.want {
			t.Errorf("%s: ContentDisposition(%q)\n got %s\nwant %s", tc.name, tc.in, got, tc.want)
		}
	}
}

// cleanName is the name ContentDisposition must encode, written
// independently of it: control (Cc) and format (Cf, e.g. bidi overrides)
// characters and the Unicode line and paragraph separators removed,
// "download" when nothing is left. Only for valid UTF-8.
func cleanName(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029' {
			return -1
		}
		return r
	}, s)
	if s == "" {
		return "download"
	}
	return s
}

var extValue = regexp.MustCompile(`^(?:[A-Za-z0-9!#$&+\-.^_` + "`" + `|~]|%[0-9A-F]{2})*$`)

// FuzzContentDisposition: whatever the file name, the value is one safe
// header line of the documented shape, and filename* gives the cleaned name
// back.
func FuzzContentDisposition(f *testing.F) {
	for _, s := range []string{
		"report.csv", "", "Résumé – Q3 📊.csv", `a"b\c%d;e`, "a\r\nb\x00c", "\xff\xfe",
		"\u2028\u2029\u0085", "%%%", `"; filename*=UTF-8''evil`, "報告.csv", "\x7f",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		v := ContentDisposition(name)
		for i := 0; i < len(v); i++ {
			if c := v[i]; c < 0x20 || c > 0x7e {
				t.Fatalf("byte %#x at %d in %q", c, i, v)
			}
		}
		const head, mid = `attachment; filename="`, `"; filename*=UTF-8''`
		rest, ok := strings.CutPrefix(v, head)
		if !ok {
			t.Fatalf("does not start with %q: %q", head, v)
		}
		// The fallback runs to the first quote: a bare quote inside it
		// would end it early, and what follows would not be mid.
		end := strings.IndexByte(rest, '"')
		if end < 0 {
			t.Fatalf("unterminated fallback: %q", v)
		}
		fallback := rest[:end]
		ext, ok := strings.CutPrefix(rest[end:], mid)
		if !ok {
			t.Fatalf("the quoted fallback is not followed by filename*: %q", v)
		}
		if fallback == "" || strings.ContainsAny(fallback, `\%`) {
			t.Fatalf("fallback %q is empty or holds \\ or %%", fallback)
		}
		if !extValue.MatchString(ext) {
			t.Fatalf("filename* %q holds more than attr-chars and %%XX", ext)
		}
		decoded, err := url.PathUnescape(ext)
		if err != nil {
			t.Fatalf("filename* %q: %v", ext, err)
		}
		if !utf8.ValidString(decoded) {
			t.Fatalf("filename* decodes to invalid UTF-8: %q", decoded)
		}
		if utf8.ValidString(name) {
			if want := cleanName(name); decoded != want {
				t.Fatalf("filename* decodes to %q, want %q", decoded, want)
			}
			if n, want := len(fallback), utf8.RuneCountInString(cleanName(name)); n != want {
				t.Fatalf("fallback %q has %d characters, want one per character of the name (%d)", fallback, n, want)
			}
		} else {
			for _, r := range decoded {
				if unicode.IsControl(r) {
					t.Fatalf("filename* of invalid UTF-8 %q decodes to a control: %q", name, decoded)
				}
			}
		}
	})
}

// newStatic is a Presigner with static keys and a custom endpoint.
func newStatic(t *testing.T, expiry time.Duration, sessionToken string) *Presigner {
	t.Helper()
	p, err := New(context.Background(), Config{
		Region:          "eu-west-3",
		Endpoint:        "http://s3.test:9000",
		PathStyle:       true,
		AccessKeyID:     "AKIDEXAMPLE",
		SecretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
		SessionToken:    sessionToken,
		Expiry:          expiry,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// allowedQuery is every query parameter a presigned GetObject URL may hold;
// anything else (an x-amz-checksum-mode, say) is something new that the
// SDK started to add, and a plain GET might no longer work.
var allowedQuery = map[string]bool{
	"X-Amz-Algorithm": true, "X-Amz-Credential": true, "X-Amz-Date": true, "X-Amz-Expires": true,
	"X-Amz-SignedHeaders": true, "X-Amz-Signature": true, "X-Amz-Security-Token": true,
	"response-content-disposition": true, "response-content-type": true, "x-id": true,
}

func TestPresignStatic(t *testing.T) {
	whole := t0.Truncate(time.Second)
	obj := Object{Bucket: "exports-eu", Key: "exports/proj 1/Ünï+=&.csv", Filename: "Résumé – Q3 📊.csv", ContentType: "text/csv; charset=utf-8"}
	for _, tc := range []struct {
		name    string
		expiry  time.Duration
		now     time.Time
		export  time.Time
		want    time.Duration
		wantErr error
	}{
		{name: "no export expiry", expiry: 15 * time.Minute, now: whole, want: 15 * time.Minute},
		{name: "presign_expiry 30 days clamped to 7", expiry: 30 * 24 * time.Hour, now: whole, want: MaxLifetime},
		{name: "export sooner", expiry: 15 * time.Minute, now: whole, export: whole.Add(5 * time.Minute), want: 5 * time.Minute},
		{name: "export sooner, fraction dropped", expiry: 15 * time.Minute, now: whole, export: whole.Add(5*time.Minute + 700*time.Millisecond), want: 5 * time.Minute},
		// Signed at 12:00:00 (X-Amz-Date) but the clock says 12:00:00.4: the
		// URL must still end before the export does.
		{name: "now with a fraction", expiry: 15 * time.Minute, now: t0, export: whole.Add(10 * time.Second), want: 9 * time.Second},
		{name: "export in exactly 1s", expiry: 15 * time.Minute, now: whole, export: whole.Add(time.Second), want: time.Second},
		{name: "export in 999ms", expiry: 15 * time.Minute, now: whole, export: whole.Add(999 * time.Millisecond), wantErr: ErrExportExpired},
		{name: "export in 1.3s at now+0.4s", expiry: 15 * time.Minute, now: t0, export: t0.Add(900 * time.Millisecond), wantErr: ErrExportExpired},
		{name: "export now", expiry: 15 * time.Minute, now: whole, export: whole, wantErr: ErrExportExpired},
		{name: "export past", expiry: 15 * time.Minute, now: whole, export: whole.Add(-time.Hour), wantErr: ErrExportExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newStatic(t, tc.expiry, "")
			s, err := p.Presign(context.Background(), obj, tc.now, tc.export)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if s != nil {
					t.Errorf("an error with a URL: %+v", s)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkURL(t, s, obj, "http://s3.test:9000", "AKIDEXAMPLE/20261129/eu-west-3/s3/aws4_request")
			q := mustQuery(t, s.URL)
			if got := q.Get("X-Amz-Expires"); got != strconv.Itoa(int(tc.want/time.Second)) {
				t.Errorf("X-Amz-Expires = %s, want %d", got, int(tc.want/time.Second))
			}
			if s.Lifetime != tc.want {
				t.Errorf("Lifetime = %v, want %v", s.Lifetime, tc.want)
			}
			if !s.SignedAt.Equal(whole) {
				t.Errorf("SignedAt = %v, want %v", s.SignedAt, whole)
			}
			if got := q.Get("X-Amz-Date"); got != whole.Format("20060102T150405Z") {
				t.Errorf("X-Amz-Date = %s, want the now passed in, %s", got, whole.Format("20060102T150405Z"))
			}
			if q.Has("X-Amz-Security-Token") {
				t.Error("X-Amz-Security-Token without a session token")
			}
			if !tc.export.IsZero() && s.Expires().After(tc.export) {
				t.Errorf("URL expires at %v, after the export (%v)", s.Expires(), tc.export)
			}
		})
	}
}

// TestPresignNowInAnotherZone: X-Amz-Date is UTC whatever the zone of now.
func TestPresignNowInAnotherZone(t *testing.T) {
	p := newStatic(t, time.Hour, "")
	now := t0.In(time.FixedZone("X", -10*3600))
	s, err := p.Presign(context.Background(), Object{Bucket: "b", Key: "k", Filename: "f.csv", ContentType: "text/csv"}, now, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustQuery(t, s.URL).Get("X-Amz-Date"); got != "20261129T120000Z" {
		t.Errorf("X-Amz-Date = %s, want 20261129T120000Z", got)
	}
}

func TestPresignSessionToken(t *testing.T) {
	p := newStatic(t, time.Hour, "FwoGZXIvYXdzE//token+/=")
	s, err := p.Presign(context.Background(), Object{Bucket: "b", Key: "k.csv", Filename: "k.csv", ContentType: "text/csv"}, t0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	q := mustQuery(t, s.URL)
	if got := q.Get("X-Amz-Security-Token"); got != "FwoGZXIvYXdzE//token+/=" {
		t.Errorf("X-Amz-Security-Token = %q", got)
	}
	// The token travels in the query, never as a signed header.
	if got := q.Get("X-Amz-SignedHeaders"); got != "host" {
		t.Errorf("X-Amz-SignedHeaders = %q, want host", got)
	}
}

func mustQuery(t *testing.T, raw string) url.Values {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	return u.Query()
}

// checkURL asserts the shape of the README's presigned URL: path-style on the
// endpoint, SigV4 query authentication signing only host, and the response
// overrides.
func checkURL(t *testing.T, s *Signed, obj Object, endpoint, credential string) {
	t.Helper()
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatalf("parse %q: %v", s.URL, err)
	}
	if got := u.Scheme + "://" + u.Host; got != endpoint {
		t.Errorf("URL on %s, want %s", got, endpoint)
	}
	if want := "/" + obj.Bucket + "/" + obj.Key; u.Path != want {
		t.Errorf("path = %q, want path style %q", u.Path, want)
	}
	q := u.Query()
	for k, v := range q {
		if !allowedQuery[k] {
			t.Errorf("unexpected query parameter %s=%q", k, v)
		}
		if len(v) != 1 {
			t.Errorf("query parameter %s given %d times", k, len(v))
		}
	}
	for k, want := range map[string]string{
		"X-Amz-Algorithm":              "AWS4-HMAC-SHA256",
		"X-Amz-Credential":             credential,
		"X-Amz-SignedHeaders":          "host",
		"response-content-disposition": ContentDisposition(obj.Filename),
		"response-content-type":        obj.ContentType,
	} {
		if got := q.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if sig := q.Get("X-Amz-Signature"); !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(sig) {
		t.Errorf("X-Amz-Signature = %q", sig)
	}
	if got, want := q.Get("X-Amz-Expires"), strconv.Itoa(int(s.Lifetime/time.Second)); got != want {
		t.Errorf("X-Amz-Expires = %s, Signed.Lifetime says %s", got, want)
	}
	if got, want := q.Get("X-Amz-Date"), s.SignedAt.UTC().Format("20060102T150405Z"); got != want {
		t.Errorf("X-Amz-Date = %s, Signed.SignedAt says %s", got, want)
	}
	if s.SignedAt.Nanosecond() != 0 || s.Lifetime%time.Second != 0 || s.Lifetime < time.Second {
		t.Errorf("SignedAt %v / Lifetime %v not whole seconds", s.SignedAt, s.Lifetime)
	}
}

// tempCreds is a provider of temporary credentials: call i (from 1) gets
// keys ASIA<i> that expire lifetimes[i-1] after the wall clock (the last
// entry repeats), as the SDK's STS providers do.
type tempCreds struct {
	mu        sync.Mutex
	calls     int
	lifetimes []time.Duration
	err       error
}

func (p *tempCreds) Retrieve(context.Context) (aws.Credentials, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.err != nil {
		return aws.Credentials{}, p.err
	}
	life := p.lifetimes[min(p.calls, len(p.lifetimes))-1]
	return aws.Credentials{
		AccessKeyID:     fmt.Sprintf("ASIA%d", p.calls),
		SecretAccessKey: "secret",
		SessionToken:    fmt.Sprintf("token-%d", p.calls),
		CanExpire:       true,
		Expires:         time.Now().Add(life),
	}, nil
}

func (p *tempCreds) Calls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

func TestPresignTemporaryCredentials(t *testing.T) {
	obj := Object{Bucket: "b", Key: "exports/x.csv", Filename: "x.csv", ContentType: "text/csv"}
	for _, tc := range []struct {
		name      string
		lifetimes []time.Duration
		export    time.Duration // from now; 0: none
		presigns  int
		wantCalls int
		// the URL lifetime, within [min, max]: the credentials' expiry is
		// read from the wall clock, a moment after now.
		min, max   time.Duration
		wantKey    string
		wantErr    bool
		notExpired bool // the error must not be ErrExportExpired
	}{
		{
			// Refreshed first, and the refreshed credentials still expire in
			// 90s: the URL must not outlive them.
			name: "expiring in 90s, refresh does not help", lifetimes: []time.Duration{90 * time.Second},
			presigns: 1, wantCalls: 2, min: 80 * time.Second, max: 90 * time.Second, wantKey: "ASIA2",
		},
		{
			name: "expiring in 90s, refresh gives an hour", lifetimes: []time.Duration{90 * time.Second, time.Hour},
			presigns: 1, wantCalls: 2, min: 15 * time.Minute, max: 15 * time.Minute, wantKey: "ASIA2",
		},
		{
			// Long-lived credentials are cached, not fetched per URL.
			name: "an hour left: no refresh", lifetimes: []time.Duration{time.Hour},
			presigns: 3, wantCalls: 1, min: 15 * time.Minute, max: 15 * time.Minute, wantKey: "ASIA1",
		},
		{
			// The export ends first: no need for fresher credentials.
			name: "export ends before the credentials", lifetimes: []time.Duration{90 * time.Second},
			export: 60 * time.Second, presigns: 1, wantCalls: 1, min: 55 * time.Second, max: 60 * time.Second, wantKey: "ASIA1",
		},
		{
			name: "0.5s left even after refresh", lifetimes: []time.Duration{500 * time.Millisecond},
			presigns: 1, wantCalls: 2, wantErr: true, notExpired: true,
		},
		{
			// Not the export's fault: a 500, not a 410.
			name: "0.5s left, export far off", lifetimes: []time.Duration{500 * time.Millisecond},
			export: time.Hour, presigns: 1, wantCalls: 2, wantErr: true, notExpired: true,
		},
		{
			name: "already expired", lifetimes: []time.Duration{-time.Minute},
			presigns: 1, wantErr: true, notExpired: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prov := &tempCreds{lifetimes: tc.lifetimes}
			p, err := New(context.Background(), Config{Region: "us-east-1", Endpoint: "http://s3.test:9000", PathStyle: true, Credentials: prov, Expiry: 15 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			for range tc.presigns {
				now := time.Now()
				var export time.Time
				if tc.export != 0 {
					export = now.Add(tc.export)
				}
				s, err := p.Presign(context.Background(), obj, now, export)
				if tc.wantErr {
					if err == nil {
						t.Fatalf("want an error, got %+v", s)
					}
					if tc.notExpired && errors.Is(err, ErrExportExpired) {
						t.Fatalf("credentials expiring gave ErrExportExpired (410): %v", err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				checkURL(t, s, obj, "http://s3.test:9000", tc.wantKey+"/"+s.SignedAt.UTC().Format("20060102")+"/us-east-1/s3/aws4_request")
				if s.Lifetime < tc.min || s.Lifetime > tc.max {
					t.Errorf("Lifetime = %v, want within [%v, %v]", s.Lifetime, tc.min, tc.max)
				}
				q := mustQuery(t, s.URL)
				if got, want := q.Get("X-Amz-Security-Token"), "token-"+strings.TrimPrefix(tc.wantKey, "ASIA"); got != want {
					t.Errorf("X-Amz-Security-Token = %q, want %q (the token of the signing keys)", got, want)
				}
			}
			if tc.wantCalls != 0 && prov.Calls() != tc.wantCalls {
				t.Errorf("provider asked %d times, want %d", prov.Calls(), tc.wantCalls)
			}
		})
	}
}

// shrinkingCreds hands out credentials whose lifetimes shrink with each
// call, so that a URL signed with other keys than those whose expiry was
// checked could outlive its keys. It remembers each key's expiry.
type shrinkingCreds struct {
	mu      sync.Mutex
	calls   int
	expires map[string]time.Time
}

func (p *shrinkingCreds) Retrieve(context.Context) (aws.Credentials, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	key := fmt.Sprintf("ASIA%d", p.calls)
	exp := time.Now().Add(10*time.Minute - time.Duration(p.calls)*time.Second)
	p.expires[key] = exp
	return aws.Credentials{AccessKeyID: key, SecretAccessKey: "s", SessionToken: "t" + key, CanExpire: true, Expires: exp}, nil
}

func (p *shrinkingCreds) expiry(key string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.expires[key]
}

// TestPresignConcurrentRefresh presigns from many goroutines while every
// call refreshes the credentials (they expire before presign_expiry): each
// URL must be signed by keys that outlive it, with their own token.
func TestPresignConcurrentRefresh(t *testing.T) {
	prov := &shrinkingCreds{expires: map[string]time.Time{}}
	p, err := New(context.Background(), Config{Region: "us-east-1", Endpoint: "http://s3.test:9000", PathStyle: true, Credentials: prov, Expiry: 15 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	obj := Object{Bucket: "b", Key: "k.csv", Filename: "k.csv", ContentType: "text/csv"}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				s, err := p.Presign(context.Background(), obj, time.Now(), time.Time{})
				if err != nil {
					t.Error(err)
					return
				}
				q := mustQuery(t, s.URL)
				key, _, _ := strings.Cut(q.Get("X-Amz-Credential"), "/")
				if q.Get("X-Amz-Security-Token") != "t"+key {
					t.Errorf("signed by %s with the token %q", key, q.Get("X-Amz-Security-Token"))
				}
				if exp := prov.expiry(key); s.Expires().After(exp) {
					t.Errorf("URL valid until %v, its keys %s expire at %v", s.Expires(), key, exp)
				}
			}
		})
	}
	wg.Wait()
}

func TestPresignCredentialError(t *testing.T) {
	boom := errors.New("sts unreachable")
	p, err := New(context.Background(), Config{Region: "us-east-1", Credentials: &tempCreds{err: boom}, Expiry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Presign(context.Background(), Object{Bucket: "b", Key: "k", Filename: "k", ContentType: "text/csv"}, time.Now(), time.Time{})
	if !errors.Is(err, boom) || errors.Is(err, ErrExportExpired) {
		t.Errorf("err = %v, want the provider's error, not ErrExportExpired", err)
	}
}

func TestNewRejectsBadExpiry(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second} {
		if _, err := New(context.Background(), Config{Region: "us-east-1", AccessKeyID: "a", SecretAccessKey: "b", Expiry: d}); err == nil {
			t.Errorf("New accepted presign_expiry %v", d)
		}
	}
}

// TestPresignVirtualHosted: without path_style the bucket is in the host
// name, and the URL still signs only host.
func TestPresignVirtualHosted(t *testing.T) {
	p, err := New(context.Background(), Config{Region: "us-east-1", AccessKeyID: "AKID", SecretAccessKey: "s", Expiry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Presign(context.Background(), Object{Bucket: "my-exports", Key: "a/b c.csv", Filename: "b c.csv", ContentType: "text/csv"}, t0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "https" || u.Host != "my-exports.s3.us-east-1.amazonaws.com" || u.Path != "/a/b c.csv" {
		t.Errorf("URL = %s, want https://my-exports.s3.us-east-1.amazonaws.com/a/b%%20c.csv", s.URL)
	}
	if got := u.Query().Get("X-Amz-SignedHeaders"); got != "host" {
		t.Errorf("X-Amz-SignedHeaders = %q", got)
	}
}
