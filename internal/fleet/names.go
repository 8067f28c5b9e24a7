package fleet

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// A credential is named in Redis by the HMAC of its digest under the fleet
// secret (keys, refusal events): the digest never leaves the node.

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

// CredentialName is how the fleet names a credential digest in its keys and
// refusal events (Event.CredNames): the caller tags its entries with it, so
// that another node's refusal finds them.
func (c *Client) CredentialName(cred [32]byte) string { return c.mac(cred) }

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
	return loggedEvent{IDs: ev.IDs, Tags: ev.Tags, Creds: append(c.names(ev.Creds), ev.CredNames...), All: ev.All}
}
