// Package requestid accepts a caller's request id or makes a new one
// (docs/configuration.md "Responses", "Request id").
package requestid

import "math/rand/v2"

// MaxLen is the longest incoming id that is kept.
const MaxLen = 128

// Valid reports whether s may be used as a request id as it came: 1–128
// characters of [A-Za-z0-9._-], which can never break a header, a log line
// or a JSON string.
func Valid(s string) bool {
	if len(s) == 0 || len(s) > MaxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !allowed[s[i]] {
			return false
		}
	}
	return true
}

var allowed = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	t['.'], t['_'], t['-'] = true, true, true
	return t
}()

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// randomLen random characters give about 130 bits: ids never collide.
const randomLen = 22

// New returns "req_" followed by 22 random alphanumerics. math/rand/v2's
// global source is ChaCha8 per thread: unpredictable and lock-free, which
// matters on the hot path (one allocation: the string).
func New() string {
	var b [4 + randomLen]byte
	copy(b[:], "req_")
	for i := 4; i < len(b); {
		// 64 bits give 10 characters of 6 bits each; values ≥ 62 are
		// skipped to keep the alphabet uniform.
		r := rand.Uint64()
		for j := 0; j < 10 && i < len(b); j++ {
			if c := r & 63; c < 62 {
				b[i] = alphabet[c]
				i++
			}
			r >>= 6
		}
	}
	return string(b[:])
}

// FromHeader returns the incoming id when Valid, else a New one.
func FromHeader(incoming string) string {
	if Valid(incoming) {
		return incoming
	}
	return New()
}
