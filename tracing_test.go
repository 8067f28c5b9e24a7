package exportdownload

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/exportedge/caddy-export-download/internal/testenv"
	"github.com/exportedge/caddy-export-download/internal/upstream"
)

// clientTraceparent is what a traced client sends: W3C Trace Context,
// sampled.
const (
	clientTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID      = "00f067aa0ba902b7"
	clientTraceparent = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

// TestEndToEndTraceContext runs real Caddy: without the tracing directive
// the application's "Get export" call carries no trace headers, not even
// the client's; with it, the call carries a traceparent continuing the
// client's trace, from a span of its own.
func TestEndToEndTraceContext(t *testing.T) {
	// Caddy's tracing directive exports spans as OTEL_TRACES_EXPORTER
	// says; none keeps the test off the network.
	t.Setenv("OTEL_TRACES_EXPORTER", "none")
	e := startEdge(t, "")
	const offID = "01935abc-def0-7123-4567-000000000001"
	const onID = "01935abc-def0-7123-4567-000000000002"
	const unsampledID = "01935abc-def0-7123-4567-000000000003"
	for _, id := range []string{offID, onID, unsampledID} {
		completed(e.up, id, time.Now().Add(time.Hour))
	}
	get := func(id, traceparent string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, e.base+"/v1/exports/"+id+"/download", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+testKey)
		req.Header.Set("Traceparent", traceparent)
		req.Header.Set("Tracestate", "client=1")
		resp, err := noRedirects.Do(req)
		// Right after a reload the old listener's queue is reset (Caddy's
		// SO_REUSEPORT swap; see TestReloadUnderLoad): retry that GET.
		for try := 0; err != nil && try < 3; try++ {
			time.Sleep(20 * time.Millisecond)
			resp, err = noRedirects.Do(req)
		}
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("GET %s: status %d, want 302", id, resp.StatusCode)
		}
	}
	lookupOf := func(id string) http.Header {
		t.Helper()
		for _, r := range e.up.Requests() {
			if strings.HasSuffix(r.Path, "/"+id) {
				return r.Header
			}
		}
		t.Fatalf("the application was not asked about %s", id)
		return nil
	}

	get(offID, clientTraceparent)
	if h := lookupOf(offID); h.Values("Traceparent") != nil || h.Values("Tracestate") != nil {
		t.Errorf("tracing off: the application got traceparent %q, tracestate %q; want none",
			h.Values("Traceparent"), h.Values("Tracestate"))
	}

	runCaddy(t, e.cfg("tracing"))
	get(onID, clientTraceparent)
	h := lookupOf(onID)
	parts := strings.Split(h.Get("Traceparent"), "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[2]) != 16 || parts[3] != "01" {
		t.Fatalf("tracing on: the application got traceparent %q, want a sampled W3C traceparent", h.Get("Traceparent"))
	}
	if parts[1] != clientTraceID {
		t.Errorf("tracing on: trace id %s, want the client's %s", parts[1], clientTraceID)
	}
	if parts[2] == clientSpanID || parts[2] == strings.Repeat("0", 16) {
		t.Errorf("tracing on: parent span id %s, want a span of the edge's own", parts[2])
	}
	if v := h.Values("Traceparent"); len(v) != 1 {
		t.Errorf("tracing on: %d traceparent values, want 1", len(v))
	}

	// A client whose trace is not sampled: the application continues the
	// same trace, unsampled.
	get(unsampledID, "00-"+clientTraceID+"-"+clientSpanID+"-00")
	parts = strings.Split(lookupOf(unsampledID).Get("Traceparent"), "-")
	if len(parts) != 4 || parts[1] != clientTraceID || parts[3] != "00" {
		t.Errorf("tracing on, unsampled: the application got traceparent %q, want the client's trace, flags 00", strings.Join(parts, "-"))
	}
}

