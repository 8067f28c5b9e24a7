package exportdownload

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRegressionPurgeErrorQuotesBounded: SECURITY.md, "Purge and stats": "An
// invalid value is quoted back in the error only up to 64 bytes." An
// unknown member's name is quoted whole (encoding/json's message), so a
// purge body of up to 1 MiB comes back in the error and in Caddy's admin
// log.
func TestRegressionPurgeErrorQuotesBounded(t *testing.T) {
	long := strings.Repeat("A", 100_000)
	for name, body := range map[string]string{
		"unknown field": `{"` + long + `":1}`,
		"wrong type":    `{"export_ids":"` + long + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, adminPurgePath, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			_, err := readPurgeRequest(httptest.NewRecorder(), req)
			if err == nil {
				t.Fatal("accepted")
			}
			if n := len(err.Error()); n > 1024 {
				t.Fatalf("the error is %d bytes long: it quotes the client's text whole", n)
			}
		})
	}
}
