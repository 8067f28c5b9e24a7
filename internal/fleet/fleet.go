package fleet

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// Defaults of Config.
const (
	DefaultPrefix   = "export_download"
	DefaultTimeout  = 50 * time.Millisecond
	DefaultLockWait = 750 * time.Millisecond
	DefaultLeaseTTL = 3 * time.Second
	// DefaultMaxStaleness bounds how long a node answers from its cache
	// without having confirmed that it applied every invalidation: long
	// enough that a Redis outage costs the app one call per (export,
	// credential) and node every 5 s instead of one per TTL, short enough
	// that a revoked key stops within seconds whatever single part fails.
	DefaultMaxStaleness = 5 * time.Second
	// DefaultHorizon is the longest a shared decision can be used, when
	// Config.Horizon is not set: the longest default TTL.
	DefaultHorizon = 5 * time.Minute
	// MinSecretLen is the shortest accepted Config.Secret.
	MinSecretLen = 32
)

// Tunables that are not configuration.
const (
	breakerFailures  = 3                      // consecutive failures that open the breaker
	breakerOpen      = time.Second            // how long an open breaker refuses calls
	retryEvery       = 250 * time.Millisecond // outbox retries and reconnects
	pollEvery        = 5 * time.Millisecond   // a waiter's first look at the shared decision
	pollMax          = 25 * time.Millisecond  // and its slowest
	maxBlock         = 500 * time.Millisecond // XREAD BLOCK: the longest heartbeat period
	readerMinTimeout = 250 * time.Millisecond // the stream reader's own calls, off the request path
	bootCheckEvery   = time.Second            // incarnation check while connected
	streamMaxLen     = 100000                 // XADD MAXLEN ~
	readCount        = 1000                   // events per stream read
	minDialTimeout   = time.Second
	// DefaultClockSkew is how far apart the fleet's clocks may be: a shared
	// decision must have been made this long after an invalidation that
	// covers it to be used.
	DefaultClockSkew = 250 * time.Millisecond
)

// Config configures a Client. Addrs and Secret are required.
type Config struct {
	// Addrs are host:port of the Redis/Valkey server, of Cluster seeds, or
	// of Sentinels when Sentinel is set.
	Addrs []string
	// Sentinel is the master set name the Sentinels at Addrs monitor; the
	// client follows its promoted master. Empty: Addrs are Redis servers.
	Sentinel string
	// SentinelUsername and SentinelPassword authenticate with the
	// Sentinels, when they need it.
	SentinelUsername, SentinelPassword string
	// Username and Password authenticate with Redis (ACL); both may be
	// empty.
	Username, Password string
	// Credentials, when set, is asked for the username and password at
	// every new connection instead of Username and Password, so that a
	// rotated token is used without a reload.
	Credentials func() (username, password string, err error)
	// TLS, when not nil, is used for every connection (Sentinels
	// included); nil is plain TCP.
	TLS *tls.Config
	// Prefix starts every key. Default: "export_download".
	Prefix string
	// Secret is the fleet's HMAC key (at least 32 bytes), the same on every
	// node. It names keys and authenticates values.
	Secret []byte
	// Timeout bounds each Redis call. Default: 50ms.
	Timeout time.Duration
	// LockWait is the longest wait on another node's fill. Default: 750ms.
	LockWait time.Duration
	// LeaseTTL is the lifetime of a fill lease: the upstream timeout plus a
	// margin. Default: 3s.
	LeaseTTL time.Duration
	// MaxStaleness bounds how long this node trusts what it holds without
	// having confirmed that it applied every invalidation up to a recent
	// point (see Client.Trusts). Zero is DefaultMaxStaleness; negative
	// turns the bound off (trust until the TTL).
	MaxStaleness time.Duration
	// Horizon is the longest fresh lifetime of any decision this client
	// shares (the longest TTL of the sites using it): how long the client
	// remembers invalidations, and how far back a new client reads the
	// stream. Default: DefaultHorizon.
	Horizon time.Duration
	// ClockSkew is how far apart the nodes' clocks may be (NTP keeps them
	// far closer): a shared decision is used only if it was made this long
	// after every invalidation that covers it. Default: DefaultClockSkew.
	ClockSkew time.Duration
	// Orphaned, when set, takes the events this client could not keep: a
	// publish that failed while the client closed (after Close handed its
	// outbox back). Another client should publish them (Adopt).
	Orphaned func([]Event)
	// Logger receives warnings and debug lines; nil discards them.
	Logger *zap.Logger
	// Now is the clock for freshness; nil is time.Now. Timeouts, the
	// breaker and waits always use the real clock.
	Now func() time.Time
}

