package fleet

import (
	"context"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// Event is one invalidation: export ids to drop, surrogate keys to purge,
// or everything.
type Event struct {
	// IDs are export ids whose entries are dropped.
	IDs []string
	// Tags are surrogate keys whose entries are dropped.
	Tags []string
	// All drops every entry.
	All bool
	// Demote is only ever delivered by this package, never published: the
	// reader could not resume where it stopped (the stream was trimmed past
	// it, or Redis was restarted or flushed), so invalidations may have been
	// missed and every local entry must be demoted to stale (asked again
	// before use, served only if the upstream fails).
	Demote bool
	// Written is when the event was written, for the lag metric. Publish
	// sets it when it is zero.
	Written time.Time
}

// wireEvent is an Event as stored in the stream, JSON-encoded.
type wireEvent struct {
	IDs     []string `json:"i,omitempty"`
	Tags    []string `json:"t,omitempty"`
	All     bool     `json:"a,omitempty"`
	Written int64    `json:"w"` // Unix nanoseconds
}

// Publish makes an invalidation reach every other node: it bumps each
// export's generation (so a fill that started before it is not shared) or,
// for surrogate keys and All, the purge epoch (which retires every shared
// decision), then appends the event to the stream. The caller drops its own
// local entries itself: its own subscribers do not receive its events.
//
// If Redis is unreachable or the breaker is open, the event waits in a
// bounded outbox (10,000 events; when full, they coalesce into one All
// event, so nothing is lost), retried every 250 ms and published within a
// second of Redis answering again. It returns whether the event was
// published now (false: queued).
func (c *Client) Publish(ctx context.Context, ev Event) (published bool) {
	ev.Demote = false
	if ev.Written.IsZero() {
		ev.Written = time.Now()
	}
	if len(ev.IDs) == 0 && len(ev.Tags) == 0 && !ev.All {
		return true // nothing to invalidate
	}
	c.outMu.Lock()
	queued := len(c.outbox) > 0
	c.outMu.Unlock()
	// Behind a non-empty outbox, go through it: it is retried in order.
	var err error
	if !queued {
		if err = c.publishNow(context.WithoutCancel(ctx), ev); err == nil {
			return true
		}
	}
	c.enqueue(ev, err)
	return false
}

func (c *Client) enqueue(ev Event, cause error) {
	c.st.queued.Add(1)
	c.outMu.Lock()
	if len(c.outbox) >= outboxMax {
		// Coalesce rather than lose anything: one All event as old as the
		// oldest one held.
		oldest := c.outbox[0].Written
		c.outbox = append(c.outbox[:0], Event{All: true, Written: oldest})
		c.log.Warn("fleet: invalidation outbox full, coalesced into one purge of all entries",
			zap.Int("limit", outboxMax))
	}
	c.outbox = append(c.outbox, ev)
	n := len(c.outbox)
	c.outMu.Unlock()
	if n == 1 {
		// Once per outage: other nodes keep their entries until it is over.
		c.log.Warn("fleet: invalidations wait in the outbox until redis answers", zap.NamedError("cause", cause))
	}
	c.log.Debug("fleet: invalidation queued until redis answers", zap.Int("outbox_len", n), zap.NamedError("cause", cause))
}

// publishNow writes one event. The generations and epoch are bumped before
// the event is appended, so a node that drops its entries on the event and
// misses does not find a shared decision of the old generation.
func (c *Client) publishNow(ctx context.Context, ev Event) error {
	cl := c.usable()
	if cl == nil {
		return errors.New("fleet: redis unavailable")
	}
	keep := strconv.FormatInt(ms(2*c.cfg.LeaseTTL), 10)
	bumps := make(rueidis.Commands, 0, len(ev.IDs))
	for _, id := range ev.IDs {
		bumps = append(bumps, cl.B().Eval().Script(bumpScript).Numkeys(1).Key(c.prefix+"g:{"+id+"}").Arg(keep).Build())
	}
	err := c.call(ctx, func(ctx context.Context) error {
		if len(bumps) > 0 {
			for _, r := range cl.DoMulti(ctx, bumps...) {
				if err := r.Error(); err != nil {
					return err
				}
			}
		}
		if len(ev.Tags) > 0 || ev.All {
			return cl.Do(ctx, cl.B().Incr().Key(c.prefix+"e").Build()).Error()
		}
		return nil
	})
	if err != nil {
		return err
	}
	payload, err := json.Marshal(wireEvent{IDs: ev.IDs, Tags: ev.Tags, All: ev.All, Written: ev.Written.UnixNano()})
	if err != nil {
		return err
	}
	stream := c.prefix + "inv"
	mac := hex.EncodeToString(c.sign(stream, []byte(c.node), []byte{0}, payload))
	err = c.call(ctx, func(ctx context.Context) error {
		return cl.Do(ctx, cl.B().Xadd().Key(stream).Maxlen().Almost().Threshold(strconv.Itoa(streamMaxLen)).Id("*").
			FieldValue().FieldValue("n", c.node).FieldValue("p", string(payload)).FieldValue("m", mac).Build()).Error()
	})
	if err != nil {
		return err
	}
	c.st.sent.Add(1)
	if o := c.observer(); o != nil {
		o.Invalidation("sent")
	}
	c.log.Debug("fleet: invalidation published",
		zap.Int("ids", len(ev.IDs)), zap.Int("tags", len(ev.Tags)), zap.Bool("all", ev.All))
	return nil
}

// outboxLoop retries queued events on its own timer, so they go out within
// a second of Redis answering again even when no connection ever saw an
// error (a partition that loses packets looks like silence).
func (c *Client) outboxLoop() {
	defer c.wg.Done()
	t := time.NewTicker(retryEvery)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.flushOutbox()
	}
}

