package exportdownload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/fleet"
)

// FleetConfig is the `fleet` block: decisions and invalidations shared by
// every node through Redis (7+) or Valkey (7.2+). The node-local cache stays
// primary and Redis is never needed to answer (README, "Running a fleet").
// Nil means off.
type FleetConfig struct {
	// Redis lists host:port of the server, or of Cluster seeds. Required.
	Redis []string `json:"redis,omitempty"`

	// Username and Password authenticate with Redis ACLs; {env.*} and
	// {file.*} expand at provision. Default: none
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// TLS, when set, connects with TLS, verifying the server against
	// CAFile (default: the system roots). There is no "skip verify".
	// Default: plain TCP
	TLS *FleetTLS `json:"tls,omitempty"`

	// Prefix starts every key this module writes (one ACL rule,
	// ~<prefix>:*, covers them). Default: export_download
	Prefix string `json:"prefix,omitempty"`

	// Secret is the HMAC key shared by the fleet, at least 32 bytes: it
	// names the keys of shared decisions and authenticates every value.
	// Use {env.*} or {file.*}. Required.
	Secret string `json:"secret,omitempty"`

	// Timeout bounds each Redis call. Default: 50ms
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// LockWait is the longest wait on another node's upstream call before
	// asking the app directly. Default: 750ms
	LockWait caddy.Duration `json:"lock_wait,omitempty"`
}

// FleetTLS configures TLS to Redis.
type FleetTLS struct {
	// CAFile is a PEM file of the CAs that sign the server's certificate.
	// Default: the system roots
	CAFile string `json:"ca_file,omitempty"`
	// ServerName is the name to verify. Default: the host of the address
	ServerName string `json:"server_name,omitempty"`
}

const (
	defaultFleetPrefix   = "export_download"
	defaultFleetTimeout  = 50 * time.Millisecond
	defaultFleetLockWait = 750 * time.Millisecond
	minFleetSecret       = fleet.MinSecretLen
)

// expand replaces global placeholders ({env.*}, {file.*}) once.
func (c *FleetConfig) expand(repl *caddy.Replacer) {
	for i, a := range c.Redis {
		c.Redis[i] = repl.ReplaceKnown(a, "")
	}
	for _, s := range []*string{&c.Username, &c.Password, &c.Prefix, &c.Secret} {
		// A secret read from a file usually ends with a newline.
		*s = strings.TrimRight(repl.ReplaceKnown(*s, ""), "\r\n")
	}
	if c.TLS != nil {
		c.TLS.CAFile = repl.ReplaceKnown(c.TLS.CAFile, "")
		c.TLS.ServerName = repl.ReplaceKnown(c.TLS.ServerName, "")
	}
}

func (c *FleetConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = defaultFleetPrefix
	}
	if c.Timeout == 0 {
		c.Timeout = caddy.Duration(defaultFleetTimeout)
	}
	if c.LockWait == 0 {
		c.LockWait = caddy.Duration(defaultFleetLockWait)
	}
}

// validate checks the block; messages name the subdirective and never
// quote the password or the secret.
func (c *FleetConfig) validate(known func(string) bool) []error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("export_download: fleet: %s: %s", name, fmt.Sprintf(format, args...)))
	}
	if len(c.Redis) == 0 {
		bad("redis", "required: at least one host:port")
	}
	for _, a := range c.Redis {
		if !known(a) {
			continue
		}
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" || strings.ContainsAny(a, "@/") {
			if strings.Contains(a, "@") {
				// A URL with user info: never quote it, it holds a password.
				bad("redis", "want host:port, not a URL (give username and password as their own subdirectives)")
			} else {
				bad("redis", "%q is not host:port", a)
			}
		}
	}
	if c.Secret == "" {
		bad("secret", "required: at least %d bytes shared by every node (use {env.*} or {file.*})", minFleetSecret)
	} else if known(c.Secret) && len(c.Secret) < minFleetSecret {
		bad("secret", "must be at least %d bytes", minFleetSecret)
	}
	if c.Password != "" && known(c.Password) && strings.ContainsAny(c.Password, "\r\n") {
		bad("password", "must be one line")
	}
	if c.Prefix != "" && known(c.Prefix) && (strings.ContainsAny(c.Prefix, " \t\r\n{}*?[]") || len(c.Prefix) > 64) {
		bad("prefix", "%q must be at most 64 characters without blanks, braces or glob characters", c.Prefix)
	}
	if c.Timeout < 0 {
		bad("timeout", "must be positive")
	}
	if c.LockWait < 0 {
		bad("lock_wait", "must not be negative")
	}
	return errs
}

