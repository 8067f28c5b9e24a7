package upstream

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// benchBody is a realistic "Get export" reply: more fields than the
// templates use, as an application's API returns.
var benchBody = envelope(exportData(`,"expires_at":"2026-12-01T10:00:00Z","format":"csv",` +
	`"row_count":1234,"size_bytes":52428800,"created_at":"2026-11-30T10:00:00Z",` +
	`"completed_at":"2026-11-30T10:02:13Z","filename":"orders-2026-11.csv",` +
	`"links":{"self":"/v1/exports/x","download":"/v1/exports/x/download"},"tags":["a","b"]`))

// BenchmarkFetch is one upstream call over loopback, as a cache miss makes
// it: the client's cost plus a minimal server's.
func BenchmarkFetch(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(benchBody))
	}))
	b.Cleanup(srv.Close)
	for _, bc := range []struct {
		name   string
		fields []string
	}{
		{"all fields", nil},
		{"template fields", []string{"project_id"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := New(Config{BaseURL: srv.URL, Path: "/v1/exports/{id}", Timeout: 2 * time.Second,
				Forward: []string{"Authorization"}, UserAgent: testUA,
				Headers: http.Header{"X-Edge-Token": {"edge"}}, Fields: bc.fields})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(c.Close)
			from := http.Header{"Authorization": {"Bearer hb_test_bench"}}
			b.ReportAllocs()
			for b.Loop() {
				a, _, err := c.Fetch(context.Background(), testID, from, "req_0123456789abcdefghij")
				if err != nil || a.Export.Status != "completed" {
					b.Fatalf("%+v %v", a, err)
				}
			}
		})
	}
}

// BenchmarkParseExport is the decoding alone.
func BenchmarkParseExport(b *testing.B) {
	body := []byte(benchBody)
	for _, bc := range []struct {
		name   string
		fields []string
	}{
		{"all fields", nil},
		{"template fields", []string{"project_id"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := parseExportFields(body, testID, bc.fields); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
