package exportdownload

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/testenv"
)

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

// TestSlowAndDownUpstream: a request finishes within upstream_timeout plus
// a margin, and a cached completed export keeps redirecting within
// stale_if_error.
func TestSlowAndDownUpstream(t *testing.T) {
	clock := newClock()
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	up.Set(testID2, testenv.Response{Body: "{}", Delay: 5 * time.Second})
	h := newHandler(t, up, clock, func(h *Handler) { h.UpstreamTimeout = caddy.Duration(300 * time.Millisecond) })

	start := time.Now()
	rec := download(t, h, testID2, testKey)
	if took := time.Since(start); rec.Code != 503 || took > 3*time.Second {
		t.Fatalf("slow upstream: %d after %v, want 503 within the timeout and a margin", rec.Code, took)
	}
	if rec.Header().Get("Retry-After") != "1" {
		t.Errorf("Retry-After %q", rec.Header().Get("Retry-After"))
	}

	if rec := download(t, h, testID, testKey); rec.Code != 302 {
		t.Fatalf("warm-up: %d", rec.Code)
	}
	// The app goes slow past the entry's freshness: stale is served.
	up.Set(testID, testenv.Response{Body: "{}", Delay: 5 * time.Second})
	clock.Advance(6 * time.Minute)
	start = time.Now()
	rec = download(t, h, testID, testKey)
	if took := time.Since(start); rec.Code != 302 || rec.Header().Get("Cache-Status") != "export_download; hit; detail=stale" || took > 3*time.Second {
		t.Fatalf("stale-if-error: %d %q after %v", rec.Code, rec.Header().Get("Cache-Status"), took)
	}
	// Past stale_if_error (10m after the 5m freshness): 503.
	clock.Advance(10 * time.Minute)
	if rec := download(t, h, testID, testKey); rec.Code != 503 {
		t.Fatalf("past stale_if_error: %d", rec.Code)
	}
}

// TestReloadUnderLoad reloads the config three times while downloads run:
// every answer is the right 302 and the cache is kept.
func TestReloadUnderLoad(t *testing.T) {
	e := startEdge(t, "")
	completed(e.up, testID, time.Now().Add(time.Hour))
	path := "/v1/exports/" + testID + "/download"
	if resp, _ := e.get(t, noRedirects, http.MethodGet, path, testKey); resp.StatusCode != 302 {
		t.Fatalf("warm-up: %d", resp.StatusCode)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var ok, bad, dropped atomic.Int64
	var firstBad atomic.Value
	var wg sync.WaitGroup
	// A new connection per request. On Linux, Caddy binds each config's
	// listener with SO_REUSEPORT and closes the old one at a reload, which
	// resets connections still in its accept queue: the client sees EOF
	// before any response. That is Caddy's listener, not this handler, so
	// such a GET is retried (up to 3 times), as an idempotent request may
	// be; every response must be right and every request must succeed.
	client := &http.Client{Timeout: 10 * time.Second, CheckRedirect: noRedirects.CheckRedirect,
		Transport: &http.Transport{DisableKeepAlives: true}}
	do := func() (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, e.base+path, nil)
		req.Header.Set("Authorization", "Bearer "+testKey)
		return client.Do(req)
	}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := do()
				for try := 0; err != nil && try < 3; try++ {
					dropped.Add(1)
					time.Sleep(10 * time.Millisecond)
					resp, err = do()
				}
				if err != nil {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, err.Error())
					continue
				}
				resp.Body.Close()
				loc := resp.Header.Get("Location")
				if resp.StatusCode != 302 || !strings.Contains(loc, "/exports/exports/proj_1/"+testID+".csv?") {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, resp.Status+" "+loc)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	for i := 1; i <= 3; i++ {
		time.Sleep(300 * time.Millisecond)
		runCaddy(t, e.cfg("header X-Reload "+strings.Repeat("x", i)))
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d failed or wrong answers of %d (first: %v)", bad.Load(), bad.Load()+ok.Load(), firstBad.Load())
	}
	if ok.Load() < 10 {
		t.Fatalf("only %d answers during the reloads", ok.Load())
	}
	if n := e.up.CallsFor(testID); n != 1 {
		t.Errorf("%d upstream calls across 3 reloads, want 1 (cache kept)", n)
	}
	t.Logf("%d answers, all 302, across 3 reloads; %d connections reset by the listener swap and retried", ok.Load(), dropped.Load())
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

