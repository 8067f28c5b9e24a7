package fleet

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// warnedNoWait remembers that the server refused INFO or WAIT (an ACL
// without them, or a service that lacks them), logged once per process.
var warnedNoWait atomic.Bool

// replicated reads INFO replication and WAIT around an XADD. The event is
// published if a replica acknowledged it, or if the master has no replica
// connected and none is expected back: a master seen with a replica (same
// replication ID, so not a replica promoted since) that shows none now has
// lost its link for a while, and an event it alone holds would vanish if it
// failed over now. A server that refuses INFO or WAIT cannot tell: the
// event counts as published, with one warning.
func (c *Client) replicated(info, wait rueidis.RedisResult, need int64) error {
	repl, ierr := infoReplication(info)
	n, werr := wait.AsInt64()
	if refusedCommand(ierr) || refusedCommand(werr) {
		if !warnedNoWait.Swap(true) {
			c.log.Warn("fleet: redis refused INFO or WAIT: invalidations are not confirmed by a replica and could be lost in a failover (allow +info +wait)",
				zap.Error(errors.Join(ierr, werr)))
		}
		return nil
	}
	if ierr != nil {
		return ierr // a network failure: not published
	}
	if werr != nil {
		return werr
	}
	expect := c.replicas.observe(repl, time.Now())
	if (need > 0 && n >= 1) || !expect {
		return nil
	}
	return errNotReplicated
}

// replicaGrace is how long a master that lost its replicas is expected to
// get one back: until then its events wait in the outbox.
const replicaGrace = 10 * time.Second

// replicaWatch remembers the stream masters recently seen with a replica
// connected, by replication ID (which a promoted replica changes). More
// than one: during a failover a client may reach the old master and the
// new one in turn.
type replicaWatch struct {
	mu     sync.Mutex
	seen   map[string]time.Time // replication ID → last look with a replica
	looked map[string]time.Time // replication ID → last look
	last   string               // replication ID at the last look
}

// observe notes a look at a master and says whether it is expected to
// have a replica: it has one, or had one within replicaGrace, or this is
// the first look at it and it had one lately (its replication backlog is
// kept for an hour after its last replica left: a master first seen just
// after its replica's link broke, as after a slot migration or a
// failover, is expected to get one back).
func (w *replicaWatch) observe(r replication, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen, w.looked = map[string]time.Time{}, map[string]time.Time{}
	}
	for id, at := range w.seen {
		if now.Sub(at) >= replicaGrace {
			delete(w.seen, id)
		}
	}
	if len(w.looked) > 64 {
		for id, at := range w.looked {
			if now.Sub(at) >= time.Hour {
				delete(w.looked, id)
			}
		}
	}
	_, before := w.looked[r.id]
	w.looked[r.id] = now
	w.last = r.id
	if r.replicas > 0 || (r.backlog && !before) {
		w.seen[r.id] = now
		return true
	}
	_, ok := w.seen[r.id]
	return ok
}

// expecting reports whether the master of the last look is expected to
// have a replica.
func (w *replicaWatch) expecting(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.seen[w.last]
	return ok && now.Sub(at) < replicaGrace
}

// infoField is the value of one field of an INFO reply, or "".
func infoField(info rueidis.RedisResult, name string) string {
	s, err := info.ToString()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(s, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return v
		}
	}
	return ""
}

// replication is what INFO replication says of a server.
type replication struct {
	id       string // master_replid
	replicas int    // connected replicas (0 for a replica)
	backlog  bool   // a replication backlog exists: a replica was attached lately
}

// infoReplication reads INFO replication.
func infoReplication(info rueidis.RedisResult) (replication, error) {
	s, err := info.ToString()
	if err != nil {
		return replication{}, err
	}
	var r replication
	master := false
	for _, line := range strings.Split(s, "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "role":
			master = v == "master"
		case "connected_slaves":
			r.replicas, _ = strconv.Atoi(v)
		case "master_replid":
			r.id = v
		case "repl_backlog_active":
			r.backlog = v == "1"
		}
	}
	if !master {
		r.replicas = 0
	}
	return r, nil
}
