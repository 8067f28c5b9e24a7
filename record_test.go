package exportdownload

import (
	"context"
	"fmt"
	"net/url"
	"strings"
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

// FuzzExportFields: whatever the upstream puts in an export's fields, the
// rendered object and the presigned URL never break Location or
// Content-Disposition, and never panic.
func FuzzExportFields(f *testing.F) {
	for _, s := range []string{"proj_1", "a\r\nSet-Cookie: x=1", `"quoted";x`, "Ünïcødé 📊", strings.Repeat("x", 2000), "../../etc/passwd", "%2F?#&=", "\x00\x7f"} {
		f.Add(s, s)
	}
	up := testenv.NewUpstream(f)
	clock := newClock()
	h := newHandler(f, up, clock, func(h *Handler) { h.Filename = "{export.name}.csv" })
	f.Fuzz(func(t *testing.T, project, name string) {
		a := &decision.Answer{Kind: decision.KindExport, Export: decision.Export{Status: "completed"},
			Fields: map[string]string{"project_id": project, "name": name}}
		rec := h.newRecord(testID, a, time.Now())
		if rec.objErr != nil {
			return
		}
		obj, err := h.object(rec)
		if err != nil {
			t.Fatalf("the object of a checked record does not render again: %v", err)
		}
		s, err := h.presigner.Presign(context.Background(), obj, clock.Now(), time.Time{})
		if err != nil {
			return
		}
		if strings.ContainsAny(s.URL, "\r\n\x00 ") {
			t.Fatalf("Location would hold a control character or space: %q", s.URL)
		}
		u, err := url.Parse(s.URL)
		if err != nil {
			t.Fatalf("unparsable Location %q: %v", s.URL, err)
		}
		cd := u.Query().Get("response-content-disposition")
		if strings.ContainsAny(cd, "\r\n\x00") || !strings.HasPrefix(cd, `attachment; filename="`) {
			t.Fatalf("Content-Disposition %q", cd)
		}
		if u.Query().Get("X-Amz-SignedHeaders") != "host" {
			t.Fatalf("signed headers %q", u.Query().Get("X-Amz-SignedHeaders"))
		}
	})
}

// TestRecordExportID: every record gives back the export id it was made
// for, whatever the answer (the export_id placeholder reads it), through a
// pointer that costs no allocation to hand out.
func TestRecordExportID(t *testing.T) {
	up := testenv.NewUpstream(t)
	h := newHandler(t, up, nil)
	for _, a := range []decision.Answer{
		{Kind: decision.KindExport, Export: decision.Export{Status: "completed"}, Fields: map[string]string{"project_id": "p"}},
		{Kind: decision.KindExport, Export: decision.Export{Status: "completed"}}, // its object does not render
		{Kind: decision.KindExport, Export: decision.Export{Status: "pending"}},
		{Kind: decision.KindNotFound},
	} {
		for _, id := range []string{testID, "not-a-uuid"} {
			rec := h.newRecord(id, &a, time.Now())
			if got := rec.exportID(); got != id {
				t.Errorf("%+v, id %q: exportID = %q", a, id, got)
			}
			var v any
			if n := testing.AllocsPerRun(10, func() { v = (*exportIDOf)(rec) }); n != 0 {
				t.Errorf("handing out the export id costs %v allocations", n)
			}
			if s := v.(fmt.Stringer).String(); s != id {
				t.Errorf("%+v, id %q: the placeholder reads %q", a, id, s)
			}
		}
	}
}
