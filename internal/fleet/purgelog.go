package fleet

import (
	"math"
	"sync"
	"time"
)

// purgeLog remembers, for the horizon, when each export id and surrogate
// key was last invalidated anywhere in the fleet (learned from the stream,
// and from this client's own publishes at once), and the last purge of
// everything. A shared decision is taken only if it was made after every
// invalidation that covers it: so a tag purge retires the decisions that
// carry the tag and no other, and a decision whose generation key was lost
// (evicted, or gone in a failover) is still refused by every node that
// knows of the invalidation.
//
// covered is where the log starts to be complete: a decision made before
// it cannot be checked, and is refused. It is "never" until the stream
// reader's first read, and moves forward when events may have been missed
// (the stream trimmed past the reader, Redis restarted or flushed) or the
// log had to forget entries to stay bounded.
type purgeLog struct {
	mu      sync.Mutex
	horizon time.Duration
	skew    int64
	ids     map[string]int64 // export id → last invalidation, Unix nanoseconds
	tags    map[string]int64 // surrogate key → last purge
	creds   map[string]int64 // credential name (Client.mac) → last refusal
	all     int64            // last purge of everything
	covered int64
	forgot  int64      // decisions before this predate an entry forgotten to stay bounded
	order   []logEntry // in arrival order, for pruning
	head    int
}

type logEntry struct {
	at   int64
	kind uint8 // logID, logTag or logCred
	key  string
}

const (
	logID uint8 = iota
	logTag
	logCred
)

// loggedEvent is an event as the log records it: credentials by name.
type loggedEvent struct {
	IDs, Tags, Creds []string
	All              bool
}

// maxLogEntries bounds the log; past it, the oldest entries are forgotten
// and covered moves past them (decisions older than those are refused).
const maxLogEntries = 200_000

func (l *purgeLog) init(horizon, skew time.Duration) {
	l.horizon, l.skew = horizon, int64(skew)
	l.ids = map[string]int64{}
	l.tags = map[string]int64{}
	l.creds = map[string]int64{}
	l.covered = math.MaxInt64
}

// record notes an event written at at (Unix nanoseconds).
func (l *purgeLog) record(ev loggedEvent, at int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ev.All {
		l.all = max(l.all, at)
	}
	for _, id := range ev.IDs {
		l.add(logID, id, at)
	}
	for _, tag := range ev.Tags {
		l.add(logTag, tag, at)
	}
	for _, cred := range ev.Creds {
		l.add(logCred, cred, at)
	}
}

func (l *purgeLog) mapOf(kind uint8) map[string]int64 {
	switch kind {
	case logTag:
		return l.tags
	case logCred:
		return l.creds
	}
	return l.ids
}

func (l *purgeLog) add(kind uint8, key string, at int64) {
	m := l.mapOf(kind)
	if prev, ok := m[key]; ok && prev >= at {
		return
	}
	m[key] = at
	l.order = append(l.order, logEntry{at: at, kind: kind, key: key})
	if len(l.order)-l.head > maxLogEntries {
		l.forgetOldest()
	}
}

// forgetOldest drops the oldest entry: decisions made before it can no
// longer be checked against it.
func (l *purgeLog) forgetOldest() {
	e := l.order[l.head]
	l.order[l.head] = logEntry{}
	l.head++
	if m := l.mapOf(e.kind); m[e.key] == e.at {
		delete(m, e.key)
	}
	l.forgot = max(l.forgot, e.at+l.skew)
	l.compact()
}

// prune forgets what no decision usable at now can predate: a decision
// lives at most the horizon.
func (l *purgeLog) prune(now int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cutoff := now - int64(l.horizon) - l.skew
	for l.head < len(l.order) && l.order[l.head].at < cutoff {
		e := l.order[l.head]
		l.order[l.head] = logEntry{}
		l.head++
		if m := l.mapOf(e.kind); m[e.key] == e.at {
			delete(m, e.key)
		}
	}
	l.compact()
}

func (l *purgeLog) compact() {
	if l.head > 1024 && l.head > len(l.order)/2 {
		l.order = append(l.order[:0], l.order[l.head:]...)
		l.head = 0
	}
}

// coverFrom moves the start of what the log knows completely to at (never
// back): invalidations before it may have been missed.
func (l *purgeLog) coverFrom(at int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.covered == math.MaxInt64 || at > l.covered {
		l.covered = at
	}
}

// allows reports whether a decision of export id for the credential named
// cred, carrying tags, made at decided (Unix nanoseconds, the deciding
// node's clock), postdates every invalidation the log knows of that covers
// it, by the clock skew at least.
func (l *purgeLog) allows(id, cred string, tags []string, decided int64) bool {
	skew := l.skew
	l.mu.Lock()
	defer l.mu.Unlock()
	if decided < l.covered || decided < l.forgot || (l.all != 0 && decided < l.all+skew) {
		return false
	}
	if at, ok := l.ids[id]; ok && decided < at+skew {
		return false
	}
	if at, ok := l.creds[cred]; ok && decided < at+skew {
		return false
	}
	for _, tag := range tags {
		if at, ok := l.tags[tag]; ok && decided < at+skew {
			return false
		}
	}
	return true
}

func (l *purgeLog) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.order) - l.head
}
