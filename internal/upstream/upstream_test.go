package upstream

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// testID is a valid, lowercased export id, as the handler passes it.
const testID = "3f2b8c4e-9a1d-4c6e-8b7f-2d5e6a9c0b1d"

// testUA is the User-Agent the tests configure, to see it arrive.
const testUA = "caddy-export-download/test"

func newTestClient(t *testing.T, base string, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{
		BaseURL:   base,
		Path:      "/v1/exports/{id}",
		Timeout:   2 * time.Second,
		Forward:   []string{"Authorization"},
		UserAgent: testUA,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	t.Cleanup(c.Close)
	return c
}

// envelope wraps data in the "Get export" envelope.
func envelope(data string) string {
	return `{"data":` + data + `,"meta":{"request_id":"req_up"}}`
}

// exportData is a completed export's data object for testID with more
// members appended (each starting with a comma).
func exportData(more string) string {
	return `{"id":"` + testID + `","project_id":"proj_1","status":"completed"` + more + `}`
}

// sized returns a usable 200 body of exactly n bytes, padded in a string
// field, so that the 1 MiB cap is tested on valid JSON.
func sized(t *testing.T, n int) string {
	t.Helper()
	base := envelope(exportData(`,"pad":""`))
	body := envelope(exportData(`,"pad":"` + strings.Repeat("x", n-len(base)) + `"`))
	if len(body) != n {
		t.Fatalf("sized: built %d bytes, want %d", len(body), n)
	}
	return body
}

// reply answers every request with status, header and body.
func reply(status int, header http.Header, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header()[k] = v
		}
		if body != "" && w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func ok(body string) http.HandlerFunc { return reply(http.StatusOK, nil, body) }

func gzipped(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// proxyHits counts requests that reached the HTTP proxy TestMain puts in
// the environment.
var proxyHits atomic.Int32

func TestMain(m *testing.M) {
	// net/http reads the proxy environment once per process: set it before
	// any request. Loopback URLs are never proxied, so only the test that
	// asks for another host can reach it.
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxyHits.Add(1)
		ok(envelope(exportData("")))(w, r)
	}))
	for _, k := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"} {
		os.Setenv(k, proxy.URL)
	}
	for _, k := range []string{"NO_PROXY", "no_proxy", "REQUEST_METHOD"} {
		os.Unsetenv(k)
	}
	code := m.Run()
	proxy.Close()
	os.Exit(code)
}

