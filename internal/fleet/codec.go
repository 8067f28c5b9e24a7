package fleet

import (
	"crypto/hmac"
	"encoding/binary"
	"time"

	"go.uber.org/zap"
)

// decisionVersion is the first byte of a stored decision's content. Version
// 1 (before decisions were scoped to a site and carried their decision
// time and tags) is not read: its keys are named differently anyway.
const decisionVersion = 2

// macLen is the size of the HMAC-SHA256 that ends every stored value.
const macLen = 32

// stored is a shared decision as Redis holds it.
type stored struct {
	gen        string // the generation it was filled under
	decidedAt  time.Time
	freshUntil time.Time
	tags       []string
	payload    []byte
}

// Bounds a stored decision's header keeps to (the upstream client keeps at
// most 16 surrogate keys of 128 bytes).
const (
	maxStoredTags   = 255
	maxStoredTagLen = 255
	maxGenLen       = 255
)

// encodeDecision lays out version, generation, decision time, freshness
// end (Unix nanoseconds), tags and payload, followed by an HMAC-SHA256 over
// the key name and all of that. Tags beyond the bounds are not kept (the
// caller's own bounds are smaller).
func (c *Client) encodeDecision(key string, d stored) []byte {
	n := 1 + 1 + len(d.gen) + 8 + 8 + 1 + len(d.payload) + macLen
	for _, t := range d.tags {
		n += 1 + len(t)
	}
	b := make([]byte, 0, n)
	b = append(b, decisionVersion, byte(min(len(d.gen), maxGenLen)))
	b = append(b, d.gen[:min(len(d.gen), maxGenLen)]...)
	b = binary.BigEndian.AppendUint64(b, uint64(d.decidedAt.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(d.freshUntil.UnixNano()))
	tags := d.tags
	if len(tags) > maxStoredTags {
		tags = tags[:maxStoredTags]
	}
	kept := 0
	for _, t := range tags {
		if len(t) <= maxStoredTagLen {
			kept++
		}
	}
	b = append(b, byte(kept))
	for _, t := range tags {
		if len(t) <= maxStoredTagLen {
			b = append(b, byte(len(t)))
			b = append(b, t...)
		}
	}
	b = append(b, d.payload...)
	return append(b, c.sign(key, b)...)
}

// decodeDecision checks and decodes a stored decision. A value that fails
// the check is reported invalid (counted by the caller's lookup result)
// and logged at warn, without its content.
func (c *Client) decodeDecision(key, raw string) (d stored, ok, invalid bool) {
	if len(raw) < 2+16+1+macLen {
		c.rejectValue(key, "too short")
		return d, false, true
	}
	content := []byte(raw[:len(raw)-macLen])
	if !hmac.Equal(c.sign(key, content), []byte(raw[len(raw)-macLen:])) {
		c.rejectValue(key, "authentication failed")
		return d, false, true
	}
	if content[0] != decisionVersion {
		c.rejectValue(key, "unknown version")
		return d, false, true
	}
	rest := content[1:]
	take := func(n int) []byte {
		if n > len(rest) {
			ok = false
			return nil
		}
		p := rest[:n]
		rest = rest[n:]
		return p
	}
	ok = true
	gl := int(take(1)[0])
	d.gen = string(take(gl))
	if !ok || len(rest) < 17 {
		c.rejectValue(key, "truncated")
		return stored{}, false, true
	}
	d.decidedAt = time.Unix(0, int64(binary.BigEndian.Uint64(take(8))))
	d.freshUntil = time.Unix(0, int64(binary.BigEndian.Uint64(take(8))))
	nt := int(take(1)[0])
	for range nt {
		l := take(1)
		if !ok {
			break
		}
		t := take(int(l[0]))
		if !ok {
			break
		}
		d.tags = append(d.tags, string(t))
	}
	if !ok {
		c.rejectValue(key, "truncated")
		return stored{}, false, true
	}
	d.payload = rest
	return d, true, false
}

// rejectValue logs a value that failed authentication: the key names the
// export and HMACs, never the credential; the content is not logged.
func (c *Client) rejectValue(key, why string) {
	c.log.Warn("fleet: ignoring a shared value that failed authentication",
		zap.String("key", key), zap.String("reason", why))
}
