package tmpl

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestRender(t *testing.T) {
	fields := map[string]string{"project_id": "proj_1", "size": "42", "name": "Q3 report"}
	for _, tc := range []struct {
		tmpl, want string
	}{
		{"exports/{export.project_id}/{id}.csv", "exports/proj_1/01935abc-def0-7123-4567-890abcdef012.csv"},
		{"export-{id}.csv", "export-01935abc-def0-7123-4567-890abcdef012.csv"},
		{"{export.name} ({export.size}).csv", "Q3 report (42).csv"},
		{"static-bucket", "static-bucket"},
		{"", ""},
	} {
		tp, err := Parse(tc.tmpl)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.tmpl, err)
		}
		got, err := tp.Render("01935abc-def0-7123-4567-890abcdef012", fields)
		if err != nil || got != tc.want {
			t.Errorf("Render(%q) = %q, %v; want %q", tc.tmpl, got, err, tc.want)
		}
	}
}

func TestRenderMissingField(t *testing.T) {
	tp := mustParse("exports/{export.project_id}/{id}.csv")
	_, err := tp.Render("x", map[string]string{})
	var mf *MissingFieldError
	if !errors.As(err, &mf) || mf.Field != "project_id" {
		t.Fatalf("want MissingFieldError for project_id, got %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{"{", "a}", "x{id", "{foo}", "{export.}", "{http.request.uri}", "{export.a b}", "}{id}"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
}

// mustParse is Parse for templates known to be valid.
func mustParse(s string) Template {
	t, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestFields(t *testing.T) {
	for src, want := range map[string][]string{
		"bucket":                     nil,
		"b-{id}":                     nil,
		"{export.b}/{id}/{export.a}": {"b", "a"},
		"{export.a}-{export.a}.csv":  {"a"},
	} {
		if got := mustParse(src).Fields(); !slices.Equal(got, want) {
			t.Errorf("Fields(%q) = %q, want %q", src, got, want)
		}
	}
}

func FuzzTemplate(f *testing.F) {
	f.Add("exports/{export.project_id}/{id}.csv", "proj\r\n\"x\";ü")
	f.Add("{export.a}{export.b}", "")
	f.Fuzz(func(t *testing.T, src, value string) {
		tp, err := Parse(src)
		if err != nil {
			return
		}
		out, err := tp.Render("id", map[string]string{"project_id": value, "a": value, "b": value})
		if err != nil {
			var mf *MissingFieldError
			if !errors.As(err, &mf) {
				t.Fatalf("Render error of the wrong type: %v", err)
			}
			return
		}
		if !strings.Contains(src, "{") && out != src {
			t.Fatalf("static template %q rendered %q", src, out)
		}
	})
}