// TestFetchClassification is the fault table of the docs/configuration.md "The upstream contract": each upstream
// reply is either a usable answer of the right kind or a *Failure.
func TestFetchClassification(t *testing.T) {
	// A redirect target that must never be asked: redirects are failures,
	// not followed (docs/configuration.md "The upstream contract").
	var redirected atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirected.Add(1)
		ok(envelope(exportData("")))(w, r)
	}))
	t.Cleanup(target.Close)
	redirect := func(status int) http.HandlerFunc {
		return reply(status, http.Header{"Location": {target.URL + "/v1/exports/" + testID}}, envelope(exportData("")))
	}

	// Compressed once here: compressing in the handler would eat the
	// client's timeout under -race.
	bomb := gzipped(t, `{"data":`+strings.Repeat(" ", 8<<20)+exportData("")+`}`)
	small := gzipped(t, envelope(exportData("")))

	mustTime := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	withExpiry := func(v string) string { return envelope(exportData(`,"expires_at":` + v)) }
	withStatus := func(member string) string {
		return envelope(`{"id":"` + testID + `","project_id":"proj_1"` + member + `}`)
	}

	type want struct {
		fail       bool
		failStatus int // the Failure's Status, when fail
		kind       decision.Kind
		status     string
		expires    time.Time // zero: no expiry
		retryAfter string
	}
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    want
		check   func(t *testing.T, a *decision.Answer)
	}{
		{
			name: "200 usable: strings and numbers kept, the rest ignored",
			handler: ok(envelope(exportData(`,"expires_at":"2026-12-01T10:00:00Z","format":"csv",` +
				`"row_count":1234,"size":1.5e3,"neg":-7,"empty":"","name":"Q3 \"report\" \u00e9",` +
				`"flag":true,"nothing":null,"links":{"self":"/x","n":1},"tags":["a",2]`))),
			want: want{kind: decision.KindExport, status: "completed", expires: mustTime("2026-12-01T10:00:00Z")},
			check: func(t *testing.T, a *decision.Answer) {
				want := map[string]string{
					"id": testID, "project_id": "proj_1", "status": "completed",
					"expires_at": "2026-12-01T10:00:00Z", "format": "csv", "row_count": "1234",
					"size": "1.5e3", "neg": "-7", "empty": "", "name": `Q3 "report" é`,
				}
				if !maps.Equal(a.Fields, want) {
					t.Errorf("Fields = %q\nwant     %q", a.Fields, want)
				}
			},
		},
		{name: "200 pending", handler: ok(envelope(`{"id":"` + testID + `","status":"pending","expires_at":null}`)),
			want: want{kind: decision.KindExport, status: "pending"}},
		{name: "200 unknown status is still usable", handler: ok(envelope(`{"status":"archived"}`)),
			want: want{kind: decision.KindExport, status: "archived"}},

		{name: "401", handler: reply(401, nil, `{"error":{"code":"UNAUTHORIZED","message":"x"}}`), want: want{kind: decision.KindUnauthorized}},
		{name: "403", handler: reply(403, nil, `{"error":{"code":"FORBIDDEN","message":"x"}}`), want: want{kind: decision.KindUnauthorized}},
		{name: "401 with a non-JSON body", handler: reply(401, nil, "nope"), want: want{kind: decision.KindUnauthorized}},
		{name: "404", handler: reply(404, nil, `{"error":{"code":"NOT_FOUND","message":"x"}}`), want: want{kind: decision.KindNotFound}},
		{name: "429 Retry-After seconds", handler: reply(429, http.Header{"Retry-After": {"7"}}, ""),
			want: want{kind: decision.KindRateLimited, retryAfter: "7"}},
		{name: "429 Retry-After HTTP-date", handler: reply(429, http.Header{"Retry-After": {"Wed, 21 Oct 2015 07:28:00 GMT"}}, ""),
			want: want{kind: decision.KindRateLimited, retryAfter: "Wed, 21 Oct 2015 07:28:00 GMT"}},
		{name: "429 Retry-After garbage dropped", handler: reply(429, http.Header{"Retry-After": {"soon, maybe"}}, ""),
			want: want{kind: decision.KindRateLimited}},
		{name: "429 Retry-After negative dropped", handler: reply(429, http.Header{"Retry-After": {"-1"}}, ""),
			want: want{kind: decision.KindRateLimited}},
		{name: "429 Retry-After header injection dropped", handler: reply(429, http.Header{"Retry-After": {"7; evil=1"}}, ""),
			want: want{kind: decision.KindRateLimited}},
		{name: "429 no Retry-After", handler: reply(429, nil, `{"error":{"code":"RATE_LIMITED","message":"x"}}`),
			want: want{kind: decision.KindRateLimited}},

		{name: "500", handler: reply(500, nil, `{"error":{}}`), want: want{fail: true, failStatus: 500}},
		{name: "502", handler: reply(502, nil, "bad gateway"), want: want{fail: true, failStatus: 502}},
		{name: "503", handler: reply(503, http.Header{"Retry-After": {"5"}}, ""), want: want{fail: true, failStatus: 503}},
		{name: "418", handler: reply(418, nil, "teapot"), want: want{fail: true, failStatus: 418}},
		{name: "400", handler: reply(400, nil, `{"error":{"code":"INVALID_REQUEST"}}`), want: want{fail: true, failStatus: 400}},
		{name: "204", handler: reply(204, nil, ""), want: want{fail: true, failStatus: 204}},
		// A 201 with a perfectly usable body is still not the "Get export" 200.
		{name: "201 with a usable body", handler: reply(201, nil, envelope(exportData(""))), want: want{fail: true, failStatus: 201}},
		{name: "301 not followed", handler: redirect(301), want: want{fail: true, failStatus: 301}},
		{name: "302 not followed", handler: redirect(302), want: want{fail: true, failStatus: 302}},
		{name: "307 not followed", handler: redirect(307), want: want{fail: true, failStatus: 307}},
		{name: "308 not followed", handler: redirect(308), want: want{fail: true, failStatus: 308}},

		{name: "non-JSON", handler: ok("<html>oops</html>"), want: want{fail: true, failStatus: 200}},
		{name: "empty body", handler: ok(""), want: want{fail: true, failStatus: 200}},
		{name: "truncated JSON", handler: ok(envelope(exportData(""))[:40]), want: want{fail: true, failStatus: 200}},
		{name: "JSON with trailing garbage", handler: ok(envelope(exportData("")) + "x"), want: want{fail: true, failStatus: 200}},
		{name: "JSON array", handler: ok(`[` + envelope(exportData("")) + `]`), want: want{fail: true, failStatus: 200}},
		{name: "JSON string", handler: ok(`"completed"`), want: want{fail: true, failStatus: 200}},
		{name: "data null", handler: ok(`{"data":null}`), want: want{fail: true, failStatus: 200}},
		{name: "data missing", handler: ok(`{"meta":{"request_id":"r"}}`), want: want{fail: true, failStatus: 200}},
		{name: "data an array", handler: ok(`{"data":[{"status":"completed"}]}`), want: want{fail: true, failStatus: 200}},
		{name: "data a string", handler: ok(`{"data":"completed"}`), want: want{fail: true, failStatus: 200}},
		{name: "body of exactly 1 MiB", handler: ok(sized(t, MaxBody)),
			want: want{kind: decision.KindExport, status: "completed"}},
		{name: "body of 1 MiB + 1", handler: ok(sized(t, MaxBody+1)), want: want{fail: true, failStatus: 200}},
		// Valid JSON whose first 1 MiB is valid JSON too: only counting the
		// bytes, not a parse error, can refuse it.
		{name: "1 MiB of JSON + a newline", handler: ok(sized(t, MaxBody) + "\n"), want: want{fail: true, failStatus: 200}},
		{name: "8 MiB chunked body", handler: func(w http.ResponseWriter, r *http.Request) {
			// No Content-Length: the cap must hold on a streamed body too.
			w.WriteHeader(200)
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			_, _ = w.Write([]byte(`{"data":`))
			for range 128 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		}, want: want{fail: true, failStatus: 200}},
		{name: "gzip body accepted", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(small)
		}, want: want{kind: decision.KindExport, status: "completed"}},
		{name: "gzip bomb capped after decompression", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(bomb)
		}, want: want{fail: true, failStatus: 200}},

		{name: "status missing", handler: ok(withStatus("")), want: want{fail: true, failStatus: 200}},
		{name: "status a number", handler: ok(withStatus(`,"status":3`)), want: want{fail: true, failStatus: 200}},
		{name: "status null", handler: ok(withStatus(`,"status":null`)), want: want{fail: true, failStatus: 200}},
		{name: "status an object", handler: ok(withStatus(`,"status":{"v":"completed"}`)), want: want{fail: true, failStatus: 200}},
		{name: "status true", handler: ok(withStatus(`,"status":true`)), want: want{fail: true, failStatus: 200}},
		{name: "status an array", handler: ok(withStatus(`,"status":["completed"]`)), want: want{fail: true, failStatus: 200}},

		{name: "expires_at null", handler: ok(withExpiry("null")), want: want{kind: decision.KindExport, status: "completed"}},
		{name: "expires_at missing", handler: ok(envelope(exportData(""))), want: want{kind: decision.KindExport, status: "completed"}},
		{name: "expires_at with zone offset", handler: ok(withExpiry(`"2026-12-01T10:00:00+02:00"`)),
			want: want{kind: decision.KindExport, status: "completed", expires: mustTime("2026-12-01T08:00:00Z")}},
		{name: "expires_at with negative offset", handler: ok(withExpiry(`"2026-12-01T10:00:00-05:30"`)),
			want: want{kind: decision.KindExport, status: "completed", expires: mustTime("2026-12-01T15:30:00Z")}},
		{name: "expires_at with fractional seconds", handler: ok(withExpiry(`"2026-12-01T10:00:00.123456789Z"`)),
			want: want{kind: decision.KindExport, status: "completed", expires: mustTime("2026-12-01T10:00:00.123456789Z")}},
		{name: "expires_at far past", handler: ok(withExpiry(`"1970-01-01T00:00:00Z"`)),
			want: want{kind: decision.KindExport, status: "completed", expires: mustTime("1970-01-01T00:00:00Z")}},
		{name: "expires_at far future", handler: ok(withExpiry(`"9999-12-31T23:59:59Z"`)),
			want: want{kind: decision.KindExport, status: "completed", expires: mustTime("9999-12-31T23:59:59Z")}},
		{name: "expires_at lowercase t and z", handler: ok(withExpiry(`"2026-12-01t10:00:00z"`)),
			want: want{kind: decision.KindExport, status: "completed", expires: mustTime("2026-12-01T10:00:00Z")}},
		{name: "expires_at leap second", handler: ok(withExpiry(`"2016-12-31T23:59:60Z"`)),
			want: want{kind: decision.KindExport, status: "completed", expires: mustTime("2016-12-31T23:59:59.999999999Z")}},
		{name: "expires_at comma fraction", handler: ok(withExpiry(`"2026-12-01T10:00:00,5Z"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at offset +24:00", handler: ok(withExpiry(`"2026-12-01T10:00:00+24:00"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at ten fraction digits", handler: ok(withExpiry(`"2026-12-01T10:00:00.1234567890Z"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at 2026-13-45", handler: ok(withExpiry(`"2026-13-45"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at month 13 full form", handler: ok(withExpiry(`"2026-13-45T10:00:00Z"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at without zone", handler: ok(withExpiry(`"2026-12-01T10:00:00"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at date only", handler: ok(withExpiry(`"2026-12-01"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at HTTP-date", handler: ok(withExpiry(`"Tue, 01 Dec 2026 10:00:00 GMT"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at unix number", handler: ok(withExpiry(`1796119200`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at unix number as string", handler: ok(withExpiry(`"1796119200"`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at empty string", handler: ok(withExpiry(`""`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at true", handler: ok(withExpiry(`true`)), want: want{fail: true, failStatus: 200}},
		{name: "expires_at an object", handler: ok(withExpiry(`{"at":"2026-12-01T10:00:00Z"}`)), want: want{fail: true, failStatus: 200}},

		{name: "data.id of another export", handler: ok(envelope(`{"id":"00000000-0000-4000-8000-000000000000","status":"completed"}`)),
			want: want{fail: true, failStatus: 200}},
		{name: "data.id a number", handler: ok(envelope(`{"id":42,"status":"completed"}`)), want: want{fail: true, failStatus: 200}},
		{name: "data.id null", handler: ok(envelope(`{"id":null,"status":"completed"}`)), want: want{fail: true, failStatus: 200}},
		{name: "data.id an object", handler: ok(envelope(`{"id":{},"status":"completed"}`)), want: want{fail: true, failStatus: 200}},
		{name: "data.id true", handler: ok(envelope(`{"id":true,"status":"completed"}`)), want: want{fail: true, failStatus: 200}},
		{name: "data.id upper case of the same id", handler: ok(envelope(`{"id":"` + strings.ToUpper(testID) + `","status":"completed"}`)),
			want: want{kind: decision.KindExport, status: "completed"}},
		{name: "data.id absent", handler: ok(envelope(`{"status":"completed"}`)), want: want{kind: decision.KindExport, status: "completed"}},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			c := newTestClient(t, srv.URL, nil)
			from := http.Header{"Authorization": {"Bearer hb_test_key"}}
			a, res, err := c.Fetch(context.Background(), testID, from, "req_test")
			if tc.want.fail {
				var f *Failure
				if !errors.As(err, &f) {
					t.Fatalf("want a *Failure, got answer %+v, err %v", a, err)
				}
				if a != nil {
					t.Errorf("a failure also returned an answer: %+v", a)
				}
				if f.Status != tc.want.failStatus || res.Status != tc.want.failStatus {
					t.Errorf("Failure.Status = %d, Result.Status = %d, want %d (%v)", f.Status, res.Status, tc.want.failStatus, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("want a usable answer, got %v", err)
			}
			if a.Kind != tc.want.kind || a.Export.Status != tc.want.status || a.RetryAfter != tc.want.retryAfter {
				t.Errorf("answer = {Kind %d Status %q RetryAfter %q}, want {Kind %d Status %q RetryAfter %q}",
					a.Kind, a.Export.Status, a.RetryAfter, tc.want.kind, tc.want.status, tc.want.retryAfter)
			}
			if !a.Export.ExpiresAt.Equal(tc.want.expires) || a.Export.ExpiresAt.IsZero() != tc.want.expires.IsZero() {
				t.Errorf("ExpiresAt = %v, want %v", a.Export.ExpiresAt, tc.want.expires)
			}
			if tc.want.kind == decision.KindExport && a.Fields["status"] != tc.want.status {
				t.Errorf("Fields[status] = %q, want %q", a.Fields["status"], tc.want.status)
			}
			if res.Status == 0 || res.Duration <= 0 {
				t.Errorf("Result = %+v, want the status and a duration", res)
			}
			if tc.check != nil {
				tc.check(t, a)
			}
		})
	}
	if n := redirected.Load(); n != 0 {
		t.Errorf("a redirect was followed: the target got %d requests", n)
	}
}

// TestFetchExpiredExportsDecideGone follows past expires_at values through
// the decision table: whatever the representation, a completed export whose
// expires_at has passed must get 410, never a redirect (rule 8 of the README's decision table).
// Year 1 is Go's zero time, what a Go backend emits for an unset time.Time:
// it is a valid RFC 3339 instant in the past, not "no expiry".
func TestFetchExpiredExportsDecideGone(t *testing.T) {
	for _, exp := range []string{
		"1970-01-01T00:00:00Z",
		"0001-01-01T00:00:00Z",
		"0001-01-01T01:00:00+01:00",
		"2000-01-01T00:00:00.5-08:00",
	} {
		a, err := parseExport([]byte(envelope(exportData(`,"expires_at":"`+exp+`"`))), testID)
		if err != nil {
			t.Errorf("expires_at %q: %v", exp, err)
			continue
		}
		if v := decision.Decide(a, time.Now()); v != decision.LinkExpired {
			t.Errorf("expires_at %q: Decide = %+v, want 410 LinkExpired (ExpiresAt read as %v)", exp, v, a.Export.ExpiresAt)
		}
	}
}

// TestFetchTransportFailures covers replies that never arrive whole: each is
// a *Failure, and none takes much longer than the timeout.
func TestFetchTransportFailures(t *testing.T) {
	// done releases handlers that hold connections open.
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	wait := func(r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-done:
		case <-time.After(20 * time.Second):
		}
	}
	hijack := func(t *testing.T, w http.ResponseWriter) (net.Conn, *bufio.ReadWriter) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return nil, nil
		}
		return conn, rw
	}
	server := func(t *testing.T, h http.HandlerFunc) string {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv.URL
	}
	// rawServer accepts connections and hands each to serve.
	rawServer := func(t *testing.T, serve func(net.Conn)) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		t.Cleanup(func() { l.Close(); wg.Wait() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer conn.Close()
					serve(conn)
				}()
			}
		}()
		return "http://" + l.Addr().String()
	}

	cases := []struct {
		name    string
		timeout time.Duration
		start   func(t *testing.T) string
		reason  string // Failure.Reason, when it matters
	}{
		{
			name:    "connection refused",
			timeout: 2 * time.Second,
			start: func(t *testing.T) string {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr := l.Addr().String()
				l.Close()
				return "http://" + addr
			},
			reason: "connection error",
		},
		{
			name:    "accepts but never answers",
			timeout: 300 * time.Millisecond,
			start: func(t *testing.T) string {
				// Reads until the client gives up and closes.
				return rawServer(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
			},
			reason: "timeout",
		},
		{
			name:    "slow headers past the timeout",
			timeout: 300 * time.Millisecond,
			start: func(t *testing.T) string {
				return server(t, func(w http.ResponseWriter, r *http.Request) { wait(r) })
			},
			reason: "timeout",
		},
		{
			name:    "headers then a stalled body",
			timeout: 300 * time.Millisecond,
			start: func(t *testing.T) string {
				return server(t, func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", "1000")
					w.WriteHeader(200)
					_, _ = io.WriteString(w, `{"data":{"status":`)
					w.(http.Flusher).Flush()
					wait(r)
				})
			},
		},
		{
			// Each byte comes well within the timeout: the timeout must bound
			// the whole call, not each read.
			name:    "body trickling a byte every 50ms",
			timeout: 500 * time.Millisecond,
			start: func(t *testing.T) string {
				return server(t, func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(200)
					_, _ = io.WriteString(w, `{"data":`)
					for {
						select {
						case <-r.Context().Done():
							return
						case <-done:
							return
						case <-time.After(50 * time.Millisecond):
						}
						if _, err := io.WriteString(w, " "); err != nil {
							return
						}
						w.(http.Flusher).Flush()
					}
				})
			},
		},
		{
			name:    "connection closed mid-body",
			timeout: 2 * time.Second,
			start: func(t *testing.T) string {
				return server(t, func(w http.ResponseWriter, r *http.Request) {
					conn, rw := hijack(t, w)
					if conn == nil {
						return
					}
					defer conn.Close()
					fmt.Fprintf(rw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"data\":{\"status\":\"completed\"")
					_ = rw.Flush()
				})
			},
		},
		{
			name:    "connection reset (RST) mid-body",
			timeout: 2 * time.Second,
			start: func(t *testing.T) string {
				return server(t, func(w http.ResponseWriter, r *http.Request) {
					conn, rw := hijack(t, w)
					if conn == nil {
						return
					}
					fmt.Fprintf(rw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"data\":{\"statu")
					_ = rw.Flush()
					// Linger 0 makes Close send a RST instead of a FIN.
					if tc, ok := conn.(*net.TCPConn); ok {
						_ = tc.SetLinger(0)
					}
					conn.Close()
				})
			},
		},
		{
			name:    "connection closed before any reply",
			timeout: 2 * time.Second,
			start: func(t *testing.T) string {
				return server(t, func(w http.ResponseWriter, r *http.Request) {
					if conn, _ := hijack(t, w); conn != nil {
						conn.Close()
					}
				})
			},
			reason: "connection error",
		},
		{
			name:    "not HTTP",
			timeout: 2 * time.Second,
			start: func(t *testing.T) string {
				return rawServer(t, func(c net.Conn) {
					// Answer the request, not before it: a reply to no request
					// is dropped by the transport as unsolicited.
					if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
						return
					}
					_, _ = io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n\r\n")
				})
			},
			reason: "connection error",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, tc.start(t), func(cfg *Config) { cfg.Timeout = tc.timeout })
			start := time.Now()
			a, res, err := c.Fetch(context.Background(), testID, http.Header{}, "req_test")
			elapsed := time.Since(start)
			var f *Failure
			if !errors.As(err, &f) {
				t.Fatalf("want a *Failure, got answer %+v, err %v", a, err)
			}
			if a != nil {
				t.Errorf("a failure also returned an answer: %+v", a)
			}
			if tc.reason != "" && f.Reason != tc.reason {
				t.Errorf("Reason = %q, want %q (%v)", f.Reason, tc.reason, err)
			}
			// A generous margin: the machine is noisy, but a call must never
			// hang past its timeout.
			if limit := tc.timeout + time.Second; elapsed > limit {
				t.Errorf("took %v, want at most %v", elapsed, limit)
			}
			if res.Duration <= 0 {
				t.Errorf("Result.Duration = %v, want it measured", res.Duration)
			}
		})
	}
}

