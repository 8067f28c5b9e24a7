package exportdownload

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

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

// TestRefusalNotStoredStillRevokes: with ttl unauthorized 0, a key revoked
// while its answer is cached stops downloading as soon as a call sees the
// 401 (here the refresh-ahead call), and stale-if-error never serves an
// answer the app has refused since.
func TestRefusalNotStoredStillRevokes(t *testing.T) {
	t.Run("refresh-ahead sees the 401", func(t *testing.T) {
		up := testenv.NewUpstream(t)
		completed(up, testID, time.Time{})
		clock := newClock()
		h := newHandler(t, up, clock, func(h *Handler) {
			h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"unauthorized": 0}}
		})
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
		up.Set(testID, testenv.Response{Status: http.StatusUnauthorized, Body: errorBody})
		clock.Advance(4*time.Minute + 30*time.Second) // 90% of 5m: refresh-ahead
		checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
		waitUntil(t, "the refresh gets its 401", func() bool { return up.CallsFor(testID) == 2 })
		// Until the refresh's answer is in, hits go on; then the key is
		// refused (asked again: the 401 itself is not stored).
		waitUntil(t, "the refused key gets 401", func() bool {
			rec := download(t, h, testID, testKey)
			return rec.Code == http.StatusUnauthorized
		})
		rec := download(t, h, testID, testKey)
		if rec.Code != http.StatusUnauthorized || up.CallsFor(testID) < 3 {
			t.Fatalf("after the app refused the key: %d %q, %d calls; want 401 from the app", rec.Code, rec.Header().Get("Cache-Status"), up.CallsFor(testID))
		}
	})
	for _, ttl := range []time.Duration{0, 5 * time.Second} {
		t.Run(fmt.Sprintf("stale-if-error after a 401, ttl unauthorized %v", ttl), func(t *testing.T) {
			up := testenv.NewUpstream(t)
			completed(up, testID, time.Time{})
			completed(up, testID2, time.Time{})
			clock := newClock()
			h := newHandler(t, up, clock, func(h *Handler) {
				h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"unauthorized": caddy.Duration(ttl)}}
			})
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
			checkReply(t, download(t, h, testID2, testKey), http.StatusFound, wantStored)
			clock.Advance(6 * time.Minute) // past freshness, within stale_if_error
			up.Set(testID, testenv.Response{Status: http.StatusUnauthorized, Body: errorBody})
			if rec := download(t, h, testID, testKey); rec.Code != http.StatusUnauthorized {
				t.Fatalf("the app refuses the key: got %d, want 401", rec.Code)
			}
			// Now the app fails: the old 302s (of this and of every other
			// export of the key) must not come back as stale answers.
			up.Set(testID, testenv.Response{Status: 500, Body: "down"})
			up.Set(testID2, testenv.Response{Status: 500, Body: "down"})
			clock.Advance(10 * time.Second)
			for _, id := range []string{testID, testID2} {
				if rec := download(t, h, id, testKey); rec.Code == http.StatusFound {
					t.Fatalf("%s: stale-if-error served %d %q for a key the app refused", id, rec.Code, rec.Header().Get("Cache-Status"))
				}
			}
		})
	}
}

