// Package route matches request paths against a template holding one {id}
// and validates export ids.
package route

import (
	"errors"
	"strings"
)

// Template is a path with exactly one {id} segment, such as
// /v1/exports/{id}/download. The zero value matches nothing.
type Template struct {
	prefix, suffix string
}

// Parse checks that tmpl is an absolute path with exactly one {id} that
// fills a whole path segment.
func Parse(tmpl string) (Template, error) {
	if !strings.HasPrefix(tmpl, "/") {
		return Template{}, errors.New("must start with /")
	}
	i := strings.Index(tmpl, "{id}")
	if i < 0 || strings.Count(tmpl, "{id}") != 1 {
		return Template{}, errors.New("must contain {id} exactly once")
	}
	prefix, suffix := tmpl[:i], tmpl[i+len("{id}"):]
	if !strings.HasSuffix(prefix, "/") || (suffix != "" && suffix[0] != '/') {
		return Template{}, errors.New("{id} must be a whole path segment")
	}
	if strings.ContainsAny(tmpl, "?#") {
		return Template{}, errors.New("must not contain ? or #")
	}
	return Template{prefix: prefix, suffix: suffix}, nil
}

// Match reports whether path fits the template and returns the text standing
// for {id}, which may be empty or invalid: checking it is ParseID's job. A
// segment holding a slash (an encoded %2F once decoded, or //) does not match.
func (t Template) Match(path string) (id string, ok bool) {
	if t.prefix == "" || len(path) < len(t.prefix)+len(t.suffix) ||
		!strings.HasPrefix(path, t.prefix) || !strings.HasSuffix(path, t.suffix) {
		return "", false
	}
	id = path[len(t.prefix) : len(path)-len(t.suffix)]
	if strings.IndexByte(id, '/') >= 0 {
		return "", false
	}
	return id, true
}

// An export id is a UUID in its canonical 8-4-4-4-12 hex form. ParseID
// reads the form a request carries (any case); ParseUUID, on the cache's
// hit path, its 16 bytes from the lowercase form ParseID returns;
// AppendUUID writes that form back. All three share one table.

// ParseID accepts a UUID in canonical 8-4-4-4-12 hex form, in any case, and
// returns it lowercased (without allocating when it already is).
func ParseID(s string) (string, bool) {
	var b [16]byte
	flags := decode(s, &b)
	switch {
	case flags&invalid != 0:
		return "", false
	case flags&upper != 0:
		return strings.ToLower(s), true
	}
	return s, true
}

// ParseUUID decodes a canonical lowercase UUID, as ParseID returns it,
// into b. It does not branch per digit: it is on the hit path.
func ParseUUID(s string, b *[16]byte) bool { return decode(s, b) == 0 }

// AppendUUID appends the canonical lowercase form of b.
func AppendUUID(dst []byte, b *[16]byte) []byte {
	const digits = "0123456789abcdef"
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, digits[c>>4], digits[c&15])
	}
	return dst
}

// Flags of decode's result; 0 means a canonical lowercase UUID.
const (
	upper   = 0x40 // an upper-case hex digit
	invalid = 0x80 // not a UUID
)

// uuidPairs are where a UUID's 16 bytes are written, as two hex digits each.
var uuidPairs = [16]uint8{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// hexVal is a hex digit's value, with upper set for A-F; invalid for any
// other byte.
var hexVal = func() (t [256]byte) {
	for i := range t {
		t[i] = invalid
	}
	for c := byte('0'); c <= '9'; c++ {
		t[c] = c - '0'
	}
	for c := byte('a'); c <= 'f'; c++ {
		t[c] = c - 'a' + 10
		t[c-'a'+'A'] = (c - 'a' + 10) | upper
	}
	return t
}()

// decode writes s's 16 bytes into b and returns the flags of what it read.
func decode(s string, b *[16]byte) byte {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return invalid
	}
	var flags byte
	for j, i := range uuidPairs {
		hi, lo := hexVal[s[i]], hexVal[s[i+1]]
		flags |= hi | lo
		b[j] = hi<<4 | lo&15
	}
	return flags & (upper | invalid)
}
