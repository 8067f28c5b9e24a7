package exportdownload

import (
	"context"
	"crypto/sha256"
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
	"github.com/exportedge/caddy-export-download/internal/tmpl"
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

	// Sentinel, when set, names the master set that the Sentinels at the
	// redis addresses monitor: the node follows its promoted master.
	// Default: none (the addresses are Redis servers or Cluster seeds)
	Sentinel string `json:"sentinel,omitempty"`

	// SentinelUsername and SentinelPassword authenticate with the
	// Sentinels, when they need it; {env.*} and {file.*} expand at
	// provision. Default: none
	SentinelUsername string `json:"sentinel_username,omitempty"`
	SentinelPassword string `json:"sentinel_password,omitempty"`

	// MaxStaleness bounds how long after an invalidation (a DELETE answered
	// 2xx, a purge, a refusal) any node may still answer from the old
	// decision, whatever fails: a node that has not confirmed within it
	// that it applied every invalidation asks the app again before
	// answering from an entry older than that ("off": trust entries until
	// their TTL, as without the bound). docs/fleet.md, "Bounded staleness".
	// Default: 5s
	MaxStaleness *Staleness `json:"max_staleness,omitempty"`

	// passwordFile is the file of a password given as {file.<path>}: read
	// again at every new connection, so a rotated token is used without a
	// reload.
	passwordFile string
}

// Staleness is max_staleness: a duration, or "off".
type Staleness struct {
	Duration caddy.Duration
	Off      bool
}

// MarshalJSON writes "off" or the duration, as Caddy writes durations.
func (s Staleness) MarshalJSON() ([]byte, error) {
	if s.Off {
		return []byte(`"off"`), nil
	}
	return json.Marshal(time.Duration(s.Duration).String())
}

// UnmarshalJSON reads "off", a duration string or a number of nanoseconds.
func (s *Staleness) UnmarshalJSON(b []byte) error {
	if string(b) == `"off"` {
		*s = Staleness{Off: true}
		return nil
	}
	s.Off = false
	return s.Duration.UnmarshalJSON(b)
}

// FleetTLS configures TLS to Redis.
type FleetTLS struct {
	// CAFile is a PEM file of the CAs that sign the server's certificate.
	// Default: the system roots
	CAFile string `json:"ca_file,omitempty"`
	// ServerName is the name to verify. Default: the host of the address
	ServerName string `json:"server_name,omitempty"`
}

