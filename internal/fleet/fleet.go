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

// Observer receives the fleet tier's metrics. Implementations must be safe
// for concurrent use and fast.
type Observer interface {
	// Lookup counts one Load by result, one of LookupResults.
	Lookup(result string)
	// Invalidation counts one event by direction: sent or received.
	Invalidation(direction string)
	// Lag observes the time from an event's write to its delivery here.
	Lag(d time.Duration)
	// Up reports the stream reader's state when it changes, and once when
	// the observer is added.
	Up(up bool)
}

// LookupResults are the values Observer.Lookup is given: a usable shared
// decision, none (this node asked the app), another node's answer waited
// for, a value that failed authentication, or Redis unavailable.
var LookupResults = []string{"hit", "miss", "collapsed", "invalid", "unavailable"}

type counters struct {
	hit, miss, collapsed, invalid, unavailable atomic.Uint64
	sent, received, queued, invalidEvents      atomic.Uint64
	demotes                                    atomic.Uint64
}

// Stats is a snapshot of a Client's counters, for the admin API.
type Stats struct {
	Lookups struct {
		Hit         uint64 `json:"hit"`
		Miss        uint64 `json:"miss"`
		Collapsed   uint64 `json:"collapsed"`
		Invalid     uint64 `json:"invalid"`
		Unavailable uint64 `json:"unavailable"`
	} `json:"lookups"`
	Invalidations struct {
		Sent     uint64 `json:"sent"`
		Received uint64 `json:"received"`
		// Queued counts events that waited in the outbox.
		Queued uint64 `json:"queued"`
		// Invalid counts stream entries that failed authentication.
		Invalid uint64 `json:"invalid"`
		// Demotes counts demotions (resume was impossible).
		Demotes uint64 `json:"demotes"`
	} `json:"invalidations"`
	OutboxLen   int  `json:"outbox_len"`
	Up          bool `json:"up"`
	BreakerOpen bool `json:"breaker_open"`
	// ConfirmedAgoMS is how long ago the stream reader last confirmed that
	// every invalidation was applied; -1 if it never did.
	ConfirmedAgoMS int64 `json:"confirmed_ago_ms"`
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

func (c *Client) clientOption() rueidis.ClientOption {
	cfg := c.cfg
	dialTimeout := max(10*cfg.Timeout, minDialTimeout)
	opt := rueidis.ClientOption{
		InitAddress: cfg.Addrs,
		Username:    cfg.Username,
		Password:    cfg.Password,
		TLSConfig:   cfg.TLS,
		// Decisions are read once per local miss; server-assisted client
		// caching would only add tracking traffic and memory (and needs
		// CLIENT TRACKING, which managed services refuse).
		DisableCache: true,
		// A retry inside one bounded call only moves the timeout; the
		// breaker and the callers' own fallbacks handle failures.
		DisableRetry: true,
		// Not sent, so the ACL need not allow CLIENT SETINFO.
		ClientSetInfo: rueidis.DisableClientSetInfo,
		Dialer:        net.Dialer{Timeout: dialTimeout, KeepAlive: time.Second},
		// Every dial ends when the client closes, so that Close never
		// waits for a Redis that does not answer.
		DialCtxFn: c.dial,
		// A connection that does not answer for this long is closed and
		// dialled again; each call has its own shorter Timeout anyway.
		ConnWriteTimeout: max(20*cfg.Timeout, minDialTimeout),
		// One pipelined connection per node is plenty: Redis is asked only
		// on local misses. It keeps a large fleet's connection count low.
		PipelineMultiplex: -1,
		// The stream reader's XREAD BLOCK and the publishes' WAIT take
		// connections of their own.
		BlockingPoolSize: 4,
		// Small values: one pipeline per node is plenty for decisions.
		ReadBufferEachConn:  64 << 10,
		WriteBufferEachConn: 64 << 10,
		// Lets a blocking read stop at once when the client closes.
		AlwaysPipelining: true,
	}
	if cfg.Credentials != nil {
		opt.AuthCredentialsFn = func(ac rueidis.AuthCredentialsContext) (rueidis.AuthCredentials, error) {
			// rueidis hands its Sentinel connections this function too:
			// they keep the Sentinel credentials.
			if ac.Address != nil {
				if _, ok := c.sentinelConns.Load(ac.Address.String()); ok {
					return rueidis.AuthCredentials{Username: cfg.SentinelUsername, Password: cfg.SentinelPassword}, nil
				}
			}
			u, p, err := cfg.Credentials()
			return rueidis.AuthCredentials{Username: u, Password: p}, err
		}
	}
	if cfg.Sentinel != "" {
		c.sentinelDialer = &net.Resolver{}
		sentinelDialer := opt.Dialer
		sentinelDialer.Resolver = c.sentinelDialer
		opt.Sentinel = rueidis.SentinelOption{
			MasterSet: cfg.Sentinel,
			Username:  cfg.SentinelUsername,
			Password:  cfg.SentinelPassword,
			TLSConfig: cfg.TLS,
			Dialer:    sentinelDialer,
			// Reconcile with the Sentinels now and then besides their
			// +switch-master events: one missed event would otherwise bind
			// the client to a demoted master.
			TopologyRefreshInterval: 2 * time.Second,
		}
	}
	return opt
}

// dial connects like rueidis would, but gives up when the client closes,
// and closes the connection then, so that a handshake with a Redis that
// accepted the connection but never answers does not hold Close up.
func (c *Client) dial(ctx context.Context, dst string, d *net.Dialer, tlsCfg *tls.Config) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.rootCtx, cancel)
	defer func() { stop(); cancel() }()
	var conn net.Conn
	var err error
	if tlsCfg != nil {
		conn, err = (&tls.Dialer{NetDialer: d, Config: tlsCfg}).DialContext(ctx, "tcp", dst)
	} else {
		conn, err = d.DialContext(ctx, "tcp", dst)
	}
	if err != nil {
		return nil, err
	}
	if c.sentinelDialer != nil && d.Resolver == c.sentinelDialer {
		c.sentinelConns.Store(conn.RemoteAddr().String(), struct{}{})
	}
	// Closed when the client closes; rueidis closes it earlier otherwise,
	// and then the registration goes with it.
	oc := &ownedConn{Conn: conn}
	oc.mu.Lock()
	oc.stop = context.AfterFunc(c.rootCtx, func() { _ = oc.Close() })
	oc.mu.Unlock()
	return oc, nil
}

