package upstream

import (
	"fmt"
	"slices"
	"strings"
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

// A large in-band invalidation keeps each group once, in order, with the
// duplicates found past the point where a map takes over from the list.
func TestCacheGroupsManyDistinct(t *testing.T) {
	var b strings.Builder
	for i := range 10_000 {
		fmt.Fprintf(&b, "%q, ", fmt.Sprint("key_", i%7_000))
	}
	b.WriteString(`"key_0"`)
	got, invalid, cut := CacheGroups([]string{b.String()}, 10_000)
	if len(got) != 7_000 || invalid != 0 || cut != 0 || got[0] != "key_0" || got[6_999] != "key_6999" {
		t.Fatalf("%d groups (first %q, last %q), %d invalid, %d cut; want 7,000 in order", len(got), got[0], got[len(got)-1], invalid, cut)
	}
	got, _, cut = CacheGroups([]string{b.String()}, 20)
	if len(got) != 20 || got[19] != "key_19" || cut == 0 {
		t.Fatalf("limit 20: %d groups (last %q), %d cut; want the first 20 and some cut", len(got), got[len(got)-1], cut)
	}
}
