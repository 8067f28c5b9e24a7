package exportdownload

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestContractTable walks the decision table of the docs/configuration.md "Responses"
// through ServeHTTP with a fake upstream programmed per row.
func TestContractTable(t *testing.T) {
	clock := newClock()
	now := clock.Now()
	in := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	body := func(status string, expires *time.Time) testenv.Response {
		return testenv.Response{Body: testenv.ExportBody(testID, status, expires, nil)}
	}
	for _, tc := range []struct {
		name       string
		resp       testenv.Response
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{"upstream 401", testenv.Response{Status: 401, Body: `{}`}, 401, "UNAUTHORIZED", "Invalid or missing API key"},
		{"upstream 403", testenv.Response{Status: 403, Body: `{}`}, 401, "UNAUTHORIZED", "Invalid or missing API key"},
		{"upstream 404", testenv.Response{Status: 404, Body: `{}`}, 404, "NOT_FOUND", "Export not found"},
		{"upstream 429", testenv.Response{Status: 429, Header: http.Header{"Retry-After": {"7"}}}, 429, "RATE_LIMITED", "Too many requests"},
		{"pending", body("pending", nil), 400, "EXPORT_NOT_READY", "Export is not yet completed"},
		{"processing", body("processing", nil), 400, "EXPORT_NOT_READY", "Export is not yet completed"},
		{"failed", body("failed", nil), 400, "EXPORT_NOT_READY", "Export failed; create a new export"},
		{"expired", body("expired", nil), 410, "EXPORT_EXPIRED", "Export download link has expired"},
		{"completed, expires_at past", body("completed", in(-time.Minute)), 410, "EXPORT_EXPIRED", "Export download link has expired"},
		{"completed, expires_at now", body("completed", in(0)), 410, "EXPORT_EXPIRED", "Export download link has expired"},
		{"completed, 0.5s left", body("completed", in(500*time.Millisecond)), 410, "EXPORT_EXPIRED", "Export download link has expired"},
		{"unknown status", body("archived", nil), 400, "EXPORT_NOT_READY", "Export is not yet completed"},
		{"status Completed (case differs)", body("Completed", nil), 400, "EXPORT_NOT_READY", "Export is not yet completed"},
		{"completed", body("completed", in(time.Hour)), 302, "", ""},
		{"completed, no expiry", body("completed", nil), 302, "", ""},
		{"upstream 500", testenv.Response{Status: 500, Body: `oops`}, 503, "SERVICE_UNAVAILABLE", "Export service is temporarily unavailable"},
		{"upstream 302", testenv.Response{Status: 302, Header: http.Header{"Location": {"http://127.0.0.1:1/x"}}}, 503, "SERVICE_UNAVAILABLE", "Export service is temporarily unavailable"},
		{"upstream non-JSON", testenv.Response{Body: `<html>`}, 503, "SERVICE_UNAVAILABLE", "Export service is temporarily unavailable"},
		{"status not a string", testenv.Response{Body: `{"data":{"id":"` + testID + `","status":3}}`}, 503, "SERVICE_UNAVAILABLE", "Export service is temporarily unavailable"},
		{"expires_at not RFC 3339", testenv.Response{Body: `{"data":{"id":"` + testID + `","status":"completed","expires_at":"tomorrow"}}`}, 503, "SERVICE_UNAVAILABLE", "Export service is temporarily unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			up.Set(testID, tc.resp)
			h := newHandler(t, up, clock)
			rec := download(t, h, testID, testKey)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.wantStatus, rec.Body)
			}
			reqID := rec.Header().Get("X-Request-Id")
			if !strings.HasPrefix(reqID, "req_") || len(reqID) < 24 {
				t.Errorf("X-Request-Id %q", reqID)
			}
			if tc.wantStatus == 302 {
				if rec.Body.Len() != 0 || rec.Header().Get("Location") == "" {
					t.Errorf("302 with body %q, Location %q", rec.Body, rec.Header().Get("Location"))
				}
				return
			}
			env := decodeEnvelope(t, rec.Body.String())
			if env.Error.Code != tc.wantCode || env.Error.Message != tc.wantMsg || env.Meta.RequestID != reqID {
				t.Errorf("envelope %+v, want %s %q with request id %s", env, tc.wantCode, tc.wantMsg, reqID)
			}
			if got := rec.Header().Get("Location"); got != "" {
				t.Errorf("error answer with Location %q", got)
			}
			switch tc.wantStatus {
			case 429:
				if got := rec.Header().Get("Retry-After"); got != "7" {
					t.Errorf("Retry-After %q, want the upstream's 7", got)
				}
			case 503:
				if got := rec.Header().Get("Retry-After"); got != "1" {
					t.Errorf("Retry-After %q, want 1", got)
				}
			}
		})
	}
}