// FuzzUnmarshalCaddyfile: no Caddyfile text panics the parser, and what it
// accepts names the required subdirectives.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, s := range []string{
		"export_download {\n upstream http://127.0.0.1:9080\n bucket b\n object_key k/{id}.csv\n}",
		"export_download {\n upstream http://x\n bucket {env.B}\n object_key {export.project_id}/{id}\n cache {\n ttl pending 0\n max_entries 10\n }\n}",
		"export_download {\n cache off\n}",
		"export_download {\n upstream_header X-A \"a b\"\n forward_header X-T\n key_prefixes a b\n}",
		"export_download {\n ttl\n }\n}",
		"export_download x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		h := new(Handler)
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
			return
		}
		if h.Upstream == "" || h.Bucket == "" || h.ObjectKey == "" {
			t.Fatalf("accepted a config without upstream, bucket or object_key: %q", input)
		}
	})
}

// FuzzExportFields: whatever the upstream puts in an export's fields, the
// rendered object and the presigned URL never break Location or
// Content-Disposition, and never panic.
func FuzzExportFields(f *testing.F) {
	for _, s := range []string{"proj_1", "a\r\nSet-Cookie: x=1", `"quoted";x`, "Ünïcødé 📊", strings.Repeat("x", 2000), "../../etc/passwd", "%2F?#&=", "\x00\x7f"} {
		f.Add(s, s)
	}
	up := testenv.NewUpstream(f)
	clock := newClock()
	h := newHandler(f, up, clock, func(h *Handler) { h.Filename = "{export.name}.csv" })
	f.Fuzz(func(t *testing.T, project, name string) {
		a := &decision.Answer{Kind: decision.KindExport, Export: decision.Export{Status: "completed"},
			Fields: map[string]string{"project_id": project, "name": name}}
		rec := h.newRecord(testID, a, time.Now())
		if rec.objErr != nil {
			return
		}
		obj, err := h.object(rec)
		if err != nil {
			t.Fatalf("the object of a checked record does not render again: %v", err)
		}
		s, err := h.presigner.Presign(context.Background(), obj, clock.Now(), time.Time{})
		if err != nil {
			return
		}
		if strings.ContainsAny(s.URL, "\r\n\x00 ") {
			t.Fatalf("Location would hold a control character or space: %q", s.URL)
		}
		u, err := url.Parse(s.URL)
		if err != nil {
			t.Fatalf("unparsable Location %q: %v", s.URL, err)
		}
		cd := u.Query().Get("response-content-disposition")
		if strings.ContainsAny(cd, "\r\n\x00") || !strings.HasPrefix(cd, `attachment; filename="`) {
			t.Fatalf("Content-Disposition %q", cd)
		}
		if u.Query().Get("X-Amz-SignedHeaders") != "host" {
			t.Fatalf("signed headers %q", u.Query().Get("X-Amz-SignedHeaders"))
		}
	})
}

// TestReloadWithOtherS3Credentials: a reload that keeps the upstream
// settings but rotates the S3 keys keeps the cached answers, and never
// hands out a URL signed with the old keys.
func TestReloadWithOtherS3Credentials(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	old := newHandler(t, up, nil)
	first := download(t, old, testID, testKey)
	if !strings.Contains(first.Header().Get("Location"), "X-Amz-Credential=AKIDEXAMPLE%2F") {
		t.Fatalf("first URL %q", first.Header().Get("Location"))
	}
	rotated := newHandler(t, up, nil, func(h *Handler) { h.AccessKeyID = "AKIDROTATED" })
	_ = old.Cleanup()
	rec := download(t, rotated, testID, testKey)
	if rec.Header().Get("Cache-Status") != "export_download; hit" || up.CallsFor(testID) != 1 {
		t.Errorf("the answer cache was not kept: %q, %d calls", rec.Header().Get("Cache-Status"), up.CallsFor(testID))
	}
	if loc := rec.Header().Get("Location"); !strings.Contains(loc, "X-Amz-Credential=AKIDROTATED%2F") {
		t.Errorf("URL after rotating keys: %q", loc)
	}
}

// TestConfigErrorsHideUserInfo: a URL with a password in it is refused
// without quoting the password back into Caddy's error log.
func TestConfigErrorsHideUserInfo(t *testing.T) {
	h := &Handler{Upstream: "http://user:hunter2@127.0.0.1:9/", Bucket: "b", ObjectKey: "k",
		Endpoint: "http://AKID:s3cretpw@localhost:1"}
	err := h.Validate()
	if err == nil || !strings.Contains(err.Error(), "upstream:") || !strings.Contains(err.Error(), "endpoint:") {
		t.Fatalf("want upstream and endpoint refused, got %v", err)
	}
	for _, secret := range []string{"hunter2", "s3cretpw"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error quotes the password %q: %v", secret, err)
		}
	}
}
