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
	blockFor         = 500 * time.Millisecond // XREAD BLOCK: the heartbeat period
	readerMinTimeout = 250 * time.Millisecond // the stream reader's own calls, off the request path
	bootCheckEvery   = time.Second            // incarnation check while connected
	outboxMax        = 10000                  // events held while Redis is unreachable
	streamMaxLen     = 100000                 // XADD MAXLEN ~
	readCount        = 1000                   // events per stream read
	minDialTimeout   = time.Second
)

// Config configures a Client. Addrs and Secret are required.
type Config struct {
	// Addrs are host:port of the Redis/Valkey server, or Cluster seeds.
	Addrs []string
	// Username and Password authenticate (Redis ACL); both may be empty.
	Username, Password string
	// TLS, when not nil, is used for every connection; nil is plain TCP.
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
	cfg    Config
	prefix string // with the trailing colon
	node   string // random id of this client, carried by its events
	log    *zap.Logger
	now    func() time.Time
	opt    rueidis.ClientOption

	rc        atomic.Pointer[rueidis.Client]
	connected chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	rootCtx   context.Context
	cancel    context.CancelFunc

	breaker breaker
	obs     atomic.Pointer[observerBox]
	up      atomic.Bool

	subMu  sync.Mutex
	subs   map[int]func(Event)
	subSeq int

	outMu  sync.Mutex
	outbox []Event
	kick   chan struct{}

	st counters
}

type observerBox struct{ o Observer }

// Observer receives the fleet tier's metrics. Implementations must be safe
// for concurrent use and fast.
type Observer interface {
	// Lookup counts one Load by result: hit, miss, collapsed, invalid or
	// unavailable.
	Lookup(result string)
	// Invalidation counts one event by direction: sent or received.
	Invalidation(direction string)
	// Lag observes the time from an event's write to its delivery here.
	Lag(d time.Duration)
	// Up reports the stream reader's state when it changes.
	Up(up bool)
}

// Lookup results, as passed to Observer.Lookup.
const (
	ResultHit         = "hit"
	ResultMiss        = "miss"
	ResultCollapsed   = "collapsed"
	ResultInvalid     = "invalid"
	ResultUnavailable = "unavailable"
)

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
}

// New checks cfg and returns a Client. It does not wait for Redis: a node
// must start while Redis is down, so the connection is made in the
// background and retried until it works; until then every Load is
// Unavailable and every Publish is queued. Only a bad configuration is an
// error, and its message never contains the password or the secret.
func New(cfg Config) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("fleet: at least one redis address is required")
	}
	for _, a := range cfg.Addrs {
		if a == "" || !strings.Contains(a, ":") {
			return nil, fmt.Errorf("fleet: redis address %q is not host:port", a)
		}
	}
	if len(cfg.Secret) < MinSecretLen {
		return nil, fmt.Errorf("fleet: secret must be at least %d bytes, got %d", MinSecretLen, len(cfg.Secret))
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(cfg.Prefix, " \t\r\n{}") {
		return nil, fmt.Errorf("fleet: prefix %q must not contain spaces or braces", cfg.Prefix)
	}
	if cfg.Timeout < 0 || cfg.LockWait < 0 || cfg.LeaseTTL < 0 {
		return nil, errors.New("fleet: timeout, lock_wait and the lease lifetime must not be negative")
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
		kick:      make(chan struct{}, 1),
	}
	c.rootCtx, c.cancel = context.WithCancel(context.Background())
	dialTimeout := max(10*cfg.Timeout, minDialTimeout)
	c.opt = rueidis.ClientOption{
		InitAddress: cfg.Addrs,
		Username:    cfg.Username,
		Password:    cfg.Password,
		TLSConfig:   cfg.TLS,
		// Decisions are read once per local miss; server-assisted client
		// caching would only add tracking traffic and memory.
		DisableCache: true,
		// A retry inside one bounded call only moves the timeout; the
		// breaker and the callers' own fallbacks handle failures.
		DisableRetry: true,
		// Not sent, so the ACL need not allow CLIENT SETINFO.
		ClientSetInfo: rueidis.DisableClientSetInfo,
		Dialer:        defaultDialer(dialTimeout),
		// A connection that does not answer for this long is closed and
		// dialled again; each call has its own shorter Timeout anyway.
		ConnWriteTimeout: max(20*cfg.Timeout, minDialTimeout),
		// One pipelined connection per node is plenty: Redis is asked only
		// on local misses. It keeps a large fleet's connection count low.
		PipelineMultiplex: -1,
		// The stream reader's XREAD BLOCK takes one connection of its own.
		BlockingPoolSize: 4,
		// Small values: one pipeline per node is plenty for decisions.
		ReadBufferEachConn:  64 << 10,
		WriteBufferEachConn: 64 << 10,
		// Lets a blocking read stop at once when the client closes.
		AlwaysPipelining: true,
	}
	c.wg.Add(3)
	go c.connectLoop()
	go c.readLoop()
	go c.outboxLoop()
	return c, nil
}

// Close stops every goroutine of the client, waits for them and closes the
// connections. Events still in the outbox are dropped (the local cache of
// this node was already invalidated). Safe to call more than once.
func (c *Client) Close() {
	c.closeOnce.Do(func() {
		close(c.done)
		c.cancel()
		c.wg.Wait()
		if cl := c.client(); cl != nil {
			cl.Close()
		}
	})
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

// usable is the client when a call may be made now: connected and the
// breaker closed.
func (c *Client) usable() rueidis.Client {
	cl := c.client()
	if cl == nil || !c.breaker.allow() {
		return nil
	}
	return cl
}

// MAC names a credential in keys: lowercase hex HMAC-SHA256(secret, digest).
func (c *Client) MAC(cred [32]byte) string {
	h := hmac.New(sha256.New, c.cfg.Secret)
	h.Write(cred[:])
	return hex.EncodeToString(h.Sum(nil))
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

// SetObserver sets the metrics observer; nil removes it. Safe to call at
// any time (config reloads swap it).
func (c *Client) SetObserver(o Observer) {
	if o == nil {
		c.obs.Store(nil)
		return
	}
	c.obs.Store(&observerBox{o})
}

func (c *Client) observer() Observer {
	if b := c.obs.Load(); b != nil {
		return b.o
	}
	return nil
}

func (c *Client) countLookup(result string) {
	switch result {
	case ResultHit:
		c.st.hit.Add(1)
	case ResultMiss:
		c.st.miss.Add(1)
	case ResultCollapsed:
		c.st.collapsed.Add(1)
	case ResultInvalid:
		c.st.invalid.Add(1)
	case ResultUnavailable:
		c.st.unavailable.Add(1)
	}
	if o := c.observer(); o != nil {
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
		if o := c.observer(); o != nil {
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
	c.outMu.Lock()
	s.OutboxLen = len(c.outbox)
	c.outMu.Unlock()
	s.Up = c.Up()
	s.BreakerOpen = !c.breaker.allow()
	return s
}

// Pending reports whether invalidations of this client wait in its outbox
// (Redis unreachable): until they are out, shared decisions may predate
// them.
func (c *Client) Pending() bool {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	return len(c.outbox) > 0
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

func defaultDialer(timeout time.Duration) net.Dialer {
	// KeepAlive also paces rueidis's own PINGs on idle connections.
	return net.Dialer{Timeout: timeout, KeepAlive: time.Second}
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
