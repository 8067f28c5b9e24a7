package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/exportedge/caddy-export-download/internal/decision"
)

// parseExport reads the "Get export" envelope, keeping every string and
// number field of data for templates.
func parseExport(body []byte, id string) (*decision.Answer, error) {
	return parseExportFields(body, id, nil)
}

// parseExportFields reads the "Get export" envelope (docs/configuration.md "The upstream
// contract"). data.status must be a string; expires_at null or absent means
// no expiry, otherwise an RFC 3339 date-time (see parseRFC3339); a data.id,
// when present, must be a string naming export id in any case. Of the
// string and number fields of data, those named in keep are kept for
// templates (nil keeps them all).
//
// It reads the body as encoding/json would decode it into
// struct{ Data map[string]json.RawMessage `json:"data"` }: the whole body
// must be one valid JSON value, the member "data" is matched in any case, a
// repeated "data" is merged into what was read and a null one drops it, and
// the last value of a repeated name wins. It reads in one pass with a
// streaming tokenizer, copying only the values it keeps.
func parseExportFields(body []byte, id string, keep []string) (*decision.Answer, error) {
	p := exportParsers.Get().(*exportParser)
	defer p.release()
	p.reset(body, id, keep)
	if err := p.envelope(); err != nil {
		return nil, err
	}
	if !p.data {
		return nil, errors.New("no data object")
	}
	if p.status.kind != kindString {
		return nil, errors.New("data.status missing or not a string")
	}
	a := &decision.Answer{Kind: decision.KindExport, Fields: p.fields}
	if a.Fields == nil {
		a.Fields = map[string]string{}
	}
	a.Export.Status = p.status.text
	switch p.expires.kind {
	case kindAbsent, kindNull:
	case kindString:
		if !p.expires.ok {
			return nil, errors.New("data.expires_at is not RFC 3339")
		}
		a.Export.ExpiresAt = p.expiresAt
	default:
		return nil, errors.New("data.expires_at is neither null nor a string")
	}
	// An answer about another export must never send this caller there.
	switch p.dataID.kind {
	case kindAbsent:
	case kindString:
		if !p.dataID.ok {
			return nil, errors.New("data.id names another export")
		}
	default:
		return nil, errors.New("data.id is not a string")
	}
	return a, nil
}

// intern returns the shared copy of a usual status, so that a cache of
// 100,000 answers does not hold 100,000 copies of "completed". Others are
// copied.
func intern(v []byte) string {
	for _, s := range [...]string{"completed", "pending", "processing", "failed", "expired"} {
		if string(v) == s {
			return s
		}
	}
	return string(v)
}

// valueKind is the JSON type of a member's value.
type valueKind uint8

const (
	kindAbsent valueKind = iota
	kindString
	kindNumber
	kindNull
	kindOther // object, array, true, false
)

// checked is what is known of one of the members that decide the answer:
// its last value's kind, for status its text, for expires_at and id whether
// the string is usable.
type checked struct {
	kind valueKind
	text string
	ok   bool
}

// decodeOptions make jsontext read what encoding/json's decoding accepts:
// repeated names (the last wins) and invalid UTF-8 in strings (read as
// U+FFFD).
var decodeOptions = []jsontext.Options{
	jsontext.AllowDuplicateNames(true),
	jsontext.AllowInvalidUTF8(true),
}

// exportParsers keeps decoders and their buffers between calls: a parse
// then allocates only what it returns.
var exportParsers = sync.Pool{New: func() any { return new(exportParser) }}

// exportParser holds one parse's state.
type exportParser struct {
	in   bytes.Buffer // the body: jsontext reads a bytes.Buffer in place
	dec  jsontext.Decoder
	name []byte // the current member's name, unquoted
	val  []byte // the current string value, unquoted
	id   string
	keep []string

	data                    bool // a data object was seen (and not nulled since)
	status, expires, dataID checked
	expiresAt               time.Time
	fields                  map[string]string
}

func (p *exportParser) reset(body []byte, id string, keep []string) {
	p.in = *bytes.NewBuffer(body)
	p.dec.Reset(&p.in, decodeOptions...)
	p.id, p.keep = id, keep
	p.data = false
	p.status, p.expires, p.dataID = checked{}, checked{}, checked{}
	p.expiresAt = time.Time{}
	p.fields = nil
}

// release returns p to the pool without a reference to the body or the
// answer.
func (p *exportParser) release() {
	p.in = bytes.Buffer{}
	p.dec.Reset(&p.in)
	p.id, p.keep, p.fields = "", nil, nil
	p.status = checked{}
	if cap(p.name)+cap(p.val) > maxPooledBody {
		p.name, p.val = nil, nil
	}
	exportParsers.Put(p)
}

// notJSON reports a body that is not one valid JSON value. It names the
// byte, not the path: the error is logged, and member names are the
// upstream's text.
func notJSON(err error) error {
	var se *jsontext.SyntacticError
	switch {
	case err == io.EOF:
		return errors.New("not JSON: empty body") // or only whitespace
	case errors.As(err, &se) && se.Err != nil:
		return fmt.Errorf("not JSON: %v at byte %d", se.Err, se.ByteOffset)
	}
	return fmt.Errorf("not JSON: %v", err)
}

