package exportdownload

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestRegressionStaleNotServedAfterDrop: a request that found its entry stale
// and is waiting on a failing upstream must not serve that entry once a
// DELETE (2xx) or a 401 of the same credential dropped it meanwhile.
// SECURITY.md: "stale-if-error never brings them back"; README: a DELETE
// answered 2xx drops every cached answer of that export.
func TestRegressionStaleNotServedAfterDrop(t *testing.T) {
	for _, how := range []string{"delete", "revoked"} {
		t.Run(how, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			completed(up, testID, time.Time{})
			clock := newClock()
			h := newHandler(t, up, clock)
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)

			// Past freshness, within stale_if_error; the upstream now fails slowly.
			clock.Advance(5*time.Minute + time.Second)
			up.Set(testID, testenv.Response{Status: 500, Body: "oops", Delay: 700 * time.Millisecond})

			done := make(chan *httptest.ResponseRecorder, 1)
			go func() {
				rec, _ := downloadFrom(context.Background(), h, testID, testKey)
				done <- rec
			}()
			waitUntil(t, "the stale request asks the upstream", func() bool { return up.CallsFor(testID) == 2 })

			switch how {
			case "delete":
				ok := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
					w.WriteHeader(http.StatusNoContent)
					return nil
				})
				rec := serve(t, h, request{method: http.MethodDelete, path: "/v1/exports/" + testID, next: ok,
					header: map[string]string{"Authorization": "Bearer " + testKey}})
				if rec.Code != http.StatusNoContent {
					t.Fatalf("DELETE: %d", rec.Code)
				}
			case "revoked":
				up.SetFor(testKey, testID2, testenv.Response{Status: 401,
					Body: `{"error":{"code":"UNAUTHORIZED","message":"Invalid or missing API key"}}`})
				if rec := download(t, h, testID2, testKey); rec.Code != http.StatusUnauthorized {
					t.Fatalf("revoked key on another export: %d", rec.Code)
				}
			}

			rec := <-done
			if rec.Code == http.StatusFound {
				t.Fatalf("after the entry was dropped (%s), the waiting request served it stale: %d %q",
					how, rec.Code, rec.Header().Get("Cache-Status"))
			}
		})
	}
}