// TestFetchCanceled shows a caller that gives up is not held for the whole
// upstream timeout.
func TestFetchCanceled(t *testing.T) {
	done := make(chan struct{})
	arrived := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(done) })
	// A long timeout, so that only the cancellation can end the call early.
	c := newTestClient(t, srv.URL, func(cfg *Config) { cfg.Timeout = 30 * time.Second })

	t.Run("while waiting for the reply", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			<-arrived
			cancel()
		}()
		start := time.Now()
		_, _, err := c.Fetch(ctx, testID, http.Header{}, "req_test")
		var f *Failure
		if !errors.As(err, &f) || !errors.Is(err, context.Canceled) {
			t.Fatalf("want a *Failure wrapping context.Canceled, got %v", err)
		}
		if f.Reason != "canceled" {
			t.Errorf("Reason = %q, want canceled", f.Reason)
		}
		if elapsed := time.Since(start); elapsed > 5*time.Second {
			t.Errorf("returned %v after the call started, want promptly", elapsed)
		}
	})
	t.Run("already canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		start := time.Now()
		_, _, err := c.Fetch(ctx, testID, http.Header{}, "req_test")
		var f *Failure
		if !errors.As(err, &f) || !errors.Is(err, context.Canceled) {
			t.Fatalf("want a *Failure wrapping context.Canceled, got %v", err)
		}
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("took %v, want promptly", elapsed)
		}
	})
	t.Run("parent deadline shorter than the timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, _, err := c.Fetch(ctx, testID, http.Header{}, "req_test")
		var f *Failure
		if !errors.As(err, &f) {
			t.Fatalf("want a *Failure, got %v", err)
		}
		if elapsed := time.Since(start); elapsed > 200*time.Millisecond+2*time.Second {
			t.Errorf("took %v, want about the parent's 200ms", elapsed)
		}
	})
}

