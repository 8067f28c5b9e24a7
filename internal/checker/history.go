// Package checker holds the history of a consistency run against a fleet of
// export_download nodes and checks it against the fleet's bounded-staleness
// promise (README, "Running a fleet"): once a node has acknowledged a DELETE,
// a purge or an in-band invalidation, no node redirects for what it
// invalidated later than a bound (max_staleness) afterwards.
//
// A history is what a client outside the fleet saw: every read with its
// start and end, every invalidation with the moment its 2xx arrived, and
// every fault injected, as Jepsen's checkers (Elle) and Meta's Polaris
// record them. Times are monotonic offsets from the run's epoch, so they
// compare across goroutines of one process whatever the wall clock does.
package checker

import "time"

// Read is one GET of /v1/exports/{id}/download through one node.
type Read struct {
	Node   int
	Export string
	// Key is the API key's id (the one its Surrogate-Key tag names), not
	// the key itself.
	Key string
	// Start is when the request was sent and End when its answer arrived
	// (or the transport failed), since History.Epoch.
	Start, End time.Duration
	// Wall is the wall clock at Start, to find the moment in node logs.
	Wall time.Time
	// Status is the HTTP status, 0 when no answer arrived.
	Status      int
	CacheStatus string
	// Location: the answer carried a Location (a 302's presigned URL).
	Location bool
	Err      string
}

// Redirect reports whether the read was answered with a download: a 302.
func (r Read) Redirect() bool { return r.Status == 302 }

// InvalidationKind says what an invalidation covers and how it was made.
type InvalidationKind string

const (
	// Delete is DELETE /v1/exports/{id} through a node, answered 2xx by
	// the app: it covers the export for every key.
	Delete InvalidationKind = "delete"
	// Purge is an admin API purge of a key's surrogate key, after the app
	// revoked the key: it covers every export for that key.
	Purge InvalidationKind = "purge"
	// InBand is an app answer to an unsafe method that carries
	// Cache-Group-Invalidation with the key's tag (RFC 9875), here the
	// revocation of the key: it covers every export for that key.
	InBand InvalidationKind = "inband"
)

// Invalidation is one DELETE, purge or in-band revocation.
type Invalidation struct {
	Kind InvalidationKind
	// Node is the node that forwarded or accepted it.
	Node int
	// Export is the deleted export (Delete).
	Export string
	// Key is the key id whose tag was purged (Purge, InBand).
	Key string
	// Start is when it was sent; End when its answer arrived, which for a
	// 2xx is the acknowledgement the bound counts from.
	Start, End time.Duration
	Wall       time.Time
	// Status is the HTTP status, 0 when no answer arrived.
	Status int
	Err    string
}

// Acked reports whether a 2xx arrived: only acknowledged invalidations
// bind the fleet.
func (i Invalidation) Acked() bool { return i.Status >= 200 && i.Status < 300 }

// covers reports whether i invalidates what r read.
func (i Invalidation) covers(r Read) bool {
	if i.Kind == Delete {
		return i.Export == r.Export
	}
	return i.Key == r.Key
}

// FaultKind names a fault the run injects.
type FaultKind string

const (
	// RedisRestart: redis-server killed (SIGKILL) and restarted empty on
	// the same port.
	RedisRestart FaultKind = "redis-restart"
	// LinkBlackhole: one node's connection to Redis discards every byte.
	LinkBlackhole FaultKind = "link-blackhole"
	// LinkFreeze: one node's connection to Redis holds every byte until
	// the fault ends.
	LinkFreeze FaultKind = "link-freeze"
	// NodeKill: a node killed (SIGKILL) right after it forwarded DELETEs,
	// then started again.
	NodeKill FaultKind = "node-kill"
	// Reload: a node's config reloaded with another fleet block while
	// DELETEs flow through it.
	Reload FaultKind = "reload"
)

// FaultKinds lists every fault kind in the order reports show them.
var FaultKinds = []FaultKind{RedisRestart, LinkBlackhole, LinkFreeze, NodeKill, Reload}

// CutsLink reports whether the fault cuts one node off from Redis while
// it keeps serving: the one stated exception to the bound, for the
// invalidations that node acknowledges meanwhile.
func (k FaultKind) CutsLink() bool { return k == LinkBlackhole || k == LinkFreeze }

// Fault is one injected fault; Start and End bound the window in which it
// was in effect.
type Fault struct {
	Kind FaultKind
	// Node is the node it hits, -1 for redis-server.
	Node       int
	Start, End time.Duration
	Wall       time.Time
}

// History is everything a run observed.
type History struct {
	// Epoch is the wall clock at offset 0.
	Epoch time.Time
	// Length is the offset at which recording stopped.
	Length        time.Duration
	Reads         []Read
	Invalidations []Invalidation
	Faults        []Fault
	// UpstreamCalls are the offsets at which the app received a metadata
	// GET (/v1/exports/{id}) from any node.
	UpstreamCalls []time.Duration
}
