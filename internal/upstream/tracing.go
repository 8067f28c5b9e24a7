package upstream

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// SpanName is the name of the span of one upstream call.
const SpanName = "export_download.lookup"

// tracerName names the instrumentation scope of the spans this package
// starts.
const tracerName = "github.com/exportedge/caddy-export-download"

// Attribute keys of the lookup span and of the handler's span events. Their
// values are bounded: an export id (a UUID), an HTTP status, a reason out
// of a fixed set. Never a credential.
const (
	AttrExportID = attribute.Key("export_download.export_id")
	attrStatus   = attribute.Key("http.response.status_code")
	attrReason   = attribute.Key("export_download.upstream.failure")
)

// traceContext is the propagator of the upstream call: W3C Trace Context
// (traceparent, tracestate). Caddy's tracing directive does not install a
// global propagator, so this one is named explicitly.
var traceContext propagation.TraceContext

type linkKey struct{}

// link is the span a background call was started for.
type link struct {
	sc trace.SpanContext
	tp trace.TracerProvider
}

// WithLink marks ctx, which carries no span (a background refresh), as
// started on behalf of from (the span of the request that triggered it):
// the upstream call's span is then a new root linked to from, not a child
// of a request that has long ended. From may have ended by then. With a
// from that is not sampled (tracing off) ctx is returned as is.
func WithLink(ctx context.Context, from trace.Span) context.Context {
	if from == nil || !from.SpanContext().IsSampled() {
		return ctx
	}
	return context.WithValue(ctx, linkKey{}, link{sc: from.SpanContext(), tp: from.TracerProvider()})
}

// startSpan starts the span of one upstream call: a child of ctx's span
// when that one records, else a new root linked by WithLink. With neither
// it returns ctx and a nil span without allocating: tracing off costs a
// context lookup or two. propagate says whether ctx carries a trace
// context to send: also when the request's trace is not sampled, so that
// the application continues it unsampled (W3C Trace Context).
func startSpan(ctx context.Context, id string) (_ context.Context, span trace.Span, propagate bool) {
	parent := trace.SpanFromContext(ctx)
	if parent.IsRecording() {
		ctx, span = parent.TracerProvider().Tracer(tracerName).Start(ctx, SpanName,
			trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(AttrExportID.String(id)))
		return ctx, span, true
	}
	if l, ok := ctx.Value(linkKey{}).(link); ok {
		ctx, span = l.tp.Tracer(tracerName).Start(ctx, SpanName,
			trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(AttrExportID.String(id)),
			trace.WithNewRoot(), trace.WithLinks(trace.Link{SpanContext: l.sc}))
		return ctx, span, true
	}
	return ctx, nil, parent.SpanContext().IsValid()
}

// injectTraceContext sets traceparent (and tracestate) of ctx's span.
func injectTraceContext(ctx context.Context, h http.Header) {
	traceContext.Inject(ctx, propagation.HeaderCarrier(h))
}

// endSpan records what the call got and ends the span.
func endSpan(span trace.Span, res Result, err error) {
	if res.Status != 0 {
		span.SetAttributes(attrStatus.Int(res.Status))
	}
	if f, ok := err.(*Failure); ok {
		span.SetAttributes(attrReason.String(f.Reason))
		span.SetStatus(codes.Error, f.Reason)
	}
	span.End()
}