func TestRedirectResponse(t *testing.T) {
	clock := newClock()
	up := testenv.NewUpstream(t)
	expires := clock.Now().Add(10 * time.Minute)
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", &expires, map[string]any{"name": "Q3 \"report\" ü"})})
	h := newHandler(t, up, clock, func(h *Handler) {
		h.Filename = "{export.name}.csv"
		h.ContentType = "text/csv; charset=utf-8"
	})
	rec := download(t, h, testID, testKey)
	if rec.Code != http.StatusFound {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	for name, want := range map[string]string{
		"Cache-Control":   "private, no-store",
		"Referrer-Policy": "no-referrer",
		"Content-Length":  "0",
		"Cache-Status":    "export_download; fwd=miss; stored",
	} {
		if got := rec.Header().Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	loc, err := url.Parse(rec.Header().Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if loc.Host != "localhost:1" || loc.Path != "/exports/exports/proj_1/"+testID+".csv" {
		t.Errorf("Location %s: want path-style URL of the rendered key", loc)
	}
	q := loc.Query()
	if q.Get("X-Amz-SignedHeaders") != "host" {
		t.Errorf("X-Amz-SignedHeaders = %q, want host only", q.Get("X-Amz-SignedHeaders"))
	}
	if q.Get("X-Amz-Expires") != "600" {
		t.Errorf("X-Amz-Expires = %q, want 600 (the export expires in 10m, before presign_expiry)", q.Get("X-Amz-Expires"))
	}
	if q.Get("X-Amz-Date") != clock.Now().UTC().Format("20060102T150405Z") {
		t.Errorf("X-Amz-Date = %q, want the handler's clock", q.Get("X-Amz-Date"))
	}
	wantCD := `attachment; filename="Q3 _report_ _.csv"; filename*=UTF-8''Q3%20%22report%22%20%C3%BC.csv`
	if got := q.Get("response-content-disposition"); got != wantCD {
		t.Errorf("response-content-disposition = %q, want %q", got, wantCD)
	}
	if got := q.Get("response-content-type"); got != "text/csv; charset=utf-8" {
		t.Errorf("response-content-type = %q", got)
	}
}

func TestPresignExpiryClamp(t *testing.T) {
	clock := newClock()
	for _, tc := range []struct {
		name    string
		expires time.Duration // 0: none
		expiry  time.Duration
		want    string
	}{
		{"presign_expiry wins", time.Hour, 15 * time.Minute, "900"},
		{"export expiry wins", 42 * time.Second, 15 * time.Minute, "42"},
		{"whole seconds, rounded down", 42*time.Second + 900*time.Millisecond, 15 * time.Minute, "42"},
		{"no expiry: presign_expiry", 0, 2 * time.Hour, "7200"},
		{"never over 7 days", 0, 7 * 24 * time.Hour, "604800"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			var exp time.Time
			if tc.expires != 0 {
				exp = clock.Now().Add(tc.expires)
			}
			completed(up, testID, exp)
			h := newHandler(t, up, clock, func(h *Handler) { h.PresignExpiry = caddy.Duration(tc.expiry) })
			rec := download(t, h, testID, testKey)
			loc, _ := url.Parse(rec.Header().Get("Location"))
			if rec.Code != 302 || loc.Query().Get("X-Amz-Expires") != tc.want {
				t.Fatalf("status %d, X-Amz-Expires %q, want %s", rec.Code, loc.Query().Get("X-Amz-Expires"), tc.want)
			}
		})
	}
}

func TestAPIKeyRule(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, func(h *Handler) { h.KeyPrefixes = []string{"hb_live_", "hb_test_"} })
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"missing", nil, 401},
		{"empty", map[string]string{"Authorization": ""}, 401},
		{"Basic", map[string]string{"Authorization": "Basic aGI6eA=="}, 401},
		{"Bearer alone", map[string]string{"Authorization": "Bearer"}, 401},
		{"Bearer and space", map[string]string{"Authorization": "Bearer "}, 401},
		{"Bearer with inner space", map[string]string{"Authorization": "Bearer hb_test_a b"}, 401},
		{"wrong prefix", map[string]string{"Authorization": "Bearer sk_live_abc"}, 401},
		{"Bearerx", map[string]string{"Authorization": "Bearerhb_test_abc"}, 401},
		{"bearer lower case", map[string]string{"Authorization": "bearer hb_test_abc"}, 302},
		{"BEARER upper case", map[string]string{"Authorization": "BEARER hb_live_abc"}, 302},
		{"two spaces", map[string]string{"Authorization": "Bearer  hb_test_abc"}, 302},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := up.Calls()
			rec := serve(t, h, request{path: "/v1/exports/" + testID + "/download", header: tc.header})
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.want, rec.Body)
			}
			if tc.want == 401 {
				if got := rec.Header().Get("WWW-Authenticate"); got != "Bearer" {
					t.Errorf("WWW-Authenticate = %q", got)
				}
				if got := rec.Header().Get("Cache-Status"); got != "export_download; fwd=bypass" {
					t.Errorf("Cache-Status = %q", got)
				}
				if up.Calls() != before {
					t.Errorf("rule 1 called the upstream")
				}
				env := decodeEnvelope(t, rec.Body.String())
				if env.Error.Code != "UNAUTHORIZED" {
					t.Errorf("code %q", env.Error.Code)
				}
			}
		})
	}
	// Two Authorization headers are refused rather than guessed between.
	rec := serve(t, h, request{path: "/v1/exports/" + testID + "/download",
		multi: http.Header{"Authorization": {"Bearer hb_test_a", "Bearer hb_test_b"}}})
	if rec.Code != 401 {
		t.Errorf("two Authorization headers: status %d", rec.Code)
	}
}

