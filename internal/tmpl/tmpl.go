// Package tmpl renders the object key, file name and bucket templates:
// literal text with {id} and {export.<field>} placeholders (README,
// "Configuration reference").
package tmpl

import (
	"fmt"
	"slices"
	"strings"
)

type part struct {
	lit   string
	field string // a field of the export's data; "" for literal text
	id    bool
}

// Template is a parsed template. The zero value renders "".
type Template struct {
	parts []part
	src   string
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

// Render fills the template. A field that fields lacks is an error: the
// caller must never guess an object key.
func (t Template) Render(id string, fields map[string]string) (string, error) {
	if len(t.parts) == 1 && t.parts[0].field == "" && !t.parts[0].id {
		return t.parts[0].lit, nil
	}
	var b strings.Builder
	for _, p := range t.parts {
		switch {
		case p.id:
			b.WriteString(id)
		case p.field != "":
			v, ok := fields[p.field]
			if !ok {
				return "", &MissingFieldError{Field: p.field, Template: t.src}
			}
			b.WriteString(v)
		default:
			b.WriteString(p.lit)
		}
	}
	return b.String(), nil
}
