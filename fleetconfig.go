package exportdownload

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/fleet"
)

// FleetConfig is the `fleet` block: decisions and invalidations shared by
// every node through Redis (7+) or Valkey (7.2+). The node-local cache stays
// primary and Redis is never needed to answer (README, "Running a fleet").
// Nil means off.
type FleetConfig struct {
	// Redis lists host:port of the server, of Cluster seeds, or, with
	// Sentinel set, of the Sentinels. Required.
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
	// ServerName is the name to verify. Default: the host of the first
	// redis address
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
