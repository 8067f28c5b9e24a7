package exportdownload

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestHeaderSettingsThatCannotWork: an upstream_header that would replace
// the caller's credential (or do nothing), and a forward_header that
// forwards what the client claims about itself, fail at config load with a
// message naming the subdirective.
func TestHeaderSettingsThatCannotWork(t *testing.T) {
	for _, tc := range []struct {
		name, lines, want string
	}{
		{"shared token as Authorization", `upstream_header Authorization "Bearer {env.EDGE_TOKEN}"`, "upstream_header: Authorization"},
		{"any case", `upstream_header authorization "Bearer x"`, "upstream_header: Authorization"},
		{"Host does nothing", `upstream_header Host app.internal`, "upstream_header: Host"},
		{"X-Request-Id is the edge's", `upstream_header X-Request-Id fixed`, "upstream_header: X-Request-Id"},
		{"replaces a forwarded header", "forward_header X-Project-Id\nupstream_header x-project-id p1", "upstream_header: X-Project-Id"},
		{"client's claimed address", `forward_header X-Forwarded-For`, "forward_header: X-Forwarded-For"},
		{"X-Real-IP claimed", `forward_header x-real-ip`, "forward_header: X-Real-Ip"},
		{"Forwarded claimed", `forward_header Forwarded`, "forward_header: Forwarded"},
		{"trace context in the key", `forward_header traceparent`, "forward_header: Traceparent"},
		{"unknown placeholder sent literally", `upstream_header X-Real-IP {remote_hostname}`, "upstream_header: the value of X-Real-IP holds {remote_hostname}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "export_download {\n upstream http://127.0.0.1:9\n bucket b\n object_key k/{id}\n " + tc.lines + "\n}"
			err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Caddyfile error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	// The JSON config goes through the same check at provision.
	up := testenv.NewUpstream(t)
	h := &Handler{Upstream: up.URL, Bucket: "b", ObjectKey: "k/{id}", UpstreamHeader: map[string]string{"Authorization": "Bearer edge"}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err == nil || !strings.Contains(err.Error(), "upstream_header: Authorization") {
		t.Fatalf("Provision with upstream_header Authorization = %v, want a refusal", err)
	}
	_ = h.Cleanup()
}

// TestUpstreamHeaderRequestPlaceholders: upstream_header X-Real-IP
// {client_ip} tells the app the connection's address (never the literal
// placeholder text), and answers for one address are not served to
// another: an app that restricts a key by IP is not bypassed by the cache.
func TestUpstreamHeaderRequestPlaceholders(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, newClock(), func(h *Handler) {
		h.UpstreamHeader = map[string]string{"X-Real-IP": "{http.request.remote.host}", "X-Edge": "static"}
	})
	get := func(remote string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/v1/exports/"+testID+"/download", nil)
		req.RemoteAddr = remote
		req.Header.Set("Authorization", "Bearer "+testKey)
		repl := caddyhttp.NewTestReplacer(req)
		req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
		rec := httptest.NewRecorder()
		if err := h.ServeHTTP(rec, req, new(nextHandler)); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	checkReply(t, get("198.51.100.7:4000"), http.StatusFound, wantStored)
	checkReply(t, get("198.51.100.7:4001"), http.StatusFound, wantHit)
	checkReply(t, get("203.0.113.9:4000"), http.StatusFound, wantStored) // another address: asked again
	reqs := up.Requests()
	if len(reqs) != 2 {
		t.Fatalf("upstream saw %d calls, want 2 (one per client address)", len(reqs))
	}
	for i, want := range []string{"198.51.100.7", "203.0.113.9"} {
		if got := reqs[i].Header.Get("X-Real-Ip"); got != want {
			t.Errorf("call %d: X-Real-IP %q, want the connection's address %q", i, got, want)
		}
		if got := reqs[i].Header.Get("X-Edge"); got != "static" {
			t.Errorf("call %d: X-Edge %q, want static", i, got)
		}
	}
}

// TestPlaceholderKinds: the three kinds of placeholders a setting may hold
// (the templates' own, Caddy's global ones, request ones) are told apart,
// and a request's values cannot break the header they fill.
func TestPlaceholderKinds(t *testing.T) {
	for _, tc := range []struct {
		value           string
		global, request bool
		unknown         string
	}{
		{"{env.EDGE_TOKEN}", true, false, ""},
		{"Bearer {file./run/secrets/token}", true, false, ""},
		{"{http.request.remote.host}", false, true, ""},
		{"{env.A}-{http.vars.client_ip}", true, true, ""},
		{"{remote_hostname}", false, false, "remote_hostname"},
		{"exports/{export.project_id}/{id}.csv", false, false, "export.project_id"},
		{"plain", false, false, ""},
		{"{unclosed", false, false, ""},
	} {
		if got := hasCaddyPlaceholder(tc.value); got != tc.global {
			t.Errorf("hasCaddyPlaceholder(%q) = %v", tc.value, got)
		}
		if got := hasRequestPlaceholder(tc.value); got != tc.request {
			t.Errorf("hasRequestPlaceholder(%q) = %v", tc.value, got)
		}
		if got := unknownPlaceholder(tc.value); got != tc.unknown {
			t.Errorf("unknownPlaceholder(%q) = %q, want %q", tc.value, got, tc.unknown)
		}
	}
	for name, valid := range map[string]bool{"X-Edge-Token": true, "x_tenant": true, "": false, "X Edge": false, "Bad:Name": false, "Ümlaut": false, "{x}": false} {
		if validHeaderName(name) != valid {
			t.Errorf("validHeaderName(%q) = %v", name, !valid)
		}
	}

	h := &Handler{perRequest: []perRequestHeader{{name: "X-Real-Ip", value: "{http.vars.client_ip}"}}}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	repl := caddy.NewReplacer()
	repl.Set("http.vars.client_ip", "198.51.100.7\r\nX-Evil: 1\x00")
	req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
	if got := h.expandUpstreamHeaders(req); len(got) != 1 || got[0] != "198.51.100.7X-Evil: 1" {
		t.Errorf("expandUpstreamHeaders = %q, want the value on one line", got)
	}
}
