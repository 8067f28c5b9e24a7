package exportdownload

import (
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestRecordObject: a record keeps the id and the fields its templates
// name, not the rendered object, and renders the same object again; it
// hands its surrogate keys to the cache once.
func TestRecordObject(t *testing.T) {
	up := testenv.NewUpstream(t)
	h := newHandler(t, up, nil, func(h *Handler) {
		h.Bucket = "b-{export.region}"
		h.Filename = "{export.name}-{id}.csv"
	})
	fields := map[string]string{"project_id": "proj_1", "region": "eu", "name": "Q3 ünïcødé", "unused": "x"}
	for _, id := range []string{testID, "not-a-uuid", "01935ABC-DEF0-7123-4567-890ABCDEF012", ""} {
		a := &decision.Answer{Kind: decision.KindExport, Export: decision.Export{Status: "completed"},
			Fields: fields, SurrogateKeys: []string{"key_1", "proj_1"}}
		rec := h.newRecord(id, a, time.Now())
		if rec.objErr != nil {
			t.Fatalf("id %q: %v", id, rec.objErr)
		}
		want, err := h.renderObject(id, fields)
		if err != nil {
			t.Fatal(err)
		}
		got, err := h.object(rec)
		if err != nil || got != want {
			t.Fatalf("id %q: object rendered again = %+v, %v; want %+v", id, got, err, want)
		}
		if rec.answer.Fields != nil {
			t.Fatalf("id %q: the record keeps the answer's fields", id)
		}
		if tags := rec.CacheTags(); len(tags) != 2 || rec.answer.SurrogateKeys != nil {
			t.Fatalf("id %q: CacheTags = %q, then the record keeps %q", id, tags, rec.answer.SurrogateKeys)
		}
	}
	a := &decision.Answer{Kind: decision.KindExport, Export: decision.Export{Status: "completed"},
		Fields: map[string]string{"project_id": "proj_1"}}
	if rec := h.newRecord(testID, a, time.Now()); rec.objErr == nil {
		t.Fatal("a record whose templates name missing fields has no objErr")
	} else if _, err := h.object(rec); err == nil {
		t.Fatal("such a record's object renders")
	}
}