func (c *Client) flushOutbox() {
	for {
		c.outMu.Lock()
		if len(c.outbox) == 0 {
			c.outMu.Unlock()
			return
		}
		ev := c.outbox[0]
		c.outMu.Unlock()
		// The outbox is the breaker's probe too: try even while it is open.
		if err := c.publishQueued(ev); err != nil {
			return
		}
		c.outMu.Lock()
		// enqueue may have coalesced the outbox meanwhile; then the head is
		// an All event that covers ev and stays.
		if len(c.outbox) > 0 && sameEvent(c.outbox[0], ev) {
			c.outbox = c.outbox[1:]
			if len(c.outbox) == 0 {
				c.outbox = nil
			}
		}
		c.outMu.Unlock()
	}
}

func (c *Client) publishQueued(ev Event) error {
	cl := c.client()
	if cl == nil {
		return errors.New("fleet: redis unavailable")
	}
	if !c.breaker.allow() {
		// Probe with one bounded PING, without letting requests through:
		// success closes the breaker.
		ctx, cancel := context.WithTimeout(c.rootCtx, c.cfg.Timeout)
		err := cl.Do(ctx, cl.B().Ping().Build()).Error()
		cancel()
		if err != nil {
			return err
		}
		c.breaker.reset()
	}
	return c.publishNow(c.rootCtx, ev)
}

func sameEvent(a, b Event) bool {
	return a.All == b.All && a.Written.Equal(b.Written) && len(a.IDs) == len(b.IDs) && len(a.Tags) == len(b.Tags) &&
		strings.Join(a.IDs, "\x00") == strings.Join(b.IDs, "\x00") && strings.Join(a.Tags, "\x00") == strings.Join(b.Tags, "\x00")
}

// Subscribe registers fn for the events that other nodes publish, and the
// Demote events of this node's reader. Events published by this Client are
// not delivered to its own subscribers: the publishing node has already
// dropped its local entries. fn runs on the reader goroutine, in stream
// order, and must be fast. The returned function unsubscribes.
func (c *Client) Subscribe(fn func(Event)) (unsubscribe func()) {
	c.subMu.Lock()
	c.subSeq++
	id := c.subSeq
	c.subs[id] = fn
	c.subMu.Unlock()
	return func() {
		c.subMu.Lock()
		delete(c.subs, id)
		c.subMu.Unlock()
	}
}

