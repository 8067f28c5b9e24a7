package fleet

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// upstreamDelay stands in for the application's metadata call on a miss.
const upstreamDelay = 2 * time.Millisecond

// BenchmarkLoad compares a shared hit (one Redis round trip on loopback)
// with asking the upstream, directly and through the fleet tier's lease.
func BenchmarkLoad(b *testing.B) {
	r := testenv.StartRedis(b)
	a := node(b, r.Addr)
	waitUp(b, a)
	payload := []byte(`{"outcome":"completed","bucket":"exports","key":"2026/11/report.csv","filename":"report.csv"}`)
	upstream := func(context.Context) (Fill, error) {
		time.Sleep(upstreamDelay)
		return Fill{Payload: payload, TTL: time.Minute}, nil
	}
	key := cred("bench")
	ctx := context.Background()
	if d, _ := a.Load(ctx, query("exp_hit", key), upstream); d.Source != Stored {
		b.Fatalf("setup: %v", d.Source)
	}

	b.Run("shared_hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if d, _ := a.Load(ctx, query("exp_hit", key), upstream); d.Source != Hit {
				b.Fatalf("src %v", d.Source)
			}
		}
	})
	b.Run("upstream_direct_2ms", func(b *testing.B) {
		for b.Loop() {
			_, _ = upstream(ctx)
		}
	})
	b.Run("miss_lease_upstream_2ms_store", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			if d, _ := a.Load(ctx, query("exp_miss_"+strconv.Itoa(i), key), upstream); d.Source != Stored {
				b.Fatalf("src %v", d.Source)
			}
		}
	})
}

// BenchmarkPublishToReceive measures an invalidation from Publish on one
// node to its delivery on another (loopback), with p50/p99 as metrics.
func BenchmarkPublishToReceive(b *testing.B) {
	r := testenv.StartRedis(b)
	a, c := node(b, r.Addr), node(b, r.Addr)
	waitUp(b, a, c)
	got := make(chan time.Time, 1)
	unsub := c.Subscribe(func(Event) { got <- time.Now() })
	defer unsub()
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		if !a.Publish(ctx, Event{IDs: []string{"exp_bench"}}) {
			b.Fatal("queued")
		}
		select {
		case at := <-got:
			lat = append(lat, at.Sub(start))
		case <-time.After(5 * time.Second):
			b.Fatal("event not delivered")
		}
	}
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds()), "p99-µs")
}

// BenchmarkPublishToNineNodes measures an invalidation from Publish on one
// of 10 nodes until the last of the 9 others has it (loopback).
func BenchmarkPublishToNineNodes(b *testing.B) {
	r := testenv.StartRedis(b)
	pub := node(b, r.Addr)
	got := make(chan time.Time, 64)
	var others []*Client
	for range 9 {
		c := node(b, r.Addr)
		others = append(others, c)
		unsub := c.Subscribe(func(Event) { got <- time.Now() })
		defer unsub()
	}
	waitUp(b, append(others, pub)...)
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		if !pub.Publish(ctx, Event{IDs: []string{"exp_bench"}}) {
			b.Fatal("queued")
		}
		var last time.Time
		for range 9 {
			select {
			case at := <-got:
				last = at
			case <-time.After(5 * time.Second):
				b.Fatal("event not delivered everywhere")
			}
		}
		lat = append(lat, last.Sub(start))
	}
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds()), "p99-µs")
}
