package presign

import (
	"context"
	"testing"
	"time"
)

// benchObj is a typical export: a key with a space and a file name with
// non-ASCII characters, so that escaping is part of the cost.
var benchObj = Object{Bucket: "exports-eu", Key: "exports/proj_1/2026-11/export 42.csv", Filename: "Résumé Q3.csv", ContentType: "text/csv"}

var benchConfigs = []struct {
	name string
	cfg  Config
}{
	{"aws virtual-hosted", Config{Region: "eu-west-3", AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "secret", Expiry: 15 * time.Minute}},
	{"endpoint path-style", Config{Region: "eu-west-3", Endpoint: "http://s3.test:9000", PathStyle: true, AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "secret", Expiry: 15 * time.Minute}},
}

// BenchmarkPresign is one new URL, as the handler asks for it on a miss.
func BenchmarkPresign(b *testing.B) {
	for _, bc := range benchConfigs {
		b.Run(bc.name, func(b *testing.B) {
			p, err := New(context.Background(), bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			now := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Presign(ctx, benchObj, now, time.Time{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPresignSDK is the same presign through the SDK's
// PresignGetObject (the path before the lean one, and still the one for
// what the lean path leaves to the SDK), for a side-by-side comparison.
func BenchmarkPresignSDK(b *testing.B) {
	for _, bc := range benchConfigs {
		b.Run(bc.name, func(b *testing.B) {
			p, err := New(context.Background(), bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			now := time.Now()
			signAt := now.Truncate(time.Second)
			b.ReportAllocs()
			for b.Loop() {
				creds, err := p.creds.forURL(ctx, now, signAt.Add(p.expiry))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.presignSDK(ctx, benchObj, creds, signAt, p.expiry); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