func TestIDRule(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil)
	for _, id := range []string{"nope", "01935abc-def0-7123-4567-890abcdef01", "01935abcdef07123-4567-890abcdef0120", "..", "01935abc-def0-7123-4567-890abcdef01z", "%20"} {
		rec := download(t, h, id, testKey)
		if rec.Code != 400 {
			t.Errorf("id %q: status %d, want 400", id, rec.Code)
			continue
		}
		if env := decodeEnvelope(t, rec.Body.String()); env.Error.Code != "INVALID_REQUEST" || env.Error.Message != "id must be a valid UUID" {
			t.Errorf("id %q: %+v", id, env)
		}
	}
	if up.Calls() != 0 {
		t.Errorf("rule 2 called the upstream %d times", up.Calls())
	}
	// Rule 1 comes first: a bad id without a key is 401.
	if rec := serve(t, h, request{path: "/v1/exports/nope/download"}); rec.Code != 401 {
		t.Errorf("bad id and no key: %d, want 401", rec.Code)
	}
	// An upper-case id is the same export: lowercased for the upstream.
	rec := download(t, h, strings.ToUpper(testID), testKey)
	if rec.Code != 302 {
		t.Fatalf("upper-case id: %d", rec.Code)
	}
	reqs := up.Requests()
	if len(reqs) != 1 || reqs[0].Path != "/v1/exports/"+testID {
		t.Errorf("upstream saw %+v, want one GET of the lowercased id", reqs)
	}
	// And the same cache entry.
	if rec := download(t, h, testID, testKey); rec.Header().Get("Cache-Status") != "export_download; hit" {
		t.Errorf("lowercase after uppercase: %q", rec.Header().Get("Cache-Status"))
	}
}