// TestTraceHelpers: the span events carry bounded attributes, and with no
// span (tracing off) the helpers allocate nothing.
func TestTraceHelpers(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	off := httpRequest(t, "/v1/exports/"+testID+"/download")
	if requestSpan(off) != nil {
		t.Fatal("a span without tracing")
	}
	load := func(context.Context) (int, time.Duration, error) { return 1, 0, nil }
	if n := testing.AllocsPerRun(100, func() {
		span := requestSpan(off)
		traceLookup(span, testID, "hit")
		tracePresign(span, true)
		traceOutcome(span, testID, "redirect")
		_ = linkRefresh(span, load)
	}); n != 0 {
		t.Errorf("tracing off: %v allocations, want 0", n)
	}

	ctx, parent := tp.Tracer("test").Start(context.Background(), "request")
	on := off.WithContext(ctx)
	span := requestSpan(on)
	if span == nil {
		t.Fatal("no span with tracing on")
	}
	traceLookup(span, testID, "miss")
	tracePresign(span, false)
	traceOutcome(span, testID, "redirect")
	// A refresh in the background: a real upstream call, in a context
	// without the request's span.
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Now().Add(time.Hour))
	client, err := upstream.New(upstream.Config{BaseURL: up.URL, Path: "/v1/exports/{id}", Timeout: 2 * time.Second, Forward: []string{"Authorization"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	refresh := linkRefresh(span, func(ctx context.Context) (int, time.Duration, error) {
		_, _, err := client.Fetch(ctx, testID, http.Header{}, "req_refresh")
		return 1, 0, err
	})
	if _, _, err := refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	parent.End()
	var got sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "request" {
			got = s
		}
	}
	if got == nil {
		t.Fatal("request span not recorded")
	}
	events := map[string]map[string]string{}
	for _, ev := range got.Events() {
		attrs := map[string]string{}
		for _, kv := range ev.Attributes {
			attrs[string(kv.Key)] = kv.Value.Emit()
		}
		events[ev.Name] = attrs
	}
	if a := events["export_download.cache_lookup"]; a["export_download.export_id"] != testID || a["export_download.cache_result"] != "miss" {
		t.Errorf("cache lookup event = %v", a)
	}
	if a := events["export_download.presign"]; a["export_download.presign.reused"] != "false" {
		t.Errorf("presign event = %v", a)
	}
	attrs := map[string]string{}
	for _, kv := range got.Attributes() {
		attrs[string(kv.Key)] = kv.Value.Emit()
	}
	if attrs["export_download.outcome"] != "redirect" || attrs["export_download.export_id"] != testID {
		t.Errorf("request span attributes = %v", attrs)
	}
	for _, s := range rec.Ended() {
		if s.Name() != upstream.SpanName {
			continue
		}
		if s.Parent().IsValid() || len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("refresh span: parent %v, links %+v; want a new root linked to the request", s.Parent(), s.Links())
		}
		return
	}
	t.Error("the refresh made no lookup span")
}

// TestServeHTTPTraceEvents: with a recording span in the request's
// context, a miss shows the upstream call as a child span and the cache
// lookup, the new presign and the outcome on the request's span; a hit
// shows the lookup and the reused URL. It needs the handler to call the
// helpers of tracing.go.
func TestServeHTTPTraceEvents(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Now().Add(time.Hour))
	h := newHandler(t, up, nil)

	spans := make([]string, 2)
	for i, wantLookup := range []string{"miss", "hit"} {
		ctx, span := tp.Tracer("test").Start(context.Background(), "request "+wantLookup)
		resp := serve(t, h, request{path: "/v1/exports/" + testID + "/download", ctx: ctx,
			header: map[string]string{"Authorization": "Bearer " + testKey}})
		span.End()
		if resp.Code != http.StatusFound {
			t.Fatalf("%s: status %d", wantLookup, resp.Code)
		}
		spans[i] = span.SpanContext().SpanID().String()
	}

	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		byName[s.Name()] = s
	}
	lookup := byName[upstream.SpanName]
	if lookup == nil || lookup.Parent().SpanID().String() != spans[0] {
		t.Fatalf("the miss's upstream call is not a child span of its request (%v)", lookup)
	}
	for i, want := range []struct{ lookup, reused string }{{"miss", "false"}, {"hit", "true"}} {
		s := byName["request "+want.lookup]
		events := map[string]map[string]string{}
		for _, ev := range s.Events() {
			attrs := map[string]string{}
			for _, kv := range ev.Attributes {
				attrs[string(kv.Key)] = kv.Value.Emit()
			}
			events[ev.Name] = attrs
		}
		if got := events["export_download.cache_lookup"]["export_download.cache_result"]; got != want.lookup {
			t.Errorf("request %d: cache_lookup event result %q, want %q (the handler must call traceLookup, tracing.go)", i, got, want.lookup)
		}
		if got := events["export_download.presign"]["export_download.presign.reused"]; got != want.reused {
			t.Errorf("request %d: presign event reused %q, want %q (the handler must call tracePresign, tracing.go)", i, got, want.reused)
		}
		outcome := ""
		for _, kv := range s.Attributes() {
			if kv.Key == attrOutcome {
				outcome = kv.Value.Emit()
			}
		}
		if outcome != "redirect" {
			t.Errorf("request %d: outcome attribute %q, want redirect (the handler must call traceOutcome, tracing.go)", i, outcome)
		}
	}
}