// TestFetchHeaders checks what the upstream receives (docs/configuration.md "The upstream contract"): the
// forwarded headers and only those, the request id, Accept, User-Agent and
// the static upstream headers.
func TestFetchHeaders(t *testing.T) {
	up := testenv.NewUpstream(t)
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil)})
	c := newTestClient(t, up.URL, func(cfg *Config) {
		// Forwarding the configured, Accept, User-Agent and request id
		// headers too: the client's values must not replace them.
		cfg.Forward = []string{"Authorization", "x-tenant", "X-Absent", "X-Request-Id", "X-Edge-Token", "Accept", "User-Agent"}
		cfg.Headers = http.Header{"X-Edge-Token": {"edge-secret"}, "X-Multi": {"a", "b"}}
	})
	from := http.Header{
		"Authorization":       {"Bearer hb_live_abc"},
		"X-Tenant":            {"t1", "t2"},
		"Cookie":              {"session=s3cr3t"},
		"X-Other":             {"nope"},
		"Accept":              {"text/html"},
		"User-Agent":          {"curl/8.5"},
		"X-Request-Id":        {"client-chosen"},
		"X-Edge-Token":        {"forged"},
		"Proxy-Authorization": {"Basic eDp5"},
	}
	fromCopy := from.Clone()
	if _, _, err := c.Fetch(context.Background(), testID, from, "req_abcdefghijklmnopqrst"); err != nil {
		t.Fatal(err)
	}
	// A second call must send the same: no header leaks between calls.
	if _, _, err := c.Fetch(context.Background(), testID, http.Header{"Authorization": {"Bearer hb_live_other"}}, "req_second"); err != nil {
		t.Fatal(err)
	}
	reqs := up.Requests()
	if len(reqs) != 2 {
		t.Fatalf("upstream got %d requests, want 2", len(reqs))
	}
	got := reqs[0]
	if got.Method != http.MethodGet || got.Path != "/v1/exports/"+testID {
		t.Errorf("request = %s %s, want GET /v1/exports/%s", got.Method, got.Path, testID)
	}
	for _, h := range []struct {
		name string
		want []string // nil: must be absent
	}{
		{"Authorization", []string{"Bearer hb_live_abc"}},
		{"X-Tenant", []string{"t1", "t2"}},
		{"X-Absent", nil},
		// The request id passed in wins over a forwarded client value.
		{"X-Request-Id", []string{"req_abcdefghijklmnopqrst"}},
		{"Accept", []string{"application/json"}},
		{"User-Agent", []string{testUA}},
		// A configured upstream_header wins: a client cannot replace a
		// shared secret by sending the header itself.
		{"X-Edge-Token", []string{"edge-secret"}},
		{"X-Multi", []string{"a", "b"}},
		{"Cookie", nil},
		{"X-Other", nil},
		{"Proxy-Authorization", nil},
	} {
		if v := got.Header.Values(h.name); !equalStrings(v, h.want) {
			t.Errorf("first call: %s = %q, want %q", h.name, v, h.want)
		}
	}
	second := reqs[1].Header
	if v := second.Values("Authorization"); !equalStrings(v, []string{"Bearer hb_live_other"}) {
		t.Errorf("second call: Authorization = %q", v)
	}
	if v := second.Values("X-Tenant"); v != nil {
		t.Errorf("second call: X-Tenant leaked from the first call: %q", v)
	}
	if v := second.Get("X-Request-Id"); v != "req_second" {
		t.Errorf("second call: X-Request-Id = %q", v)
	}
	if !equalHeaders(from, fromCopy) {
		t.Errorf("Fetch modified the caller's headers: %v, was %v", from, fromCopy)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalHeaders(a, b http.Header) bool {
	return maps.EqualFunc(a, b, equalStrings)
}

// TestFetchIgnoresProxyEnvironment: the caller's credential goes to the
// configured upstream and nowhere else, not to an HTTP_PROXY from the
// environment (TestMain sets one).
func TestFetchIgnoresProxyEnvironment(t *testing.T) {
	const base = "http://upstream.invalid"
	// The control: the environment does name a proxy for this URL.
	probe, _ := http.NewRequest(http.MethodGet, base+"/v1/exports/"+testID, nil)
	if p, err := http.ProxyFromEnvironment(probe); err != nil || p == nil {
		t.Fatalf("test setup: no proxy from the environment for %s (%v, %v)", base, p, err)
	}
	before := proxyHits.Load()
	c := newTestClient(t, base, nil)
	a, _, err := c.Fetch(context.Background(), testID, http.Header{"Authorization": {"Bearer hb_live_secret"}}, "req_x")
	if n := proxyHits.Load() - before; n != 0 {
		t.Errorf("the proxy got %d requests, with the caller's credential", n)
	}
	// upstream.invalid never resolves: without the proxy the call fails.
	var f *Failure
	if !errors.As(err, &f) {
		t.Errorf("want a *Failure (the host does not resolve), got %+v, %v", a, err)
	}
}

// TestFetchConcurrentCallersKeepTheirCredentials runs calls with different
// keys at once (under -race): each must send its own Authorization and get
// the answer for it.
func TestFetchConcurrentCallersKeepTheirCredentials(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		owner, _ := json.Marshal(r.Header.Get("Authorization"))
		ok(envelope(exportData(`,"owner":`+string(owner))))(w, r)
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, srv.URL, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5 {
				key := fmt.Sprintf("Bearer key-%d-%d", g, i)
				a, _, err := c.Fetch(context.Background(), testID, http.Header{"Authorization": {key}}, "req_x")
				if err != nil {
					t.Error(err)
					return
				}
				if a.Fields["owner"] != key {
					t.Errorf("sent %q, upstream saw %q", key, a.Fields["owner"])
				}
			}
		})
	}
	wg.Wait()
}

