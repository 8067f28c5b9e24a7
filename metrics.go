package exportdownload

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/fleet"
)

// metrics are the series of the docs/operations.md "Metrics and logs", with every
// labelled child resolved at provision so the hot path only increments.
type metrics struct {
	outcomes      []prometheus.Counter                // by decision.Outcome
	lookups       [numLocalAnswers]prometheus.Counter // by the local answer's label (lookup.go)
	upstream      map[string]prometheus.Counter       // by code_class
	upstreamTime  prometheus.Observer
	presignNew    prometheus.Counter
	presignReused prometheus.Counter
	refreshes     prometheus.Counter
}

const namespace, subsystem = "caddy", "export_download"

// newMetrics registers the collectors on this config's registry (Caddy
// makes a new one per config load), reusing those another instance of the
// handler registered on it already.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	r := registrar{reg: reg}
	requests := r.counters("requests_total", "Download requests answered by export_download, by outcome.", "outcome")
	lookups := r.counters("cache_lookups_total", "Cache lookups of download requests, by result.", "result")
	upstream := r.counters("upstream_requests_total", "Calls of the metadata API, by status class (error: no response).", "code_class")
	duration := r.histogram("upstream_duration_seconds", "Duration of metadata API calls.",
		[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5})
	presigns := r.counters("presigns_total", "Presigned URLs handed out, by whether a URL was reused.", "reused")
	refreshes := r.counters("refreshes_total", "Background refresh-ahead calls started.")
	if r.err != nil {
		return nil, r.err
	}
	m := &metrics{
		upstream:      make(map[string]prometheus.Counter),
		upstreamTime:  duration,
		presignNew:    presigns.WithLabelValues("false"),
		presignReused: presigns.WithLabelValues("true"),
		refreshes:     refreshes.WithLabelValues(),
	}
	for _, o := range decision.Outcomes() {
		m.outcomes = append(m.outcomes, requests.WithLabelValues(o.String()))
	}
	for a := range numLocalAnswers {
		m.lookups[a] = lookups.WithLabelValues(lookupLabels[a])
	}
	for _, class := range []string{"2xx", "3xx", "4xx", "5xx", "other", "error"} {
		m.upstream[class] = upstream.WithLabelValues(class)
	}
	return m, nil
}

// registrar registers this package's collectors on one registry and keeps
// the first error.
type registrar struct {
	reg prometheus.Registerer
	err error
}

// counters registers a counter with the labels given (none: one series).
func (r *registrar) counters(name, help string, labels ...string) *prometheus.CounterVec {
	return registerOn(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}, labels))
}

func (r *registrar) histogram(name, help string, buckets []float64) prometheus.Histogram {
	return registerOn(r, prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: subsystem, Name: name, Help: help, Buckets: buckets}))
}

func (r *registrar) gauges(name, help string, labels ...string) *prometheus.GaugeVec {
	return registerOn(r, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}, labels))
}

// registerOn registers c, or returns the collector of the same description
// that is registered already.
func registerOn[C prometheus.Collector](r *registrar, c C) C {
	if r.err != nil {
		return c
	}
	if err := r.reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		r.err = err
	}
	return c
}

// observeUpstream counts one upstream call; status 0 means no response.
func (m *metrics) observeUpstream(status int, d time.Duration, err error) {
	class := "error"
	switch {
	case status >= 200 && status < 300:
		class = "2xx"
	case status >= 300 && status < 400:
		class = "3xx"
	case status >= 400 && status < 500:
		class = "4xx"
	case status >= 500 && status < 600:
		class = "5xx"
	case status != 0:
		class = "other"
	}
	m.upstream[class].Inc()
	if status != 0 || err != nil {
		m.upstreamTime.Observe(d.Seconds())
	}
}

// fleetMetrics are one fleet's series in one config's registry; the pooled
// client reports to every config that uses it through an Observer.
// fleet_up has a child per fleet (label fleet = "<prefix>@<first address
// or sentinel master name>"): two fleet blocks in one config are two
// series, and neither hides the other being down.
type fleetMetrics struct {
	lookups       map[string]prometheus.Counter
	invalidations map[string]prometheus.Counter
	lag           prometheus.Observer
	up            prometheus.Gauge
}

func newFleetMetrics(reg prometheus.Registerer, fleetName string) (*fleetMetrics, error) {
	r := registrar{reg: reg}
	lookups := r.counters("fleet_lookups_total", "Lookups of shared decisions in the fleet tier, by result.", "result")
	invs := r.counters("fleet_invalidations_total", "Invalidations sent to or received from the fleet, by direction.", "direction")
	lag := r.histogram("fleet_invalidation_lag_seconds", "Time from an invalidation event written to it applied on this node.",
		[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5})
	up := r.gauges("fleet_up", "1 while this node reads the fleet's invalidation stream, else 0; one series per fleet.", "fleet")
	if r.err != nil {
		return nil, r.err
	}
	m := &fleetMetrics{lookups: map[string]prometheus.Counter{}, invalidations: map[string]prometheus.Counter{}, lag: lag,
		up: up.WithLabelValues(fleetName)}
	for _, r := range fleet.LookupResults {
		m.lookups[r] = lookups.WithLabelValues(r)
	}
	for _, d := range []string{"sent", "received"} {
		m.invalidations[d] = invs.WithLabelValues(d)
	}
	return m, nil
}

// Lookup, Invalidation, Lag and Up implement fleet.Observer.
func (m *fleetMetrics) Lookup(result string) {
	if c := m.lookups[result]; c != nil {
		c.Inc()
	}
}

func (m *fleetMetrics) Invalidation(direction string) {
	if c := m.invalidations[direction]; c != nil {
		c.Inc()
	}
}

func (m *fleetMetrics) Lag(d time.Duration) { m.lag.Observe(d.Seconds()) }

func (m *fleetMetrics) Up(up bool) {
	if up {
		m.up.Set(1)
	} else {
		m.up.Set(0)
	}
}
