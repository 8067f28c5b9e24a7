package exportdownload

import (
	"context"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/exportedge/caddy-export-download/internal/upstream"
)

// Trace context. With Caddy's tracing directive in front of export_download,
// each request has a span: the upstream call becomes its child span,
// export_download.lookup, and carries the W3C traceparent to the
// application (internal/upstream), and the cache lookup and the presign
// are events on the request's span. Their attributes are bounded (the
// export id, a cache result, an outcome); never a credential or a URL.
// With tracing off none of this allocates: the helpers take the span that
// requestSpan returned, nil when there is none to record on.

// Attribute keys of the span events.
const (
	attrCacheResult = attribute.Key("export_download.cache_result")
	attrOutcome     = attribute.Key("export_download.outcome")
	attrReused      = attribute.Key("export_download.presign.reused")
)

// requestSpan returns the span Caddy's tracing directive started for r, or
// nil when no span records (tracing off, or not sampled).
func requestSpan(r *http.Request) trace.Span {
	if s := trace.SpanFromContext(r.Context()); s.IsRecording() {
		return s
	}
	return nil
}

// traceLookup records the cache lookup of export id: its result is the
// cache_lookups_total label (hit, miss, stale, collapsed, ...).
func traceLookup(span trace.Span, id, result string) {
	if span == nil {
		return
	}
	span.AddEvent("export_download.cache_lookup", trace.WithAttributes(
		upstream.AttrExportID.String(id), attrCacheResult.String(result)))
}

// tracePresign records whether the URL handed out was presigned for this
// request or reused (the export id is on the span already: traceOutcome).
func tracePresign(span trace.Span, reused bool) {
	if span == nil {
		return
	}
	span.AddEvent("export_download.presign", trace.WithAttributes(attrReused.Bool(reused)))
}

// traceOutcome puts what the request got on its span, as attributes a
// trace search can filter on.
func traceOutcome(span trace.Span, id, outcome string) {
	if span == nil {
		return
	}
	span.SetAttributes(upstream.AttrExportID.String(id), attrOutcome.String(outcome))
}

// linkRefresh wraps the loader of a background refresh: it runs after the
// request that triggered it may have ended, in a context without a span,
// so its upstream span is a new root that links to the request's span
// rather than a child of it. With span nil (tracing off) it returns load
// as is.
func linkRefresh[V any](span trace.Span, load func(context.Context) (V, time.Duration, error)) func(context.Context) (V, time.Duration, error) {
	if span == nil {
		return load
	}
	return func(ctx context.Context) (V, time.Duration, error) {
		return load(upstream.WithLink(ctx, span))
	}
}