// clientConfig builds the fleet client's settings; the lease outlives the
// longest upstream call by a margin.
func (c *FleetConfig) clientConfig(upstreamTimeout time.Duration) (fleet.Config, error) {
	cfg := fleet.Config{
		Addrs:    c.Redis,
		Username: c.Username,
		Password: c.Password,
		Prefix:   c.Prefix,
		Secret:   []byte(c.Secret),
		Timeout:  time.Duration(c.Timeout),
		LockWait: time.Duration(c.LockWait),
		LeaseTTL: upstreamTimeout + time.Second,
	}
	if c.TLS != nil {
		t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLS.ServerName}
		if c.TLS.CAFile != "" {
			pem, err := os.ReadFile(c.TLS.CAFile)
			if err != nil {
				return cfg, fmt.Errorf("export_download: fleet: tls ca_file: %v", err)
			}
			t.RootCAs = x509.NewCertPool()
			if !t.RootCAs.AppendCertsFromPEM(pem) {
				return cfg, fmt.Errorf("export_download: fleet: tls ca_file: %s holds no PEM certificate", c.TLS.CAFile)
			}
		}
		if t.ServerName == "" && len(c.Redis) > 0 {
			t.ServerName, _, _ = net.SplitHostPort(c.Redis[0])
		}
		cfg.TLS = t
	}
	return cfg, nil
}

// fleetTier is a handler's use of the fleet: the pooled client and this
// config's subscription of its decisions cache.
type fleetTier struct {
	client      *fleet.Client
	release     func()
	unsubscribe func()
}

type pooledFleet struct{ *fleet.Client }

func (p pooledFleet) Destruct() error { p.Close(); return nil }

// loadFleet returns the pooled client for this connection identity (one
// per distinct settings, kept across reloads like the caches) and its pool
// key, which also keys the decisions cache: a cache outlives no client
// whose stream it follows.
func loadFleet(h *Handler) (*fleetTier, string, error) {
	cfg, err := h.Fleet.clientConfig(time.Duration(h.UpstreamTimeout))
	if err != nil {
		return nil, "", err
	}
	tlsID := any(nil)
	if h.Fleet.TLS != nil {
		tlsID = *h.Fleet.TLS
	}
	key := poolKey("fleet", []any{cfg.Addrs, cfg.Username, cfg.Password, tlsID, cfg.Prefix, cfg.Secret,
		cfg.Timeout, cfg.LockWait, cfg.LeaseTTL})
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		cfg.Logger = h.logger.Named("fleet")
		if h.now != nil {
			cfg.Now = h.now
		}
		c, err := fleet.New(cfg)
		if err != nil {
			return nil, err
		}
		return pooledFleet{c}, nil
	})
	if err != nil {
		return nil, "", err
	}
	f := &fleetTier{client: v.(pooledFleet).Client}
	f.release = func() { _, _ = pool.Delete(key) }
	return f, key, nil
}

