package fleet

import (
	"context"
	"crypto/hmac"
	"encoding/binary"
	"strconv"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// Source tells where a Load's answer came from.
type Source uint8

const (
	// Hit: a valid shared decision of the current generation, fresh enough.
	Hit Source = iota + 1
	// Stored: this node asked the upstream and shared the answer.
	Stored
	// Collapsed: this node waited and used another node's answer.
	Collapsed
	// Fetched: this node asked the upstream and did not share the answer
	// (TTL 0, a failure, or the generation changed meanwhile).
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

// FetchFunc asks the upstream. payload is what to share (opaque bytes in
// the caller's encoding: the outcome and the fields the templates name,
// never a credential), ttl how long it stays fresh; ttl 0 or an error
// means "do not share", and ttl < 0 "do not share, and delete the shared
// decision of this key": the answer refutes it (a refusal not cached).
type FetchFunc func(ctx context.Context) (payload []byte, ttl time.Duration, err error)

// decisionVersion is the first byte of a stored decision's content.
const decisionVersion = 1

// Layout of a stored decision: version, generation, purge epoch, fresh
// until (Unix nanoseconds), payload, HMAC-SHA256 over the key name and all
// of the former.
const (
	decisionHeader = 1 + 8 + 8 + 8
	macLen         = 32
)

// keys of one (export, credential) pair.
type keys struct {
	decision, gen, lease, epoch string
}

func (c *Client) keysFor(id, mac string) keys {
	return keys{
		decision: c.prefix + "d:{" + id + "}:" + mac,
		gen:      c.prefix + "g:{" + id + "}",
		lease:    c.prefix + "l:{" + id + "}:" + mac,
		epoch:    c.prefix + "e",
	}
}

// shared is what one read of the shared state found.
type shared struct {
	gen, epoch int64
	// decision, when found and authentic.
	found      bool
	invalid    bool // a value was there but failed authentication
	dGen       int64
	dEpoch     int64
	freshUntil time.Time
	payload    []byte
	leaseHeld  bool
	acquired   bool // this read took the lease
	badCounter bool // the generation or epoch is not an integer
}

// usable reports whether the decision may answer now: authentic, filled
// under the current generation and purge epoch, and fresh past minFresh.
func (s *shared) usable(now, minFresh time.Time) bool {
	return s.found && s.dGen == s.gen && s.dEpoch == s.epoch &&
		s.freshUntil.After(now) && s.freshUntil.After(minFresh)
}

// Load is the fleet tier of one lookup. It answers with the shared decision
// of (id, cred) when there is a usable one; otherwise it takes a fleet-wide
// lease so that one node asks the upstream (fetch) while the others wait up
// to LockWait for its answer, then ask the upstream themselves. It is never
// worse than calling fetch directly: Redis errors never surface (they turn
// into Unavailable and a direct fetch), and no wait lasts past LockWait +
// Timeout before this node fetches itself.
//
// cred is the credential digest (never the raw credential); minFresh is the
// time past which a shared decision must stay fresh to be used: now for a
// miss, the local entry's freshness end for a refresh-ahead (so only a newer
// decision is taken). The returned err is fetch's error, or ctx's when the
// caller gave up while waiting.
func (c *Client) Load(ctx context.Context, id string, cred [32]byte, minFresh time.Time, fetch FetchFunc) (payload []byte, freshUntil time.Time, src Source, err error) {
	start := time.Now()
	cl := c.usable()
	if cl == nil {
		c.countLookup(ResultUnavailable)
		return c.fetchDirect(ctx, fetch, Unavailable)
	}
	k := c.keysFor(id, c.MAC(cred))
	st, err := c.read(ctx, cl, k, leaseNone, "")
	if p, f, s, e, done := c.fallBack(ctx, st, err, fetch); done {
		return p, f, s, e
	}
	if st.usable(c.now(), minFresh) {
		c.countLookup(ResultHit)
		return st.payload, st.freshUntil, Hit, nil
	}
	result := ResultMiss
	if st.invalid {
		result = ResultInvalid
	}

	token := randomHex(16)
	st, err = c.read(ctx, cl, k, leaseTake, token)
	if p, f, s, e, done := c.fallBack(ctx, st, err, fetch); done {
		return p, f, s, e
	}
	if st.invalid {
		result = ResultInvalid
	}
	if st.usable(c.now(), minFresh) {
		// Another node's fill landed between the two reads.
		if st.acquired {
			c.release(ctx, cl, k, token)
		}
		c.countLookup(ResultCollapsed)
		return st.payload, st.freshUntil, Collapsed, nil
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
			return nil, time.Time{}, Fetched, ctx.Err()
		case <-timer.C:
		}
		if !c.breaker.allow() {
			c.countLookup(ResultUnavailable)
			return c.fetchDirect(ctx, fetch, Unavailable)
		}
		next, err := c.read(ctx, cl, k, leaseCheck, "")
		if p, f, s, e, done := c.fallBack(ctx, next, err, fetch); done {
			return p, f, s, e
		}
		if next.invalid {
			result = ResultInvalid
		}
		if next.usable(c.now(), minFresh) {
			c.countLookup(ResultCollapsed)
			return next.payload, next.freshUntil, Collapsed, nil
		}
		st = next
		if !next.leaseHeld || !time.Now().Before(deadline) {
			// The holder gave up (failure or an answer not to share), or
			// took too long: ask the upstream ourselves, and share the
			// answer if the generation still allows it.
			if next.leaseHeld {
				c.log.Debug("fleet: lease wait timed out", zap.String("export_id", id))
			}
			c.countLookup(result)
			return c.fill(ctx, cl, k, st, "", fetch)
		}
		every = min(every+pollEvery, pollMax)
		timer.Reset(max(0, min(every, time.Until(deadline))))
	}
}

// fallBack ends a lookup whose Redis read failed (err) or found a counter
// that is not one: the caller's own cancellation, else a direct fetch, as
// without the fleet tier. done is false when the read can be used.
func (c *Client) fallBack(ctx context.Context, st shared, err error, fetch FetchFunc) (payload []byte, fresh time.Time, src Source, ferr error, done bool) {
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, time.Time{}, Fetched, ctx.Err(), true
	case err != nil:
		c.countLookup(ResultUnavailable)
		payload, fresh, src, ferr = c.fetchDirect(ctx, fetch, Unavailable)
		return payload, fresh, src, ferr, true
	case st.badCounter:
		c.countLookup(ResultInvalid)
		payload, fresh, src, ferr = c.fetchDirect(ctx, fetch, Fetched)
		return payload, fresh, src, ferr, true
	}
	return nil, time.Time{}, 0, nil, false
}

