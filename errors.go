package exportdownload

import (
	"encoding/json"
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

// writeAPIError writes v as the README\'s "Responses" error response; HEAD gets the same
// status and headers and no body.
func writeAPIError(w http.ResponseWriter, head bool, v *decision.Verdict, reqID, cacheStatus, retryAfter string) {
	body := appendEnvelope(make([]byte, 0, 160), v, reqID)
	vals := &[8]string{"application/json", "no-store", reqID, cacheStatus, strconv.Itoa(len(body)), "nosniff", "Bearer", retryAfter}
	hdr := w.Header()
	hdr["Content-Type"] = vals[0:1:1]
	hdr["Cache-Control"] = vals[1:2:2]
	hdr["X-Request-Id"] = vals[2:3:3]
	hdr["Cache-Status"] = vals[3:4:4]
	hdr["Content-Length"] = vals[4:5:5]
	hdr["X-Content-Type-Options"] = vals[5:6:6]
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
