package cache

import (
	"context"
	"testing"
	"time"
)

// BenchmarkPeekHit is the cache's share of a hit: hashing the key, the
// store's lookup and the check of the full key.
func BenchmarkPeekHit(b *testing.B) {
	c := New[string](Config{MaxEntries: 1000, StaleIfError: time.Minute})
	defer c.Close()
	k := Key{ID: "01935abc-def0-7123-4567-890abcdef012"}
	k.Cred[0] = 1
	if _, _, err := c.Load(context.Background(), k, func(context.Context) (string, time.Duration, error) { return "v", time.Hour, nil }); err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, st := c.PeekAt(k, now); st != Fresh {
			b.Fatal(st)
		}
	}
}
