package upstream

import (
	"slices"
	"strings"
)

// CacheGroups reads the values of a Cache-Groups or Cache-Group-Invalidation
// header (RFC 9875): a Structured Field List of Strings (RFC 9651), such as
// `"keyid_8f2a", "export_0193"`. Parameters are ignored. A value that is not
// a valid List, or a member that is not a String, makes the whole field
// ignored, as RFC 9651 requires. Of the strings, those that could be kept
// as surrogate keys (ValidSurrogateKey) are returned once each, at most
// limit of them; invalid counts the strings that could not be, cut the
// valid ones past the limit.
func CacheGroups(values []string, limit int) (groups []string, invalid, cut int) {
	s := tagSet{limit: limit}
	for _, g := range cacheGroupStrings(values) {
		s.add(g)
	}
	return s.keys, s.invalid, s.cut
}

// cacheGroupStrings is the members of a Cache-Groups field, or none when
// one of its lines is not a List of Strings.
func cacheGroupStrings(values []string) []string {
	// Several field lines combine into one List (RFC 9110 §5.3).
	var all []string
	for _, v := range values {
		members, ok := parseStringList(v)
		if !ok {
			return nil
		}
		all = append(all, members...)
	}
	return all
}

// tagSet collects distinct tags that could be kept as surrogate keys, at
// most limit of them.
type tagSet struct {
	keys    []string
	seen    map[string]struct{} // keys, once there are more than smallSet
	limit   int
	invalid int // not a surrogate key (too long, not visible ASCII)
	cut     int // valid, but past the limit
}

// smallSet is how many keys a tagSet compares one by one; past it, a map
// keeps a large in-band invalidation (up to 10,000 groups) linear.
const smallSet = 16

func (s *tagSet) add(k string) {
	switch {
	case !ValidSurrogateKey(k):
		s.invalid++
	case s.has(k):
	case len(s.keys) == s.limit:
		s.cut++
	default:
		s.keys = append(s.keys, k)
		if s.seen == nil && len(s.keys) > smallSet {
			s.seen = make(map[string]struct{}, 2*len(s.keys))
			for _, k := range s.keys {
				s.seen[k] = struct{}{}
			}
		} else if s.seen != nil {
			s.seen[k] = struct{}{}
		}
	}
}

func (s *tagSet) has(k string) bool {
	if s.seen != nil {
		_, ok := s.seen[k]
		return ok
	}
	return slices.Contains(s.keys, k)
}

// parseStringList parses one field line as a List whose members are all
// Strings, each optionally followed by parameters.
func parseStringList(v string) ([]string, bool) {
	s := strings.TrimLeft(v, " \t")
	var out []string
	for s != "" {
		str, rest, ok := parseSFString(s)
		if !ok {
			return nil, false
		}
		out = append(out, str)
		if rest, ok = skipParams(rest); !ok {
			return nil, false
		}
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			return out, true
		}
		if rest[0] != ',' {
			return nil, false
		}
		s = strings.TrimLeft(rest[1:], " \t")
		if s == "" {
			return nil, false // a trailing comma
		}
	}
	return out, true
}

// parseSFString parses a String at the start of s: DQUOTE, printable ASCII
// with \" and \\ escaped, DQUOTE.
func parseSFString(s string) (str, rest string, ok bool) {
	if s == "" || s[0] != '"' {
		return "", "", false
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			if i+1 >= len(s) || (s[i+1] != '"' && s[i+1] != '\\') {
				return "", "", false
			}
			i++
			b.WriteByte(s[i])
		case c == '"':
			return b.String(), s[i+1:], true
		case c < 0x20 || c > 0x7e:
			return "", "", false
		default:
			b.WriteByte(c)
		}
	}
	return "", "", false
}

// skipParams passes over `;key[=value]` parameters (RFC 9651 §3.1.2); the
// values are checked only loosely (bare items without commas or
// semicolons), which is enough to ignore them.
func skipParams(s string) (string, bool) {
	for {
		t := strings.TrimLeft(s, " ")
		if t == "" || t[0] != ';' {
			return s, true
		}
		t = strings.TrimLeft(t[1:], " ")
		k := 0
		for k < len(t) && (t[k] >= 'a' && t[k] <= 'z' || t[k] >= '0' && t[k] <= '9' || t[k] == '_' || t[k] == '-' || t[k] == '.' || t[k] == '*') {
			k++
		}
		if k == 0 || t[0] < 'a' && t[0] != '*' || t[0] > 'z' {
			return "", false
		}
		t = t[k:]
		if t != "" && t[0] == '=' {
			t = t[1:]
			if t != "" && t[0] == '"' {
				_, r, ok := parseSFString(t)
				if !ok {
					return "", false
				}
				t = r
			} else {
				j := 0
				for j < len(t) && t[j] != ',' && t[j] != ';' && t[j] != ' ' && t[j] != '\t' {
					j++
				}
				if j == 0 {
					return "", false
				}
				t = t[j:]
			}
		}
		s = t
	}
}