// expand replaces global placeholders ({env.*}, {file.*}) once. A password
// that is exactly {file.<path>} is also read again at every new connection.
func (c *FleetConfig) expand(repl *caddy.Replacer) {
	for i, a := range c.Redis {
		c.Redis[i] = repl.ReplaceKnown(a, "")
	}
	if path, ok := strings.CutPrefix(c.Password, "{file."); ok && strings.HasSuffix(path, "}") && !strings.ContainsAny(path[:len(path)-1], "{}") {
		c.passwordFile = path[:len(path)-1]
	}
	for _, s := range []*string{&c.Username, &c.Password, &c.Prefix, &c.Secret, &c.Sentinel, &c.SentinelUsername, &c.SentinelPassword} {
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
	if c.MaxStaleness == nil {
		c.MaxStaleness = &Staleness{Duration: caddy.Duration(fleet.DefaultMaxStaleness)}
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
	if c.Prefix != "" && known(c.Prefix) {
		if err := fleet.ValidPrefix(c.Prefix); err != nil {
			errs.add(at("prefix", ""), "%v", err)
		}
	}
	if c.SentinelPassword != "" && known(c.SentinelPassword) && strings.ContainsAny(c.SentinelPassword, "\r\n") {
		errs.add(at("sentinel_password", ""), "must be one line")
	}
	if c.Sentinel == "" && (c.SentinelUsername != "" || c.SentinelPassword != "") {
		errs.add(at("sentinel", ""), "sentinel_username and sentinel_password need sentinel <master_name>")
	}
	if c.Sentinel != "" && known(c.Sentinel) && strings.ContainsAny(c.Sentinel, " \t\r\n") {
		errs.add(at("sentinel", ""), "%q is not a master name", c.Sentinel)
	}
	if st := c.MaxStaleness; st != nil && !st.Off {
		if d := time.Duration(st.Duration); d < 100*time.Millisecond {
			errs.add(at("max_staleness", ""), "%v is too short: at least 100ms (the stream is confirmed every quarter of it), or off", d)
		}
	}
	if c.Timeout < 0 {
		errs.add(at("timeout", ""), "must be positive")
	}
	if c.LockWait < 0 {
		errs.add(at("lock_wait", ""), "must not be negative")
	}
}

// clientConfig builds the fleet client's settings; the lease outlives the
// longest upstream call by a margin, and the client remembers
// invalidations for the longest TTL (horizon).
func (c *FleetConfig) clientConfig(upstreamTimeout, horizon time.Duration) (fleet.Config, error) {
	cfg := fleet.Config{
		Addrs:            c.Redis,
		Sentinel:         c.Sentinel,
		SentinelUsername: c.SentinelUsername,
		SentinelPassword: c.SentinelPassword,
		Username:         c.Username,
		Password:         c.Password,
		Prefix:           c.Prefix,
		Secret:           []byte(c.Secret),
		Timeout:          time.Duration(c.Timeout),
		LockWait:         time.Duration(c.LockWait),
		LeaseTTL:         upstreamTimeout + time.Second,
		MaxStaleness:     -1,
		Horizon:          max(horizon, time.Second),
	}
	if st := c.MaxStaleness; st != nil && !st.Off {
		cfg.MaxStaleness = time.Duration(st.Duration)
	}
	if path, user := c.passwordFile, c.Username; path != "" {
		cfg.Credentials = func() (string, string, error) {
			b, err := os.ReadFile(path)
			if err != nil {
				// The path, never the content.
				return "", "", fmt.Errorf("fleet: password file: %w", err)
			}
			return user, strings.TrimRight(string(b), "\r\n"), nil
		}
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
	name := c.Prefix + "@" + c.Redis[0]
	if c.Sentinel != "" {
		name = c.Prefix + "@" + c.Sentinel
	}
	m, err := newFleetMetrics(ctx.GetMetricsRegistry(), name)
	if err != nil {
		return nil, "", err
	}
	cfg, err := c.clientConfig(time.Duration(h.UpstreamTimeout), h.maxTTL)
	if err != nil {
		return nil, "", err
	}
	tlsID := any(nil)
	if c.TLS != nil {
		tlsID = *c.TLS
	}
	key := poolKey("fleet", []any{cfg.Addrs, cfg.Sentinel, cfg.SentinelUsername, cfg.SentinelPassword, cfg.Username,
		cfg.Password, c.passwordFile, tlsID, cfg.Prefix, cfg.Secret, cfg.Timeout, cfg.LockWait, cfg.LeaseTTL,
		cfg.MaxStaleness, cfg.Horizon})
	v, _, err := fleetClients.LoadOrNew(key, func() (caddy.Destructor, error) {
		cfg.Logger = h.logger.Named("fleet")
		cfg.Now = h.now
		cfg.Orphaned = handOver
		client, err := fleet.New(cfg)
		if err != nil {
			return nil, err
		}
		return pooledFleet{client}, nil
	})
	if err != nil {
		return nil, "", err
	}
	client := v.(pooledFleet).Client
	s := &sharedTier{client: client, site: client.Site(h.siteDigest()), fields: h.templateFields, now: h.now,
		logger: h.logger, release: func() { _, _ = fleetClients.Delete(key) }}
	s.removeObserver = client.AddObserver(m)
	return s, key, nil
}

// siteDigest is the SHA-256 of what a shared decision means for this site:
// whom it asks and how (upstream, path, headers, forwarded credentials),
// how long it keeps each answer, and which fields it keeps. Sites that
// differ in any of them never take each other's decisions (docs/fleet.md, "Key
// layout").
func (h *Handler) siteDigest() [32]byte {
	perRequest := make([]string, 0, len(h.perRequest))
	for _, p := range h.perRequest {
		perRequest = append(perRequest, p.name+"="+p.value)
	}
	b, _ := json.Marshal([]any{h.Upstream, h.UpstreamPath, h.UpstreamHeader, perRequest, h.forward,
		h.ttls, h.templateFields, h.SurrogateKeyHeader, sharedVersion})
	return sha256.Sum256(b)
}

// pooledFleet is a fleet client in its pool. When the last config using it
// is cleaned up, what its outbox still holds goes to the clients that
// remain (a reload that changed the fleet block must not lose the
// invalidations that waited for Redis).
type pooledFleet struct{ *fleet.Client }

func (p pooledFleet) Destruct() error {
	handOver(p.Close())
	return nil
}

// handOver gives events that a closing client still held (its outbox, or
// a publish that failed as it closed) to the clients that remain: the
// pool no longer holds the closing one, and a reload provisions the new
// config, with its clients, before it cleans the old one up.
func handOver(events []fleet.Event) {
	if len(events) == 0 {
		return
	}
	heirs := collect[pooledFleet](fleetClients)
	for _, c := range heirs {
		c.value.Adopt(events)
	}
	if len(heirs) == 0 {
		// No fleet left on this node: nobody could deliver them.
		caddy.Log().Named("export_download.fleet").Warn("fleet: invalidations dropped with the fleet block", zap.Int("events", len(events)))
	}
}

// publish sends sel to every fleet this process belongs to: "published",
// "queued" (Redis unreachable: it is sent when Redis answers again) or
// "off" without any. The clients are read under the pool's lock and called
// outside it. A client whose last config was cleaned up meanwhile queues
// the event and hands it, as it closes, to the clients that remain.
func publish(ctx context.Context, sel purgeSelection) string {
	state := "off"
	for _, c := range collect[pooledFleet](fleetClients) {
		if c.value.Publish(ctx, fleet.Event{IDs: sel.IDs, Tags: sel.Tags, Creds: sel.Creds, All: sel.All}) {
			if state == "off" {
				state = "published"
			}
		} else {
			state = "queued"
		}
	}
	return state
}

// publishRefusal makes the application's refusal of a credential (a
// 401/403 answer) hold everywhere, like a purge: every cache of this node
// and of every node of the fleet drops that credential's entries, and no
// node takes a shared decision made for it before. The event names the
// credential by its HMAC, as keys do.
func publishRefusal(cred [32]byte) {
	purge(context.Background(), purgeSelection{Creds: [][32]byte{cred}})
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
	client         *fleet.Client
	site           string   // this site's scope in the keys (fleet.Client.Site)
	fields         []string // the export fields the templates name: all a decision shares
	now            func() time.Time
	logger         *zap.Logger
	release        func()
	removeObserver func()
	unsubscribe    func()
}

// upstreamCall asks the application: the answer and how long it stays
// fresh here (0: not cacheable).
type upstreamCall func(context.Context) (*decision.Answer, time.Duration, error)

// sharedResult is what the shared tier answered for one fill.
type sharedResult struct {
	answer  *decision.Answer
	ttl     time.Duration // how long it stays fresh here; 0: not cacheable
	decided time.Time     // when the upstream was asked, by whichever node
	by      sharedAnswer
}

// load returns the decision for (id, cred): a valid shared one fresh past
// minFresh and made after notBefore, else one from ask, called once for
// the whole fleet (a lease) and shared. It says how the shared tier
// answered, also with an error.
func (s *sharedTier) load(ctx context.Context, id string, cred [32]byte, minFresh, notBefore time.Time, ask upstreamCall) (sharedResult, error) {
	var mine *decision.Answer
	var mineTTL time.Duration
	q := fleet.Query{ID: id, Cred: cred, Site: s.site, MinFresh: minFresh, NotBefore: notBefore}
	d, err := s.client.Load(ctx, q, func(ctx context.Context) (fleet.Fill, error) {
		a, ttl, err := ask(ctx)
		if err != nil {
			return fleet.Fill{}, err
		}
		mine, mineTTL = a, ttl
		switch {
		case ttl > 0 && a.Kind != decision.KindRateLimited:
			return fleet.Fill{Payload: s.encode(a), Tags: a.SurrogateKeys, TTL: ttl}, nil
		case a.Kind == decision.KindUnauthorized || a.Kind == decision.KindNotFound:
			// A refusal this node does not cache still refutes the
			// shared decision: delete it, so no node takes it again.
			return fleet.Fill{Refutes: true}, nil
		}
		return fleet.Fill{}, nil // not cacheable here: not shared either
	})
	res := sharedResult{by: sharedAnswerOf(d.Source), decided: d.DecidedAt}
	if err != nil {
		return res, err
	}
	if mine != nil {
		res.answer, res.ttl = mine, mineTTL
		return res, nil
	}
	a, err := s.decode(d.Payload, d.Tags)
	if err != nil {
		// Authenticated, so written by a node of this fleet, but with
		// another version's format (a rolling deploy). Ask the app rather
		// than guess.
		s.logger.Warn("unusable shared decision", zap.String("export_id", id), zap.Error(err))
		res.decided = s.now()
		res.answer, res.ttl, err = ask(ctx)
		return res, err
	}
	res.answer, res.ttl = a, d.FreshUntil.Sub(s.now())
	return res, nil
}

// trusts reports whether an answer decided at decided (Unix nanoseconds)
// may still be served at now: the bound of max_staleness.
func (s *sharedTier) trusts(decided int64, now time.Time) bool {
	return s.client.Trusts(decided, now.UnixNano())
}

// current reports whether the fleet confirmed within max_staleness (on the
// monotonic clock) that every invalidation is applied here; recent whether
// an answer decided at decided is within max_staleness of now (lookup.go
// reads current before the local cache, then recent of what it found).
func (s *sharedTier) current() bool { return s.client.Current() }

func (s *sharedTier) recent(decided int64, now time.Time) bool {
	return s.client.Recent(decided, now.UnixNano())
}

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
			// A refused credential's entries carry its name as a tag
			// (credentialTag): found the way a purge by surrogate key
			// finds entries, without knowing the credential.
			tags := ev.Tags
			for _, name := range ev.CredNames {
				tags = append(tags[:len(tags):len(tags)], credentialTag(name))
			}
			n = dropLocal(d, purgeSelection{IDs: ev.IDs, Tags: tags, All: ev.All})
		}
		s.logger.Debug("fleet invalidation applied", zap.Strings("export_ids", firstN(ev.IDs, 16)),
			zap.Int("surrogate_keys", len(ev.Tags)), zap.Int("refused_credentials", len(ev.CredNames)), zap.Bool("all", ev.All),
			zap.Bool("demote", ev.Demote), zap.Int("entries", n))
	})
}

