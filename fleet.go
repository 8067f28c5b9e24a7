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
		c.Prefix = fleet.DefaultPrefix
	}
	if c.Timeout == 0 {
		c.Timeout = caddy.Duration(fleet.DefaultTimeout)
	}
	if c.LockWait == 0 {
		c.LockWait = caddy.Duration(fleet.DefaultLockWait)
	}
}

// validate checks the block; messages name the subdirective and never
// quote the password or the secret.
func (c *FleetConfig) validate(errs *configErrors, known func(string) bool) {
	at := func(sub, item string) where { return where{block: "fleet", sub: sub, item: item} }
	if len(c.Redis) == 0 {
		errs.add(at("redis", ""), "required: at least one host:port")
	}
	for _, a := range c.Redis {
		if !known(a) {
			continue
		}
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" || strings.ContainsAny(a, "@/") {
			if strings.Contains(a, "@") {
				// A URL with user info: never quote it, it holds a password.
				errs.add(at("redis", a), "want host:port, not a URL (give username and password as their own subdirectives)")
			} else {
				errs.add(at("redis", a), "%q is not host:port", a)
			}
		}
	}
	if c.Secret == "" {
		errs.add(at("secret", ""), "required: at least %d bytes shared by every node (use {env.*} or {file.*})", fleet.MinSecretLen)
	} else if known(c.Secret) && len(c.Secret) < fleet.MinSecretLen {
		errs.add(at("secret", ""), "must be at least %d bytes", fleet.MinSecretLen)
	}
	if c.Password != "" && known(c.Password) && strings.ContainsAny(c.Password, "\r\n") {
		errs.add(at("password", ""), "must be one line")
	}
	if c.Prefix != "" && known(c.Prefix) && (strings.ContainsAny(c.Prefix, " \t\r\n{}*?[]") || len(c.Prefix) > 64) {
		errs.add(at("prefix", ""), "%q must be at most 64 characters without blanks, braces or glob characters", c.Prefix)
	}
	if c.Timeout < 0 {
		errs.add(at("timeout", ""), "must be positive")
	}
	if c.LockWait < 0 {
		errs.add(at("lock_wait", ""), "must not be negative")
	}
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

// provision loads the pooled client of this connection identity (one per
// distinct settings, kept across reloads like the caches) and returns this
// config's use of it, and the client's pool key, which also keys the
// decisions cache: a cache outlives no client whose stream it follows.
func (c *FleetConfig) provision(ctx caddy.Context, h *Handler) (*sharedTier, string, error) {
	m, err := newFleetMetrics(ctx.GetMetricsRegistry())
	if err != nil {
		return nil, "", err
	}
	cfg, err := c.clientConfig(time.Duration(h.UpstreamTimeout))
	if err != nil {
		return nil, "", err
	}
	tlsID := any(nil)
	if c.TLS != nil {
		tlsID = *c.TLS
	}
	key := poolKey("fleet", []any{cfg.Addrs, cfg.Username, cfg.Password, tlsID, cfg.Prefix, cfg.Secret,
		cfg.Timeout, cfg.LockWait, cfg.LeaseTTL})
	v, _, err := fleetClients.LoadOrNew(key, func() (caddy.Destructor, error) {
		cfg.Logger = h.logger.Named("fleet")
		cfg.Now = h.now
		client, err := fleet.New(cfg)
		if err != nil {
			return nil, err
		}
		return pooledFleet{client}, nil
	})
	if err != nil {
		return nil, "", err
	}
	s := &sharedTier{client: v.(pooledFleet).Client, fields: h.templateFields, now: h.now, logger: h.logger,
		release: func() { _, _ = fleetClients.Delete(key) }}
	s.client.SetObserver(m)
	m.Up(s.client.Up())
	return s, key, nil
}

type pooledFleet struct{ *fleet.Client }

func (p pooledFleet) Destruct() error { p.Close(); return nil }

// publish sends sel to every fleet this process belongs to: "published",
// "queued" (Redis unreachable: it is sent when Redis answers again) or
// "off" without any. The clients are read under the pool's lock and called
// outside it. A client whose last config was cleaned up meanwhile queues
// the event and drops it as it closes: no config of this node uses that
// fleet then.
func publish(ctx context.Context, sel purgeSelection) string {
	state := "off"
	for _, c := range collect[pooledFleet](fleetClients) {
		if c.value.Publish(ctx, fleet.Event{IDs: sel.IDs, Tags: sel.Tags, All: sel.All}) {
			if state == "off" {
				state = "published"
			}
		} else {
			state = "queued"
		}
	}
	return state
}

// statsOfFleet is what the admin API shows of the fleet a cache follows;
// nil without one.
func statsOfFleet(c *fleet.Client) *fleet.Stats {
	if c == nil {
		return nil
	}
	s := c.Stats()
	return &s
}