// envelope reads the top-level value: an object (else there is no data
// object; null decodes to none too), then the end of the body.
func (p *exportParser) envelope() error {
	switch p.dec.PeekKind() {
	case '{':
	case 'n':
		if _, err := p.dec.ReadToken(); err != nil {
			return notJSON(err)
		}
		return p.end()
	default:
		if _, err := p.dec.ReadValue(); err != nil {
			return notJSON(err)
		}
		return errors.New("not JSON: the body is not an object")
	}
	if _, err := p.dec.ReadToken(); err != nil {
		return notJSON(err)
	}
	for p.dec.PeekKind() != '}' {
		if err := p.readName(); err != nil {
			return err
		}
		// Matched as encoding/json matches a struct tag: in any case.
		if bytes.EqualFold(p.name, []byte("data")) {
			if err := p.dataValue(); err != nil {
				return err
			}
			continue
		}
		if _, err := p.dec.ReadValue(); err != nil {
			return notJSON(err)
		}
	}
	if _, err := p.dec.ReadToken(); err != nil {
		return notJSON(err)
	}
	return p.end()
}

// end checks that nothing but whitespace follows the top-level value.
func (p *exportParser) end() error {
	switch _, err := p.dec.ReadToken(); err {
	case io.EOF:
		return nil
	case nil:
		return errors.New("not JSON: a second value after the first")
	default:
		return notJSON(err)
	}
}

// readName reads a member's name into p.name.
func (p *exportParser) readName() error {
	raw, err := p.dec.ReadValue()
	if err != nil {
		return notJSON(err)
	}
	// The tokenizer checked the string: the only error left is invalid
	// UTF-8, which reads as U+FFFD as in encoding/json.
	p.name, _ = jsontext.AppendUnquote(p.name[:0], raw)
	return nil
}

// dataValue reads data's value: an object is merged into what was read, as
// encoding/json decodes a repeated member into the same map; null drops it.
func (p *exportParser) dataValue() error {
	switch p.dec.PeekKind() {
	case 'n':
		if _, err := p.dec.ReadToken(); err != nil {
			return notJSON(err)
		}
		p.data = false
		p.status, p.expires, p.dataID = checked{}, checked{}, checked{}
		p.fields = nil
		return nil
	case '{':
	default:
		return errors.New("data is not an object")
	}
	if _, err := p.dec.ReadToken(); err != nil {
		return notJSON(err)
	}
	p.data = true
	if p.fields == nil {
		p.fields = make(map[string]string, max(len(p.keep), 4))
	}
	for p.dec.PeekKind() != '}' {
		if err := p.readName(); err != nil {
			return err
		}
		kind, v, err := p.value()
		if err != nil {
			return notJSON(err)
		}
		switch string(p.name) {
		case "status":
			p.status = checked{kind: kind}
			if kind == kindString {
				p.status.text = intern(v)
			}
		case "expires_at":
			p.expires = checked{kind: kind}
			if kind == kindString {
				p.expiresAt, p.expires.ok = parseExpiry(v)
			}
		case "id":
			p.dataID = checked{kind: kind, ok: kind == kindString && bytes.EqualFold(v, []byte(p.id))}
		}
		if p.keep != nil && !containsName(p.keep, p.name) {
			continue
		}
		switch {
		case kind == kindString && string(p.name) == "status":
			p.fields["status"] = p.status.text
		case kind == kindString || kind == kindNumber:
			p.fields[string(p.name)] = string(v)
		default:
			delete(p.fields, string(p.name))
		}
	}
	if _, err := p.dec.ReadToken(); err != nil {
		return notJSON(err)
	}
	return nil
}

// value reads a member's value. A string's text (unquoted) and a number's
// bytes are valid until the next read.
func (p *exportParser) value() (valueKind, []byte, error) {
	switch p.dec.PeekKind() {
	case '"':
		raw, err := p.dec.ReadValue()
		if err != nil {
			return 0, nil, err
		}
		p.val, _ = jsontext.AppendUnquote(p.val[:0], raw)
		return kindString, p.val, nil
	case '0':
		raw, err := p.dec.ReadValue()
		return kindNumber, raw, err
	case 'n':
		_, err := p.dec.ReadValue()
		return kindNull, nil, err
	default:
		_, err := p.dec.ReadValue()
		return kindOther, nil, err
	}
}

// containsName reports whether name is one of names, without a copy.
func containsName(names []string, name []byte) bool {
	for _, n := range names {
		if n == string(name) {
			return true
		}
	}
	return false
}

// parseExpiry reads an expires_at string (see parseRFC3339).
func parseExpiry(v []byte) (time.Time, bool) {
	t, ok := parseRFC3339(v)
	if ok && t.IsZero() {
		// 0001-01-01T00:00:00Z is a real, long past instant, but a zero
		// time.Time means "no expiry" here: keep it in the past.
		t = t.Add(time.Nanosecond)
	}
	return t, ok
}