// TestPathTricks pins what each odd path gets: never a redirect for an id
// other than the one asked, and a documented outcome for each.
func TestPathTricks(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil)
	for _, tc := range []struct {
		name, rawPath string
		want          int // 418: passed to the next handler
		upstreamID    string
	}{
		{"canonical", "/v1/exports/" + testID + "/download", 302, testID},
		{"upper-case UUID", "/v1/exports/" + strings.ToUpper(testID) + "/download", 302, testID},
		{"query string ignored", "/v1/exports/" + testID + "/download?id=" + testID2 + "&x=1", 302, testID},
		{"percent-encoded hex digit is the same id", "/v1/exports/" + strings.Replace(testID, "0", "%30", 1) + "/download", 302, testID},
		{"encoded slash", "/v1/exports/" + testID + "%2F..%2F" + testID2 + "/download", 418, ""},
		{"dot-dot segment", "/v1/exports/%2e%2e/download", 400, ""},
		{"double slash", "/v1/exports//" + testID + "/download", 418, ""},
		{"trailing slash", "/v1/exports/" + testID + "/download/", 418, ""},
		{"id with braces", "/v1/exports/%7B" + testID[1:35] + "%7D/download", 400, ""},
		{"id with NUL", "/v1/exports/" + testID[:35] + "%00/download", 400, ""},
		{"id with CRLF", "/v1/exports/" + testID[:34] + "%0D%0A/download", 400, ""},
		{"empty id", "/v1/exports//download", 400, ""},
		{"very long id", "/v1/exports/" + strings.Repeat("a", 8192) + "/download", 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.Requests())
			req := httpRequest(t, tc.rawPath)
			rec := serveReq(t, h, req)
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d (%s)", rec.Code, tc.want, rec.Body)
			}
			reqs := up.Requests()[before:]
			if tc.upstreamID == "" {
				if len(reqs) != 0 && rec.Code != 302 {
					t.Errorf("asked the upstream %+v", reqs)
				}
				return
			}
			loc, _ := url.Parse(rec.Header().Get("Location"))
			if !strings.Contains(loc.Path, tc.upstreamID) {
				t.Errorf("redirect to %s, want the object of %s", loc.Path, tc.upstreamID)
			}
		})
	}
}

func TestUpstreamRequest(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, func(h *Handler) {
		h.UpstreamHeader = map[string]string{"X-Edge-Secret": "s3cr3t"}
		h.ForwardHeader = []string{"X-Tenant"}
	})
	rec := serve(t, h, request{path: "/v1/exports/" + testID + "/download", header: map[string]string{
		"Authorization": "Bearer " + testKey, "X-Request-Id": "client-id.42", "X-Tenant": "t1", "Cookie": "session=x",
	}})
	if rec.Code != 302 || rec.Header().Get("X-Request-Id") != "client-id.42" {
		t.Fatalf("status %d, X-Request-Id %q", rec.Code, rec.Header().Get("X-Request-Id"))
	}
	reqs := up.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d upstream requests", len(reqs))
	}
	got := reqs[0]
	for name, want := range map[string]string{
		"Authorization": "Bearer " + testKey,
		"X-Request-Id":  "client-id.42",
		"Accept":        "application/json",
		"X-Edge-Secret": "s3cr3t",
		"X-Tenant":      "t1",
		"Cookie":        "",
	} {
		if v := got.Header.Get(name); v != want {
			t.Errorf("upstream %s = %q, want %q", name, v, want)
		}
	}
	if ua := got.Header.Get("User-Agent"); !strings.HasPrefix(ua, "caddy-export-download/") {
		t.Errorf("User-Agent %q", ua)
	}
	if got.Method != http.MethodGet || got.Path != "/v1/exports/"+testID {
		t.Errorf("upstream saw %s %s", got.Method, got.Path)
	}
	// The forwarded header is part of the cache key: another tenant asks again.
	rec = serve(t, h, request{path: "/v1/exports/" + testID + "/download", header: map[string]string{
		"Authorization": "Bearer " + testKey, "X-Tenant": "t2",
	}})
	if rec.Code != 302 || up.Calls() != 2 {
		t.Errorf("other X-Tenant: status %d after %d upstream calls, want a second call", rec.Code, up.Calls())
	}
}

