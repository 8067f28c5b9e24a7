// Package tmpl renders the object key, file name and bucket templates:
// literal text with {id} and {export.<field>} placeholders (README,
// "Configuration reference").
package tmpl

import (
	"fmt"
	"slices"
	"strings"
)

// MaxValueLen is the longest value, in bytes, that Render puts in place of
// a placeholder. The values come from the app's answer; the cap bounds what
// a URL built from them, and the cache entry that holds it, can cost.
const MaxValueLen = 1024

type part struct {
	lit   string
	field string // a field of the export's data; "" for literal text
	id    bool
}

// Template is a parsed template. The zero value renders "".
type Template struct {
	parts []part
	src   string
	// objectKey: a leading "/" must come from the template's own text.
	objectKey bool
}

// Parse parses s. Caddy's global placeholders ({env.*}, …) must already be
// expanded; any other {…} is an error, so a typo fails at provision instead
// of at the first download.
func Parse(s string) (Template, error) {
	t := Template{src: s}
	for rest := s; rest != ""; {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			if strings.IndexByte(rest, '}') >= 0 {
				return Template{}, fmt.Errorf("unmatched } in %q", s)
			}
			t.parts = append(t.parts, part{lit: rest})
			break
		}
		if open > 0 {
			if strings.IndexByte(rest[:open], '}') >= 0 {
				return Template{}, fmt.Errorf("unmatched } in %q", s)
			}
			t.parts = append(t.parts, part{lit: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return Template{}, fmt.Errorf("unclosed { in %q", s)
		}
		name := rest[open+1 : open+end]
		switch {
		case name == "id":
			t.parts = append(t.parts, part{id: true})
		case strings.HasPrefix(name, "export.") && len(name) > len("export."):
			f := name[len("export."):]
			if strings.ContainsAny(f, "{ ") {
				return Template{}, fmt.Errorf("bad field name %q in %q", f, s)
			}
			t.parts = append(t.parts, part{field: f})
		default:
			return Template{}, fmt.Errorf("unknown placeholder {%s} in %q (use {id} or {export.<field>})", name, s)
		}
		rest = rest[open+end+1:]
	}
	return t, nil
}

// ParseObjectKey parses an object key template. Its Render also refuses a
// key that starts with "/" when the template itself does not: a slash that
// a field put there. Some S3-compatible stores drop a leading slash, and
// the key would then name an object outside every key the template can
// make. A leading "/" in the template's own text is the operator's choice.
func ParseObjectKey(s string) (Template, error) {
	t, err := Parse(s)
	t.objectKey = err == nil
	return t, err
}

// Fields returns the export fields the template names, in order, each once:
// all that the upstream answer must keep for it.
func (t Template) Fields() []string {
	var out []string
	for _, p := range t.parts {
		if p.field != "" && !slices.Contains(out, p.field) {
			out = append(out, p.field)
		}
	}
	return out
}

// MissingFieldError says which field an answer lacked.
type MissingFieldError struct {
	Field, Template string
}

func (e *MissingFieldError) Error() string {
	return fmt.Sprintf("template %q names export field %q, which the upstream answer lacks", e.Template, e.Field)
}

// ValueTooLongError says which placeholder's value was over MaxValueLen.
// It gives the length, not the value.
type ValueTooLongError struct {
	Placeholder, Template string
	Len                   int
}

func (e *ValueTooLongError) Error() string {
	return fmt.Sprintf("template %q: the value of {%s} is %d bytes, over the limit of %d", e.Template, e.Placeholder, e.Len, MaxValueLen)
}

// Render fills the template. A field that fields lacks, or a value over
// MaxValueLen, is an error: the caller must never guess an object key.
func (t Template) Render(id string, fields map[string]string) (string, error) {
	if len(t.parts) == 1 && t.parts[0].field == "" && !t.parts[0].id {
		return t.parts[0].lit, nil
	}
	var b strings.Builder
	for _, p := range t.parts {
		switch {
		case p.id:
			if len(id) > MaxValueLen {
				return "", &ValueTooLongError{Placeholder: "id", Template: t.src, Len: len(id)}
			}
			b.WriteString(id)
		case p.field != "":
			v, ok := fields[p.field]
			if !ok {
				return "", &MissingFieldError{Field: p.field, Template: t.src}
			}
			if len(v) > MaxValueLen {
				return "", &ValueTooLongError{Placeholder: "export." + p.field, Template: t.src, Len: len(v)}
			}
			b.WriteString(v)
		default:
			b.WriteString(p.lit)
		}
	}
	out := b.String()
	if t.objectKey && strings.HasPrefix(out, "/") && !strings.HasPrefix(t.src, "/") {
		return "", fmt.Errorf("template %q: a field made the object key start with \"/\"", t.src)
	}
	return out, nil
}
