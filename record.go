package exportdownload

import (
	"encoding/binary"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/presign"
	"github.com/exportedge/caddy-export-download/internal/route"
	"github.com/exportedge/caddy-export-download/internal/tmpl"
)

// record is a cached upstream answer. For a completed export it keeps what
// the object's templates are rendered from (the export id and the fields
// they name), not the rendered object: a million cached answers then hold
// a million short field values instead of a million object keys and file
// names. The object is rendered again only when no URL is remembered.
type record struct {
	answer decision.Answer // in the record: one allocation less per entry
	uuid   [16]byte        // the export id, when it is a canonical UUID
	oddID  bool            // the id is not a canonical UUID: it is the first of vals
	vals   string          // the values of h.templateFields, each length-prefixed
	objErr error           // a template named a field the answer lacks
	// decided is when the upstream was asked for this answer (Unix
	// nanoseconds), by this node or, for a shared decision, another: with a
	// fleet, the bound on staleness compares it (docs/fleet.md, "Bounded
	// staleness").
	decided int64
	// filled is when this node made the record, on the monotonic clock
	// (monoNow): a wall clock that steps back cannot make an entry look
	// younger than that.
	filled int64
	url    atomic.Pointer[memoURL]
}

// monoEpoch starts the monotonic clock that monoNow reads.
var monoEpoch = time.Now()

// monoNow is the monotonic time since monoEpoch, in nanoseconds.
func monoNow() int64 { return int64(time.Since(monoEpoch)) }

// CacheTags are the answer's surrogate keys. The cache keeps its own copy
// of them when it takes the record, so the record forgets them.
func (r *record) CacheTags() []string {
	tags := r.answer.SurrogateKeys
	r.answer.SurrogateKeys = nil
	return tags
}

// CacheRefutes says what a refusal proves: a 401/403 revokes every cached
// answer of the credential, a 404 the credential's answer for the export
// (README, "Revoke a key in one command").
func (r *record) CacheRefutes() cache.Refutation {
	switch r.answer.Kind {
	case decision.KindUnauthorized:
		return cache.RefutesCredential
	case decision.KindNotFound:
		return cache.RefutesEntry
	}
	return cache.RefutesNothing
}

// newRecord keeps what the cache needs of answer a for export id, decided
// at decided: the decision, the id, and for a completed export, once its
// object is checked to render, the fields that render it.
func (h *Handler) newRecord(id string, a *decision.Answer, decided time.Time) *record {
	rec := &record{answer: *a, decided: decided.UnixNano(), filled: monoNow()}
	rec.answer.Fields = nil // only this function reads them: the cache need not keep them
	var b []byte
	if !route.ParseUUID(id, &rec.uuid) {
		rec.oddID = true
		b = appendVal(b, id)
	}
	if a.Kind == decision.KindExport && a.Export.Status == "completed" {
		if _, rec.objErr = h.renderObject(id, a.Fields); rec.objErr == nil {
			for _, f := range h.templateFields {
				b = appendVal(b, a.Fields[f])
			}
		}
	}
	rec.vals = string(b)
	return rec
}

// exportID is the export id the record was made for.
func (rec *record) exportID() string {
	if rec.oddID {
		id, _ := nextVal(rec.vals)
		return id
	}
	var buf [36]byte
	return string(route.AppendUUID(buf[:0], &rec.uuid))
}

// provisionTemplates parses the bucket, object_key and filename templates
// (checked by Validate) and lists the export fields they name: all that a
// record keeps of an answer.
func (h *Handler) provisionTemplates() {
	h.bucket, _ = tmpl.Parse(h.Bucket)
	h.key, _ = tmpl.ParseObjectKey(h.ObjectKey) // a leading slash only if the template has one
	h.file, _ = tmpl.Parse(h.Filename)
	h.templateFields = []string{} // none named: the upstream keeps none
	for _, t := range []tmpl.Template{h.bucket, h.key, h.file} {
		for _, f := range t.Fields() {
			if !slices.Contains(h.templateFields, f) {
				h.templateFields = append(h.templateFields, f)
			}
		}
	}
}

// renderObject renders the object that the templates name for export id.
func (h *Handler) renderObject(id string, fields map[string]string) (presign.Object, error) {
	obj := presign.Object{ContentType: h.ContentType}
	var err error
	if obj.Bucket, err = h.bucket.Render(id, fields); err != nil {
		return obj, err
	}
	if obj.Key, err = h.key.Render(id, fields); err != nil {
		return obj, err
	}
	if obj.Key == "" || obj.Bucket == "" {
		return obj, errors.New("the bucket or object key rendered empty")
	}
	// A key or bucket that could name another object than the template
	// means (dot or empty segments, control characters) fails here, once
	// per answer, as a cached 500 (docs/configuration.md, "Templates"); Presign checks
	// again.
	if err := presign.CheckObject(obj); err != nil {
		return obj, err
	}
	obj.Filename, err = h.file.Render(id, fields)
	return obj, err
}

// object renders the record's object again, as newRecord checked it.
func (h *Handler) object(rec *record) (presign.Object, error) {
	if rec.objErr != nil {
		return presign.Object{}, rec.objErr
	}
	id, vals := rec.exportID(), rec.vals
	if rec.oddID {
		_, vals = nextVal(vals) // the id
	}
	var fields map[string]string
	if len(h.templateFields) > 0 {
		fields = make(map[string]string, len(h.templateFields))
		for _, f := range h.templateFields {
			fields[f], vals = nextVal(vals)
		}
	}
	return h.renderObject(id, fields)
}

// appendVal appends v to b, prefixed by its length.
func appendVal(b []byte, v string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(v))), v...)
}

// nextVal splits the first value appendVal wrote off vals.
func nextVal(vals string) (v, rest string) {
	n, k := binary.Uvarint([]byte(vals[:min(len(vals), binary.MaxVarintLen64)]))
	if k <= 0 || uint64(len(vals)-k) < n {
		return "", ""
	}
	return vals[k : k+int(n)], vals[k+int(n):]
}