func (c *Client) fetchDirect(ctx context.Context, fetch FetchFunc, src Source) ([]byte, time.Time, Source, error) {
	payload, ttl, err := fetch(ctx)
	if err != nil {
		return payload, time.Time{}, src, err
	}
	var fresh time.Time
	if ttl > 0 {
		fresh = c.now().Add(ttl)
	}
	return payload, fresh, src, nil
}

// fill asks the upstream and shares a cacheable answer if the export's
// generation is still the one read before the fetch (atomically, in a
// script), then releases the lease if token still holds it.
func (c *Client) fill(ctx context.Context, cl rueidis.Client, k keys, st shared, token string, fetch FetchFunc) ([]byte, time.Time, Source, error) {
	payload, ttl, ferr := fetch(ctx)
	// The store and the release must happen even when the caller has gone:
	// they are bounded by Timeout on their own.
	bg := context.WithoutCancel(ctx)
	if ferr == nil && ttl < 0 {
		// The answer refutes the shared decision (a refusal this node does
		// not cache): no node may take it from Redis any more.
		_ = c.call(bg, func(ctx context.Context) error {
			return cl.Do(ctx, cl.B().Del().Key(k.decision).Build()).Error()
		})
	}
	if ferr != nil || ttl <= 0 {
		if token != "" {
			c.release(bg, cl, k, token)
		}
		if ferr != nil {
			return payload, time.Time{}, Fetched, ferr
		}
		return payload, time.Time{}, Fetched, nil
	}
	now := c.now()
	fresh := now.Add(ttl)
	if !c.breaker.allow() {
		// Not stored; the lease is still released (one bounded call): Redis
		// may well answer, and others would wait for the lease otherwise.
		if token != "" {
			c.release(bg, cl, k, token)
		}
		return payload, fresh, Fetched, nil
	}
	value := c.encodeDecision(k.decision, st.gen, st.epoch, fresh, payload)
	stored := false
	_ = c.call(bg, func(ctx context.Context) error {
		n, err := storeScript.Exec(ctx, cl,
			[]string{k.decision, k.gen, k.lease},
			[]string{strconv.FormatInt(st.gen, 10), string(value), strconv.FormatInt(ms(ttl), 10), token,
				strconv.FormatInt(ms(c.cfg.LeaseTTL), 10)}).AsInt64()
		stored = err == nil && n == 1
		return err
	})
	if stored {
		return payload, fresh, Stored, nil
	}
	return payload, fresh, Fetched, nil
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

// storeScript writes the decision only if the generation is unchanged, and
// releases the lease only if it still holds the caller's token. All keys
// share the export's hash tag, so it also runs on a Cluster.
//
// The generation key must outlive every decision filled under it: if it
// expired first, the generation would fall back to 0 and a decision of an
// older generation could become current again. So a store extends it to the
// decision's lifetime plus a margin, creating it as "0" when missing. It
// then expires with the last decision of the export (or, after a bump,
// when the fills that may still be running are over), and Redis keeps
// nothing longer than needed.
var storeScript = rueidis.NewLuaScript(`
local g = redis.call('GET', KEYS[2])
local stored = 0
if (g or '0') == ARGV[1] then
  local px = tonumber(ARGV[3])
  local keep = px + tonumber(ARGV[5])
  redis.call('SET', KEYS[1], ARGV[2], 'PX', px)
  if not g then
    redis.call('SET', KEYS[2], '0', 'PX', keep)
  else
    local t = redis.call('PTTL', KEYS[2])
    if t >= 0 and t < keep then
      redis.call('PEXPIRE', KEYS[2], keep)
    end
  end
  stored = 1
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
return stored`)

// bumpScript increments an export's generation and keeps the key at least
// ARGV[1] ms: long enough for every fill that read the old generation to
// find the new one when it tries to store (fills last less than a lease).
// Publishes are rare, so it is sent whole (EVAL) in one pipeline with the
// other bumps rather than loaded first.
const bumpScript = `
local v = redis.call('INCR', KEYS[1])
local t = redis.call('PTTL', KEYS[1])
local keep = tonumber(ARGV[1])
if t == -1 or (t >= 0 and t < keep) then
  redis.call('PEXPIRE', KEYS[1], keep)
end
return v`

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

// read fetches the decision, the generation and the purge epoch in one
// round trip, with the lease operation op. The lease comes first in the
// pipeline: a holder stores its decision and releases the lease in one
// script, so whoever finds the lease released (or takes it) after that also
// reads the decision stored with it, and does not ask the upstream again.
func (c *Client) read(ctx context.Context, cl rueidis.Client, k keys, op leaseOp, token string) (shared, error) {
	var st shared
	err := c.call(ctx, func(ctx context.Context) error {
		cmds := make(rueidis.Commands, 0, 4)
		switch op {
		case leaseTake:
			cmds = append(cmds, cl.B().Set().Key(k.lease).Value(token).Nx().PxMilliseconds(ms(c.cfg.LeaseTTL)).Build())
		case leaseCheck:
			cmds = append(cmds, cl.B().Exists().Key(k.lease).Build())
		}
		cmds = append(cmds,
			cl.B().Get().Key(k.decision).Build(),
			cl.B().Get().Key(k.gen).Build(),
			cl.B().Get().Key(k.epoch).Build())
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
		var badGen, badEpoch bool
		if st.gen, badGen, err = intOrZero(res[1]); err != nil {
			return err
		}
		if st.epoch, badEpoch, err = intOrZero(res[2]); err != nil {
			return err
		}
		if badGen || badEpoch {
			// Not a Redis failure, so not the breaker's business; but no
			// decision can be checked against it.
			c.log.Warn("fleet: ignoring a generation or purge epoch that is not an integer",
				zap.String("key", k.gen), zap.Bool("epoch", badEpoch))
			st.badCounter = true
		}
		if hasDecision {
			c.decodeDecision(k.decision, raw, &st)
		}
		return nil
	})
	return st, err
}

// intOrZero reads a counter: a missing key is 0. A value that is not an
// integer (tampering) is reported as bad, not as an error.
func intOrZero(r rueidis.RedisResult) (n int64, bad bool, err error) {
	s, err := r.ToString()
	if isNil(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	n, perr := strconv.ParseInt(s, 10, 64)
	return n, perr != nil, nil
}

func (c *Client) encodeDecision(key string, gen, epoch int64, fresh time.Time, payload []byte) []byte {
	b := make([]byte, decisionHeader, decisionHeader+len(payload)+macLen)
	b[0] = decisionVersion
	binary.BigEndian.PutUint64(b[1:], uint64(gen))
	binary.BigEndian.PutUint64(b[9:], uint64(epoch))
	binary.BigEndian.PutUint64(b[17:], uint64(fresh.UnixNano()))
	b = append(b, payload...)
	return append(b, c.sign(key, b)...)
}

// decodeDecision checks and decodes a stored decision into st. A value
// that fails the check is counted by the caller's lookup result and logged
// at warn, without its content.
func (c *Client) decodeDecision(key, raw string, st *shared) {
	if len(raw) < decisionHeader+macLen {
		c.rejectValue(key, "too short")
		st.invalid = true
		return
	}
	content := []byte(raw[:len(raw)-macLen])
	if !hmac.Equal(c.sign(key, content), []byte(raw[len(raw)-macLen:])) {
		c.rejectValue(key, "authentication failed")
		st.invalid = true
		return
	}
	if content[0] != decisionVersion {
		c.rejectValue(key, "unknown version")
		st.invalid = true
		return
	}
	st.found = true
	st.dGen = int64(binary.BigEndian.Uint64(content[1:]))
	st.dEpoch = int64(binary.BigEndian.Uint64(content[9:]))
	st.freshUntil = time.Unix(0, int64(binary.BigEndian.Uint64(content[17:])))
	st.payload = content[decisionHeader:]
}

// rejectValue logs a value that failed authentication: the key names the
// export and an HMAC, never the credential; the content is not logged.
func (c *Client) rejectValue(key, why string) {
	c.log.Warn("fleet: ignoring a shared value that failed authentication",
		zap.String("key", key), zap.String("reason", why))
}

func ms(d time.Duration) int64 {
	if m := d.Milliseconds(); m > 0 {
		return m
	}
	return 1
}
