package exportdownload

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/exportedge/caddy-export-download/internal/decision"
)

// envelopePrefix holds, per verdict, the error envelope up to the request
// id, built once: `{"error":{"code":…,"message":…},"meta":{"request_id":"`.
var envelopePrefix = func() map[*decision.Verdict][]byte {
	m := make(map[*decision.Verdict][]byte)
	for _, v := range decision.Verdicts() {
		if v.Code == "" {
			continue
		}
		code, _ := json.Marshal(v.Code)
		msg, _ := json.Marshal(v.Message)
		b := []byte(`{"error":{"code":`)
		b = append(b, code...)
		b = append(b, `,"message":`...)
		b = append(b, msg...)
		b = append(b, `},"meta":{"request_id":"`...)
		m[v] = b
	}
	return m
}()

// appendEnvelope appends v's JSON error envelope. reqID needs no escaping:
// requestid only lets through [A-Za-z0-9._-].
func appendEnvelope(b []byte, v *decision.Verdict, reqID string) []byte {
	b = append(b, envelopePrefix[v]...)
	b = append(b, reqID...)
	return append(b, `"}}`...)
}

// The headers every reply of this handler carries, in the order of the
// values that setEach is given.
var (
	redirectHeaders = [...]string{"Location", "X-Request-Id", "Cache-Control", "Referrer-Policy", "Cache-Status", "Content-Length"}
	errorHeaders    = [...]string{"Content-Type", "Cache-Control", "X-Request-Id", "Cache-Status", "Content-Length", "X-Content-Type-Options"}
)

// setEach sets header names[i] to vals[i]. Each value is a one-element
// slice of vals itself, so that one allocation holds every header value of
// a reply; capped, so a later handler that appends copies rather than
// writes over the next value.
func setEach(hdr http.Header, names, vals []string) {
	for i, name := range names {
		hdr[name] = vals[i : i+1 : i+1]
	}
}

// writeAPIError writes v as the error response of docs/configuration.md,
// "Responses"; HEAD gets the same status and headers and no body.
func writeAPIError(w http.ResponseWriter, head bool, v *decision.Verdict, reqID, cacheStatus, retryAfter string) {
	body := appendEnvelope(make([]byte, 0, 160), v, reqID)
	vals := &[8]string{"application/json", "no-store", reqID, cacheStatus, strconv.Itoa(len(body)), "nosniff", "Bearer", retryAfter}
	hdr := w.Header()
	setEach(hdr, errorHeaders[:], vals[:6])
	if v.Status == http.StatusUnauthorized {
		hdr["Www-Authenticate"] = vals[6:7:7]
	}
	if retryAfter != "" {
		hdr["Retry-After"] = vals[7:8:8]
	}
	w.WriteHeader(v.Status)
	if !head {
		_, _ = w.Write(body)
	}
}

// where is where a setting is written in a Caddyfile: its block ("" at the
// top, "cache" or "fleet"), its subdirective, and for a repeatable one the
// value at fault.
type where struct{ block, sub, item string }

// configError is one mistake of a configuration.
type configError struct {
	at  where
	msg string
}

// Error names the subdirective; the cache block's have names of their own,
// the fleet block's are prefixed with it.
func (e *configError) Error() string {
	name := e.at.sub
	if e.at.block == "fleet" {
		name = "fleet: " + name
	}
	return "export_download: " + name + ": " + e.msg
}

// configErrors collects every mistake of a configuration, so that a user
// fixes them in one round instead of one per `caddy validate`.
type configErrors []error

func (errs *configErrors) add(at where, format string, args ...any) {
	*errs = append(*errs, &configError{at: at, msg: fmt.Sprintf(format, args...)})
}