// TestCredentialOnlyToUpstream: the API key goes to the configured
// upstream and nowhere else: not into Location, not into an error body.
func TestCredentialOnlyToUpstream(t *testing.T) {
	const key = "hb_live_TOPSECRET42"
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil)
	rec := download(t, h, testID, key)
	for name, vals := range rec.Header() {
		for _, v := range vals {
			if strings.Contains(v, "TOPSECRET") {
				t.Errorf("response header %s holds the key", name)
			}
		}
	}
	if reqs := up.Requests(); len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+key {
		t.Errorf("the upstream did not get the key: %+v", reqs)
	}
}

func TestRequestID(t *testing.T) {
	up := testenv.NewUpstream(t)
	h := newHandler(t, up, nil)
	for _, tc := range []struct {
		in   string
		keep bool
	}{
		{"abc", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"with space", false},
		{"quote\"", false},
		{"", false},
	} {
		rec := serve(t, h, request{path: "/v1/exports/" + testID + "/download", header: map[string]string{"X-Request-Id": tc.in}})
		got := rec.Header().Get("X-Request-Id")
		if tc.keep && got != tc.in {
			t.Errorf("%q replaced by %q", tc.in, got)
		}
		if !tc.keep && (got == tc.in || !strings.HasPrefix(got, "req_") || len(got) < 24) {
			t.Errorf("%q: got %q, want a new req_ id", tc.in, got)
		}
		if env := decodeEnvelope(t, rec.Body.String()); env.Meta.RequestID != got {
			t.Errorf("body request id %q, header %q", env.Meta.RequestID, got)
		}
	}
}

// TestRequestIDPropagation follows one id from the client to the upstream,
// the response header, the body and the log line.
func TestRequestIDPropagation(t *testing.T) {
	up := testenv.NewUpstream(t)
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "pending", nil, nil)})
	h := newHandler(t, up, nil)
	logs := observe(h)
	rec := serve(t, h, request{path: "/v1/exports/" + testID + "/download", header: map[string]string{"Authorization": "Bearer " + testKey, "X-Request-Id": "req_client-7"}})
	if rec.Header().Get("X-Request-Id") != "req_client-7" {
		t.Errorf("response header %q", rec.Header().Get("X-Request-Id"))
	}
	body, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(body), `"request_id":"req_client-7"`) {
		t.Errorf("body %s", body)
	}
	if reqs := up.Requests(); len(reqs) != 1 || reqs[0].Header.Get("X-Request-Id") != "req_client-7" {
		t.Errorf("upstream did not get the id: %+v", reqs)
	}
	if logs.FilterField(zap.String("request_id", "req_client-7")).Len() != 1 {
		t.Errorf("log line lacks the id")
	}
	// A generated id travels the same way.
	rec = serve(t, h, request{path: "/v1/exports/" + testID2 + "/download", header: map[string]string{"Authorization": "Bearer " + testKey}})
	id := rec.Header().Get("X-Request-Id")
	reqs := up.Requests()
	if !strings.HasPrefix(id, "req_") || reqs[len(reqs)-1].Header.Get("X-Request-Id") != id {
		t.Errorf("generated id %q not forwarded (%q)", id, reqs[len(reqs)-1].Header.Get("X-Request-Id"))
	}
}

func TestHEAD(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	up.Set(testID2, testenv.Response{Body: testenv.ExportBody(testID2, "pending", nil, nil)})
	h := newHandler(t, up, nil)
	for _, id := range []string{testID, testID2} {
		get := download(t, h, id, testKey)
		head := serve(t, h, request{method: http.MethodHead, path: "/v1/exports/" + id + "/download", header: map[string]string{"Authorization": "Bearer " + testKey}})
		if head.Code != get.Code || head.Body.Len() != 0 {
			t.Errorf("%s: HEAD %d with %d body bytes, GET %d", id, head.Code, head.Body.Len(), get.Code)
		}
		for _, name := range []string{"Content-Type", "Content-Length", "Cache-Control", "Location"} {
			if (head.Header().Get(name) == "") != (get.Header().Get(name) == "") {
				t.Errorf("%s: header %s differs between HEAD %q and GET %q", id, name, head.Header().Get(name), get.Header().Get(name))
			}
		}
		if get.Code == 400 && get.Header().Get("Content-Length") != strconv.Itoa(get.Body.Len()) {
			t.Errorf("Content-Length %q for a %d-byte body", get.Header().Get("Content-Length"), get.Body.Len())
		}
	}
}