// close ends this config's use of the client: its subscription and its
// metrics (a config that failed to load leaves the running one's series
// alone), then its hold on the pooled client.
func (s *sharedTier) close() {
	if s == nil {
		return
	}
	if s.unsubscribe != nil {
		s.unsubscribe()
	}
	if s.removeObserver != nil {
		s.removeObserver()
	}
	s.release()
}

// credentialTag is the tag that names a credential among an entry's
// surrogate keys: its fleet name behind a space, which no surrogate key can
// hold, so an operator's purge never names it.
func credentialTag(name string) string { return " cred:" + name }

// tagOf is credentialTag of cred's fleet name.
func (s *sharedTier) tagOf(cred [32]byte) string { return credentialTag(s.client.CredentialName(cred)) }

// sharedVersion names the layout of sharedDecision; it is part of the site
// digest, so nodes of another layout never read this one's decisions.
const sharedVersion = 2

// sharedDecision is what a node shares: the decision and only the fields
// the templates name, never a credential or the upstream's body. The
// answer's surrogate keys travel beside it (fleet.Fill.Tags).
type sharedDecision struct {
	Kind      decision.Kind     `json:"k"`
	Status    string            `json:"s,omitempty"`
	ExpiresAt *[2]int64         `json:"x,omitempty"` // Unix seconds and nanoseconds; nil: none
	Fields    map[string]string `json:"f,omitempty"`
}

