package route

import "testing"

func TestParseTemplate(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr bool
	}{
		{"/v1/exports/{id}/download", false},
		{"/v1/exports/{id}", false},
		{"/{id}", false},
		{"v1/exports/{id}", true},
		{"/v1/exports/", true},
		{"/v1/{id}/{id}", true},
		{"/v1/x{id}/download", true},
		{"/v1/{id}x/download", true},
		{"/v1/{id}/download?x=1", true},
	} {
		_, err := Parse(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("Parse(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
		}
	}
}

func TestMatch(t *testing.T) {
	tpl, err := Parse("/v1/exports/{id}/download")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path   string
		id     string
		wantOK bool
	}{
		{"/v1/exports/abc/download", "abc", true},
		{"/v1/exports//download", "", true},
		{"/v1/exports/../download", "..", true},
		{"/v1/exports/a/b/download", "", false},
		{"/v1/exports//abc/download", "", false},
		{"/v1/exports/abc/download/", "", false},
		{"/v1/exports/abc", "", false},
		{"/v1/exports/download", "", false},
		{"/v2/exports/abc/download", "", false},
		{"", "", false},
	} {
		id, ok := tpl.Match(tc.path)
		if ok != tc.wantOK || id != tc.id {
			t.Errorf("Match(%q) = %q, %v; want %q, %v", tc.path, id, ok, tc.id, tc.wantOK)
		}
	}
	var zero Template
	if _, ok := zero.Match("/anything"); ok {
		t.Error("zero Template matched")
	}
}

func TestParseID(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"01935abc-def0-7123-4567-890abcdef012", "01935abc-def0-7123-4567-890abcdef012", true},
		{"01935ABC-DEF0-7123-4567-890ABCDEF012", "01935abc-def0-7123-4567-890abcdef012", true},
		{"01935abc-def0-7123-4567-890abcdef01", "", false},
		{"01935abc-def0-7123-4567-890abcdef0123", "", false},
		{"01935abcdef07123-4567-890abcdef012-", "", false},
		{"01935abc-def0-7123-4567-890abcdef01g", "", false},
		{"{1935abc-def0-7123-4567-890abcdef01}", "", false},
		{"01935abc_def0_7123_4567_890abcdef012", "", false},
		{"", "", false},
		{"..", "", false},
	} {
		got, ok := ParseID(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseID(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	if n := testing.AllocsPerRun(100, func() { ParseID("01935abc-def0-7123-4567-890abcdef012") }); n != 0 {
		t.Errorf("ParseID of a lowercase id allocates %v times", n)
	}
}

// TestParseUUID: the 16 bytes of a lowercase UUID, written back as they
// came; anything ParseID would not return as is (upper case included)
// is refused, without an allocation either way.
func TestParseUUID(t *testing.T) {
	const id = "01935abc-def0-7123-4567-890abcdef012"
	var b [16]byte
	if !ParseUUID(id, &b) {
		t.Fatalf("ParseUUID(%q) refused it", id)
	}
	if want := [16]byte{0x01, 0x93, 0x5a, 0xbc, 0xde, 0xf0, 0x71, 0x23, 0x45, 0x67, 0x89, 0x0a, 0xbc, 0xde, 0xf0, 0x12}; b != want {
		t.Fatalf("ParseUUID(%q) = %x, want %x", id, b, want)
	}
	if got := string(AppendUUID(nil, &b)); got != id {
		t.Fatalf("AppendUUID = %q, want %q", got, id)
	}
	for _, bad := range []string{"01935ABC-DEF0-7123-4567-890ABCDEF012", "01935abc-def0-7123-4567-890abcdef01", "01935abc-def0-7123-4567-890abcdef01g",
		"01935abcdef07123-4567-890abcdef012-", "0193-abc-def0-7123-4567-890abcdef012", ""} {
		if ParseUUID(bad, &b) {
			t.Errorf("ParseUUID(%q) accepted it", bad)
		}
	}
	if n := testing.AllocsPerRun(100, func() { ParseUUID(id, &b) }); n != 0 {
		t.Errorf("ParseUUID allocates %v times", n)
	}
}

// FuzzParseUUID: ParseUUID accepts exactly what ParseID returns unchanged,
// and AppendUUID gives it back.
func FuzzParseUUID(f *testing.F) {
	for _, s := range []string{"01935abc-def0-7123-4567-890abcdef012", "01935ABC-DEF0-7123-4567-890ABCDEF012", "", "01935abc-def0-7123-4567-890abcdef01\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b [16]byte
		ok := ParseUUID(s, &b)
		id, valid := ParseID(s)
		if ok != (valid && id == s) {
			t.Fatalf("ParseUUID(%q) = %v, but ParseID = %q, %v", s, ok, id, valid)
		}
		if ok && string(AppendUUID(nil, &b)) != s {
			t.Fatalf("AppendUUID(ParseUUID(%q)) = %q", s, AppendUUID(nil, &b))
		}
	})
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"01935abc-def0-7123-4567-890abcdef012", "01935ABC-DEF0-7123-4567-890ABCDEF012", "", "../..", "%2F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, ok := ParseID(s)
		if !ok {
			return
		}
		if len(id) != 36 {
			t.Fatalf("accepted %q with length %d", id, len(id))
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !(c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				t.Fatalf("accepted %q holding %q", id, c)
			}
		}
		if again, ok := ParseID(id); !ok || again != id {
			t.Fatalf("not idempotent: %q -> %q", id, again)
		}
	})
}

func FuzzMatch(f *testing.F) {
	f.Add("/v1/exports/{id}/download", "/v1/exports/01935abc-def0-7123-4567-890abcdef012/download")
	f.Add("/v1/exports/{id}", "/v1/exports//x")
	f.Fuzz(func(t *testing.T, tmpl, path string) {
		tpl, err := Parse(tmpl)
		if err != nil {
			return
		}
		id, ok := tpl.Match(path)
		if !ok {
			return
		}
		if rebuilt := tpl.prefix + id + tpl.suffix; rebuilt != path {
			t.Fatalf("Match(%q) = %q does not rebuild the path (%q)", path, id, rebuilt)
		}
	})
}
