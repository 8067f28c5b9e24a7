package exportdownload

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/exportedge/caddy-export-download/internal/decision"
)

// lookupResult is the bounded `result` label of cache lookups.
type lookupResult uint8

const (
	lookupHit       lookupResult = iota // fresh entry
	lookupStale                         // stale entry served, the upstream failed
	lookupMiss                          // asked the upstream
	lookupCollapsed                     // waited on another request's call
	lookupRefreshed                     // entry past freshness, asked the upstream
	lookupBypass                        // rules 1–2, or caching disabled
	numLookups
)

var lookupNames = [numLookups]string{"hit", "stale", "miss", "collapsed", "refreshed", "bypass"}

func (l lookupResult) String() string { return lookupNames[l] }

// metrics are the README\'s "Metrics and logs" series, with every labelled child resolved at
// provision so the hot path only increments.
type metrics struct {
	outcomes      []prometheus.Counter // by decision.Outcome
	lookups       [numLookups]prometheus.Counter
	upstream      map[string]prometheus.Counter // by code_class
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
	requests, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "requests_total",
		Help: "Download requests answered by export_download, by outcome.",
	}, []string{"outcome"}))
	if err != nil {
		return nil, err
	}
	lookups, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "cache_lookups_total",
		Help: "Cache lookups of download requests, by result.",
	}, []string{"result"}))
	if err != nil {
		return nil, err
	}
	upstream, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "upstream_requests_total",
		Help: "Calls of the metadata API, by status class (error: no response).",
	}, []string{"code_class"}))
	if err != nil {
		return nil, err
	}
	duration, err := register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "upstream_duration_seconds",
		Help:    "Duration of metadata API calls.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}))
	if err != nil {
		return nil, err
	}
	presigns, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "presigns_total",
		Help: "Presigned URLs handed out, by whether a URL was reused.",
	}, []string{"reused"}))
	if err != nil {
		return nil, err
	}
	refreshes, err := register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "refreshes_total",
		Help: "Background refresh-ahead calls started.",
	}))
	if err != nil {
		return nil, err
	}

	m := &metrics{
		upstream:      make(map[string]prometheus.Counter),
		upstreamTime:  duration,
		presignNew:    presigns.WithLabelValues("false"),
		presignReused: presigns.WithLabelValues("true"),
		refreshes:     refreshes,
	}
	for _, o := range decision.Outcomes() {
		m.outcomes = append(m.outcomes, requests.WithLabelValues(o.String()))
	}
	for i := range m.lookups {
		m.lookups[i] = lookups.WithLabelValues(lookupResult(i).String())
	}
	for _, class := range []string{"2xx", "3xx", "4xx", "5xx", "other", "error"} {
		m.upstream[class] = upstream.WithLabelValues(class)
	}
	return m, nil
}

// register registers c, or returns the collector of the same description
// that is registered already.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
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