// Client is one node's connection to the fleet tier. It never fails a caller
// because of Redis: every call is bounded, and a failed or refused call is
// reported as Unavailable while the caller goes to the upstream directly.
type Client struct {
	cfg     Config
	prefix  string // with the trailing colon
	node    string // random id of this client, carried by its events
	started time.Time
	log     *zap.Logger
	now     func() time.Time
	opt     rueidis.ClientOption

	rc        atomic.Pointer[rueidis.Client]
	connected chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	rootCtx   context.Context
	cancel    context.CancelFunc

	breaker breaker
	obsMu   sync.Mutex
	obs     atomic.Pointer[[]Observer]
	up      atomic.Bool

	// confirmed is when the stream reader last started a read that found
	// every event up to then applied: nanoseconds since mono on the
	// monotonic clock (a wall clock stepped back must not extend trust),
	// plus one; 0 until the first.
	confirmed atomic.Int64
	mono      time.Time
	purges    purgeLog
	// replicas remembers the stream masters recently seen with a replica
	// connected, for the publishes' WAIT.
	replicas replicaWatch

	subMu  sync.Mutex
	subs   map[int]func(Event)
	subSeq int

	out outbox

	st counters

	// sentinelDialer marks the dials to Sentinels (their net.Dialer carries
	// this resolver), and sentinelConns holds the remote addresses they
	// reached: the credentials function is for the data nodes only.
	sentinelDialer *net.Resolver
	sentinelConns  sync.Map
}

// ValidPrefix reports why prefix cannot start the fleet's keys, or nil:
// at most 64 characters, without blanks, braces (hash tags) or glob
// characters (so that one ACL pattern, ~<prefix>:*, covers the keys).
func ValidPrefix(prefix string) error {
	if prefix == "" || len(prefix) > 64 || strings.ContainsAny(prefix, " \t\r\n{}*?[]\\") {
		return fmt.Errorf("%q must be 1 to 64 characters without blanks, braces, backslashes or glob characters", prefix)
	}
	return nil
}

