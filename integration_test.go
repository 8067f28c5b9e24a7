package exportdownload

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

func TestEndToEndDownload(t *testing.T) {
	e := startEdge(t, `filename "Export {id}.csv"`)
	csv := []byte("id,event,delivered_at\n1,webhook.sent,2026-11-29T12:00:00Z\n2,\"quoted, value\",ü\n")
	e.s3.PutObject(t, "exports", "exports/proj_1/"+testID+".csv", csv)
	completed(e.up, testID, time.Now().Add(time.Hour))

	// A client that does not follow redirects gets exactly 302.
	resp, body := e.get(t, noRedirects, http.MethodGet, "/v1/exports/"+testID+"/download", testKey)
	if resp.StatusCode != http.StatusFound || len(body) != 0 {
		t.Fatalf("status %d, body %q", resp.StatusCode, body)
	}
	loc := resp.Header.Get("Location")
	if loc == "" || resp.Header.Get("Cache-Control") != "private, no-store" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("302 headers: %v", resp.Header)
	}
	u, err := url.Parse(loc)
	if err != nil || u.Query().Get("X-Amz-SignedHeaders") != "host" {
		t.Fatalf("Location %q: want a URL signing only host", loc)
	}

	// A plain GET of Location, with no Authorization, downloads the bytes.
	dl, err := http.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(dl.Body)
	dl.Body.Close()
	if dl.StatusCode != 200 || !bytes.Equal(got, csv) {
		t.Fatalf("download: status %d, %q", dl.StatusCode, got)
	}
	wantCD := `attachment; filename="Export ` + testID + `.csv"; filename*=UTF-8''Export%20` + testID + `.csv`
	if cd := dl.Header.Get("Content-Disposition"); cd != wantCD {
		t.Errorf("Content-Disposition %q, want %q", cd, wantCD)
	}
	if ct := dl.Header.Get("Content-Type"); ct != "text/csv" {
		t.Errorf("Content-Type %q", ct)
	}

	// Like curl -L: follow the redirect. S3 is on another host name
	// (localhost) than the API (127.0.0.1), so Go drops Authorization.
	resp, body = e.get(t, http.DefaultClient, http.MethodGet, "/v1/exports/"+testID+"/download", testKey)
	if resp.StatusCode != 200 || !bytes.Equal(body, csv) {
		t.Fatalf("following the redirect: status %d, %q", resp.StatusCode, body)
	}

	// A changed signature is refused by S3.
	q := u.Query()
	sig := []byte(q.Get("X-Amz-Signature"))
	sig[0] ^= 1
	if sig[0] > 'f' || sig[0] < '0' {
		sig[0] = '0'
	}
	q.Set("X-Amz-Signature", string(sig))
	u.RawQuery = q.Encode()
	bad, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	bad.Body.Close()
	if bad.StatusCode != http.StatusForbidden {
		t.Errorf("tampered signature: status %d, want 403", bad.StatusCode)
	}

	// HEAD: the same status and headers, no body.
	resp, body = e.get(t, noRedirects, http.MethodHead, "/v1/exports/"+testID+"/download", testKey)
	if resp.StatusCode != http.StatusFound || len(body) != 0 || resp.Header.Get("Location") == "" {
		t.Errorf("HEAD: %d %q %v", resp.StatusCode, body, resp.Header)
	}

	// Everything came from one upstream call: the rest were cache hits.
	if n := e.up.CallsFor(testID); n != 1 {
		t.Errorf("%d upstream calls, want 1", n)
	}
}

