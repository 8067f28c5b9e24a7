package fleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
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
	// Creds are credential digests the application refused (401/403), as
	// Publish takes them: every entry of each is dropped, and no shared
	// decision made for it before is taken. They travel as their names
	// (HMAC under the fleet secret, as in keys): subscribers receive
	// CredNames, and find their entries by name (Client.CredentialName).
	Creds [][32]byte
	// CredNames are the names of refused credentials, as delivered.
	CredNames []string
	// All drops every entry.
	All bool
	// Demote is only ever delivered by this package, never published: the
	// reader could not resume where it stopped (the stream was trimmed past
	// it, went back in a failover, or Redis was restarted or flushed), so
	// invalidations may have been missed and every local entry must be
	// demoted to stale (asked again before use, served only if the
	// upstream fails).
	Demote bool
	// Written is when the event was written, by the publisher's clock.
	// Publish sets it when it is zero.
	Written time.Time
}

// wireEvent is an Event as stored in the stream, JSON-encoded.
type wireEvent struct {
	IDs     []string `json:"i,omitempty"`
	Tags    []string `json:"t,omitempty"`
	Creds   []string `json:"c,omitempty"` // credential names (Client.mac)
	All     bool     `json:"a,omitempty"`
	Written int64    `json:"w"` // Unix nanoseconds
}

// Bounds of what is written at once: an event names at most maxEventItems
// ids and tags (a larger purge is several events), and generation bumps go
// out in pipelines of at most bumpBatch commands, each within Timeout, so
// that a purge of 10,000 ids neither exceeds a managed service's argument
// limit nor outlasts the timeout and wedges the outbox.
const (
	maxEventItems  = 1000
	bumpBatch      = 250
	outboxMaxItems = 100_000 // ids and tags held while Redis is unreachable
	outboxMaxCreds = 100_000 // refused credentials held while Redis is unreachable
)

// errUnavailable is a publish that found Redis unreachable (not connected,
// or the breaker open).
var errUnavailable = errors.New("fleet: redis unavailable")

// errNotReplicated is a publish whose event the master wrote but no
// replica acknowledged in time: a failover could still lose it.
var errNotReplicated = errors.New("fleet: no replica acknowledged the invalidation in time")

// Publish makes an invalidation reach every other node. The caller drops
// its own local entries before and again after (a fill that raced the
// invalidation may have stored meanwhile); its own subscribers do not
// receive its events.
//
// For each export id it sets a new generation (a fill that started before
// is not stored), then appends the event to the stream and, where the
// master has replicas, waits (WAIT 1) until one holds it: an event a
// master acknowledged but had not replicated would vanish in a failover.
// The client records the event in its own purge log at once, so that it
// takes no shared decision the event refutes even before the event is out.
//
// If that does not complete within the timeout (Redis unreachable, the
// breaker open, no replica acknowledging), the event waits in a bounded
// outbox (100,000 ids and tags; past that, everything coalesces into one
// purge of all, so nothing is lost), retried every 250 ms on its own timer
// and published within a second of Redis answering again. It returns
// whether the event was published now (false: queued).
func (c *Client) Publish(ctx context.Context, ev Event) (published bool) {
	ev.Demote = false
	if ev.Written.IsZero() {
		ev.Written = c.now()
	}
	if len(ev.IDs) == 0 && len(ev.Tags) == 0 && len(ev.Creds) == 0 && len(ev.CredNames) == 0 && !ev.All {
		return true // nothing to invalidate
	}
	c.purges.record(c.named(ev), ev.Written.UnixNano())
	parts := splitEvent(ev)
	ctx = context.WithoutCancel(ctx)
	for i, part := range parts {
		if err := c.publishNow(ctx, part); err != nil {
			for _, rest := range parts[i:] {
				c.enqueue(rest, err)
			}
			return false
		}
	}
	return true
}

// Adopt takes events another client could not publish (a reload that
// changed the fleet settings closed it): they go out through this
// client's outbox.
func (c *Client) Adopt(events []Event) {
	for _, ev := range events {
		if ev.Written.IsZero() {
			ev.Written = c.now()
		}
		c.purges.record(c.named(ev), ev.Written.UnixNano())
		c.enqueue(ev, errors.New("fleet: handed over by a closed client"))
	}
}

// splitEvent cuts an event into events of at most maxEventItems ids,
// tags and credentials.
func splitEvent(ev Event) []Event {
	if len(ev.IDs)+len(ev.Tags)+len(ev.Creds)+len(ev.CredNames) <= maxEventItems {
		return []Event{ev}
	}
	var out []Event
	ids, tags, creds, names := ev.IDs, ev.Tags, ev.Creds, ev.CredNames
	for len(ids) > 0 || len(tags) > 0 || len(creds) > 0 || len(names) > 0 {
		part := Event{All: ev.All, Written: ev.Written}
		n := min(len(ids), maxEventItems)
		part.IDs, ids = ids[:n:n], ids[n:]
		if m := min(len(tags), maxEventItems-n); m > 0 {
			part.Tags, tags = tags[:m:m], tags[m:]
			n += m
		}
		if m := min(len(creds), maxEventItems-n); m > 0 {
			part.Creds, creds = creds[:m:m], creds[m:]
			n += m
		}
		if m := min(len(names), maxEventItems-n); m > 0 {
			part.CredNames, names = names[:m:m], names[m:]
		}
		out = append(out, part)
	}
	return out
}

