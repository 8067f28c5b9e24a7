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

// TestRenderValueCap: a value over MaxValueLen fails the render of any
// template (bucket, object key, file name), so one export's answer cannot
// make a URL, and the cache entry that holds it, of any size.
func TestRenderValueCap(t *testing.T) {
	const id = "01935abc-def0-7123-4567-890abcdef012"
	atCap, overCap := strings.Repeat("a", MaxValueLen), strings.Repeat("a", MaxValueLen+1)
	for _, tc := range []struct {
		what, tmpl, field string
	}{
		{"bucket", "exports-{export.tenant}", "tenant"},
		{"object key", "exports/{export.project_id}/{id}.csv", "project_id"},
		{"object key, the field twice", "{export.project_id}/{export.project_id}.csv", "project_id"},
		{"file name", "{export.name}.csv", "name"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			tp := mustParse(tc.tmpl)
			if _, err := tp.Render(id, map[string]string{tc.field: atCap}); err != nil {
				t.Fatalf("a value of exactly %d bytes: %v", MaxValueLen, err)
			}
			out, err := tp.Render(id, map[string]string{tc.field: overCap})
			var tl *ValueTooLongError
			if !errors.As(err, &tl) || tl.Placeholder != "export."+tc.field || tl.Len != MaxValueLen+1 || out != "" {
				t.Fatalf("a value of %d bytes: got %d bytes, err %v; want a ValueTooLongError for export.%s", MaxValueLen+1, len(out), err, tc.field)
			}
			if strings.Contains(err.Error(), overCap[:64]) {
				t.Errorf("the error quotes the value: %.200s", err)
			}
		})
	}
	// {id} is capped too, whatever the caller validated.
	var tl *ValueTooLongError
	if _, err := mustParse("exports/{id}.csv").Render(overCap, nil); !errors.As(err, &tl) || tl.Placeholder != "id" {
		t.Errorf("an id of %d bytes: err %v, want a ValueTooLongError for id", len(overCap), err)
	}
}

// TestObjectKeyLeadingSlash: in an object key template, a field cannot make
// the key start with "/" (some stores drop it, reaching a key the template
// never names); the template's own leading "/" stays; other templates are
// unaffected.
func TestObjectKeyLeadingSlash(t *testing.T) {
	for _, tc := range []struct {
		tmpl, value string
		objectKey   bool
		want        string // "" when refused
	}{
		{"{export.p}/{id}.csv", "", true, ""},
		{"{export.p}/{id}.csv", "/etc", true, ""},
		{"{export.p}{export.q}/x.csv", "", true, ""},
		{"{export.p}/{id}.csv", "proj", true, "proj/i.csv"},
		{"/exports/{export.p}/{id}.csv", "proj", true, "/exports/proj/i.csv"},
		{"/{export.p}.csv", "/x", true, "//x.csv"}, // a literal leading slash; what follows is S3 presigning's to check
		{"exports/{export.p}.csv", "/x", true, "exports//x.csv"},
		{"{export.p}/{id}.csv", "", false, "/i.csv"}, // a file name: no such rule
	} {
		parse := Parse
		if tc.objectKey {
			parse = ParseObjectKey
		}
		tp, err := parse(tc.tmpl)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tp.Render("i", map[string]string{"p": tc.value, "q": "/y"})
		if tc.want == "" {
			if err == nil {
				t.Errorf("%q with p=%q rendered %q; want it refused", tc.tmpl, tc.value, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q with p=%q: %q, %v; want %q", tc.tmpl, tc.value, got, err, tc.want)
		}
	}
	if _, err := ParseObjectKey("{"); err == nil {
		t.Error("ParseObjectKey accepted a bad template")
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
			var tl *ValueTooLongError
			if !errors.As(err, &mf) && !(errors.As(err, &tl) && len(value) > MaxValueLen) {
				t.Fatalf("Render error of the wrong type: %v", err)
			}
			return
		}
		if !strings.Contains(src, "{") && out != src {
			t.Fatalf("static template %q rendered %q", src, out)
		}
	})
}
