// Package fleet is the fleet tier of export_download: decisions and
// invalidations shared by every Caddy node through Redis (7+) or Valkey
// (7.2+) — a single server, a Cluster, or a primary with replicas behind
// Sentinel — without ever needing that engine to answer a download. The
// node-local cache stays primary; this package only runs on a local miss,
// on an invalidation, and in its own background goroutines.
//
// # Key layout
//
// Every key starts with the configured prefix (default "export_download")
// and a colon, so one ACL key pattern (~<prefix>:*) covers all of them.
// "{…}" is a Redis Cluster hash tag: one export's keys share a slot, and no
// command or script touches keys of two slots.
//
//	<prefix>:d:{<id>}:<site>:<mac>  a shared decision; expires at its freshness end
//	<prefix>:g:{<id>}               the export's generation (a random token), replaced
//	                                by each invalidation; expires with the last decision
//	                                filled under it
//	<prefix>:l:{<id>}:<site>:<mac>  a fill lease (a random token); deleted after the
//	                                fill, expires after Config.LeaseTTL at the latest
//	<prefix>:inv                    the invalidation stream, trimmed to ~100,000 events
//	<prefix>:boot                   the data set's incarnation: a random value set once;
//	                                a new one means Redis restarted empty or was flushed
//
// <mac> is the lowercase hex HMAC-SHA256 of the credential digest under the
// fleet secret: the raw credential and its digest never reach Redis. <site>
// is 16 hex digits of an HMAC of the site's decision settings (Client.Site):
// two sites that ask different upstreams, or cache for different times,
// never take each other's decisions.
//
// # Values
//
// A shared decision is the caller's opaque payload plus the generation it
// was filled under, when it was decided, its freshness end and its
// surrogate keys, followed by an HMAC-SHA256 (fleet secret) over the key
// name and all of that. Stream entries carry the publishing node's id, the
// event and an HMAC over the stream's key name, the node id and the event.
// A value that fails the check (copied from another key, edited,
// truncated, garbage) is a miss, counted as invalid and logged at warn
// without its content: write access to Redis does not let anyone plant a
// decision. It does let someone delete keys or replay an authentic
// decision into its own key within its freshness; every node refuses a
// decision made before an invalidation it knows of, so a replay cannot
// undo an invalidation that reached the node.
//
// # Consistency
//
// A shared decision is used only if it was filled under the export's
// current generation (a missing generation refutes every decision), and
// was made after every invalidation this node knows covers it: its export
// id, its surrogate keys, or everything (the purge log, learned from the
// stream and kept for the horizon). So a purge by surrogate key retires the
// decisions that carry the key and no other.
//
// An invalidation is published before the node that saw it acknowledges
// it: new generations, then the stream entry, which counts as published
// only once a replica holds it (WAIT 1) where the master has replicas; until
// then it waits in the outbox and is sent again. Every node reads the
// stream; its first read starts before the node could have cached anything.
// A node that cannot tell whether it missed events (stream trimmed past it,
// stream gone back in a failover, Redis restarted or flushed) demotes its
// local entries to stale and refuses shared decisions from before.
//
// Bounded staleness: each complete read of the stream is a confirmation
// that every event up to its start is applied. A node that has not
// confirmed within MaxStaleness trusts no answer decided earlier than
// MaxStaleness ago (Client.Trusts): it asks the upstream again before
// answering from it, once per key and period.
package fleet
