package fleet

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"sync"
)

// A credential is named in Redis by the HMAC of its digest under the fleet
// secret (keys, refusal events): the digest never leaves the node. To act
// on a refusal event, a node needs the digest back; it keeps, bounded, the
// names of the credentials it looked up through the fleet tier, which are
// those whose answers it may hold (every fill of a node with the fleet tier
// goes through Load).

// maxKnownCredentials bounds the names a client remembers (twice the
// default max_entries: a node holds no more distinct credentials than
// entries).
const maxKnownCredentials = 200_000

// macRaw is HMAC-SHA256(secret, digest).
func (c *Client) macRaw(cred [32]byte) [32]byte {
	h := hmac.New(sha256.New, c.cfg.Secret)
	h.Write(cred[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// mac names a credential: lowercase hex HMAC-SHA256(secret, digest).
func (c *Client) mac(cred [32]byte) string {
	raw := c.macRaw(cred)
	return hex.EncodeToString(raw[:])
}

// names returns the names of creds.
func (c *Client) names(creds [][32]byte) []string {
	if len(creds) == 0 {
		return nil
	}
	out := make([]string, len(creds))
	for i, cr := range creds {
		out[i] = c.mac(cr)
	}
	return out
}

// named is ev as the purge log records it.
func (c *Client) named(ev Event) loggedEvent {
	return loggedEvent{IDs: ev.IDs, Tags: ev.Tags, Creds: c.names(ev.Creds), All: ev.All}
}

// knownCredentials maps credential names back to digests, the oldest
// forgotten first past maxKnownCredentials.
type knownCredentials struct {
	mu    sync.Mutex
	byMAC map[[32]byte][32]byte
	order [][32]byte // insertion order, a ring once full
	next  int
}

// remember notes that this node looked cred up.
func (c *Client) remember(cred [32]byte) {
	k := &c.known
	name := c.macRaw(cred)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.byMAC == nil {
		k.byMAC = make(map[[32]byte][32]byte)
	}
	if _, ok := k.byMAC[name]; ok {
		return
	}
	if len(k.order) < maxKnownCredentials {
		k.order = append(k.order, name)
	} else {
		delete(k.byMAC, k.order[k.next])
		k.order[k.next] = name
		k.next = (k.next + 1) % maxKnownCredentials
	}
	k.byMAC[name] = cred
}

// digests returns the digests of the named credentials this node knows.
func (c *Client) digests(names []string) [][32]byte {
	k := &c.known
	var out [][32]byte
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, n := range names {
		var raw [32]byte
		if b, err := hex.DecodeString(n); err == nil && len(b) == 32 {
			copy(raw[:], b)
			if d, ok := k.byMAC[raw]; ok {
				out = append(out, d)
			}
		}
	}
	return out
}