// TestFetchURL checks how BaseURL and Path make the request URL: a trailing
// slash is not doubled and a base path prefix is kept.
func TestFetchURL(t *testing.T) {
	var mu sync.Mutex
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = r.RequestURI
		mu.Unlock()
		ok(envelope(exportData("")))(w, r)
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		base, path, want string
	}{
		{"", "/v1/exports/{id}", "/v1/exports/" + testID},
		{"/", "/v1/exports/{id}", "/v1/exports/" + testID},
		{"/api", "/v1/exports/{id}", "/api/v1/exports/" + testID},
		{"/api/", "/v1/exports/{id}", "/api/v1/exports/" + testID},
		{"/api/v2", "/internal/exports/{id}/meta", "/api/v2/internal/exports/" + testID + "/meta"},
		{"", "/{id}", "/" + testID},
	} {
		c := newTestClient(t, srv.URL+tc.base, func(cfg *Config) { cfg.Path = tc.path })
		if _, _, err := c.Fetch(context.Background(), testID, http.Header{}, "req_x"); err != nil {
			t.Errorf("base %q path %q: %v", tc.base, tc.path, err)
			continue
		}
		mu.Lock()
		if got != tc.want {
			t.Errorf("base %q path %q: requested %q, want %q", tc.base, tc.path, got, tc.want)
		}
		mu.Unlock()
	}
}

