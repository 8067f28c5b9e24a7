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

// ParseID accepts a UUID in canonical 8-4-4-4-12 hex form, in any case, and
// returns it lowercased (without allocating when it already is).
func ParseID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	upper := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
			continue
		}
		switch {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			upper = true
		default:
			return "", false
		}
	}
	if upper {
		return strings.ToLower(s), true
	}
	return s, true
}
