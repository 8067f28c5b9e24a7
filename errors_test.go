package exportdownload

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/exportedge/caddy-export-download/internal/decision"
)

// TestWriteAPIError: every error verdict is the README's envelope with its
// headers, HEAD the same without the body; WWW-Authenticate comes with a
// 401 only, Retry-After when there is one.
func TestWriteAPIError(t *testing.T) {
	for _, v := range decision.Verdicts() {
		if v.Code == "" {
			continue // the redirect
		}
		for _, head := range []bool{false, true} {
			rec := httptest.NewRecorder()
			writeAPIError(rec, head, v, "req_abc", "export_download; hit", "7")
			name := v.Code + map[bool]string{false: " GET", true: " HEAD"}[head]
			if rec.Code != v.Status {
				t.Errorf("%s: status %d, want %d", name, rec.Code, v.Status)
			}
			for h, want := range map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "X-Request-Id": "req_abc",
				"Cache-Status": "export_download; hit", "X-Content-Type-Options": "nosniff", "Retry-After": "7"} {
				if got := rec.Header().Get(h); got != want {
					t.Errorf("%s: %s %q, want %q", name, h, got, want)
				}
			}
			if got, want := rec.Header().Get("Www-Authenticate"), map[bool]string{true: "Bearer"}[v.Status == http.StatusUnauthorized]; got != want {
				t.Errorf("%s: WWW-Authenticate %q, want %q", name, got, want)
			}
			body := string(appendEnvelope(nil, v, "req_abc"))
			if got := rec.Header().Get("Content-Length"); got != strconv.Itoa(len(body)) {
				t.Errorf("%s: Content-Length %s for a %d-byte body", name, got, len(body))
			}
			if head {
				if rec.Body.Len() != 0 {
					t.Errorf("%s: a body of %d bytes", name, rec.Body.Len())
				}
				continue
			}
			if env := decodeEnvelope(t, rec.Body.String()); env.Error.Code != v.Code || env.Error.Message != v.Message || env.Meta.RequestID != "req_abc" {
				t.Errorf("%s: envelope %+v", name, env)
			}
		}
	}
	rec := httptest.NewRecorder()
	writeAPIError(rec, false, decision.Missing, "req_abc", "", "")
	if _, ok := rec.Header()["Retry-After"]; ok {
		t.Error("Retry-After without one to give")
	}
	// One allocation holds the values, yet a later handler that appends to
	// one header does not write over the next.
	rec.Header()["Cache-Control"] = append(rec.Header()["Cache-Control"], "no-transform")
	if got := rec.Header().Get("X-Request-Id"); got != "req_abc" {
		t.Errorf("appending to Cache-Control changed X-Request-Id to %q", got)
	}
	if !json.Valid(rec.Body.Bytes()) || !strings.Contains(rec.Body.String(), `"NOT_FOUND"`) {
		t.Errorf("body %s", rec.Body)
	}
}

// TestConfigErrorNames: a mistake names its subdirective as a user wrote
// it: the fleet block's with the block, the cache block's alone.
func TestConfigErrorNames(t *testing.T) {
	var errs configErrors
	errs.add(where{sub: "upstream"}, "required")
	errs.add(where{block: "cache", sub: "ttl", item: "bogus"}, `unknown outcome "bogus"`)
	errs.add(where{block: "fleet", sub: "redis", item: "x"}, `"x" is not host:port`)
	for i, want := range []string{`export_download: upstream: required`, `export_download: ttl: unknown outcome "bogus"`, `export_download: fleet: redis: "x" is not host:port`} {
		if got := errs[i].Error(); got != want {
			t.Errorf("error %d = %q, want %q", i, got, want)
		}
	}
}