func (c *Client) enqueue(ev Event, cause error) {
	c.st.queued.Add(1)
	n, coalesced, ok := c.out.push(ev)
	if !ok {
		// Closed meanwhile (a reload): the outbox was handed over already,
		// so this event goes the same way, or it would be lost.
		if c.cfg.Orphaned != nil {
			c.cfg.Orphaned([]Event{ev})
		} else {
			c.log.Warn("fleet: invalidation dropped: the client closed while publishing it")
		}
		return
	}
	if coalesced {
		c.log.Warn("fleet: invalidation outbox full, coalesced into one purge of all entries",
			zap.Int("limit", outboxMaxItems), zap.Int("refused_credentials_limit", outboxMaxCreds))
	}
	if n == 1 {
		// Once per outage: other nodes learn of it when it is out.
		c.log.Warn("fleet: invalidations wait in the outbox until redis takes them", zap.NamedError("cause", cause))
	}
	c.log.Debug("fleet: invalidation queued", zap.Int("outbox_len", n), zap.NamedError("cause", cause))
}

// publishNow writes one event: the generations first, so that a node that
// drops its entries on the event and then misses does not find a shared
// decision of the old generation, then the stream entry, confirmed by a
// replica where there is one.
func (c *Client) publishNow(ctx context.Context, ev Event) error {
	cl := c.reachable()
	if cl == nil {
		return errUnavailable
	}
	keep := ms(2 * c.cfg.LeaseTTL)
	for start := 0; start < len(ev.IDs); start += bumpBatch {
		batch := ev.IDs[start:min(len(ev.IDs), start+bumpBatch)]
		bumps := make(rueidis.Commands, 0, len(batch))
		for _, id := range batch {
			bumps = append(bumps, cl.B().Set().Key(c.prefix+"g:{"+id+"}").Value(randomHex(8)).PxMilliseconds(keep).Build())
		}
		err := c.call(ctx, func(ctx context.Context) error {
			for _, r := range cl.DoMulti(ctx, bumps...) {
				if err := r.Error(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	payload, err := json.Marshal(wireEvent{IDs: ev.IDs, Tags: ev.Tags, Creds: append(c.names(ev.Creds), ev.CredNames...), All: ev.All, Written: ev.Written.UnixNano()})
	if err != nil {
		return err
	}
	stream := c.prefix + "inv"
	mac := hex.EncodeToString(c.sign(stream, []byte(c.node), []byte{0}, payload))
	err = c.call(ctx, func(ctx context.Context) error {
		// INFO replication, the XADD and WAIT on one connection (keyless
		// commands follow the stream's slot): WAIT counts the replicas
		// that hold every write of that connection, the event included.
		// The XADD runs in a script that also returns the replication ID
		// of the master it ran on: a redirect (MOVED, or ASK while the
		// slot migrates) runs it elsewhere than INFO and WAIT, which
		// then say nothing of its replicas; it is not confirmed then,
		// and goes out again from the outbox. It waits for one replica
		// when the master is expected to have one (replicaWatch): WAIT 1
		// on a master without replicas would only run into its timeout.
		// INFO goes first: rueidis (v1.0.79) marks the first command of a
		// pipeline that holds a blocking one (WAIT) as blocking, and its
		// Cluster client then mishandles an ASK redirect of that command
		// (a slot migration) and panics.
		need := int64(0)
		if c.replicas.expecting(time.Now()) {
			need = 1
		}
		waitMS := int64(c.cfg.Timeout / time.Millisecond)
		if dl, ok := ctx.Deadline(); ok {
			waitMS = max(1, time.Until(dl).Milliseconds()*3/4)
		}
		res := cl.DoMulti(ctx,
			cl.B().Info().Section("replication").Build(),
			cl.B().Eval().Script(xaddScript).Numkeys(1).Key(stream).
				Arg(strconv.Itoa(streamMaxLen), c.node, string(payload), mac).Build(),
			cl.B().Wait().Numreplicas(need).Timeout(waitMS).Build())
		added, err := res[1].ToArray()
		if err != nil {
			return err
		}
		if len(added) == 2 {
			if ranOn, _ := added[1].ToString(); ranOn != "" {
				if repl, err := infoReplication(res[0]); err == nil && repl.id != ranOn {
					return errRedirected
				}
			}
		}
		return c.replicated(res[0], res[2], need)
	})
	if err != nil {
		return err
	}
	c.st.sent.Add(1)
	for _, o := range c.observers() {
		o.Invalidation("sent")
	}
	c.log.Debug("fleet: invalidation published",
		zap.Int("ids", len(ev.IDs)), zap.Int("tags", len(ev.Tags)), zap.Int("credentials", len(ev.Creds)), zap.Bool("all", ev.All))
	return nil
}

// xaddScript appends an event and returns its id and the replication ID of
// the master that holds it (empty when INFO is refused).
const xaddScript = `local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', ARGV[2], 'p', ARGV[3], 'm', ARGV[4])
local ok, info = pcall(redis.call, 'INFO', 'replication')
if not ok then return {id, ''} end
return {id, string.match(info, 'master_replid:(%x+)') or ''}`

// errRedirected is a publish whose event went to another master than the
// one asked to confirm it.
var errRedirected = errors.New("fleet: the stream moved while publishing (redirected)")

// refusedCommand reports whether err is the server refusing a command for
// good: an ACL without it (NOPERM), or a server that lacks it. Other
// error replies (a failover's CLUSTERDOWN, TRYAGAIN, LOADING, READONLY)
// are passing: the event is not published.
func refusedCommand(err error) bool {
	var re *rueidis.RedisError
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "NOPERM") || strings.HasPrefix(msg, "ERR unknown command")
}