func (c *Client) deliver(ev Event) {
	c.subMu.Lock()
	fns := make([]func(Event), 0, len(c.subs))
	for _, fn := range c.subs {
		fns = append(fns, fn)
	}
	c.subMu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

// reader state: where it is in the stream and what it has seen.
//
// Trims are detected by counting: Redis keeps, per stream, the number of
// entries ever added (XINFO STREAM entries-added). When a read returns every
// entry after the reader's position, the entries added since the previous
// such read must all have been read; fewer means some were trimmed (or the
// stream was deleted) before this node saw them.
type reader struct {
	c        *Client
	cl       rueidis.Client
	last     string // "" until the first read; "0-0" reads from the start
	added    int64  // entries-added at the last complete read
	applied  int64  // entries read since then
	boot     string
	bootAt   time.Time
	needSync bool
	reported bool // the current outage was logged
}

// readerTimeout bounds the reader's own calls. They run in the background,
// never on a request's path, so a busy Redis or host gets more time than
// Config.Timeout before the node reports the stream down.
func (c *Client) readerTimeout() time.Duration { return max(c.cfg.Timeout, readerMinTimeout) }

// readLoop is the one stream reader of the client. Its blocking read is
// also the heartbeat behind Up.
func (c *Client) readLoop() {
	defer c.wg.Done()
	select {
	case <-c.done:
		return
	case <-c.connected:
	}
	r := &reader{c: c, cl: c.client(), needSync: true}
	for {
		select {
		case <-c.done:
			c.setUp(false)
			return
		default:
		}
		if err := r.step(); err != nil {
			if c.rootCtx.Err() != nil {
				c.setUp(false)
				return
			}
			if !r.reported {
				// Once per outage, the first one included (a wrong
				// password or an ACL that refuses the prefix shows here);
				// rueidis errors never carry the password.
				c.log.Warn("fleet: invalidation stream unreachable, retrying", zap.Error(err))
				r.reported = true
			}
			c.setUp(false)
			r.needSync = true
			select {
			case <-c.done:
				return
			case <-time.After(retryEvery):
			}
		}
	}
}

func (r *reader) step() error {
	c := r.c
	if r.needSync || time.Since(r.bootAt) > bootCheckEvery {
		if err := r.checkBoot(); err != nil {
			return err
		}
		r.needSync = false
	}
	entries, info, err := r.readAtomic()
	if err != nil {
		return err
	}
	c.setUp(true)
	r.reported = false
	if r.last == "" {
		// First read: start after what is already there.
		r.last, r.added, r.applied = info.lastGenerated, info.added, 0
		return nil
	}
	if !info.exists {
		if r.added > 0 || r.applied > 0 {
			// The stream is gone while the incarnation stayed (deleted or
			// evicted): events after ours may be lost with it.
			r.demote("stream missing")
		}
		r.last, r.added, r.applied = "0-0", 0, 0
	}
	for _, e := range entries {
		r.apply(e)
		if compareID(e.ID, r.last) > 0 {
			r.last = e.ID
		}
	}
	r.applied += int64(len(entries))
	if info.exists && len(entries) < readCount {
		// Complete read: everything added since the last one is accounted for.
		if info.added < r.added || r.added+r.applied < info.added {
			r.demote("stream trimmed past the last applied event")
		}
		r.added, r.applied = info.added, 0
		if compareID(info.lastGenerated, r.last) > 0 {
			r.last = info.lastGenerated // the tail was trimmed away
		}
	}
	if len(entries) > 0 {
		return nil
	}
	// Caught up: wait for the next event (the heartbeat). What it returns
	// is read again atomically with the trim check above.
	ctx, cancel := context.WithTimeout(c.rootCtx, blockFor+c.readerTimeout())
	defer cancel()
	err = r.cl.Do(ctx, r.cl.B().Xread().Count(1).Block(blockFor.Milliseconds()).Streams().
		Key(c.prefix+"inv").Id(r.last).Build()).Error()
	if err != nil && !isNil(err) {
		return err
	}
	return nil
}

// checkBoot compares the data set's incarnation with the one seen before:
// a new one means Redis was restarted empty or flushed, and events may have
// been lost with the old stream.
func (r *reader) checkBoot() error {
	c := r.c
	key := c.prefix + "boot"
	var got string
	ctx, cancel := context.WithTimeout(c.rootCtx, c.readerTimeout())
	defer cancel()
	res := r.cl.DoMulti(ctx,
		r.cl.B().Set().Key(key).Value(randomHex(16)).Nx().Build(),
		r.cl.B().Get().Key(key).Build())
	if err := res[0].Error(); err != nil && !isNil(err) {
		return err
	}
	got, err := res[1].ToString()
	if err != nil {
		return err
	}
	if r.boot != "" && got != r.boot {
		r.demote("redis restarted or flushed")
		r.last, r.added, r.applied = "0-0", 0, 0
	}
	r.boot = got
	r.bootAt = time.Now()
	return nil
}

type streamInfo struct {
	exists        bool
	lastGenerated string
	added         int64 // entries ever added to this stream
}

// readAtomic reads the stream's trim state and the events after r.last in
// one transaction, so a trim cannot slip between the check and the read.
func (r *reader) readAtomic() ([]rueidis.XRangeEntry, streamInfo, error) {
	c := r.c
	stream := c.prefix + "inv"
	ctx, cancel := context.WithTimeout(c.rootCtx, c.readerTimeout())
	defer cancel()
	cmds := rueidis.Commands{
		r.cl.B().Multi().Build(),
		r.cl.B().XinfoStream().Key(stream).Build(),
	}
	if r.last != "" {
		cmds = append(cmds, r.cl.B().Xread().Count(readCount).Streams().Key(stream).Id(r.last).Build())
	}
	cmds = append(cmds, r.cl.B().Exec().Build())
	res := r.cl.DoMulti(ctx, cmds...)
	exec, err := res[len(res)-1].ToArray()
	if err != nil {
		return nil, streamInfo{}, err
	}
	var info streamInfo
	if len(exec) < 1 {
		return nil, info, errors.New("fleet: short transaction reply")
	}
	m, err := exec[0].AsMap()
	switch {
	case err == nil:
		info.exists = true
		lg, ea := m["last-generated-id"], m["entries-added"]
		if info.lastGenerated, err = lg.ToString(); err != nil {
			return nil, info, err
		}
		if info.added, err = ea.AsInt64(); err != nil {
			// Redis before 7.0 has no entries-added.
			return nil, info, fmt.Errorf("fleet: XINFO STREAM without entries-added (Redis 7+ or Valkey 7.2+ is required): %w", err)
		}
	case strings.Contains(err.Error(), "no such key"):
		info.lastGenerated = "0-0"
	default:
		return nil, info, err
	}
	if r.last == "" || len(exec) < 2 {
		return nil, info, nil
	}
	streams, err := exec[1].AsXRead()
	if err != nil {
		if isNil(err) {
			return nil, info, nil
		}
		return nil, info, err
	}
	return streams[stream], info, nil
}

// apply delivers one stream entry unless it is this node's own or fails
// authentication.
func (r *reader) apply(e rueidis.XRangeEntry) {
	c := r.c
	node, payload, mac := e.FieldValues["n"], e.FieldValues["p"], e.FieldValues["m"]
	if node == c.node {
		return
	}
	want := c.sign(c.prefix+"inv", []byte(node), []byte{0}, []byte(payload))
	got, err := hex.DecodeString(mac)
	var we wireEvent
	if err != nil || !hmac.Equal(want, got) || json.Unmarshal([]byte(payload), &we) != nil {
		c.st.invalidEvents.Add(1)
		c.log.Warn("fleet: ignoring an invalidation event that failed authentication",
			zap.String("stream_id", e.ID))
		return
	}
	ev := Event{IDs: we.IDs, Tags: we.Tags, All: we.All, Written: time.Unix(0, we.Written)}
	c.st.received.Add(1)
	if o := c.observer(); o != nil {
		o.Invalidation("received")
		o.Lag(time.Since(ev.Written))
	}
	c.log.Debug("fleet: invalidation received",
		zap.Int("ids", len(ev.IDs)), zap.Int("tags", len(ev.Tags)), zap.Bool("all", ev.All))
	c.deliver(ev)
}

func (r *reader) demote(why string) {
	c := r.c
	c.st.demotes.Add(1)
	c.log.Warn("fleet: cannot resume the invalidation stream, demoting local entries to stale",
		zap.String("reason", why))
	c.deliver(Event{Demote: true, Written: time.Now()})
}

// compareID orders stream ids "ms-seq"; an empty id is the smallest.
func compareID(a, b string) int {
	am, as := splitID(a)
	bm, bs := splitID(b)
	switch {
	case am != bm:
		if am < bm {
			return -1
		}
		return 1
	case as != bs:
		if as < bs {
			return -1
		}
		return 1
	}
	return 0
}

func splitID(id string) (uint64, uint64) {
	msPart, seqPart, _ := strings.Cut(id, "-")
	m, _ := strconv.ParseUint(msPart, 10, 64)
	s, _ := strconv.ParseUint(seqPart, 10, 64)
	return m, s
}
