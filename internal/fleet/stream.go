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

// Subscribe registers fn for the events that other nodes publish, and the
// Demote events of this node's reader. Events published by this Client are
// not delivered to its own subscribers: the publishing node drops its
// local entries itself. Events written before this client started are not
// delivered either (nothing of this node can predate them); they only
// teach the client which shared decisions to refuse. fn runs on the reader
// goroutine, in stream order, and must be fast. The returned function
// unsubscribes.
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

// reader is the state of the client's one stream reader.
//
// Its first read starts from before this client could have cached
// anything, and back by the horizon (so that the purge log knows every
// invalidation a shared decision still in Redis could predate). Each read
// is one transaction (XINFO STREAM and XREAD from the last position), so it
// can tell whether it missed something: entries removed before it read them
// (Redis counts the entries ever added to a stream: when the entries read
// fall short of it, some were trimmed), a stream that went back (a failover
// lost entries, or the stream was recreated), or a new data set (Redis
// restarted empty or flushed: the boot key changed).
// Then it demotes every local entry and refuses shared decisions made
// before that moment. A complete read that applied everything up to its
// start is a confirmation: the node's bound on staleness counts from it.
type reader struct {
	c        *Client
	cl       rueidis.Client
	last     string // the position: the last entry read, or where to start
	seen     string // the last entry actually read since the last reset; "" none
	started  bool   // the first read was made (the backlog position is set)
	counting bool   // added is a base: every entry added since was read or is unread
	added    int64  // the stream's entries-added at the last complete read
	applied  int64  // entries read since then
	coverAt  int64  // what the purge log covers once the backlog is read; 0 once it is
	// startMS is when this client started, in the server's clock
	// (milliseconds, as stream ids count): entries appended before it
	// concern nothing this node holds, and are only recorded.
	startMS  int64
	runID    string // the stream's server process, at the last read
	readAt   int64  // when the last read succeeded (Unix nanoseconds)
	sentAt   int64  // when that read was sent (Unix nanoseconds)
	gapSeen  int64  // the newest gap marker seen or written (Unix nanoseconds)
	boot     string
	bootAt   time.Time
	needSync bool
	reported bool // the current outage was logged
}

// readerTimeout bounds the reader's own calls. They run in the background,
// never on a request's path, so a busy Redis or host gets more time than
// Config.Timeout before the node reports the stream down.
func (c *Client) readerTimeout() time.Duration { return max(c.cfg.Timeout, readerMinTimeout) }

// blockFor is the heartbeat period: the reader confirms at least every
// MaxStaleness / 4 (plus a round trip), and every 0.5 s at most.
func (c *Client) blockFor() time.Duration {
	if ms := c.cfg.MaxStaleness; ms > 0 {
		return max(min(maxBlock, ms/4), 10*time.Millisecond)
	}
	return maxBlock
}

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
	readAt, readMono := c.now().UnixNano(), time.Now()
	entries, info, err := r.readAtomic()
	if err != nil {
		return err
	}
	c.setUp(true)
	r.reported = false
	prevSent := r.sentAt
	r.sentAt, r.readAt = readAt, c.now().UnixNano()
	if info.runID != r.runID {
		r.newServer(info, prevSent)
	}
	if !r.started {
		r.begin(info)
		return nil
	}
	switch {
	case !info.exists && (r.seen != "" || r.added > 0):
		// Gone while the data set stayed (deleted or evicted): events after
		// the last one read may be gone with it.
		r.gap("stream missing", readAt)
		r.last, r.seen, r.added, r.applied = "0-0", "", 0, 0
	case info.exists && r.seen != "" && compareID(info.lastGenerated, r.seen) < 0:
		r.gap("stream went back (a failover lost entries, or it was recreated)", readAt)
		r.last, r.seen, r.added, r.applied = info.lastGenerated, "", info.added, 0
		return nil
	}
	for _, e := range entries {
		r.apply(e)
		r.last, r.seen = e.ID, e.ID
	}
	r.applied += int64(len(entries))
	c.purges.prune(c.now().UnixNano())
	if len(entries) == readCount {
		return nil // more to read at once
	}
	// Complete: every event written before readAt is read, unless the
	// count says some were removed first.
	if r.counting && r.added+r.applied != info.added {
		// Fewer read than added: some were trimmed first. More, or a count
		// that went down: the stream was deleted and recreated meanwhile.
		r.gap("stream trimmed past the last applied event", readAt)
		if compareID(info.lastGenerated, r.last) > 0 {
			r.last = info.lastGenerated
		}
	}
	r.added, r.applied, r.counting = info.added, 0, true
	if r.coverAt != 0 {
		c.purges.coverFrom(r.coverAt)
		r.coverAt = 0
	}
	c.confirm(readMono)
	if len(entries) > 0 {
		return nil
	}
	// Caught up: wait for the next event (the heartbeat). What it returns
	// is read again, atomically with the checks above.
	block := c.blockFor()
	ctx, cancel := context.WithTimeout(c.rootCtx, block+c.readerTimeout())
	defer cancel()
	err = r.cl.Do(ctx, r.cl.B().Xread().Count(1).Block(block.Milliseconds()).Streams().
		Key(c.prefix+"inv").Id(r.last).Build()).Error()
	if err != nil && !isNil(err) {
		return err
	}
	return nil
}

