package requestid

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"req_xyz123", true},
		{"a", true},
		{"A.b-c_9", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{"", false},
		{"has space", false},
		{"quote\"", false},
		{"crlf\r\nSet-Cookie: x", false},
		{"ünï", false},
		{"semi;colon", false},
	} {
		if got := Valid(tc.in); got != tc.want {
			t.Errorf("Valid(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestNew(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := New()
		if !strings.HasPrefix(id, "req_") || len(id) < 24 || !Valid(id) {
			t.Fatalf("New() = %q", id)
		}
		for _, c := range id[4:] {
			if !strings.ContainsRune(alphabet, c) {
				t.Fatalf("New() = %q holds %q", id, c)
			}
		}
		if seen[id] {
			t.Fatalf("New() repeated %q", id)
		}
		seen[id] = true
	}
	if n := testing.AllocsPerRun(100, func() { _ = New() }); n > 1 {
		t.Errorf("New allocates %v times, want 1", n)
	}
}

func TestFromHeader(t *testing.T) {
	if got := FromHeader("req_abc"); got != "req_abc" {
		t.Errorf("valid id not kept: %q", got)
	}
	if got := FromHeader("bad id"); got == "bad id" || !strings.HasPrefix(got, "req_") {
		t.Errorf("invalid id not replaced: %q", got)
	}
}