// ownedConn is a connection that also ends its registration on the
// client's context when it closes. The registration may fire before it
// is stored, hence the lock.
type ownedConn struct {
	net.Conn
	mu   sync.Mutex
	stop func() bool
}

func (c *ownedConn) Close() error {
	c.mu.Lock()
	stop := c.stop
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
	return c.Conn.Close()
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

// connectLoop creates the rueidis client, retrying while Redis is
// unreachable. rueidis reconnects by itself once it has a client.
func (c *Client) connectLoop() {
	defer c.wg.Done()
	warned := false
	for {
		cl, err := rueidis.NewClient(c.opt)
		if err == nil {
			select {
			case <-c.done:
				cl.Close()
				return
			default:
			}
			c.rc.Store(&cl)
			close(c.connected)
			c.log.Debug("fleet: connected to redis", zap.Strings("addrs", c.cfg.Addrs))
			return
		}
		if c.rootCtx.Err() != nil {
			return
		}
		if !warned {
			// rueidis errors name the address and the server's reply, never
			// the password.
			c.log.Warn("fleet: cannot connect to redis, retrying in the background",
				zap.Strings("addrs", c.cfg.Addrs), zap.Error(err))
			warned = true
		}
		select {
		case <-c.done:
			return
		case <-time.After(retryEvery):
		}
	}
}

// client is the rueidis client, or nil while not yet connected.
func (c *Client) client() rueidis.Client {
	if p := c.rc.Load(); p != nil {
		return *p
	}
	return nil
}

// reachable is the client when a call may be made now: connected and the
// breaker closed.
func (c *Client) reachable() rueidis.Client {
	cl := c.client()
	if cl == nil || !c.breaker.allow() {
		return nil
	}
	return cl
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

// AddObserver adds a metrics observer and tells it the current state; the
// returned function removes it. Every observer added and not removed gets
// every report: each Caddy config has its own metrics registry, and a
// config that fails to load must not take the running one's series.
func (c *Client) AddObserver(o Observer) (remove func()) {
	c.obsMu.Lock()
	cur := c.observers()
	next := append(append(make([]Observer, 0, len(cur)+1), cur...), o)
	c.obs.Store(&next)
	c.obsMu.Unlock()
	o.Up(c.Up())
	var once sync.Once
	return func() {
		once.Do(func() {
			c.obsMu.Lock()
			defer c.obsMu.Unlock()
			cur := c.observers()
			next := make([]Observer, 0, len(cur))
			removed := false
			for _, x := range cur {
				if x == o && !removed {
					removed = true
					continue
				}
				next = append(next, x)
			}
			c.obs.Store(&next)
		})
	}
}

func (c *Client) observers() []Observer {
	if p := c.obs.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *Client) countLookup(result string) {
	switch result {
	case "hit":
		c.st.hit.Add(1)
	case "miss":
		c.st.miss.Add(1)
	case "collapsed":
		c.st.collapsed.Add(1)
	case "invalid":
		c.st.invalid.Add(1)
	case "unavailable":
		c.st.unavailable.Add(1)
	}
	for _, o := range c.observers() {
		o.Lookup(result)
	}
}

// Up reports whether the stream reader (the heartbeat) last succeeded.
func (c *Client) Up() bool { return c.up.Load() }

func (c *Client) setUp(up bool) {
	if c.up.Swap(up) != up {
		if up {
			c.log.Debug("fleet: stream reader up")
		} else {
			c.log.Debug("fleet: stream reader down")
		}
		for _, o := range c.observers() {
			o.Up(up)
		}
	}
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	var s Stats
	s.Lookups.Hit = c.st.hit.Load()
	s.Lookups.Miss = c.st.miss.Load()
	s.Lookups.Collapsed = c.st.collapsed.Load()
	s.Lookups.Invalid = c.st.invalid.Load()
	s.Lookups.Unavailable = c.st.unavailable.Load()
	s.Invalidations.Sent = c.st.sent.Load()
	s.Invalidations.Received = c.st.received.Load()
	s.Invalidations.Queued = c.st.queued.Load()
	s.Invalidations.Invalid = c.st.invalidEvents.Load()
	s.Invalidations.Demotes = c.st.demotes.Load()
	s.OutboxLen = c.out.len()
	s.Up = c.Up()
	s.BreakerOpen = !c.breaker.allow()
	s.ConfirmedAgoMS = -1
	if at := c.confirmed.Load(); at != 0 {
		s.ConfirmedAgoMS = (time.Since(c.mono) - time.Duration(at-1)).Milliseconds()
	}
	return s
}

// call runs one Redis exchange bounded by Timeout, and feeds the breaker:
// a failure that is not the caller's own cancellation counts, a success
// resets the count.
func (c *Client) call(ctx context.Context, fn func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	err := fn(cctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			c.breaker.fail()
		}
		return err
	}
	c.breaker.ok()
	return nil
}

// breaker stops calls for breakerOpen after breakerFailures consecutive
// failures, so a node whose Redis is gone answers from its own cache and
// the upstream without paying a timeout per request. After the open period
// calls go through again; the next failures reopen it.
type breaker struct {
	fails     atomic.Int32
	openUntil atomic.Int64 // unix nanoseconds, real clock
}

func (b *breaker) allow() bool { return time.Now().UnixNano() >= b.openUntil.Load() }

func (b *breaker) fail() {
	if b.fails.Add(1) >= breakerFailures {
		b.fails.Store(0)
		b.openUntil.Store(time.Now().Add(breakerOpen).UnixNano())
	}
}

func (b *breaker) ok() { b.fails.Store(0) }

func (b *breaker) reset() {
	b.fails.Store(0)
	b.openUntil.Store(0)
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