// New checks cfg and returns a Client. It does not wait for Redis: a node
// must start while Redis is down, so the connection is made in the
// background and retried until it works; until then every Load is
// Unavailable and every Publish is queued. Only a bad configuration is an
// error, and its message never contains a password or the secret.
func New(cfg Config) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("fleet: at least one redis address is required")
	}
	for _, a := range cfg.Addrs {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("fleet: redis address %q is not host:port", a)
		}
	}
	if len(cfg.Secret) < MinSecretLen {
		return nil, fmt.Errorf("fleet: secret must be at least %d bytes, got %d", MinSecretLen, len(cfg.Secret))
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if err := ValidPrefix(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("fleet: prefix %w", err)
	}
	if cfg.Timeout < 0 || cfg.LockWait < 0 || cfg.LeaseTTL < 0 || cfg.Horizon < 0 {
		return nil, errors.New("fleet: timeout, lock_wait, the lease lifetime and the horizon must not be negative")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.LockWait == 0 {
		cfg.LockWait = DefaultLockWait
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.MaxStaleness == 0 {
		cfg.MaxStaleness = DefaultMaxStaleness
	}
	if cfg.Horizon == 0 {
		cfg.Horizon = DefaultHorizon
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Secret = append([]byte(nil), cfg.Secret...)
	cfg.Addrs = append([]string(nil), cfg.Addrs...)

	c := &Client{
		cfg:       cfg,
		prefix:    cfg.Prefix + ":",
		node:      randomHex(8),
		log:       cfg.Logger,
		now:       cfg.Now,
		connected: make(chan struct{}),
		done:      make(chan struct{}),
		subs:      map[int]func(Event){},
	}
	c.started = c.now()
	c.mono = time.Now()
	c.purges.init(cfg.Horizon, cfg.ClockSkew)
	c.out.init()
	c.rootCtx, c.cancel = context.WithCancel(context.Background())
	c.opt = c.clientOption()
	c.wg.Add(3)
	go c.connectLoop()
	go c.readLoop()
	go c.outboxLoop()
	return c, nil
}

// Close stops every goroutine of the client and closes the connections,
// without waiting for a Redis that does not answer. It returns the events
// still waiting in the outbox, for a successor client to publish (a reload
// that changes the fleet settings must not lose them). Safe to call more
// than once; later calls return nothing.
func (c *Client) Close() []Event {
	var left []Event
	c.closeOnce.Do(func() {
		close(c.done)
		c.cancel()
		c.wg.Wait()
		if cl := c.client(); cl != nil {
			cl.Close()
		}
		left = c.out.drain()
	})
	return left
}

// Trusts reports whether an answer decided at decided (Unix nanoseconds)
// may still be served at now without asking again: always while the
// stream reader has confirmed, within MaxStaleness, that every
// invalidation up to a recent point is applied (Current); otherwise only
// if it was decided within MaxStaleness (Recent).
func (c *Client) Trusts(decided, now int64) bool { return c.Current() || c.Recent(decided, now) }

// Current reports whether the stream reader confirmed, within MaxStaleness
// of now on the monotonic clock, that every invalidation up to then is
// applied. A caller that checks it before looking an answer up sees the
// lookup after every invalidation the confirmation covers. It is on the
// hit path: two loads and a read of the monotonic clock.
func (c *Client) Current() bool {
	ms := int64(c.cfg.MaxStaleness)
	if ms < 0 {
		return true
	}
	at := c.confirmed.Load()
	return at != 0 && int64(time.Since(c.mono))-(at-1) <= ms
}

// confirm notes a confirmation made by a read that started at start.
func (c *Client) confirm(start time.Time) { c.confirmed.Store(int64(start.Sub(c.mono)) + 1) }

// Recent reports whether an answer decided at decided is within
// MaxStaleness of now.
func (c *Client) Recent(decided, now int64) bool {
	ms := int64(c.cfg.MaxStaleness)
	return ms < 0 || now-decided <= ms
}

// MaxStaleness is the configured bound; negative when it is off.
func (c *Client) MaxStaleness() time.Duration { return c.cfg.MaxStaleness }

// notBefore is the oldest decision that may be taken now: one decided after
// the last confirmed point, when the reader has not confirmed lately.
func (c *Client) notBefore(now time.Time) time.Time {
	if c.Current() {
		return time.Time{}
	}
	return now.Add(-c.cfg.MaxStaleness)
}

// Site names a site's decision settings in keys: the lowercase hex of the
// first 8 bytes of HMAC-SHA256(secret, "site" || digest), where digest is
// the SHA-256 of everything that changes what a decision means for that
// site (the upstream, its path and headers, the forwarded headers, the
// TTLs, the fields its templates name). Sites that differ in any of them
// never take each other's decisions.
func (c *Client) Site(digest [32]byte) string {
	h := hmac.New(sha256.New, c.cfg.Secret)
	h.Write([]byte("site"))
	h.Write(digest[:])
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// sign authenticates a value under its key name: HMAC-SHA256(secret,
// len(key) || key || parts...). The length prefix keeps a key/content
// boundary from being moved.
func (c *Client) sign(key string, parts ...[]byte) []byte {
	h := hmac.New(sha256.New, c.cfg.Secret)
	var n [4]byte
	n[0], n[1], n[2], n[3] = byte(len(key)>>24), byte(len(key)>>16), byte(len(key)>>8), byte(len(key))
	h.Write(n[:])
	h.Write([]byte(key))
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b)
}

// isNil reports a Redis nil reply (a missing key), which is not a failure.
func isNil(err error) bool { return rueidis.IsRedisNil(err) }
