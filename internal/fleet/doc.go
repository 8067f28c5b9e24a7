// Package fleet is the fleet tier of export_download: decisions and
// invalidations shared by every Caddy node through Redis (7+) or Valkey
// (7.2+), without ever needing that engine to answer a download. The
// node-local cache stays primary; this package only runs on a local miss,
// on an invalidation, and in its own background goroutines.
//
// # Key layout
//
// Every key starts with the configured prefix (default "export_download")
// and a colon, so one ACL key pattern (~<prefix>:*) covers all of them.
// "{…}" is a Redis Cluster hash tag: one export's keys share a slot.
//
//	<prefix>:d:{<id>}:<mac>  a shared decision; expires at its freshness end
//	<prefix>:g:{<id>}        the export's generation, bumped by each invalidation;
//	                         expires with the last decision filled under it
//	<prefix>:l:{<id>}:<mac>  a fill lease (a random token); deleted after the
//	                         fill, expires after Config.LeaseTTL at the latest
//	<prefix>:inv             the invalidation stream, trimmed to ~100,000 events
//	<prefix>:e               the purge epoch, bumped by each purge by surrogate key or of all
//	<prefix>:boot            the data set's incarnation: a random value set once;
//	                         a new one means Redis restarted empty or was flushed
//
// <mac> is the lowercase hex HMAC-SHA256 of the credential digest under the
// fleet secret: the raw credential and its digest never reach Redis.
//
// # Values
//
// A shared decision is the caller's opaque payload plus the generation and
// purge epoch it was filled under and its freshness end, followed by an
// HMAC-SHA256 (fleet secret) over the key name and all of that. Stream
// entries carry the publishing node's id, the event and an HMAC over the
// stream's key name, the node id and the event. A value that fails the check
// (copied from another key, edited, truncated, garbage) is a miss, counted
// as invalid and logged at warn without its content: write access to Redis
// does not let anyone plant a decision. It does let someone delete keys or
// replay an authentic decision into its own key within its freshness, which
// at worst delays an invalidation that the stream also carries.
//
// Generations, the purge epoch, lease tokens and the incarnation value are
// not authenticated: tampering with them causes misses, extra upstream calls,
// waits of at most LockWait or a demotion of local entries (asked again
// before use); setting a generation or the epoch back is another way to
// bring back an authentic decision within its freshness, as above.
//
// # Consistency
//
// A shared decision is used only if it was filled under the export's current
// generation and the current purge epoch, so a fill that started before an
// invalidation is never used after it. A purge by surrogate key or of all
// retires every shared decision (not only the tagged ones): revocations are
// rare, and every node then refills from the application once per key.
// Invalidations reach other nodes through the stream; a node that cannot
// resume where it stopped (stream trimmed past it, Redis restarted or
// flushed) is told to demote its local entries to stale.
package fleet
