// Package decision holds the download contract as pure functions: what the
// upstream said (an Answer) and the time give the reply (a Verdict), and how
// long that answer may be cached. It is the one place to read "what does a
// failed export get" or to change a TTL rule.
package decision

import (
	"net/http"
	"time"
)

// Kind classifies the upstream's reply (docs/configuration.md "The upstream contract"). Failures are not a Kind:
// the upstream client returns them as errors.
type Kind uint8

// The kinds of usable upstream replies.
const (
	KindExport       Kind = iota // 200 with a usable "Get export" body
	KindUnauthorized             // 401 or 403
	KindNotFound                 // 404
	KindRateLimited              // 429
)

// Export is the part of a "Get export" answer the edge acts on.
type Export struct {
	Status    string
	ExpiresAt time.Time // zero: the export never expires
}

// Answer is a usable reply of the upstream.
type Answer struct {
	Kind   Kind
	Export Export // with KindExport
	// Fields holds every string or number field of data, for templates.
	Fields map[string]string
	// RetryAfter is the upstream's Retry-After, with KindRateLimited.
	RetryAfter string
	// SurrogateKeys are the tags the upstream put on this answer
	// (Surrogate-Key), by which an operator can purge it.
	SurrogateKeys []string
}

// Outcome is the bounded label of what a request got (docs/operations.md "Metrics and logs").
type Outcome uint8

// Outcomes, in the order of the docs/operations.md "Metrics and logs".
const (
	Redirect Outcome = iota
	NotReady
	Expired
	NotFound
	Unauthorized
	InvalidRequest
	RateLimited
	Unavailable
	InternalError
	Passthrough
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	"redirect", "not_ready", "expired", "not_found", "unauthorized",
	"invalid_request", "rate_limited", "unavailable", "internal_error", "passthrough",
}

// String returns the metric label of o.
func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "unknown"
}

// Outcomes lists every Outcome, for pre-creating metric series.
func Outcomes() []Outcome {
	all := make([]Outcome, numOutcomes)
	for i := range all {
		all[i] = Outcome(i)
	}
	return all
}

// Verdict is a reply of the contract table (docs/configuration.md "Responses"): the status and, for
// errors, the envelope's code and message.
type Verdict struct {
	Outcome Outcome
	Status  int
	Code    string
	Message string
}

// The verdicts of the docs/configuration.md "Responses", one per row that has its own message.
var (
	Found           = &Verdict{Redirect, http.StatusFound, "", ""}
	NotYetCompleted = &Verdict{NotReady, http.StatusBadRequest, "EXPORT_NOT_READY", "Export is not yet completed"}
	ExportFailed    = &Verdict{NotReady, http.StatusBadRequest, "EXPORT_NOT_READY", "Export failed; create a new export"}
	LinkExpired     = &Verdict{Expired, http.StatusGone, "EXPORT_EXPIRED", "Export download link has expired"}
	Missing         = &Verdict{NotFound, http.StatusNotFound, "NOT_FOUND", "Export not found"}
	BadKey          = &Verdict{Unauthorized, http.StatusUnauthorized, "UNAUTHORIZED", "Invalid or missing API key"}
	BadID           = &Verdict{InvalidRequest, http.StatusBadRequest, "INVALID_REQUEST", "id must be a valid UUID"}
	TooManyRequests = &Verdict{RateLimited, http.StatusTooManyRequests, "RATE_LIMITED", "Too many requests"}
	Down            = &Verdict{Unavailable, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE", "Export service is temporarily unavailable"}
	Internal        = &Verdict{InternalError, http.StatusInternalServerError, "INTERNAL_ERROR", "Internal error"}
)

// Verdicts lists every verdict above, for precomputing responses.
func Verdicts() []*Verdict {
	return []*Verdict{Found, NotYetCompleted, ExportFailed, LinkExpired, Missing, BadKey, BadID, TooManyRequests, Down, Internal}
}

// MinLifetime is the shortest URL lifetime worth handing out: SigV4 counts
// whole seconds, so less than one second left means the link has expired.
const MinLifetime = time.Second

// Decide returns the reply to a usable upstream answer at time now
// (rules 3–10 of the decision table, docs/configuration.md "Responses"). Only the exact status "completed" with at least
// MinLifetime left before expires_at redirects.
func Decide(a *Answer, now time.Time) *Verdict {
	switch a.Kind {
	case KindUnauthorized:
		return BadKey
	case KindNotFound:
		return Missing
	case KindRateLimited:
		return TooManyRequests
	}
	switch a.Export.Status {
	case "completed":
		if !a.Export.ExpiresAt.IsZero() && a.Export.ExpiresAt.Sub(now) < MinLifetime {
			return LinkExpired
		}
		return Found
	case "expired":
		return LinkExpired
	case "failed":
		return ExportFailed
	default: // pending, processing and any status this version does not know
		return NotYetCompleted
	}
}