// sharedTier is the fleet as the lookup sees it (lookup.go): the shared
// decisions under the local cache. It also applies the fleet's
// invalidations to this config's cache.
type sharedTier struct {
	client      *fleet.Client
	fields      []string // the export fields the templates name: all a decision shares
	now         func() time.Time
	logger      *zap.Logger
	release     func()
	unsubscribe func()
}

// upstreamCall asks the application: the answer and how long it stays
// fresh here (0: not cacheable).
type upstreamCall func(context.Context) (*decision.Answer, time.Duration, error)

// load returns the decision for (id, cred): a valid shared one fresh past
// notBefore, else one from ask, called once for the whole fleet (a lease)
// and shared. It says how the shared tier answered, also with an error.
func (s *sharedTier) load(ctx context.Context, id string, cred [32]byte, notBefore time.Time, ask upstreamCall) (*decision.Answer, time.Duration, sharedAnswer, error) {
	var mine *decision.Answer
	var mineTTL time.Duration
	payload, freshUntil, src, err := s.client.Load(ctx, id, cred, notBefore, func(ctx context.Context) ([]byte, time.Duration, error) {
		a, ttl, err := ask(ctx)
		if err != nil {
			return nil, 0, err
		}
		mine, mineTTL = a, ttl
		switch {
		case ttl > 0 && a.Kind != decision.KindRateLimited:
			return s.encode(a), ttl, nil
		case a.Kind == decision.KindUnauthorized || a.Kind == decision.KindNotFound:
			// A refusal this node does not cache still refutes the
			// shared decision: delete it, so no node takes it again.
			return nil, -1, nil
		}
		return nil, 0, nil // not cacheable here: not shared either
	})
	by := sharedAnswerOf(src)
	if err != nil {
		return nil, 0, by, err
	}
	if mine != nil {
		return mine, mineTTL, by, nil
	}
	a, err := s.decode(payload)
	if err != nil {
		// Authenticated, so written by a node of this fleet, but with
		// another version's format or templates (a rolling deploy).
		// Ask the app rather than guess.
		s.logger.Warn("unusable shared decision", zap.String("export_id", id), zap.Error(err))
		a, ttl, err := ask(ctx)
		return a, ttl, by, err
	}
	return a, freshUntil.Sub(s.now()), by, nil
}

// pending reports invalidations of this node that wait to be published.
func (s *sharedTier) pending() bool { return s.client.Pending() }

func sharedAnswerOf(src fleet.Source) sharedAnswer {
	switch src {
	case fleet.Hit:
		return sharedHit
	case fleet.Stored:
		return sharedStored
	case fleet.Collapsed:
		return sharedCollapsed
	case fleet.Fetched:
		return sharedFetched
	case fleet.Unavailable:
		return sharedUnavailable
	}
	return sharedNotAsked
}

// subscribe applies the fleet's invalidations to d, this config's cache.
func (s *sharedTier) subscribe(d *cache.Cache[*record]) {
	s.unsubscribe = s.client.Subscribe(func(ev fleet.Event) {
		var n int
		if ev.Demote {
			n = d.Demote()
		} else {
			n = dropLocal(d, purgeSelection{IDs: ev.IDs, Tags: ev.Tags, All: ev.All})
		}
		s.logger.Debug("fleet invalidation applied", zap.Strings("export_ids", firstN(ev.IDs, 16)),
			zap.Int("surrogate_keys", len(ev.Tags)), zap.Bool("all", ev.All), zap.Bool("demote", ev.Demote), zap.Int("entries", n))
	})
}

func (s *sharedTier) close() {
	if s == nil {
		return
	}
	if s.unsubscribe != nil {
		s.unsubscribe()
	}
	s.release()
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

func (s *sharedTier) encode(a *decision.Answer) []byte {
	d := sharedDecision{Kind: a.Kind, Status: a.Export.Status, Tags: a.SurrogateKeys}
	if !a.Export.ExpiresAt.IsZero() {
		d.ExpiresAt = a.Export.ExpiresAt.UnixNano()
	}
	for _, name := range s.fields {
		if v, ok := a.Fields[name]; ok {
			if d.Fields == nil {
				d.Fields = make(map[string]string, len(s.fields))
			}
			d.Fields[name] = v
		}
	}
	b, _ := json.Marshal(d)
	return b
}

// decode reads a shared decision; a completed one must carry every field
// this node's templates name (another node's templates may name fewer).
func (s *sharedTier) decode(b []byte) (*decision.Answer, error) {
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
	if a.Kind == decision.KindExport && a.Export.Status == "completed" {
		for _, f := range s.fields {
			if _, ok := a.Fields[f]; !ok {
				return nil, fmt.Errorf("the shared decision lacks the field %q that the templates name", f)
			}
		}
	}
	return a, nil
}