// TestNewRejectsBadConfig: a bad upstream setting fails at provision, not
// at the first request.
func TestNewRejectsBadConfig(t *testing.T) {
	good := Config{BaseURL: "http://127.0.0.1:8080/api", Path: "/v1/exports/{id}", Timeout: 2 * time.Second}
	if c, err := New(good); err != nil {
		t.Fatalf("New(good) = %v", err)
	} else {
		c.Close()
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"empty base", func(c *Config) { c.BaseURL = "" }},
		{"no scheme", func(c *Config) { c.BaseURL = "localhost:8080" }},
		{"host only", func(c *Config) { c.BaseURL = "api.internal" }},
		{"ftp scheme", func(c *Config) { c.BaseURL = "ftp://api.internal" }},
		{"unix scheme", func(c *Config) { c.BaseURL = "unix:///run/app.sock" }},
		{"no host", func(c *Config) { c.BaseURL = "http://" }},
		{"empty host with path", func(c *Config) { c.BaseURL = "http:///v1" }},
		{"query", func(c *Config) { c.BaseURL = "http://api.internal/?a=1" }},
		{"fragment", func(c *Config) { c.BaseURL = "http://api.internal/#x" }},
		// An empty query or fragment still turns the path that follows into
		// a query or fragment: the request would go to the wrong URL.
		{"empty query", func(c *Config) { c.BaseURL = "http://api.internal/api?" }},
		{"empty fragment", func(c *Config) { c.BaseURL = "http://api.internal/api#" }},
		{"user info", func(c *Config) { c.BaseURL = "http://user:pw@api.internal" }},
		{"bad escape", func(c *Config) { c.BaseURL = "http://api.internal/%zz" }},
		{"control byte", func(c *Config) { c.BaseURL = "http://api.internal/\n" }},
		{"empty path", func(c *Config) { c.Path = "" }},
		{"relative path", func(c *Config) { c.Path = "v1/exports/{id}" }},
		{"path without id", func(c *Config) { c.Path = "/v1/exports" }},
		{"path with two ids", func(c *Config) { c.Path = "/v1/{id}/{id}" }},
		{"id not a whole segment (prefix)", func(c *Config) { c.Path = "/v1/x{id}" }},
		{"id not a whole segment (suffix)", func(c *Config) { c.Path = "/v1/{id}.json" }},
		{"path with query", func(c *Config) { c.Path = "/v1/exports/{id}?full=1" }},
		{"zero timeout", func(c *Config) { c.Timeout = 0 }},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }},
	} {
		cfg := good
		tc.mod(&cfg)
		if c, err := New(cfg); err == nil {
			c.Close()
			t.Errorf("%s: New(%+v) accepted it", tc.name, cfg)
		}
	}
}

