package upstream

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

func TestSurrogateKeys(t *testing.T) {
	long := strings.Repeat("k", MaxSurrogateKeyLen+1)
	many := make([]string, MaxSurrogateKeys+3)
	for i := range many {
		many[i] = "t" + strings.Repeat("x", i)
	}
	for _, tc := range []struct {
		name    string
		in      []string
		want    []string
		ignored int
	}{
		{"none", nil, nil, 0},
		{"two", []string{"key_8f2a proj_91c0"}, []string{"key_8f2a", "proj_91c0"}, 0},
		{"blanks and tabs", []string{"  a\tb  ", "c"}, []string{"a", "b", "c"}, 0},
		{"duplicates kept once", []string{"a a", "a"}, []string{"a"}, 0},
		{"too long ignored", []string{"ok " + long}, []string{"ok"}, 1},
		{"non-ASCII ignored", []string{"ok caf\u00e9 \x7f"}, []string{"ok"}, 2},
		{"bounded count", []string{strings.Join(many, " ")}, many[:MaxSurrogateKeys], 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ignored := SurrogateKeys(tc.in)
			if !slices.Equal(got, tc.want) || ignored != tc.ignored {
				t.Fatalf("SurrogateKeys(%q) = %q, %d; want %q, %d", tc.in, got, ignored, tc.want, tc.ignored)
			}
		})
	}
}

func TestFetchSurrogateKeys(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Surrogate-Key", "key_8f2a proj_91c0")
		w.Header().Add("Surrogate-Key", "bad\u00e9")
		switch r.Header.Get("Authorization") {
		case "Bearer gone":
			w.WriteHeader(http.StatusUnauthorized)
		default:
			_, _ = w.Write([]byte(envelope(exportData(""))))
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		header, auth string
		want         []string
		bad          int
	}{
		{"Surrogate-Key", "Bearer k", []string{"key_8f2a", "proj_91c0"}, 1},
		{"surrogate-key", "Bearer gone", []string{"key_8f2a", "proj_91c0"}, 1},
		{"", "Bearer k", nil, 0},
		{"X-Other", "Bearer k", nil, 0},
	} {
		c := newTestClient(t, srv.URL, func(cfg *Config) { cfg.SurrogateKeyHeader = tc.header })
		a, res, err := c.Fetch(context.Background(), testID, http.Header{"Authorization": {tc.auth}}, "req_1")
		if err != nil {
			t.Fatalf("%s: %v", tc.header, err)
		}
		if !slices.Equal(a.SurrogateKeys, tc.want) || res.BadSurrogateKeys != tc.bad {
			t.Errorf("header %q: keys %q (bad %d), want %q (bad %d)", tc.header, a.SurrogateKeys, res.BadSurrogateKeys, tc.want, tc.bad)
		}
	}
}

// Cache-Groups (RFC 9875) tags an answer beside Surrogate-Key: the two are
// one list of keys, each once, bounded together.
func TestFetchCacheGroups(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Surrogate-Key", "key_8f2a proj_91c0")
		w.Header().Add("Cache-Groups", `"keyid_8f2a", "proj_91c0", "has space"`)
		_, _ = w.Write([]byte(envelope(exportData(""))))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, func(cfg *Config) { cfg.SurrogateKeyHeader = "Surrogate-Key" })
	a, res, err := c.Fetch(context.Background(), testID, http.Header{"Authorization": {"Bearer k"}}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"key_8f2a", "proj_91c0", "keyid_8f2a"}; !slices.Equal(a.SurrogateKeys, want) || res.BadSurrogateKeys != 1 {
		t.Fatalf("keys %q (bad %d), want %q (bad 1)", a.SurrogateKeys, res.BadSurrogateKeys, want)
	}
}

// Valid tags past the bound are counted apart from invalid ones: a purge
// may name them, so the caller must not cache such an answer.
func TestFetchCountsTagsPastTheBound(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range MaxSurrogateKeys {
			w.Header().Add("Surrogate-Key", fmt.Sprintf("proj_%02d", i))
		}
		w.Header().Add("Cache-Groups", `"key_alice", "has space"`)
		_, _ = w.Write([]byte(envelope(exportData(""))))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, func(cfg *Config) { cfg.SurrogateKeyHeader = "Surrogate-Key" })
	a, res, err := c.Fetch(context.Background(), testID, http.Header{"Authorization": {"Bearer k"}}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.SurrogateKeys) != MaxSurrogateKeys || res.TagsCut != 1 || res.BadSurrogateKeys != 1 {
		t.Fatalf("%d keys, %d cut, %d bad; want %d, 1 and 1", len(a.SurrogateKeys), res.TagsCut, res.BadSurrogateKeys, MaxSurrogateKeys)
	}
}
