package exportdownload

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

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

// TestObserveUpstream: each upstream call is counted by its status class,
// and its duration observed unless it never started.
func TestObserveUpstream(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		status int
		err    error
		class  string
	}{{200, nil, "2xx"}, {304, nil, "3xx"}, {404, nil, "4xx"}, {503, nil, "5xx"}, {99, nil, "other"}, {0, io.EOF, "error"}, {0, nil, "error"}} {
		before := testutil.ToFloat64(m.upstream[c.class])
		m.observeUpstream(c.status, time.Millisecond, c.err)
		if got := testutil.ToFloat64(m.upstream[c.class]) - before; got != 1 {
			t.Errorf("status %d: %s counted %v times, want once", c.status, c.class, got)
		}
	}
	// Six calls got a response or an error; the last one did neither.
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var observed uint64
	for _, f := range families {
		if f.GetName() == "caddy_export_download_upstream_duration_seconds" {
			observed = f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if observed != 6 {
		t.Errorf("durations observed: %d, want 6", observed)
	}
}

// TestMetricsShareARegistry: handlers of one config (Caddy makes one
// registry per config load) share the series, whoever registered them
// first; a collector of the same name that is not ours is an error.
func TestMetricsShareARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newMetrics(reg)
	if err != nil {
		t.Fatalf("a second handler on the same registry: %v", err)
	}
	a.refreshes.Inc()
	if got := testutil.ToFloat64(b.refreshes); got != 1 {
		t.Errorf("the second handler's refreshes_total reads %v, want the first's 1", got)
	}
	fa, err := newFleetMetrics(reg, "export_download@10.0.0.5:6379")
	if err != nil {
		t.Fatal(err)
	}
	fb, err := newFleetMetrics(reg, "export_download@10.0.0.5:6379")
	if err != nil {
		t.Fatal(err)
	}
	other, err := newFleetMetrics(reg, "staging@10.0.0.6:6379")
	if err != nil {
		t.Fatal(err)
	}
	fa.Lookup("hit")
	fa.Lookup("not a result") // ignored: labels stay bounded
	fa.Invalidation("sent")
	fa.Lag(20 * time.Millisecond)
	fb.Up(true)
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"fleet_lookups_total{result=hit}", testutil.ToFloat64(fb.lookups["hit"]), 1},
		{"fleet_invalidations_total{direction=sent}", testutil.ToFloat64(fb.invalidations["sent"]), 1},
		{"fleet_up", testutil.ToFloat64(fa.up), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	fb.Up(false)
	if got := testutil.ToFloat64(fa.up); got != 0 {
		t.Errorf("fleet_up = %v after Up(false)", got)
	}
	// Two fleets in one config: one series each, so one that is down is
	// not hidden by the other being up.
	other.Up(true)
	if got, down := testutil.ToFloat64(other.up), testutil.ToFloat64(fa.up); got != 1 || down != 0 {
		t.Errorf("fleet_up: the second fleet reads %v and the first %v, want 1 and 0", got, down)
	}

	clash := prometheus.NewRegistry()
	clash.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: subsystem, Name: "requests_total", Help: "not ours"}))
	if _, err := newMetrics(clash); err == nil {
		t.Error("newMetrics took over another collector's name")
	}
}