func TestEndToEndExpiringExport(t *testing.T) {
	e := startEdge(t, "")
	e.s3.PutObject(t, "exports", "exports/proj_1/"+testID+".csv", []byte("a,b\n"))
	const n = 30
	completed(e.up, testID, time.Now().Add(n*time.Second))
	resp, _ := e.get(t, noRedirects, http.MethodGet, "/v1/exports/"+testID+"/download", testKey)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("status %d", resp.StatusCode)
	}
	u, _ := url.Parse(resp.Header.Get("Location"))
	exp, err := strconv.Atoi(u.Query().Get("X-Amz-Expires"))
	if err != nil || exp > n || exp < n-5 {
		t.Fatalf("X-Amz-Expires %q, want at most %d (the export's time left)", u.Query().Get("X-Amz-Expires"), n)
	}
	dl, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	dl.Body.Close()
	if dl.StatusCode != 200 {
		t.Errorf("download of the clamped URL: %d", dl.StatusCode)
	}
}

func TestEndToEndErrorsAndPassThrough(t *testing.T) {
	e := startEdge(t, "")
	e.up.Set(testID2, testenv.Response{Body: testenv.ExportBody(testID2, "pending", nil, nil)})

	resp, body := e.get(t, noRedirects, http.MethodGet, "/v1/exports/"+testID2+"/download", testKey)
	if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("pending: %d %v", resp.StatusCode, resp.Header)
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil || env.Error.Code != "EXPORT_NOT_READY" || env.Meta.RequestID != resp.Header.Get("X-Request-Id") {
		t.Errorf("pending envelope %s: %v", body, err)
	}
	resp, _ = e.get(t, noRedirects, http.MethodGet, "/v1/exports/"+testID+"/download", "sk_other")
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != "Bearer" {
		t.Errorf("wrong key prefix: %d", resp.StatusCode)
	}

	// Other requests reach the app behind reverse_proxy, body included.
	req, _ := http.NewRequest(http.MethodPost, e.base+"/v1/exports", strings.NewReader(`{"format":"csv"}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	pr, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := io.ReadAll(pr.Body)
	pr.Body.Close()
	if pr.StatusCode != 200 || string(pb) != `app:POST /v1/exports {"format":"csv"}` {
		t.Errorf("pass-through: %d %q", pr.StatusCode, pb)
	}
	if e.up.Calls() != 1 {
		t.Errorf("%d metadata calls, want 1 (the pending export)", e.up.Calls())
	}
}

func TestEndToEndInvalidateAndReload(t *testing.T) {
	e := startEdge(t, "")
	e.s3.PutObject(t, "exports", "exports/proj_1/"+testID+".csv", []byte("a,b\n"))
	completed(e.up, testID, time.Now().Add(time.Hour))
	path := "/v1/exports/" + testID + "/download"

	if resp, _ := e.get(t, noRedirects, http.MethodGet, path, testKey); resp.Header.Get("Cache-Status") != "export_download; fwd=miss; stored" {
		t.Fatalf("first request: %d %q", resp.StatusCode, resp.Header.Get("Cache-Status"))
	}
	// Reload with a config that differs elsewhere: the cache is kept.
	runCaddy(t, e.cfg(`header X-Reloaded 1`))
	resp, _ := e.get(t, noRedirects, http.MethodGet, path, testKey)
	if resp.StatusCode != 302 || resp.Header.Get("Cache-Status") != "export_download; hit" || resp.Header.Get("X-Reloaded") != "1" {
		t.Fatalf("after reload: %d %q X-Reloaded=%q", resp.StatusCode, resp.Header.Get("Cache-Status"), resp.Header.Get("X-Reloaded"))
	}
	if n := e.up.CallsFor(testID); n != 1 {
		t.Fatalf("%d upstream calls after reload, want 1", n)
	}

	// A DELETE that the app answers 2xx drops the cached answer.
	resp, _ = e.get(t, noRedirects, http.MethodDelete, "/v1/exports/"+testID, testKey)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	resp, _ = e.get(t, noRedirects, http.MethodGet, path, testKey)
	if resp.Header.Get("Cache-Status") != "export_download; fwd=miss; stored" || e.up.CallsFor(testID) != 2 {
		t.Errorf("after DELETE: %q with %d upstream calls, want a new call", resp.Header.Get("Cache-Status"), e.up.CallsFor(testID))
	}
}

func TestEndToEndConcurrentCold(t *testing.T) {
	e := startEdge(t, "")
	e.up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil), Delay: 300 * time.Millisecond})
	const n = 200
	var wg sync.WaitGroup
	codes := make(chan int, n)
	client := &http.Client{
		Timeout:       20 * time.Second,
		Transport:     &http.Transport{MaxIdleConnsPerHost: n},
		CheckRedirect: noRedirects.CheckRedirect,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/v1/exports/"+testID+"/download", nil)
			req.Header.Set("Authorization", "Bearer "+testKey)
			resp, err := client.Do(req)
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusFound {
			t.Fatalf("a concurrent request got %d", c)
		}
	}
	if calls := e.up.CallsFor(testID); calls != 1 {
		t.Errorf("%d concurrent cold requests made %d upstream calls, want 1", n, calls)
	}
}

// TestEndToEndAccessLogPlaceholders: with Caddy's log_append, the access
// log line of each request carries what it got (docs/operations.md, "Metrics and
// logs"): the outcome, the export id and the cache result, and the time
// below the local cache unless the local cache answered.
func TestEndToEndAccessLogPlaceholders(t *testing.T) {
	e := startEdge(t, "")
	accessLog := filepath.Join(t.TempDir(), "access.log")
	runCaddy(t, e.cfg(`log {
		output file `+accessLog+`
		format json
	}
	log_append outcome {http.export_download.outcome}
	log_append export_id {http.export_download.export_id}
	log_append cache {http.export_download.cache}
	log_append upstream_ms {http.export_download.upstream_ms}`))
	completed(e.up, testID, time.Now().Add(time.Hour))
	missing := "01935abc-def0-7123-4567-890abcdef099" // the fake upstream answers 404
	for _, c := range []struct {
		id     string
		status int
	}{{testID, http.StatusFound}, {testID, http.StatusFound}, {missing, http.StatusNotFound}} {
		if resp, _ := e.get(t, noRedirects, http.MethodGet, "/v1/exports/"+strings.ToUpper(c.id)+"/download", testKey); resp.StatusCode != c.status {
			t.Fatalf("GET %s: %d, want %d", c.id, resp.StatusCode, c.status)
		}
	}

	type line struct {
		Request struct {
			URI string `json:"uri"`
		} `json:"request"`
		Status     int      `json:"status"`
		Outcome    string   `json:"outcome"`
		ExportID   string   `json:"export_id"`
		Cache      string   `json:"cache"`
		UpstreamMS *float64 `json:"upstream_ms"`
	}
	var lines []line
	waitUntil(t, "the access log holds the 3 requests", func() bool {
		b, _ := os.ReadFile(accessLog)
		lines = lines[:0]
		for _, raw := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var l line
			if json.Unmarshal([]byte(raw), &l) == nil && strings.HasPrefix(l.Request.URI, "/v1/exports/") {
				lines = append(lines, l)
			}
		}
		return len(lines) == 3
	})
	for i, want := range []struct {
		status             int
		outcome, id, cache string
		upstream           bool
	}{
		{302, "redirect", testID, "miss", true},
		{302, "redirect", testID, "hit", false},
		{404, "not_found", missing, "miss", true},
	} {
		l := lines[i]
		if l.Status != want.status || l.Outcome != want.outcome || l.ExportID != want.id || l.Cache != want.cache || (l.UpstreamMS != nil) != want.upstream {
			t.Errorf("access log line %d: status %d, outcome %q, export_id %q, cache %q, upstream_ms %v; want %d %q %q %q, upstream_ms set: %v",
				i, l.Status, l.Outcome, l.ExportID, l.Cache, l.UpstreamMS, want.status, want.outcome, want.id, want.cache, want.upstream)
		}
	}
}
