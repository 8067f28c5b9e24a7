package fleet

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// Source tells where a Load's answer came from.
type Source uint8

const (
	// Hit: a usable shared decision.
	Hit Source = iota + 1
	// Stored: this node asked the upstream and shared the answer.
	Stored
	// Collapsed: this node waited and used another node's answer.
	Collapsed
	// Fetched: this node asked the upstream and did not share the answer
	// (not cacheable, a failure, or an invalidation overtook it).
	Fetched
	// Unavailable: Redis failed or the breaker is open; this node asked the
	// upstream directly.
	Unavailable
)

func (s Source) String() string {
	switch s {
	case Hit:
		return "hit"
	case Stored:
		return "stored"
	case Collapsed:
		return "collapsed"
	case Fetched:
		return "fetched"
	case Unavailable:
		return "unavailable"
	}
	return "unknown"
}

// Query names one shared decision and what makes it usable.
type Query struct {
	// ID is the export id, Cred the credential digest (never the raw
	// credential), Site the site's scope (Client.Site).
	ID   string
	Cred [32]byte
	Site string
	// MinFresh is the time past which a decision must stay fresh to be
	// used: now for a miss, the local entry's freshness end for a
	// refresh-ahead (so only a newer decision is taken).
	MinFresh time.Time
	// NotBefore refuses decisions made before it (e.g. the last time this
	// node saw the credential refused).
	NotBefore time.Time
}

// Fill is what one call of the upstream gives the shared tier.
type Fill struct {
	// Payload is what to share, in the caller's encoding: the outcome and
	// the fields the templates name, never a credential.
	Payload []byte
	// Tags are the answer's surrogate keys: a purge of one of them retires
	// the decision.
	Tags []string
	// TTL is how long the answer stays fresh; 0 means "do not share".
	TTL time.Duration
	// Refutes says the answer proves the shared decision of this key wrong
	// (a refusal this node does not cache): it is deleted.
	Refutes bool
}

// FetchFunc asks the upstream. An error is the upstream's failure: nothing
// is shared.
type FetchFunc func(ctx context.Context) (Fill, error)

// Decision is what Load answers with.
type Decision struct {
	Payload []byte
	Tags    []string
	// DecidedAt is when the upstream was asked (by whichever node); every
	// invalidation acknowledged before then is reflected in it.
	DecidedAt time.Time
	// FreshUntil ends its freshness; zero when it must not be stored.
	FreshUntil time.Time
	Source     Source
}

// keys of one (export, site, credential), and the credential's name.
type keys struct {
	decision, gen, lease string
	cred                 string
}

func (c *Client) keysFor(q *Query) keys {
	mac := c.mac(q.Cred)
	return keys{
		cred:     mac,
		decision: c.prefix + "d:{" + q.ID + "}:" + q.Site + ":" + mac,
		gen:      c.prefix + "g:{" + q.ID + "}",
		lease:    c.prefix + "l:{" + q.ID + "}:" + q.Site + ":" + mac,
	}
}

// shared is what one read of the shared state found.
type shared struct {
	gen       string // the export's generation; "" when the key is missing
	found     bool   // an authentic decision
	invalid   bool   // a value was there but failed authentication
	d         stored
	leaseHeld bool
	acquired  bool // this read took the lease
}

// usable reports whether the decision may answer now: authentic, made
// under the export's current generation (a missing generation refutes
// every decision), fresh past q.MinFresh, made after notBefore and within
// the horizon, and after every invalidation this node knows covers it.
func (c *Client) usable(st *shared, q *Query, k *keys, now, notBefore time.Time) bool {
	return st.found && st.gen != "" && st.d.gen == st.gen &&
		st.d.freshUntil.After(now) && st.d.freshUntil.After(q.MinFresh) &&
		!st.d.decidedAt.Before(notBefore) && now.Sub(st.d.decidedAt) <= c.cfg.Horizon &&
		c.purges.allows(q.ID, k.cred, st.d.tags, st.d.decidedAt.UnixNano())
}

func (st *shared) decision(src Source) Decision {
	return Decision{Payload: st.d.payload, Tags: st.d.tags, DecidedAt: st.d.decidedAt, FreshUntil: st.d.freshUntil, Source: src}
}