func TestPassThrough(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil)
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "/v1/exports/" + testID + "/download"},
		{http.MethodPut, "/v1/exports/" + testID + "/download"},
		{http.MethodGet, "/v1/exports/" + testID},
		{http.MethodGet, "/v1/exports/" + testID + "/download/"},
		{http.MethodGet, "/v1/exports//" + testID + "/download"},
		{http.MethodGet, "/v1/exports/a%2Fb/download"},
		{http.MethodGet, "/v1/health"},
		{http.MethodDelete, "/v1/exports/" + testID + "/download"},
	} {
		next := new(nextHandler)
		rec := serve(t, h, request{method: tc.method, path: tc.path, body: "payload", next: next,
			header: map[string]string{"Authorization": "Bearer " + testKey}})
		if rec.Code != http.StatusTeapot || next.Calls() != 1 || next.body != "payload" || rec.Header().Get("Cache-Status") != "" {
			t.Errorf("%s %s: status %d, next ran %d times with body %q", tc.method, tc.path, rec.Code, next.Calls(), next.body)
		}
	}
	if up.Calls() != 0 {
		t.Errorf("pass-through called the upstream %d times", up.Calls())
	}
}

func TestOnUpstreamErrorPassthrough(t *testing.T) {
	up := testenv.NewUpstream(t)
	up.Set(testID, testenv.Response{Status: 502})
	up.Set(testID2, testenv.Response{Status: 404, Body: `{}`})
	h := newHandler(t, up, nil, func(h *Handler) { h.OnUpstreamError = "passthrough" })
	next := new(nextHandler)
	rec := serve(t, h, request{path: "/v1/exports/" + testID + "/download", next: next, header: map[string]string{"Authorization": "Bearer " + testKey}})
	if rec.Code != http.StatusTeapot || next.Calls() != 1 {
		t.Errorf("failure with passthrough: status %d, next ran %d times", rec.Code, next.Calls())
	}
	// A usable answer is still answered at the edge.
	rec = serve(t, h, request{path: "/v1/exports/" + testID2 + "/download", next: next, header: map[string]string{"Authorization": "Bearer " + testKey}})
	if rec.Code != 404 || next.Calls() != 1 {
		t.Errorf("404 with passthrough: status %d", rec.Code)
	}
}

func TestMissingTemplateField(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, func(h *Handler) { h.ObjectKey = "exports/{export.owner}/{id}.csv" })
	rec := download(t, h, testID, testKey)
	if rec.Code != 500 || rec.Header().Get("Location") != "" {
		t.Fatalf("status %d, Location %q: want 500 and never a guessed key", rec.Code, rec.Header().Get("Location"))
	}
	if env := decodeEnvelope(t, rec.Body.String()); env.Error.Code != "INTERNAL_ERROR" {
		t.Errorf("%+v", env)
	}
}

// A field that would make the key or bucket name another object than the
// template means (a dot or empty segment, a control character, a leading
// slash the template does not have, a value over 1 KiB) is a 500 with the
// envelope and a logged reason, never a redirect: some S3-compatible
// stores resolve dot segments (versitygw served exports/p/../../secret.csv
// as secret.csv; internal/presign's TestUnsafeKeysAgainstS3).
func TestUnsafeObjectRefused(t *testing.T) {
	for _, tc := range []struct{ name, key, field string }{
		{"dot-dot segments", "exports/{export.p}/{id}.csv", "p/../../secret"},
		{"a dot segment", "exports/{export.p}/{id}.csv", "."},
		{"an empty segment", "exports/{export.p}/{id}.csv", "a//b"},
		{"a control character", "exports/{export.p}/{id}.csv", "p\u0001q"},
		{"a leading slash from a field", "{export.p}/{id}.csv", "/p"},
		{"a field over 1 KiB", "exports/{export.p}/{id}.csv", strings.Repeat("p", 1025)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, map[string]any{"p": tc.field})})
			h := newHandler(t, up, nil, func(h *Handler) { h.ObjectKey = tc.key })
			logs := observe(h)
			rec := download(t, h, testID, testKey)
			if rec.Code != 500 || rec.Header().Get("Location") != "" {
				t.Fatalf("status %d, Location %q: want 500 and no URL", rec.Code, rec.Header().Get("Location"))
			}
			if env := decodeEnvelope(t, rec.Body.String()); env.Error.Code != "INTERNAL_ERROR" {
				t.Errorf("%+v", env)
			}
			if logs.FilterMessage("cannot build the object to download").Len() != 1 {
				t.Errorf("no error line with the reason")
			}
		})
	}
}