// TestInvalidateEveryWayOfAnswering: the DELETE watcher sees a 2xx however
// the next handler sends it: io.Copy (ReadFrom) without WriteHeader, an
// implicit 200 with no body, a Flush first. A 500 after a flushed 200 does
// not exist on the wire; a handler error is not a success.
func TestInvalidateEveryWayOfAnswering(t *testing.T) {
	for _, tc := range []struct {
		name string
		next caddyhttp.HandlerFunc
		want bool // dropped
	}{
		{"io.Copy without WriteHeader", func(w http.ResponseWriter, r *http.Request) error {
			// Not a WriterTo: io.Copy then takes the writer's ReadFrom.
			_, err := io.Copy(w, io.LimitReader(strings.NewReader("deleted"), 100))
			return err
		}, true},
		{"implicit 200, no body", func(w http.ResponseWriter, r *http.Request) error { return nil }, true},
		{"flush before anything", func(w http.ResponseWriter, r *http.Request) error {
			return http.NewResponseController(w).Flush()
		}, true},
		{"204", func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(204); return nil }, true},
		{"handler error", func(w http.ResponseWriter, r *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("app down"))
		}, false},
		{"403", func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(403); return nil }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			completed(up, testID, time.Time{})
			h := newHandler(t, up, newClock())
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
			req := httptest.NewRequest(http.MethodDelete, "/v1/exports/"+testID, nil)
			req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			_ = h.ServeHTTP(httptest.NewRecorder(), req, tc.next)
			rec := download(t, h, testID, testKey)
			if dropped := rec.Header().Get("Cache-Status") != wantHit; dropped != tc.want {
				t.Fatalf("after the DELETE: Cache-Status %q; want dropped=%v", rec.Header().Get("Cache-Status"), tc.want)
			}
		})
	}
}

// TestClientLeavesDuringStaleRefresh: a client that disconnects while its
// stale entry is being refreshed gets nothing written and is not counted
// as a stale answer served or as an outage.
func TestClientLeavesDuringStaleRefresh(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	clock := newClock()
	h := newHandler(t, up, clock)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
	clock.Advance(6 * time.Minute) // stale
	up.Set(testID, testenv.Response{Body: testenv.ExportBody(testID, "completed", nil, nil), Delay: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	rec, err := downloadFrom(ctx, h, testID, testKey)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Header().Get("Location") != "" || rec.Code == http.StatusFound {
		t.Fatalf("a client that left got %d, Location %q written to its closed connection", rec.Code, rec.Header().Get("Location"))
	}
	if n := testutil.ToFloat64(h.metrics.lookups[localStale]); n != 0 {
		t.Fatalf("counted %v stale answers served to a client that left", n)
	}
}

// TestSitesWithOtherTTLsDoNotShareAnswers: two sites with the same
// upstream, bucket and templates but other TTLs keep their answers apart:
// the one that checks every request (ttl completed 0) never serves the
// other's stored answer.
func TestSitesWithOtherTTLsDoNotShareAnswers(t *testing.T) {
	e := startEdge(t, "")
	other := freeAddr(t)
	site := func(addr, ttl string) string {
		return fmt.Sprintf(`http://%s {
	export_download {
		upstream %s
		bucket exports
		object_key exports/{export.project_id}/{id}.csv
		endpoint %s
		path_style
		region %s
		access_key_id %s
		secret_access_key %s
		%s
	}
	reverse_proxy 127.0.0.1:9
}
`, addr, e.up.URL, e.s3.Endpoint, e.s3.Region, e.s3.AccessKey, e.s3.SecretKey, ttl)
	}
	first := strings.TrimPrefix(e.base, "http://")
	runCaddy(t, "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n"+
		site(first, "")+site(other, "cache {\n\t\t\tttl completed 0\n\t\t}"))
	completed(e.up, testID, time.Time{})
	get := func(base string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/exports/"+testID+"/download", nil)
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i, want := range []string{wantStored, wantHit} {
		if resp := get(e.base); resp.StatusCode != 302 || resp.Header.Get("Cache-Status") != want {
			t.Fatalf("site A request %d: %d %q, want 302 %q", i, resp.StatusCode, resp.Header.Get("Cache-Status"), want)
		}
	}
	for i := range 2 {
		resp := get("http://" + other)
		if resp.StatusCode != 302 || resp.Header.Get("Cache-Status") == wantHit {
			t.Fatalf("site B (ttl completed 0) request %d: %d %q: served site A's stored answer", i, resp.StatusCode, resp.Header.Get("Cache-Status"))
		}
	}
	checkCalls(t, e.up, testID, 3)
}
