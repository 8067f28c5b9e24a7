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
	floor   int64 // decisions before this are refused: a gap, or an id or tag forgotten to stay bounded
	// Entries in arrival order, for pruning: ids and tags in one queue,
	// refused credentials in another, so that a flood of refusals (a
	// client trying random keys) never pushes an id or tag out.
	order [2]logQueue
	// forgotten holds the names of refused credentials forgotten to stay
	// bounded, until forgottenUntil: a decision of one of them (or of a
	// name that collides in the filter: a miss, no more) made before
	// forgottenAt is refused.
	forgotten      bloom
	forgottenAt    int64
	forgottenUntil int64
}

type logQueue struct {
	entries []logEntry
	head    int
}

func (q *logQueue) len() int { return len(q.entries) - q.head }

func (q *logQueue) pop() logEntry {
	e := q.entries[q.head]
	q.entries[q.head] = logEntry{}
	q.head++
	if q.head > 1024 && q.head > len(q.entries)/2 {
		q.entries = append(q.entries[:0], q.entries[q.head:]...)
		q.head = 0
	}
	return e
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

func queueOf(kind uint8) int {
	if kind == logCred {
		return 1
	}
	return 0
}

func (l *purgeLog) add(kind uint8, key string, at int64) {
	m := l.mapOf(kind)
	if prev, ok := m[key]; ok && prev >= at {
		return
	}
	m[key] = at
	q := &l.order[queueOf(kind)]
	q.entries = append(q.entries, logEntry{at: at, kind: kind, key: key})
	if q.len() > maxLogEntries {
		l.forgetOldest(q)
	}
}

// forgetOldest drops the oldest entry of q: decisions made before it can no
// longer be checked against it. A forgotten id or tag moves the log's
// floor; a forgotten credential goes into a filter, so that a flood of
// refusals costs misses of those credentials only.
func (l *purgeLog) forgetOldest(q *logQueue) {
	e := q.pop()
	if m := l.mapOf(e.kind); m[e.key] == e.at {
		delete(m, e.key)
	}
	if e.kind != logCred {
		l.floor = max(l.floor, e.at+l.skew)
		return
	}
	l.forgotten.add(e.key)
	l.forgottenAt = max(l.forgottenAt, e.at+l.skew)
	l.forgottenUntil = l.forgottenAt + int64(l.horizon) + l.skew
}

// prune forgets what no decision usable at now can predate: a decision
// lives at most the horizon.
func (l *purgeLog) prune(now int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cutoff := now - int64(l.horizon) - l.skew
	for i := range l.order {
		q := &l.order[i]
		for q.len() > 0 && q.entries[q.head].at < cutoff {
			e := q.pop()
			if m := l.mapOf(e.kind); m[e.key] == e.at {
				delete(m, e.key)
			}
		}
	}
	if l.forgottenUntil != 0 && now > l.forgottenUntil {
		// Every decision the filter could refuse has outlived the horizon.
		l.forgotten = bloom{}
		l.forgottenAt, l.forgottenUntil = 0, 0
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

// raiseFloor refuses every decision made before at (never lowers it):
// invalidations before it may have been missed.
func (l *purgeLog) raiseFloor(at int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.floor = max(l.floor, at)
}

// allows reports whether a decision of export id for the credential named
// cred, carrying tags, made at decided (Unix nanoseconds, the deciding
// node's clock), postdates every invalidation the log knows of that covers
// it, by the clock skew at least.
func (l *purgeLog) allows(id, cred string, tags []string, decided int64) bool {
	skew := l.skew
	l.mu.Lock()
	defer l.mu.Unlock()
	if decided < l.covered || decided < l.floor || (l.all != 0 && decided < l.all+skew) {
		return false
	}
	if at, ok := l.ids[id]; ok && decided < at+skew {
		return false
	}
	if at, ok := l.creds[cred]; ok && decided < at+skew {
		return false
	}
	if decided < l.forgottenAt && l.forgotten.has(cred) {
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
	return l.order[0].len() + l.order[1].len()
}

// bloom is a fixed Bloom filter of strings (1 Mbit, 4 probes: a 1%
// false-positive rate at about 100,000 names). The zero value is empty.
type bloom struct{ bits *[1 << 14]uint64 }

func (b *bloom) probes(s string) [4]uint32 {
	h := fnv64(s)
	h1, h2 := uint32(h), uint32(h>>32)|1
	var p [4]uint32
	for i := range p {
		p[i] = (h1 + uint32(i)*h2) & (1<<20 - 1)
	}
	return p
}

func (b *bloom) add(s string) {
	if b.bits == nil {
		b.bits = new([1 << 14]uint64)
	}
	for _, p := range b.probes(s) {
		b.bits[p>>6] |= 1 << (p & 63)
	}
}

func (b *bloom) has(s string) bool {
	if b.bits == nil {
		return false
	}
	for _, p := range b.probes(s) {
		if b.bits[p>>6]&(1<<(p&63)) == 0 {
			return false
		}
	}
	return true
}

// fnv64 is FNV-1a over s.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
