package fleet

import (
	"fmt"
	"strings"
	"testing"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

func TestTamperedValuesAreMisses(t *testing.T) {
	r := testenv.StartRedis(t)
	withLog, logs := logged()
	a := node(t, r.Addr, withLog)
	waitUp(t, a)
	victim, attacker := cred("victim"), cred("attacker")
	vkey := decisionKey(a, "exp_t", victim)
	akey := decisionKey(a, "exp_t", attacker)
	load(t, a, "exp_t", attacker, newFetcher(`{"outcome":"completed","attacker":true}`))
	attackerValue := r.MustDo(t, "GET", akey)

	cases := []struct {
		name  string
		value func(good string) string
	}{
		{"copied from another credential's key", func(string) string { return attackerValue }},
		{"one byte edited", func(good string) string {
			b := []byte(good)
			b[len(b)-macLen-2] ^= 1 // inside the payload
			return string(b)
		}},
		{"freshness edited", func(good string) string {
			b := []byte(good)
			b[2+16+8+3] ^= 0x40 // version, generation length, a 16-digit generation, decided at, fresh until
			return string(b)
		}},
		{"decision time edited", func(good string) string {
			b := []byte(good)
			b[2+16+3] ^= 0x40
			return string(b)
		}},
		{"truncated", func(good string) string { return good[:len(good)-5] }},
		{"garbage", func(string) string { return "completed" }},
	}
	defer func() {
		// A generation set to another value (tampering, or a failover that
		// lost its last write): no decision matches it, a miss, not a
		// Redis failure.
		for i := range 5 {
			r.MustDo(t, "SET", DefaultPrefix+":g:{exp_t}", fmt.Sprintf("tampered-%d", i))
			f := newFetcher("direct")
			if _, src := load(t, a, "exp_t", victim, f); src == Hit || f.calls.Load() != 1 {
				t.Fatalf("tampered generation: src %v", src)
			}
		}
		if a.Stats().BreakerOpen || a.Stats().Lookups.Unavailable != 0 {
			t.Fatalf("tampered generation counted as a Redis failure: %+v", a.Stats())
		}
	}()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			load(t, a, "exp_t", victim, newFetcher(`{"outcome":"failed"}`)) // a genuine decision
			good := r.MustDo(t, "GET", vkey)
			r.MustDo(t, "SET", vkey, tc.value(good), "PX", "60000")
			before := a.Stats().Lookups.Invalid
			warns := logs.FilterMessageSnippet("failed authentication").Len()
			f := newFetcher(`{"outcome":"failed"}`)
			p, src := load(t, a, "exp_t", victim, f)
			if src == Hit || f.calls.Load() != 1 || string(p) != `{"outcome":"failed"}` {
				t.Fatalf("tampered value used: src %v payload %q calls %d", src, p, f.calls.Load())
			}
			if a.Stats().Lookups.Invalid != before+1 {
				t.Errorf("invalid lookups %d, want %d", a.Stats().Lookups.Invalid, before+1)
			}
			if logs.FilterMessageSnippet("failed authentication").Len() <= warns {
				t.Errorf("no warn line for the tampered value")
			}
			for _, e := range logs.All() {
				for _, f := range e.Context {
					if strings.Contains(f.String, "completed") || strings.Contains(f.String, "attacker") {
						t.Errorf("log line carries the value's content: %v", e.Context)
					}
				}
			}
		})
	}
}
