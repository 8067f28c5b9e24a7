package fleet

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// Config.Credentials is asked at every new connection: when the user's
// password rotates, the client reconnects with the new one as soon as the
// function returns it, without being recreated. Every authentication
// failure the server logs is one of the attempts made with the old
// password after the rotation, before the function changed; none follows
// the change.
func TestCredentialsAskedAtEachConnection(t *testing.T) {
	const oldPass, newPass = "old-pass-0123456789", "new-pass-9876543210"
	r := testenv.StartRedis(t, testenv.RedisUser(fleetUser, oldPass, fleetDataACL))

	var (
		mu       sync.Mutex
		current  = oldPass
		asked    atomic.Int64 // calls of the function
		rotated  atomic.Bool  // the server has the new password
		staleOut atomic.Int64 // calls that handed out the old password after the rotation
	)
	creds := func() (string, string, error) {
		mu.Lock()
		defer mu.Unlock()
		asked.Add(1)
		if rotated.Load() && current == oldPass {
			staleOut.Add(1)
		}
		return fleetUser, current, nil
	}
	withCreds := func(c *Config) {
		c.Credentials = creds
		c.Timeout = replTimeout
		c.MaxStaleness = replStaleness
	}
	a, b := node(t, r.Addr, withCreds), node(t, r.Addr, withCreds)
	waitUp(t, a, b)
	key := cred("rotation")
	if _, src := load(t, a, "rot_1", key, newFetcher("v1")); src != Stored {
		t.Fatalf("before the rotation: %v, want stored", src)
	}
	if _, src := load(t, b, "rot_1", key, newFetcher("x")); src != Hit {
		t.Fatalf("before the rotation, other node: %v, want a shared hit", src)
	}
	if n := authFailures(t, r); n != 0 {
		t.Fatalf("%d authentication failures before the rotation", n)
	}
	askedFirst := asked.Load()

	// The password rotates on the server; the connections already open stay
	// logged in. Closing them makes the clients log in again with what the
	// function still returns, the old password: refused, and every Load
	// falls back to the upstream without an error.
	rotated.Store(true)
	r.MustDo(t, "ACL", "SETUSER", fleetUser, "resetpass", ">"+newPass)
	if n := r.ClientKill(t, "USER", fleetUser); n == 0 {
		t.Fatal("CLIENT KILL USER closed no connection of the fleet clients")
	}
	waitFor(t, 10*time.Second, "the stream readers to go down", func() bool { return !a.Up() && !b.Up() })
	waitFor(t, 10*time.Second, "an authentication failure", func() bool { return authFailures(t, r) > 0 })
	f := newFetcher("direct")
	if p, src := load(t, a, "rot_2", key, f); src != Unavailable || string(p) != "direct" || f.calls.Load() != 1 {
		t.Fatalf("with the old password: %v %q after %d calls, want unavailable and a direct fetch", src, p, f.calls.Load())
	}

	// The function now returns the new password: the same clients log in.
	mu.Lock()
	current = newPass
	mu.Unlock()
	stale := staleOut.Load()
	waitUp(t, a, b)
	// Attempts with the old password still in flight land in the log (not
	// asserted: one abandoned before its HELLO reached the server is never
	// logged, and one made just before the server rotated succeeded).
	for deadline := time.Now().Add(5 * time.Second); authFailures(t, r) < stale && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, 5*time.Second, "the breaker to close", func() bool { return !a.Stats().BreakerOpen && !b.Stats().BreakerOpen })
	if _, src := load(t, a, "rot_3", key, newFetcher("v3")); src != Stored {
		t.Fatalf("after the rotation: %v, want stored", src)
	}
	if _, src := load(t, b, "rot_3", key, newFetcher("x")); src != Hit {
		t.Fatalf("after the rotation, other node: %v, want a shared hit", src)
	}

	// Connections closed again are opened again with the new password.
	askedBefore := asked.Load()
	if n := r.ClientKill(t, "USER", fleetUser); n == 0 {
		t.Fatal("CLIENT KILL USER closed no connection")
	}
	waitFor(t, 10*time.Second, "the function to be asked for the new connections", func() bool { return asked.Load() > askedBefore })
	waitUp(t, a, b)
	waitFor(t, 5*time.Second, "a shared hit after the second reconnection", func() bool {
		_, src := load(t, b, "rot_3", key, newFetcher("x"))
		return src == Hit
	})
	// Every failure the server logged is an attempt with the old password:
	// none followed the change of the function.
	if got := authFailures(t, r); got == 0 || got > stale {
		t.Errorf("%d authentication failures, want between 1 and %d (the attempts with the old password)", got, stale)
	}
	t.Logf("credentials asked %d times for the first connections, %d in all; %d attempts with the old password after the rotation, %d failures logged",
		askedFirst, asked.Load(), stale, authFailures(t, r))
	// Up again and nothing waiting (a read that ran into the short timeout
	// on a loaded machine may have taken it down for a moment).
	waitFor(t, 5*time.Second, "the node up with an empty outbox", func() bool {
		s := a.Stats()
		return s.Up && s.OutboxLen == 0
	})
}

// aclEntry is one entry of ACL LOG.
type aclEntry struct {
	count                    int64
	reason, object, username string
}

// aclLog reads ACL LOG from r (a data node or a Sentinel).
func aclLog(t *testing.T, r *testenv.Redis) []aclEntry {
	t.Helper()
	if !r.Running() || r.Paused() {
		return nil
	}
	// Flattened, each entry is field/value pairs, one a line, starting
	// with count.
	lines := strings.Split(r.MustDo(t, "ACL", "LOG"), "\n")
	var out []aclEntry
	for i := 0; i+1 < len(lines); i += 2 {
		k, v := lines[i], lines[i+1]
		switch k {
		case "count":
			n, _ := strconv.ParseInt(v, 10, 64)
			out = append(out, aclEntry{count: n})
		case "reason", "object", "username":
			if len(out) == 0 {
				continue
			}
			e := &out[len(out)-1]
			switch k {
			case "reason":
				e.reason = v
			case "object":
				e.object = v
			case "username":
				e.username = v
			}
		}
	}
	return out
}

// authFailures is how many logins of the fleet user r refused.
func authFailures(t *testing.T, r *testenv.Redis) int64 {
	t.Helper()
	var n int64
	for _, e := range aclLog(t, r) {
		if e.reason == "auth" && e.username == fleetUser {
			n += e.count
		}
	}
	return n
}