// subscribe applies the fleet's invalidations to this config's cache.
func (f *fleetTier) subscribe(h *Handler, d *cache.Cache[*record]) {
	f.unsubscribe = f.client.Subscribe(func(ev fleet.Event) {
		n := 0
		switch {
		case ev.Demote:
			n = d.Demote()
		case ev.All:
			n = d.PurgeAll()
		default:
			for _, id := range ev.IDs {
				n += d.InvalidateID(id)
			}
			if len(ev.Tags) > 0 {
				n += d.PurgeTags(ev.Tags...)
			}
		}
		h.logger.Debug("fleet invalidation applied", zap.Strings("export_ids", firstOf(ev.IDs, 16)),
			zap.Int("surrogate_keys", len(ev.Tags)), zap.Bool("all", ev.All), zap.Bool("demote", ev.Demote), zap.Int("entries", n))
	})
}

func (f *fleetTier) close() {
	if f == nil {
		return
	}
	if f.unsubscribe != nil {
		f.unsubscribe()
	}
	f.release()
}

func firstOf(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Fleet members of Cache-Status (RFC 9211 lists caches from the origin's
// side, so the fleet's comes first).
var fleetStatus = map[fleet.Source]string{
	fleet.Hit:         "export_download_fleet; hit",
	fleet.Stored:      "export_download_fleet; fwd=miss; stored",
	fleet.Collapsed:   "export_download_fleet; fwd=miss; collapsed",
	fleet.Fetched:     "export_download_fleet; fwd=miss",
	fleet.Unavailable: "export_download_fleet; fwd=miss; detail=unavailable",
}

// sharedDecision is what a node shares: the decision and only the fields
// the templates name, never a credential or the upstream's body.
type sharedDecision struct {
	Kind      decision.Kind     `json:"k"`
	Status    string            `json:"s,omitempty"`
	ExpiresAt int64             `json:"e,omitempty"` // Unix nanoseconds; 0: none
	Fields    map[string]string `json:"f,omitempty"`
	Tags      []string          `json:"t,omitempty"`
}

func (h *Handler) encodeShared(a *decision.Answer) []byte {
	d := sharedDecision{Kind: a.Kind, Status: a.Export.Status, Tags: a.SurrogateKeys}
	if !a.Export.ExpiresAt.IsZero() {
		d.ExpiresAt = a.Export.ExpiresAt.UnixNano()
	}
	for _, name := range h.templateFields {
		if v, ok := a.Fields[name]; ok {
			if d.Fields == nil {
				d.Fields = make(map[string]string, len(h.templateFields))
			}
			d.Fields[name] = v
		}
	}
	b, _ := json.Marshal(d)
	return b
}

func decodeShared(b []byte) (*decision.Answer, error) {
	var d sharedDecision
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	switch d.Kind {
	case decision.KindExport, decision.KindUnauthorized, decision.KindNotFound:
	default:
		return nil, errors.New("not a cacheable kind")
	}
	a := &decision.Answer{Kind: d.Kind, Fields: d.Fields, SurrogateKeys: d.Tags}
	a.Export.Status = d.Status
	if d.ExpiresAt != 0 {
		a.Export.ExpiresAt = time.Unix(0, d.ExpiresAt).UTC()
	}
	return a, nil
}

// fleetLoader wraps the upstream call in the fleet tier: a valid shared
// decision fresh past minFresh, else one upstream call for the whole fleet
// (a lease), whose answer is shared. note, when not nil, learns how the
// fleet answered (for Cache-Status).
func (h *Handler) fleetLoader(x *exchange, minFresh time.Time, note *fleet.Source) cache.Loader[*record] {
	fetch := h.fetcher(x)
	cred := h.cacheKey(x).Cred
	id := x.id
	return func(ctx context.Context) (*record, time.Duration, error) {
		var mine *record
		var mineTTL time.Duration
		payload, freshUntil, src, err := h.fleet.client.Load(ctx, id, cred, h.sharedNotBefore(cred, minFresh), func(ctx context.Context) ([]byte, time.Duration, error) {
			a, err := fetch(ctx)
			if err != nil {
				return nil, 0, err
			}
			mineTTL = h.ttls.FreshFor(a, h.now())
			mine = h.newRecord(id, a)
			switch {
			case mineTTL > 0 && a.Kind != decision.KindRateLimited:
				return h.encodeShared(a), mineTTL, nil
			case a.Kind == decision.KindUnauthorized || a.Kind == decision.KindNotFound:
				// A refusal this node does not cache still refutes the
				// shared decision: delete it, so no node takes it again.
				return nil, -1, nil
			}
			return nil, 0, nil // not cacheable here: not shared either
		})
		if note != nil {
			*note = src
		}
		if err != nil {
			return nil, 0, err
		}
		if mine != nil {
			return mine, mineTTL, nil
		}
		a, derr := decodeShared(payload)
		if derr == nil {
			derr = h.lacksTemplateField(a)
		}
		if derr != nil {
			// Authenticated, so written by a node of this fleet, but with
			// another version's format or templates (a rolling deploy).
			// Ask the app rather than guess.
			h.logger.Warn("unusable shared decision", zap.String("export_id", id), zap.Error(derr))
			a, err = fetch(ctx)
			if err != nil {
				return nil, 0, err
			}
			return h.newRecord(id, a), h.ttls.FreshFor(a, h.now()), nil
		}
		return h.newRecord(id, a), freshUntil.Sub(h.now()), nil
	}
}

// sharedNotBefore is how long a shared decision must stay fresh to be
// taken, beyond minFresh: not at all while this node's own invalidations
// wait to be published (Redis may still hold what they drop), and past the
// longest TTL after this credential was last refused here (a decision that
// fresh was filled after the refusal).
func (h *Handler) sharedNotBefore(cred [32]byte, minFresh time.Time) time.Time {
	if h.fleet.client.Pending() {
		return minFresh.Add(100 * 365 * 24 * time.Hour)
	}
	if h.caches != nil {
		if at, ok := h.caches.decisions.RefusedAt(cred); ok {
			if nb := at.Add(h.maxTTL); nb.After(minFresh) {
				return nb
			}
		}
	}
	return minFresh
}

// lacksTemplateField reports a completed shared decision that lacks a field
// this node's templates name: another node, with other templates, shared it.
func (h *Handler) lacksTemplateField(a *decision.Answer) error {
	if a.Kind != decision.KindExport || a.Export.Status != "completed" {
		return nil
	}
	for _, f := range h.templateFields {
		if _, ok := a.Fields[f]; !ok {
			return fmt.Errorf("the shared decision lacks the field %q that the templates name", f)
		}
	}
	return nil
}

// fleetMetrics are the fleet tier's series; the pooled client reports to
// the latest config's through an Observer.
type fleetMetrics struct {
	lookups       map[string]prometheus.Counter
	invalidations map[string]prometheus.Counter
	lag           prometheus.Observer
	up            prometheus.Gauge
}

func newFleetMetrics(reg prometheus.Registerer) (*fleetMetrics, error) {
	lookups, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "fleet_lookups_total",
		Help: "Lookups of shared decisions in the fleet tier, by result.",
	}, []string{"result"}))
	if err != nil {
		return nil, err
	}
	invs, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "fleet_invalidations_total",
		Help: "Invalidations sent to or received from the fleet, by direction.",
	}, []string{"direction"}))
	if err != nil {
		return nil, err
	}
	lag, err := register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "fleet_invalidation_lag_seconds",
		Help:    "Time from an invalidation event written to it applied on this node.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}))
	if err != nil {
		return nil, err
	}
	up, err := register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "fleet_up",
		Help: "1 while this node reads the fleet's invalidation stream, else 0.",
	}))
	if err != nil {
		return nil, err
	}
	m := &fleetMetrics{lookups: map[string]prometheus.Counter{}, invalidations: map[string]prometheus.Counter{}, lag: lag, up: up}
	for _, r := range []string{fleet.ResultHit, fleet.ResultMiss, fleet.ResultCollapsed, fleet.ResultInvalid, fleet.ResultUnavailable} {
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

var _ fleet.Observer = (*fleetMetrics)(nil)
