package exportdownload

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// scrape returns the value of one series on Caddy's /metrics, or -1.
func scrape(t *testing.T, e *edge, series string) float64 {
	t.Helper()
	resp, body := e.get(t, noRedirects, http.MethodGet, "/metrics", "")
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMetricsAcrossReloads provisions, reloads twice, serves and scrapes:
// the series live in each config's registry and keep counting after every
// reload (none panics or freezes).
func TestMetricsAcrossReloads(t *testing.T) {
	e := startEdge(t, "")
	metricsRoute := "metrics /metrics"
	runCaddy(t, e.cfg(metricsRoute))
	completed(e.up, testID, time.Now().Add(time.Hour))
	e.up.Set(testID2, testenv.Response{Status: 503})
	path := "/v1/exports/" + testID + "/download"

	for round := 1; round <= 3; round++ {
		if round > 1 {
			runCaddy(t, e.cfg(metricsRoute+"\n\theader X-Round "+strconv.Itoa(round)))
		}
		for range 3 {
			if resp, _ := e.get(t, noRedirects, http.MethodGet, path, testKey); resp.StatusCode != 302 {
				t.Fatalf("round %d: status %d", round, resp.StatusCode)
			}
		}
		e.get(t, noRedirects, http.MethodGet, "/v1/exports/"+testID2+"/download", testKey)
		e.get(t, noRedirects, http.MethodGet, "/v1/exports/nope/download", testKey)

		if v := scrape(t, e, `caddy_export_download_requests_total{outcome="redirect"}`); v != 3 {
			t.Errorf("round %d: redirect count %v, want 3 (a new registry per config)", round, v)
		}
		if v := scrape(t, e, `caddy_export_download_requests_total{outcome="unavailable"}`); v != 1 {
			t.Errorf("round %d: unavailable count %v, want 1", round, v)
		}
		if v := scrape(t, e, `caddy_export_download_requests_total{outcome="invalid_request"}`); v != 1 {
			t.Errorf("round %d: invalid_request count %v, want 1", round, v)
		}
		if v := scrape(t, e, `caddy_export_download_cache_lookups_total{result="hit"}`); v < 2 {
			t.Errorf("round %d: cache hits %v, want ≥ 2", round, v)
		}
		if v := scrape(t, e, `caddy_export_download_upstream_requests_total{code_class="5xx"}`); v != 1 {
			t.Errorf("round %d: upstream 5xx %v, want 1 (failures are never cached)", round, v)
		}
		if v := scrape(t, e, `caddy_export_download_presigns_total{reused="true"}`); v < 2 {
			t.Errorf("round %d: reused presigns %v, want ≥ 2", round, v)
		}
		if v := scrape(t, e, `caddy_export_download_upstream_duration_seconds_count`); v < 1 {
			t.Errorf("round %d: upstream duration count %v", round, v)
		}
	}
	// The cache outlived both reloads: the completed export was fetched once.
	if n := e.up.CallsFor(testID); n != 1 {
		t.Errorf("%d upstream calls for the completed export across reloads, want 1", n)
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