func (s *sharedTier) encode(a *decision.Answer) []byte {
	d := sharedDecision{Kind: a.Kind, Status: a.Export.Status}
	if t := a.Export.ExpiresAt; !t.IsZero() {
		d.ExpiresAt = &[2]int64{t.Unix(), int64(t.Nanosecond())}
	}
	for _, name := range s.fields {
		// A value over the templates' cap fails to render here anyway:
		// it is not worth a megabyte in Redis.
		if v, ok := a.Fields[name]; ok && len(v) <= tmpl.MaxValueLen {
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
// this node's templates name.
func (s *sharedTier) decode(b []byte, tags []string) (*decision.Answer, error) {
	var d sharedDecision
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	switch d.Kind {
	case decision.KindExport, decision.KindUnauthorized, decision.KindNotFound:
	default:
		return nil, errors.New("not a cacheable kind")
	}
	a := &decision.Answer{Kind: d.Kind, Fields: d.Fields, SurrogateKeys: tags}
	a.Export.Status = d.Status
	if d.ExpiresAt != nil {
		a.Export.ExpiresAt = time.Unix(d.ExpiresAt[0], d.ExpiresAt[1]).UTC()
		if a.Export.ExpiresAt.IsZero() {
			a.Export.ExpiresAt = a.Export.ExpiresAt.Add(time.Nanosecond) // a past instant, not "none"
		}
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