type streamInfo struct {
	exists        bool
	lastGenerated string
	firstID       string    // the first entry left; "0-0" if none
	maxDeleted    string    // the newest entry id ever deleted with XDEL; "0-0" if none
	length        int64     // entries left
	added         int64     // entries ever added
	serverNow     time.Time // the server's clock (TIME), on the first read
	runID         string    // the stream server's run_id (INFO server)
	uptime        int64     // its uptime_in_seconds; -1 unknown
	// loaded: the process may have loaded a data set at start (keys from
	// an RDB file or a replication sync, or an append-only file), or INFO
	// does not say.
	loaded bool
}

// readAtomic reads the stream's state and the events after r.last in one
// transaction, so a trim cannot slip between the check and the read.
func (r *reader) readAtomic() ([]rueidis.XRangeEntry, streamInfo, error) {
	c := r.c
	stream := c.prefix + "inv"
	ctx, cancel := context.WithTimeout(c.rootCtx, c.readerTimeout())
	defer cancel()
	cmds := rueidis.Commands{
		r.cl.B().Multi().Build(),
		r.cl.B().XinfoStream().Key(stream).Build(),
	}
	if r.started {
		cmds = append(cmds, r.cl.B().Xread().Count(readCount).Streams().Key(stream).Id(r.last).Build())
	}
	// After the transaction (a refusal inside it would abort it), keyless
	// so they run on the stream's node (a Cluster routes them with the
	// transaction's key): INFO replication, whether the stream's master
	// has replicas, for the publishes' WAIT; and on the first read TIME,
	// the server's clock, which the stream's ids count in.
	cmds = append(cmds, r.cl.B().Exec().Build(), r.cl.B().Info().Section("server", "replication", "persistence").Build())
	if !r.started {
		cmds = append(cmds, r.cl.B().Time().Build())
	}
	res := r.cl.DoMulti(ctx, cmds...)
	execAt := len(cmds) - 2
	if !r.started {
		execAt--
	}
	runID, uptime, loaded := "", int64(-1), true
	if repl, err := infoReplication(res[execAt+1]); err == nil {
		c.replicas.observe(repl, time.Now())
		runID = infoField(res[execAt+1], "run_id")
		if v, err := strconv.ParseInt(infoField(res[execAt+1], "uptime_in_seconds"), 10, 64); err == nil {
			uptime = v
		}
		keys := infoField(res[execAt+1], "rdb_last_load_keys_loaded")
		loaded = keys != "0" || infoField(res[execAt+1], "aof_enabled") != "0"
	}
	exec, err := res[execAt].ToArray()
	if err != nil {
		return nil, streamInfo{}, err
	}
	info := streamInfo{runID: runID, uptime: uptime, loaded: loaded}
	if len(exec) < 1 || (r.started && len(exec) < 2) {
		return nil, info, errors.New("fleet: short transaction reply")
	}
	m, err := exec[0].AsMap()
	switch {
	case err == nil:
		info.exists = true
		lg := m["last-generated-id"]
		if info.lastGenerated, err = lg.ToString(); err != nil {
			return nil, info, err
		}
		md, fe, ea, ln := m["max-deleted-entry-id"], m["recorded-first-entry-id"], m["entries-added"], m["length"]
		var errs [4]error
		info.maxDeleted, errs[0] = md.ToString()
		info.firstID, errs[1] = fe.ToString()
		info.added, errs[2] = ea.AsInt64()
		info.length, errs[3] = ln.AsInt64()
		if err := errors.Join(errs[:]...); err != nil {
			// Redis before 7.0 has none of these.
			return nil, info, fmt.Errorf("fleet: XINFO STREAM without entries-added (Redis 7+ or Valkey 7.2+ is required): %w", err)
		}
	case strings.Contains(err.Error(), "no such key"):
		info.lastGenerated, info.maxDeleted, info.firstID = "0-0", "0-0", "0-0"
	default:
		return nil, info, err
	}
	if !r.started {
		info.serverNow = c.now() // when TIME is refused: the nodes' clocks agree with Redis's, within the skew
		if t, err := res[len(res)-1].AsStrSlice(); err == nil && len(t) == 2 {
			sec, err1 := strconv.ParseInt(t[0], 10, 64)
			usec, err2 := strconv.ParseInt(t[1], 10, 64)
			if err1 == nil && err2 == nil {
				info.serverNow = time.Unix(sec, usec*1000)
			}
		}
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

// apply records one stream entry in the purge log and delivers it, unless
// it fails authentication; this node's own events were recorded when
// published, and events older than this client are not delivered.
func (r *reader) apply(e rueidis.XRangeEntry) {
	c := r.c
	node, payload, mac := e.FieldValues["n"], e.FieldValues["p"], e.FieldValues["m"]
	want := c.sign(c.prefix+"inv", []byte(node), []byte{0}, []byte(payload))
	got, err := hex.DecodeString(mac)
	var we wireEvent
	if err != nil || !hmac.Equal(want, got) || json.Unmarshal([]byte(payload), &we) != nil {
		c.st.invalidEvents.Add(1)
		c.log.Warn("fleet: ignoring an invalidation event that failed authentication",
			zap.String("stream_id", e.ID))
		return
	}
	if node == c.node {
		return
	}
	c.purges.record(loggedEvent{IDs: we.IDs, Tags: we.Tags, Creds: we.Creds, All: we.All}, we.Written)
	if appended, _ := splitID(e.ID); int64(appended) < r.startMS {
		// Appended before this client started: nothing it holds can
		// predate it (a shared decision it takes is checked against the
		// purge log). Told by when the entry was appended, not written: an
		// invalidation that waited in an outbox is appended late.
		return
	}
	ev := Event{IDs: we.IDs, Tags: we.Tags, CredNames: we.Creds, All: we.All, Written: time.Unix(0, we.Written)}
	c.st.received.Add(1)
	for _, o := range c.observers() {
		o.Invalidation("received")
		o.Lag(time.Since(ev.Written))
	}
	c.log.Debug("fleet: invalidation received",
		zap.Int("ids", len(ev.IDs)), zap.Int("tags", len(ev.Tags)), zap.Int("credentials", len(ev.CredNames)), zap.Bool("all", ev.All))
	c.deliver(ev)
}

func (r *reader) demote(why string) {
	c := r.c
	c.st.demotes.Add(1)
	c.log.Warn("fleet: cannot resume the invalidation stream, demoting local entries to stale",
		zap.String("reason", why))
	c.deliver(Event{Demote: true, Written: c.now()})
}

// idTime is when a stream id was generated (its milliseconds), in Unix
// nanoseconds.
func idTime(id string) int64 {
	m, _ := splitID(id)
	return int64(m) * int64(time.Millisecond)
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