// Load is the fleet tier of one lookup. It answers with the shared decision
// of q when there is a usable one; otherwise it takes a fleet-wide lease so
// that one node asks the upstream (fetch) while the others wait up to
// LockWait for its answer, then ask the upstream themselves. It is never
// worse than calling fetch directly: Redis errors never surface (they turn
// into Unavailable and a direct fetch), and no wait lasts past LockWait +
// Timeout before this node fetches itself.
//
// While the stream reader has not confirmed within MaxStaleness, only
// decisions made within MaxStaleness are taken. The returned error is
// fetch's, or ctx's when the caller gave up while waiting.
func (c *Client) Load(ctx context.Context, q Query, fetch FetchFunc) (Decision, error) {
	start := time.Now()
	cl := c.reachable()
	if cl == nil {
		c.countLookup("unavailable")
		return c.fetchDirect(ctx, fetch, Unavailable)
	}
	notBefore := q.NotBefore
	if nb := c.notBefore(c.now()); nb.After(notBefore) {
		notBefore = nb
	}
	k := c.keysFor(&q)
	st, err := c.read(ctx, cl, k, leaseNone, "")
	if d, e, done := c.fallBack(ctx, err, fetch); done {
		return d, e
	}
	if c.usable(&st, &q, &k, c.now(), notBefore) {
		c.countLookup("hit")
		return st.decision(Hit), nil
	}
	result := "miss"
	if st.invalid {
		result = "invalid"
	}

	token := randomHex(16)
	st, err = c.read(ctx, cl, k, leaseTake, token)
	if d, e, done := c.fallBack(ctx, err, fetch); done {
		return d, e
	}
	if st.invalid {
		result = "invalid"
	}
	if c.usable(&st, &q, &k, c.now(), notBefore) {
		// Another node's fill landed between the two reads.
		if st.acquired {
			c.release(ctx, cl, k, token)
		}
		c.countLookup("collapsed")
		return st.decision(Collapsed), nil
	}
	if st.acquired {
		c.countLookup(result)
		return c.fill(ctx, cl, k, st, token, fetch)
	}

	// Another node is filling: wait for its answer. The wait counts from
	// the start of Load, so with the last poll's Timeout it never exceeds
	// LockWait + Timeout. Polls start every 5 ms and slow down to every
	// 25 ms, so that a long fill on a large fleet does not flood Redis.
	deadline := start.Add(c.cfg.LockWait)
	every := pollEvery
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return Decision{Source: Fetched}, ctx.Err()
		case <-timer.C:
		}
		if !c.breaker.allow() {
			c.countLookup("unavailable")
			return c.fetchDirect(ctx, fetch, Unavailable)
		}
		next, err := c.read(ctx, cl, k, leaseCheck, "")
		if d, e, done := c.fallBack(ctx, err, fetch); done {
			return d, e
		}
		if next.invalid {
			result = "invalid"
		}
		if c.usable(&next, &q, &k, c.now(), notBefore) {
			c.countLookup("collapsed")
			return next.decision(Collapsed), nil
		}
		st = next
		if !next.leaseHeld || !time.Now().Before(deadline) {
			// The holder gave up (failure or an answer not to share), or
			// took too long: ask the upstream ourselves, and share the
			// answer if the generation still allows it.
			if next.leaseHeld {
				c.log.Debug("fleet: lease wait timed out", zap.String("export_id", q.ID))
			}
			c.countLookup(result)
			return c.fill(ctx, cl, k, st, "", fetch)
		}
		every = min(every+pollEvery, pollMax)
		timer.Reset(max(0, min(every, time.Until(deadline))))
	}
}

// fallBack ends a lookup whose Redis read failed: the caller's own
// cancellation, else a direct fetch, as without the fleet tier. done is
// false when the read can be used.
func (c *Client) fallBack(ctx context.Context, err error, fetch FetchFunc) (Decision, error, bool) {
	switch {
	case err == nil:
		return Decision{}, nil, false
	case ctx.Err() != nil:
		return Decision{Source: Fetched}, ctx.Err(), true
	}
	c.countLookup("unavailable")
	d, ferr := c.fetchDirect(ctx, fetch, Unavailable)
	return d, ferr, true
}

func (c *Client) fetchDirect(ctx context.Context, fetch FetchFunc, src Source) (Decision, error) {
	decided := c.now()
	f, err := fetch(ctx)
	d := Decision{Payload: f.Payload, Tags: f.Tags, DecidedAt: decided, Source: src}
	if err != nil {
		return d, err
	}
	if f.TTL > 0 {
		d.FreshUntil = c.now().Add(f.TTL)
	}
	return d, nil
}

// fill asks the upstream and shares a cacheable answer if the export's
// generation is still the one read before the fetch (atomically, in a
// script), then releases the lease if token still holds it.
func (c *Client) fill(ctx context.Context, cl rueidis.Client, k keys, st shared, token string, fetch FetchFunc) (Decision, error) {
	decided := c.now()
	f, ferr := fetch(ctx)
	d := Decision{Payload: f.Payload, Tags: f.Tags, DecidedAt: decided, Source: Fetched}
	// The store and the release must happen even when the caller has gone:
	// they are bounded by Timeout on their own.
	bg := context.WithoutCancel(ctx)
	if ferr == nil && f.Refutes {
		// The answer refutes the shared decision (a refusal this node does
		// not cache): no node may take it from Redis any more.
		_ = c.call(bg, func(ctx context.Context) error {
			return cl.Do(ctx, cl.B().Del().Key(k.decision).Build()).Error()
		})
	}
	if ferr != nil || f.TTL <= 0 || f.Refutes {
		if token != "" {
			c.release(bg, cl, k, token)
		}
		return d, ferr
	}
	d.FreshUntil = c.now().Add(f.TTL)
	if !c.breaker.allow() {
		// Not stored; the lease is still released (one bounded call): Redis
		// may well answer, and others would wait for the lease otherwise.
		if token != "" {
			c.release(bg, cl, k, token)
		}
		return d, nil
	}
	gen, fresh := st.gen, ""
	if gen == "" {
		// No generation yet (never invalidated, or the key expired or was
		// evicted): the store creates one, and no decision of an earlier
		// one can match it.
		fresh = randomHex(8)
		gen = fresh
	}
	value := c.encodeDecision(k.decision, stored{gen: gen, decidedAt: decided, freshUntil: d.FreshUntil, tags: f.Tags, payload: f.Payload})
	ok := false
	_ = c.call(bg, func(ctx context.Context) error {
		n, err := storeScript.Exec(ctx, cl,
			[]string{k.decision, k.gen, k.lease},
			[]string{st.gen, fresh, string(value), strconv.FormatInt(ms(f.TTL), 10), token,
				strconv.FormatInt(ms(c.cfg.LeaseTTL), 10)}).AsInt64()
		ok = err == nil && n == 1
		return err
	})
	if ok {
		d.Source = Stored
	}
	return d, nil
}

