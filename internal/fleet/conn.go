package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

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

// call runs one Redis exchange bounded by Timeout, and feeds the breaker:
// a failure that is not the caller's own cancellation counts, a success
// resets the count.
func (c *Client) call(ctx context.Context, fn func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	err := fn(cctx)
	cancel()
	switch {
	case err == nil, answered(err):
		c.breaker.ok()
	case ctx.Err() == nil:
		c.breaker.fail()
	}
	return err
}

// answered reports whether err is an answer of a working Redis that only
// leaves a publish unconfirmed (no replica yet, a slot that moved): it
// must not open the breaker, which would skip a Redis that answers.
func answered(err error) bool {
	return errors.Is(err, errNotReplicated) || errors.Is(err, errRedirected)
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