func TestCustomPath(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, func(h *Handler) {
		h.Path = "/api/dl/{id}"
		h.UpstreamPath = "/internal/exports/{id}/meta"
	})
	rec := serve(t, h, request{path: "/api/dl/" + testID, header: map[string]string{"Authorization": "Bearer " + testKey}})
	if rec.Code != 404 {
		// The fake upstream only knows /v1/exports/{id}: the call went to the configured path.
		t.Fatalf("status %d", rec.Code)
	}
	if reqs := up.Requests(); len(reqs) != 1 || reqs[0].Path != "/internal/exports/"+testID+"/meta" {
		t.Errorf("upstream saw %+v", reqs)
	}
}

// observe swaps h's logger for an observer that keeps every level.
func observe(h *Handler) *observer.ObservedLogs {
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	return logs
}

// allText flattens every log entry, message and fields, for searching.
func allText(logs *observer.ObservedLogs) string {
	var b strings.Builder
	for _, e := range logs.All() {
		b.WriteString(e.Level.String() + " " + e.Message)
		enc := zapcore.NewMapObjectEncoder()
		for _, f := range e.Context {
			f.AddTo(enc)
		}
		for k, v := range enc.Fields {
			b.WriteString(" " + k + "=")
			b.WriteString(toString(v))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func toString(v any) string { return fmt.Sprint(v) }

// TestLogsHoldNoSecret drives every kind of answer with a recognisable key
// and checks that no log line at any level holds the key, the S3 secret or
// a signature, while the per-request debug line and the warn on upstream
// failures are there.
func TestLogsHoldNoSecret(t *testing.T) {
	const key = "hb_test_SECRETKEY0123456789"
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Now().Add(time.Hour))
	up.Set(testID2, testenv.Response{Status: 500, Body: `{"echo":"Bearer ` + key + `"}`})
	h := newHandler(t, up, nil, func(h *Handler) { h.ObjectKey = "exports/{export.project_id}/{id}.csv" })
	logs := observe(h)

	var signatures []string
	for _, r := range []request{
		{path: "/v1/exports/" + testID + "/download", header: map[string]string{"Authorization": "Bearer " + key, "X-Request-Id": "trace-1"}},
		{path: "/v1/exports/" + testID + "/download", header: map[string]string{"Authorization": "Bearer " + key}},
		{path: "/v1/exports/" + testID2 + "/download", header: map[string]string{"Authorization": "Bearer " + key}},
		{path: "/v1/exports/not-a-uuid/download", header: map[string]string{"Authorization": "Bearer " + key}},
		{path: "/v1/exports/" + testID + "/download", header: map[string]string{"Authorization": "Basic " + key}},
	} {
		rec := serve(t, h, r)
		if loc := rec.Header().Get("Location"); loc != "" {
			sig := loc[strings.Index(loc, "X-Amz-Signature=")+len("X-Amz-Signature="):]
			signatures = append(signatures, sig)
		}
		if strings.Contains(rec.Body.String(), key) {
			t.Errorf("a response body holds the API key: %s", rec.Body)
		}
	}
	if len(signatures) != 2 {
		t.Fatalf("want 2 redirects, got %d", len(signatures))
	}
	text := allText(logs)
	for _, secret := range append(signatures, key, "SECRETKEY", h.SecretAccessKey, "X-Amz-Signature", "X-Amz-Credential") {
		if strings.Contains(text, secret) {
			t.Errorf("a log line holds %q:\n%s", secret, text)
		}
	}
	if n := logs.FilterMessage("export download").FilterField(zap.String("request_id", "trace-1")).Len(); n != 1 {
		t.Errorf("want one debug line with the client's request id, got %d:\n%s", n, text)
	}
	debug := logs.FilterMessage("export download").All()
	if len(debug) != 5 {
		t.Errorf("want a debug line per request, got %d", len(debug))
	}
	for _, e := range debug {
		fields := e.ContextMap()
		for _, name := range []string{"request_id", "export_id", "outcome", "cache", "upstream_ms"} {
			if _, ok := fields[name]; !ok {
				t.Errorf("debug line lacks %s: %v", name, fields)
			}
		}
		if e.Level != zapcore.DebugLevel {
			t.Errorf("per-request line at %v", e.Level)
		}
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessage("upstream failure").Len(); n != 1 {
		t.Errorf("want one warn for the upstream failure, got %d:\n%s", n, text)
	}
}

// TestRequestPlaceholders: every request the handler answers carries its
// outcome, export id, cache result and (when it went below the local
// cache) the time spent there as placeholders, for access logs; a request
// it passes on carries none.
func TestRequestPlaceholders(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	up.Set(testID2, testenv.Response{Status: 500, Body: "down"})
	h := newHandler(t, up, newClock(), func(h *Handler) { h.ObjectKey = "exports/{id}.csv" })
	const missing = "01935abc-def0-7123-4567-890abcdef099" // the fake upstream answers 404
	for _, tc := range []struct {
		name, method, path, key string
		outcome, id, cache      string // "" : not set
		upstreamMS              bool
	}{
		{"redirect, miss", "GET", "/v1/exports/" + testID + "/download", testKey, "redirect", testID, "miss", true},
		{"redirect, hit", "GET", "/v1/exports/" + strings.ToUpper(testID) + "/download", testKey, "redirect", testID, "hit", false},
		{"HEAD", "HEAD", "/v1/exports/" + testID + "/download", testKey, "redirect", testID, "hit", false},
		{"not found", "GET", "/v1/exports/" + missing + "/download", testKey, "not_found", missing, "miss", true},
		{"not found, cached", "GET", "/v1/exports/" + missing + "/download", testKey, "not_found", missing, "hit", false},
		{"upstream down", "GET", "/v1/exports/" + testID2 + "/download", testKey, "unavailable", testID2, "miss", true},
		{"no key", "GET", "/v1/exports/" + testID + "/download", "", "unauthorized", testID, "bypass", false},
		{"invalid id", "GET", "/v1/exports/nope/download", testKey, "bad_request", "nope", "bypass", false},
		{"passed on", "POST", "/v1/exports/" + testID + "/download", testKey, "", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, nil)
			if tc.key != "" {
				req.Header.Set("Authorization", "Bearer "+tc.key)
			}
			repl := caddy.NewReplacer()
			req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
			if err := h.ServeHTTP(httptest.NewRecorder(), req, new(nextHandler)); err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]string{"outcome": tc.outcome, "export_id": tc.id, "cache": tc.cache} {
				got, ok := repl.GetString("http.export_download." + name)
				if got != want || ok != (want != "") {
					t.Errorf("{http.export_download.%s} = %q (set %v), want %q", name, got, ok, want)
				}
			}
			ms, ok := repl.Get("http.export_download.upstream_ms")
			if _, isFloat := ms.(float64); ok != tc.upstreamMS || (ok && !isFloat) {
				t.Errorf("{http.export_download.upstream_ms} = %v (set %v), want it set: %v", ms, ok, tc.upstreamMS)
			}
		})
	}
	// A fleet's shared decision gives the fleet's word.
	r := testenv.StartRedis(t)
	fh := newHandler(t, up, nil, withFleet(r.Addr))
	waitUntil(t, "the fleet is up", fh.shared.client.Up)
	download(t, fh, testID, testKey)
	fh.caches.decisions.PurgeAll() // as on another node: no local entry
	req := httptest.NewRequest(http.MethodGet, "/v1/exports/"+testID+"/download", nil)
	req.Header.Set("Authorization", "Bearer "+testKey)
	repl := caddy.NewReplacer()
	req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
	if err := fh.ServeHTTP(httptest.NewRecorder(), req, new(nextHandler)); err != nil {
		t.Fatal(err)
	}
	if got, _ := repl.GetString("http.export_download.cache"); got != "fleet_hit" {
		t.Errorf("a shared decision: {http.export_download.cache} = %q, want fleet_hit", got)
	}
}