// release deletes the lease if it still holds token, so that the next miss
// of the key does not wait for it to expire.
func (c *Client) release(ctx context.Context, cl rueidis.Client, k keys, token string) {
	// Even with the breaker open: a held lease makes every other node's miss
	// of the key wait for it, and this is one call bounded by Timeout.
	_ = c.call(context.WithoutCancel(ctx), func(ctx context.Context) error {
		return releaseScript.Exec(ctx, cl, []string{k.lease}, []string{token}).Error()
	})
}

// storeScript writes the decision only if the export's generation is the
// one the filler read before asking the upstream (ARGV[1]; "" when it was
// missing, in which case the script creates ARGV[2], the generation the
// decision was encoded with), and releases the lease only if it still
// holds the caller's token. All keys share the export's hash tag, so it
// also runs on a Cluster.
//
// The generation key must outlive every decision filled under it (a
// missing generation makes every decision unusable, so an early expiry only
// costs misses): a store extends it to the decision's lifetime plus a
// margin.
var storeScript = rueidis.NewLuaScript(`
local g = redis.call('GET', KEYS[2])
local stored = 0
if (not g and ARGV[1] == '' and ARGV[2] ~= '') or (g and g == ARGV[1]) then
  local px = tonumber(ARGV[4])
  local keep = px + tonumber(ARGV[6])
  if not g then
    redis.call('SET', KEYS[2], ARGV[2], 'PX', keep)
  else
    local t = redis.call('PTTL', KEYS[2])
    if t >= 0 and t < keep then
      redis.call('PEXPIRE', KEYS[2], keep)
    end
  end
  redis.call('SET', KEYS[1], ARGV[3], 'PX', px)
  stored = 1
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then
  redis.call('DEL', KEYS[3])
end
return stored`)

// releaseScript deletes a lease only if it still holds the caller's token.
var releaseScript = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// What read does with the lease besides reading.
type leaseOp uint8

const (
	leaseNone  leaseOp = iota
	leaseCheck         // report whether it is held (EXISTS)
	leaseTake          // try to take it (SET NX PX) before reading
)

// read fetches the decision and the generation in one round trip, with the
// lease operation op. The lease comes first in the pipeline: a holder
// stores its decision and releases the lease in one script, so whoever
// finds the lease released (or takes it) after that also reads the
// decision stored with it, and does not ask the upstream again.
func (c *Client) read(ctx context.Context, cl rueidis.Client, k keys, op leaseOp, token string) (shared, error) {
	var st shared
	err := c.call(ctx, func(ctx context.Context) error {
		cmds := make(rueidis.Commands, 0, 3)
		switch op {
		case leaseTake:
			cmds = append(cmds, cl.B().Set().Key(k.lease).Value(token).Nx().PxMilliseconds(ms(c.cfg.LeaseTTL)).Build())
		case leaseCheck:
			cmds = append(cmds, cl.B().Exists().Key(k.lease).Build())
		}
		cmds = append(cmds, cl.B().Get().Key(k.decision).Build(), cl.B().Get().Key(k.gen).Build())
		res := cl.DoMulti(ctx, cmds...)
		switch op {
		case leaseTake:
			err := res[0].Error()
			if err != nil && !isNil(err) {
				return err
			}
			st.acquired = err == nil
			res = res[1:]
		case leaseCheck:
			n, err := res[0].AsInt64()
			if err != nil {
				return err
			}
			st.leaseHeld = n > 0
			res = res[1:]
		}
		raw, err := res[0].ToString()
		if err != nil && !isNil(err) {
			return err
		}
		hasDecision := err == nil
		if st.gen, err = res[1].ToString(); err != nil && !isNil(err) {
			return err
		}
		if hasDecision {
			st.d, st.found, st.invalid = c.decodeDecision(k.decision, raw)
		}
		return nil
	})
	return st, err
}

func ms(d time.Duration) int64 {
	if m := d.Milliseconds(); m > 0 {
		return m
	}
	return 1
}
