package fleet

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// begin sets the first position: the horizon before this client started,
// in the server's clock (the stream's ids are its milliseconds).
func (r *reader) begin(info streamInfo) {
	c := r.c
	r.started = true
	back := c.now().Sub(c.started) + c.cfg.Horizon + c.cfg.ClockSkew
	startMS := info.serverNow.Add(-back).UnixMilli()
	r.last, r.seen = strconv.FormatInt(max(startMS, 0), 10)+"-0", ""
	r.startMS = info.serverNow.Add(-c.now().Sub(c.started) - c.cfg.ClockSkew).UnixMilli()
	// Once the backlog is read, the purge log covers decisions from its
	// start, in the nodes' clocks.
	r.coverAt = c.started.Add(-c.cfg.Horizon).UnixNano()
	// Entries were removed (trimmed, or deleted) if fewer are left than were
	// ever added; trimming takes the oldest, so what is gone precedes the
	// first entry left (or, with none left, the last one generated).
	if info.exists && info.added > info.length {
		gone := info.firstID
		if info.length == 0 {
			gone = info.lastGenerated
		}
		if compareID(info.maxDeleted, gone) > 0 {
			gone = info.maxDeleted
		}
		if compareID(gone, r.last) > 0 {
			r.gapUntil("stream trimmed past the start of this node's backlog", idTime(gone))
		}
	}
}

// newServer handles a first look at the server process that holds the
// stream (its run_id changed: a restart, a failover, a slot migration, or
// this client's first read). A process that loaded a data set at start (a
// snapshot or an append-only file, which may have lost acknowledged
// writes, the invalidations among them) may have brought back decisions
// and generations they retired: no shared decision made before the
// process started is taken, on any node (each one sees it start). Seen to
// start after this client sent its last read, it is a restart under the
// reader's eyes: events may be lost that the node never read, so it demotes
// too. (Compared with when the last read was sent, not when its answer
// came: a process that started in between answered none of it.)
func (r *reader) newServer(info streamInfo, prevSent int64) {
	c := r.c
	known := r.runID != ""
	r.runID = info.runID
	if info.runID == "" || info.uptime < 0 {
		return // INFO refused (an ACL without +info)
	}
	// INFO's uptime_in_seconds is the difference of two whole-second
	// clocks, up to a second more than the time elapsed: the process
	// started before latest.
	latest := r.readAt - max(info.uptime-1, 0)*int64(time.Second)
	if info.loaded {
		r.raiseLoadedFloor(latest + int64(c.cfg.ClockSkew))
	}
	if known && latest > prevSent {
		r.gap("redis restarted (another run_id, started since the last read)", r.readAt)
	}
}

// gap handles events that may have been missed up to now.
func (r *reader) gap(why string, now int64) {
	r.raiseFloor(now + int64(r.c.cfg.ClockSkew))
	r.demote(why)
}

// gapUntil handles events that may have been missed up to at (Unix
// nanoseconds, the server's clock): shared decisions from before it are
// refused, and local entries demoted if this node could have cached
// anything by then.
func (r *reader) gapUntil(why string, at int64) {
	c := r.c
	until := at + 2*int64(c.cfg.ClockSkew)
	r.raiseFloor(until)
	if until >= c.started.UnixNano() {
		r.demote(why)
	}
}

// raiseFloor refuses shared decisions made before at, here and, through a
// marker in Redis (<prefix>:gap), on every node that starts or looks later:
// a node that starts after a gap (a restart from a snapshot brought back
// decisions older than lost invalidations) cannot see it in the stream.
func (r *reader) raiseFloor(at int64) {
	r.c.purges.raiseFloor(at)
	r.gapSeen = max(r.gapSeen, at)
	r.mark("gap", at)
}

// raiseLoadedFloor refuses shared decisions made before at, the start of a
// server process that loaded a data set, here and, through <prefix>:loaded,
// on every node that starts or looks later (a node that starts on a replica
// promoted since never meets that process). Unlike a gap it drops no local
// entry: every node that was running when the process started saw it start.
func (r *reader) raiseLoadedFloor(at int64) {
	r.c.purges.raiseFloor(at)
	r.mark("loaded", at)
}

// mark writes the moment at to <prefix><name>, unless it holds a newer one.
// A failure is ignored: this node's own floor is raised all the same.
func (r *reader) mark(name string, at int64) {
	c := r.c
	ctx, cancel := context.WithTimeout(c.rootCtx, c.readerTimeout())
	defer cancel()
	_ = newestScript.Exec(ctx, r.cl, []string{c.prefix + name}, []string{strconv.FormatInt(at, 10)}).Error()
}

// newestScript keeps the newest of the moments written to its key.
var newestScript = rueidis.NewLuaScript(`
local v = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > v then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0`)

// checkBoot compares the data set's incarnation with the one seen before:
// a new one means Redis was restarted empty or flushed, and events may have
// been lost with the old stream.
func (r *reader) checkBoot() error {
	c := r.c
	key := c.prefix + "boot"
	ctx, cancel := context.WithTimeout(c.rootCtx, c.readerTimeout())
	defer cancel()
	res := r.cl.DoMulti(ctx,
		r.cl.B().Set().Key(key).Value(randomHex(16)).Nx().Build(),
		r.cl.B().Get().Key(key).Build(),
		r.cl.B().Get().Key(c.prefix+"gap").Build(),
		r.cl.B().Get().Key(c.prefix+"loaded").Build())
	if err := res[0].Error(); err != nil && !isNil(err) {
		return err
	}
	got, err := res[1].ToString()
	if err != nil {
		return err
	}
	if r.boot != "" && got != r.boot {
		r.gap("redis restarted or flushed", c.now().UnixNano())
		r.last, r.seen = "0-0", ""
	}
	r.boot = got
	// A gap another node saw (or one from before this node started).
	if v, err := res[2].ToString(); err == nil {
		if m, err := strconv.ParseInt(v, 10, 64); err == nil && m > r.gapSeen {
			c.purges.raiseFloor(m)
			if r.gapSeen != 0 || m >= c.started.UnixNano() {
				r.demote("another node found a gap in the invalidation stream")
			}
			r.gapSeen = m
		}
	}
	// A server process that loaded a data set, seen by any node.
	if v, err := res[3].ToString(); err == nil {
		if m, err := strconv.ParseInt(v, 10, 64); err == nil {
			c.purges.raiseFloor(m)
		}
	}
	r.bootAt = time.Now()
	return nil
}