// TestFailureError keeps the log line useful: reason, status and cause.
func TestFailureError(t *testing.T) {
	cause := errors.New("boom")
	f := &Failure{Reason: "unexpected status", Status: 502, Err: cause}
	if got := f.Error(); got != "upstream failure: unexpected status (status 502): boom" {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(f, cause) {
		t.Error("Failure does not unwrap to its cause")
	}
	if got := (&Failure{Reason: "timeout"}).Error(); got != "upstream failure: timeout" {
		t.Errorf("Error() = %q", got)
	}
}

// FuzzParseExport feeds arbitrary bodies to parseExport: it never panics,
// and whatever it accepts is an export with a string status, the fields of
// data that are strings or numbers, a data.id that is absent or names the
// export, and an expires_at read as the README states it.
func FuzzParseExport(f *testing.F) {
	for _, seed := range []string{
		envelope(exportData("")),
		envelope(exportData(`,"expires_at":null`)),
		envelope(exportData(`,"expires_at":"2026-12-01T10:00:00+02:00"`)),
		envelope(exportData(`,"expires_at":"2026-12-01T10:00:00.123456789Z"`)),
		envelope(exportData(`,"expires_at":"2026-13-45"`)),
		envelope(exportData(`,"expires_at":1796119200`)),
		envelope(exportData(`,"expires_at":""`)),
		envelope(exportData(`,"expires_at":"9999-12-31T23:59:59Z"`)),
		envelope(exportData(`,"expires_at":"0001-01-01T00:00:00Z"`)),
		envelope(exportData(`,"expires_at":"2016-12-31t15:59:60.5-08:00"`)),
		envelope(exportData(`,"expires_at":"2026-12-01T10:00:00,5+24:00"`)),
		envelope(`{"id":null,"status":"completed"}`),
		envelope(exportData(`,"row_count":12,"size":-1.5e-3,"links":{"a":1},"tags":[1],"ok":true`)),
		envelope(`{"id":"` + strings.ToUpper(testID) + `","status":"pending"}`),
		envelope(`{"id":"00000000-0000-4000-8000-000000000000","status":"completed"}`),
		envelope(`{"status":null}`),
		envelope(`{"status":3}`),
		envelope(`{"status":"\u0000\ud800"}`),
		`{"data":null}`,
		`{"Data":{"status":"completed"}}`,
		`{"data":{"status":"a","status":"b"}}`,
		`[]`,
		`null`,
		``,
		"\xff\xfe",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := parseExport(body, testID)
		if err != nil {
			if a != nil {
				t.Fatalf("error %v with an answer %+v", err, a)
			}
			return
		}
		if a.Kind != decision.KindExport {
			t.Fatalf("Kind = %d, want KindExport", a.Kind)
		}
		if a.Fields["status"] != a.Export.Status {
			t.Fatalf("Fields[status] %q != Export.Status %q", a.Fields["status"], a.Export.Status)
		}
		// An independent reading of the same body.
		var env struct {
			Data map[string]any `json:"data"`
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&env); err != nil {
			t.Fatalf("accepted a body encoding/json rejects: %v", err)
		}
		if s, ok := env.Data["status"].(string); !ok || s != a.Export.Status {
			t.Fatalf("accepted status %q, but data.status is %#v", a.Export.Status, env.Data["status"])
		}
		for k, v := range env.Data {
			var want string
			switch v := v.(type) {
			case string:
				want = v
			case json.Number:
				want = v.String()
			default:
				if _, ok := a.Fields[k]; ok {
					t.Fatalf("field %q of type %T kept for templates", k, v)
				}
				continue
			}
			if got, ok := a.Fields[k]; !ok || got != want {
				t.Fatalf("Fields[%q] = %q, %v; want %q", k, got, ok, want)
			}
		}
		if len(a.Fields) > len(env.Data) {
			t.Fatalf("Fields has members data lacks: %q", a.Fields)
		}
		if id, present := env.Data["id"]; present {
			if s, ok := id.(string); !ok || !strings.EqualFold(s, testID) {
				t.Fatalf("accepted data.id %#v for %q", id, testID)
			}
		}
		raw, present := env.Data["expires_at"]
		switch {
		case !present || raw == nil:
			if !a.Export.ExpiresAt.IsZero() {
				t.Fatalf("no expires_at, but ExpiresAt = %v", a.Export.ExpiresAt)
			}
		default:
			s, ok := raw.(string)
			if !ok {
				t.Fatalf("accepted a non-string expires_at %#v", raw)
			}
			want, ok := referenceExpiry(s)
			if !ok {
				t.Fatalf("accepted expires_at %q that the README's grammar refuses", s)
			}
			// A present expires_at must never read as "no expiry", not even
			// year 1, Go's zero time: that one may stand for any instant
			// long past.
			switch {
			case a.Export.ExpiresAt.IsZero():
				t.Fatalf("expires_at %q read as no expiry", s)
			case !a.Export.ExpiresAt.Equal(want):
				t.Fatalf("expires_at %q read as %v, want %v", s, a.Export.ExpiresAt, want)
			case a.Export.ExpiresAt.Location() != time.UTC:
				t.Fatalf("expires_at %q read in %v, want UTC (the shared tier restores UTC)", s, a.Export.ExpiresAt.Location())
			}
		}
	})
}
