package upstream

import (
	"context"
	"net/http"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// newRecordingProvider returns a tracer provider that keeps ended spans.
func newRecordingProvider(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// traceparentOf splits a W3C traceparent into its trace and parent ids.
func traceparentOf(t *testing.T, v string) (traceID, spanID string) {
	t.Helper()
	parts := strings.Split(v, "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 {
		t.Fatalf("traceparent %q is not version 00 of W3C Trace Context", v)
	}
	return parts[1], parts[2]
}

func TestFetchTraceContext(t *testing.T) {
	up := testenv.NewUpstream(t)
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil)})
	c := newTestClient(t, up.URL, nil)
	tp, rec := newRecordingProvider(t)
	from := http.Header{
		"Authorization": {"Bearer hb_live_secret"},
		// A client's own trace headers are never passed on.
		"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"Tracestate":  {"client=1"},
	}

	// Tracing off: no span in the context, no trace headers.
	if _, _, err := c.Fetch(context.Background(), testID, from, "req_1"); err != nil {
		t.Fatal(err)
	}
	// Tracing on: a child span of the request's.
	ctx, parent := tp.Tracer("test").Start(context.Background(), "request")
	if _, _, err := c.Fetch(ctx, testID, from, "req_2"); err != nil {
		t.Fatal(err)
	}
	parent.End()
	// A background refresh: no span in its context, a link to the request.
	if _, _, err := c.Fetch(WithLink(context.Background(), parent), testID, from, "req_3"); err != nil {
		t.Fatal(err)
	}

	reqs := up.Requests()
	if len(reqs) != 3 {
		t.Fatalf("upstream got %d requests, want 3", len(reqs))
	}
	if v := reqs[0].Header.Values("Traceparent"); v != nil {
		t.Errorf("tracing off: the upstream got traceparent %q", v)
	}
	if v := reqs[0].Header.Values("Tracestate"); v != nil {
		t.Errorf("tracing off: the upstream got tracestate %q", v)
	}

	var lookups []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == SpanName {
			lookups = append(lookups, s)
		}
	}
	if len(lookups) != 2 {
		t.Fatalf("%d %s spans ended, want 2", len(lookups), SpanName)
	}
	child, root := lookups[0], lookups[1]

	traceID, spanID := traceparentOf(t, reqs[1].Header.Get("Traceparent"))
	if traceID != parent.SpanContext().TraceID().String() {
		t.Errorf("child call: traceparent trace id %s, want the request's %s", traceID, parent.SpanContext().TraceID())
	}
	if spanID != child.SpanContext().SpanID().String() || spanID == parent.SpanContext().SpanID().String() {
		t.Errorf("child call: traceparent parent id %s, want the lookup span's %s (not the request's %s)",
			spanID, child.SpanContext().SpanID(), parent.SpanContext().SpanID())
	}
	if child.Parent().SpanID() != parent.SpanContext().SpanID() || child.SpanKind() != trace.SpanKindClient {
		t.Errorf("lookup span: parent %s kind %v, want the request span %s, client", child.Parent().SpanID(), child.SpanKind(), parent.SpanContext().SpanID())
	}
	attrs := map[string]string{}
	for _, kv := range child.Attributes() {
		attrs[string(kv.Key)] = kv.Value.Emit()
	}
	if attrs[string(AttrExportID)] != testID || attrs["http.response.status_code"] != "200" {
		t.Errorf("lookup span attributes = %v, want the export id and status 200", attrs)
	}
	for k, v := range attrs {
		if strings.Contains(v, "hb_live_secret") {
			t.Errorf("lookup span attribute %s holds the credential", k)
		}
	}

	traceID, spanID = traceparentOf(t, reqs[2].Header.Get("Traceparent"))
	if root.Parent().IsValid() {
		t.Errorf("refresh span has parent %s, want a new root", root.Parent().SpanID())
	}
	if traceID != root.SpanContext().TraceID().String() || traceID == parent.SpanContext().TraceID().String() || spanID != root.SpanContext().SpanID().String() {
		t.Errorf("refresh call: traceparent %s/%s, want the new root %s/%s", traceID, spanID, root.SpanContext().TraceID(), root.SpanContext().SpanID())
	}
	if links := root.Links(); len(links) != 1 || links[0].SpanContext.SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("refresh span links = %+v, want one to the request span", links)
	}
}

// TestFetchTraceUnsampled: a request whose trace is not sampled (its span
// does not record) still passes its trace context on, unsampled, so the
// application continues the same trace; no span is made for the call.
func TestFetchTraceUnsampled(t *testing.T) {
	up := testenv.NewUpstream(t)
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil)})
	c := newTestClient(t, up.URL, nil)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	if _, _, err := c.Fetch(ctx, testID, http.Header{}, "req_1"); err != nil {
		t.Fatal(err)
	}
	reqs := up.Requests()
	if got, want := reqs[0].Header.Get("Traceparent"), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"; got != want {
		t.Errorf("traceparent %q, want %q", got, want)
	}
}

// TestFetchTraceFailure: a failed call's span says why, with the bounded
// reason.
func TestFetchTraceFailure(t *testing.T) {
	up := testenv.NewUpstream(t)
	up.Set(testID, testenv.Response{Status: http.StatusBadGateway, Body: "down"})
	c := newTestClient(t, up.URL, nil)
	tp, rec := newRecordingProvider(t)
	ctx, parent := tp.Tracer("test").Start(context.Background(), "request")
	if _, _, err := c.Fetch(ctx, testID, http.Header{}, "req_1"); err == nil {
		t.Fatal("a 502 was not a failure")
	}
	parent.End()
	for _, s := range rec.Ended() {
		if s.Name() != SpanName {
			continue
		}
		if s.Status().Description != "unexpected status" {
			t.Errorf("status = %+v, want the failure reason", s.Status())
		}
		return
	}
	t.Fatal("no lookup span")
}

// TestWithLinkOff: without a recording span there is nothing to link, and
// the context is not wrapped.
func TestWithLinkOff(t *testing.T) {
	ctx := context.Background()
	if WithLink(ctx, trace.SpanFromContext(ctx)) != ctx || WithLink(ctx, nil) != ctx {
		t.Error("WithLink wrapped a context with no recording span")
	}
}

// TestNewRefusesForwardingTraceContext: the trace headers of the call are
// the edge's own; forwarding a client's would also put them in the cache
// key.
func TestNewRefusesForwardingTraceContext(t *testing.T) {
	for _, name := range []string{"traceparent", "Tracestate"} {
		cfg := Config{BaseURL: "http://127.0.0.1:1", Path: "/v1/exports/{id}", Timeout: 1e9, Forward: []string{"Authorization", name}}
		if c, err := New(cfg); err == nil {
			c.Close()
			t.Errorf("New accepted forward_header %s", name)
		}
	}
}

// TestFetchTracingOffAllocs: with no span in the context, tracing adds no
// allocation to a call.
func TestFetchTracingOffAllocs(t *testing.T) {
	ctx := context.Background()
	n := testing.AllocsPerRun(100, func() {
		if c, s, p := startSpan(ctx, testID); s != nil || c != ctx || p {
			t.Fatal("a span without tracing")
		}
	})
	if n != 0 {
		t.Errorf("startSpan without tracing: %v allocs, want 0", n)
	}
}
