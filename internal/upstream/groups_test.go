package upstream

import (
	"slices"
	"testing"
)

func TestCacheGroups(t *testing.T) {
	tests := []struct {
		name    string
		values  []string
		want    []string
		ignored int
	}{
		{"the RFC's example", []string{`"scripts", "styles"`}, []string{"scripts", "styles"}, 0},
		{"one", []string{`"keyid_8f2a"`}, []string{"keyid_8f2a"}, 0},
		{"several lines are one list", []string{`"a"`, `"b", "a"`}, []string{"a", "b"}, 0},
		{"parameters are ignored", []string{`"a";x=1;y="z", "b";flag`}, []string{"a", "b"}, 0},
		{"escapes", []string{`"a\"b", "c\\d"`}, []string{`a"b`, `c\d`}, 0},
		{"no blanks around", []string{`"a","b"`}, []string{"a", "b"}, 0},
		{"empty field", []string{``}, nil, 0},
		{"a string that cannot be a surrogate key is counted", []string{`"has space", "ok"`}, []string{"ok"}, 1},
		{"a token, not a string: the field is ignored", []string{`"a", b`}, nil, 0},
		{"unterminated: ignored", []string{`"a`}, nil, 0},
		{"trailing comma: ignored", []string{`"a",`}, nil, 0},
		{"a bad escape: ignored", []string{`"a\n"`}, nil, 0},
		{"a non-ASCII byte: ignored", []string{"\"caf\xc3\xa9\""}, nil, 0},
		{"one bad line spoils the field", []string{`"a"`, `b`}, nil, 0},
		{"an integer member: ignored", []string{`"a", 1`}, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ignored, cut := CacheGroups(tc.values, MaxSurrogateKeys)
			if !slices.Equal(got, tc.want) || ignored != tc.ignored || cut != 0 {
				t.Fatalf("CacheGroups(%q) = %q, %d ignored; want %q, %d", tc.values, got, ignored, tc.want, tc.ignored)
			}
		})
	}
	var many []string
	for i := range MaxSurrogateKeys + 3 {
		many = append(many, `"g`+string(rune('a'+i))+`"`)
	}
	got, invalid, cut := CacheGroups(many, MaxSurrogateKeys)
	if len(got) != MaxSurrogateKeys || invalid != 0 || cut != 3 {
		t.Fatalf("%d groups, %d invalid, %d cut; want %d, 0 and 3", len(got), invalid, cut, MaxSurrogateKeys)
	}
}

func FuzzCacheGroups(f *testing.F) {
	for _, s := range []string{`"a", "b"`, `"a";x=1`, `"a\"b"`, `a`, `"`, `"a",`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, _, _ := CacheGroups([]string{v}, MaxSurrogateKeys)
		if len(got) > MaxSurrogateKeys {
			t.Fatalf("%d groups", len(got))
		}
		for _, g := range got {
			if !ValidSurrogateKey(g) {
				t.Fatalf("group %q is not a valid surrogate key", g)
			}
		}
	})
}
