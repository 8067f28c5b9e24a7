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
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// TestCacheInvalidateOnDelete: a DELETE of an export that the next handler
// answers with a 2xx drops the export's entries for every key, and only
// then, and only that export's.
func TestCacheInvalidateOnDelete(t *testing.T) {
	answer := func(code int) caddyhttp.Handler {
		return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			if code == http.StatusOK {
				_, err := w.Write([]byte("{}")) // an implicit 200
				return err
			}
			w.WriteHeader(code)
			return nil
		})
	}
	tests := []struct {
		name    string
		path    string
		code    int
		dropped string // the export whose entries go; "": none
	}{
		{"204", "/v1/exports/" + testID, http.StatusNoContent, testID},
		{"implicit 200", "/v1/exports/" + testID, http.StatusOK, testID},
		{"upper-case id", "/v1/exports/" + strings.ToUpper(testID), http.StatusNoContent, testID},
		{"403", "/v1/exports/" + testID, http.StatusForbidden, ""},
		{"404", "/v1/exports/" + testID, http.StatusNotFound, ""},
		{"500", "/v1/exports/" + testID, http.StatusInternalServerError, ""},
		{"another id", "/v1/exports/" + testID2, http.StatusNoContent, testID2},
		{"another path", "/v1/projects/" + testID, http.StatusNoContent, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			completed(up, testID, time.Time{})
			completed(up, testID2, time.Time{})
			h := newHandler(t, up, newClock())
			// testID is cached for two keys, testID2 for one.
			cached := map[string][]string{testID: {testKey, otherKy}, testID2: {testKey}}
			for _, id := range []string{testID, testID2} {
				for _, key := range cached[id] {
					checkReply(t, download(t, h, id, key), http.StatusFound, wantStored)
				}
			}

			rec := serve(t, h, request{method: http.MethodDelete, path: tt.path, next: answer(tt.code),
				header: map[string]string{"Authorization": "Bearer " + testKey}})
			if rec.Code != tt.code {
				t.Fatalf("DELETE answered %d, want the next handler's %d", rec.Code, tt.code)
			}

			for _, id := range []string{testID, testID2} {
				want, calls := wantHit, len(cached[id])
				if id == tt.dropped {
					want, calls = wantStored, 2*len(cached[id])
				}
				for _, key := range cached[id] {
					checkReply(t, download(t, h, id, key), http.StatusFound, want)
				}
				checkCalls(t, up, id, calls)
			}
		})
	}

	// docs/caching.md, "Caching": a DELETE answered 2xx drops the export's answers
	// "on this node", in every cache of it: two sites whose settings differ
	// (here the file name) keep two caches, and the fleet does not deliver
	// a node's own events back to it.
	t.Run("every cache of the node, with the fleet tier", func(t *testing.T) {
		r := testenv.StartRedis(t)
		up := testenv.NewUpstream(t)
		completed(up, testID, time.Time{})
		h1 := newHandler(t, up, nil, withFleet(r.Addr))
		h2 := newHandler(t, up, nil, withFleet(r.Addr), func(h *Handler) { h.Filename = "other-{id}.csv" })
		if h1.caches.decisions == h2.caches.decisions {
			t.Fatal("the two handlers share a cache: the test needs two")
		}
		waitUntil(t, "the fleet is up", h1.shared.client.Up)
		if rec := download(t, h1, testID, testKey); rec.Code != http.StatusFound {
			t.Fatalf("h1: %d", rec.Code)
		}
		if rec := download(t, h2, testID, testKey); rec.Code != http.StatusFound {
			t.Fatalf("h2: %d", rec.Code)
		}

		// Dropped before the 2xx reaches the client: no wait for the fleet.
		deleteExport(t, h1, testID, http.StatusNoContent)

		rec := download(t, h2, testID, testKey)
		if got := rec.Header().Get("Cache-Status"); got == wantHit {
			t.Fatalf("after a DELETE answered 204 on this node, the other site's cache still answers %q", got)
		}
	})
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

// TestPurgeOutsideThePoolLocks: a purge reads the pools, then drops and
// publishes outside their locks. While its publish waits on a Redis that
// does not answer, a reload (which loads its caches from the pools) goes
// on; it once waited for the publish's whole timeout, and the DELETEs after
// the reload behind it.
func TestPurgeOutsideThePoolLocks(t *testing.T) {
	r := testenv.StartRedis(t)
	proxy := testenv.StartTCPProxy(t, r.Addr)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, withFleet(proxy.Addr), func(h *Handler) {
		h.Fleet.Timeout = caddy.Duration(time.Minute) // the publish waits this long on a silent Redis
	})
	waitUntil(t, "the fleet is up", h.shared.client.Up)
	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored")

	proxy.Freeze()
	purged := make(chan purgeOutcome, 1)
	go func() { purged <- purge(context.Background(), purgeSelection{IDs: []string{testID}}) }()
	waitUntil(t, "the purge dropped the local entry", func() bool { return h.caches.decisions.Stats().Entries == 0 })

	// A reload with other settings: new values in the pools.
	reloaded := make(chan error, 1)
	other := &Handler{Upstream: up.URL, Bucket: "other", ObjectKey: "k/{id}", Endpoint: "http://localhost:1", PathStyle: true,
		AccessKeyID: "AKID", SecretAccessKey: "secret"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(func() { _ = other.Cleanup(); cancel() })
	go func() { reloaded <- other.Provision(ctx) }()
	select {
	case err := <-reloaded:
		if err != nil {
			t.Fatalf("the reload failed: %v", err)
		}
	case out := <-purged:
		t.Fatalf("the purge ended (%+v) before the reload, with Redis silent", out)
	case <-time.After(30 * time.Second): // the publish waits a minute
		proxy.Resume()
		t.Fatal("a reload waited on a purge's publish to a silent Redis: the purge holds a pool's lock")
	}
	proxy.Resume()
	if out := <-purged; out.Dropped != 1 || out.Fleet == "off" {
		t.Fatalf("purge = %+v, want 1 dropped and the fleet told", out)
	}
}

// TestDropLocal: the one drop that DELETEs, purges and the fleet's events
// share drops what the selection names, for every credential, and costs
// what it drops.
func TestDropLocal(t *testing.T) {
	c := cache.New[*record](cache.Config{MaxEntries: 100})
	t.Cleanup(c.Close)
	ids := []string{testID, testID2, "01935abc-def0-7123-4567-890abcdef014"}
	fill := func() {
		for i, id := range ids {
			for cred := range 2 {
				rec := &record{answer: decision.Answer{Kind: decision.KindExport, SurrogateKeys: []string{fmt.Sprintf("tag_%d", i)}}}
				key := cache.Key{ID: id}
				key.Cred[0] = byte(cred)
				if _, how, err := c.Load(context.Background(), key, func(context.Context) (*record, time.Duration, error) { return rec, time.Hour, nil }); err != nil || how != cache.Stored {
					t.Fatalf("filling %s: %v, %v", id, how, err)
				}
			}
		}
	}
	fill()
	for _, tc := range []struct {
		name string
		sel  purgeSelection
		want int
	}{
		{"one id, both credentials", purgeSelection{IDs: []string{testID}}, 2},
		{"an id dropped already", purgeSelection{IDs: []string{testID}}, 0},
		{"a tag", purgeSelection{Tags: []string{"tag_1"}}, 2},
		{"an id and a tag of the same entries", purgeSelection{IDs: []string{ids[2]}, Tags: []string{"tag_2"}}, 2},
		{"nothing left to name", purgeSelection{IDs: []string{testID2}, Tags: []string{"tag_0"}}, 0},
	} {
		if got := dropLocal(c, tc.sel); got != tc.want {
			t.Errorf("%s: dropped %d, want %d", tc.name, got, tc.want)
		}
	}
	fill()
	if got := dropLocal(c, purgeSelection{All: true}); got != 2*len(ids) || c.Stats().Entries != 0 {
		t.Errorf("all: dropped %d, %d left; want %d, none", got, c.Stats().Entries, 2*len(ids))
	}
}

// In-band invalidation (RFC 9875): an application answer to an unsafe
// request that passes through the edge with a 2xx and
// Cache-Group-Invalidation purges those groups, as the admin API would,
// before the status reaches the client; answers to GET/HEAD, and answers
// that are not 2xx, change nothing. Cache-Groups tags an answer like
// Surrogate-Key.
func TestInBandInvalidation(t *testing.T) {
	// groups is a Cache-Group-Invalidation value naming n other groups,
	// then key_alice.
	groups := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, `"proj_%05d", `, i)
		}
		return b.String() + `"key_alice"`
	}
	for _, tc := range []struct {
		name    string
		method  string
		status  int
		header  string
		dropped bool
	}{
		{"POST 200 with the group", http.MethodPost, 200, `"key_alice"`, true},
		{"PUT 204 with the group and another", http.MethodPut, 204, `"other", "key_alice"`, true},
		{"PATCH 200", http.MethodPatch, 200, `"key_alice"`, true},
		{"DELETE of another path, 200", http.MethodDelete, 200, `"key_alice"`, true},
		{"a group from Cache-Groups", http.MethodPost, 200, `"grp_alice"`, true},
		{"GET 200: a safe method changes nothing", http.MethodGet, 200, `"key_alice"`, false},
		{"POST 403: not a success", http.MethodPost, 403, `"key_alice"`, false},
		{"POST 302: not a success", http.MethodPost, 302, `"key_alice"`, false},
		{"POST 200 with another group", http.MethodPost, 200, `"key_bob"`, false},
		{"the group after 16 others", http.MethodPost, 204, groups(16), true},
		{"the group after 10,000 others: everything is purged", http.MethodPost, 204, groups(maxInvalidationGroups), true},
		{"POST 200, not a List of Strings: ignored", http.MethodPost, 200, `key_alice`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			up.Set(testID, testenv.Response{
				Header: http.Header{"Surrogate-Key": {"key_alice"}, "Cache-Groups": {`"grp_alice"`}},
				Body:   testenv.ExportBody(testID, "completed", nil, map[string]any{"project_id": "p"})})
			h := newHandler(t, up, nil)
			checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantStored)
			// The client must not see the status before the purge: a
			// download when the status is written tells what it finds.
			var sawCS string
			app := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				w.Header().Set("Cache-Group-Invalidation", tc.header)
				w.WriteHeader(tc.status)
				return nil
			})
			rec := &statusWatcher{ResponseRecorder: httptest.NewRecorder(), atStatus: func() {
				sawCS = download(t, h, testID, testKey).Header().Get("Cache-Status")
			}}
			req := httptest.NewRequest(tc.method, "/v1/keys/alice/revoke", nil)
			req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			if tc.method == http.MethodGet {
				req.URL.Path = "/v1/keys/alice" // not the download path: passed on
			}
			if err := h.ServeHTTP(rec, req, app); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tc.status {
				t.Fatalf("status %d, want the app's %d", rec.Code, tc.status)
			}
			want := wantHit
			if tc.dropped {
				want = wantStored
			}
			if sawCS != want {
				t.Fatalf("a download when the status left: Cache-Status %q, want %q", sawCS, want)
			}
		})
	}
}

// statusWatcher calls atStatus when the status is written: what a client
// could observe first.
type statusWatcher struct {
	*httptest.ResponseRecorder
	atStatus func()
}

func (s *statusWatcher) WriteHeader(code int) {
	s.atStatus()
	s.ResponseRecorder.WriteHeader(code)
}

// The node that forwards a DELETE cannot put the old decision back: GETs
// racing the DELETE miss locally and may read the shared decision from
// before it until the new generation is written; purge drops the local
// entries again after publishing, so once the 2xx is out this node never
// redirects to the deleted export. 200 DELETEs, each with GETs running.
func TestDeleteRacingFillsDoNotBringTheOldDecisionBack(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	// withFleet's generous timeout: a Redis call that times out on a loaded
	// machine only moves the race, but the test wants the shared decision
	// stored.
	h := newHandler(t, up, nil, withFleet(r.Addr))
	waitUntil(t, "the fleet is up", h.shared.client.Up)
	const n = 200
	late := 0
	for i := range n {
		id := fmt.Sprintf("01935abc-def0-7123-4567-%012x", 0x5000+i)
		completed(up, id, time.Time{})
		if rec := download(t, h, id, testKey); rec.Code != http.StatusFound {
			t.Fatalf("DELETE %d: the first download answered %d", i, rec.Code)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // GETs racing the DELETE
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
					download(t, h, id, testKey)
				}
			}
		}()
		notFoundFor(up, testKey, id)
		deleteExport(t, h, id, http.StatusNoContent)
		close(stop)
		<-done
		if rec := download(t, h, id, testKey); rec.Code == http.StatusFound {
			late++
			t.Logf("DELETE %d: the node redirects after its own 2xx: %q", i, rec.Header().Get("Cache-Status"))
		}
	}
	if late > 0 {
		t.Fatalf("%d of %d DELETEs: the node that answered the 2xx redirected to the deleted export afterwards", late, n)
	}
}

// RFC 9875 groups are any sf-String (printable ASCII, spaces included, any
// length). An answer tagged with a group this cache cannot keep as a
// surrogate key is served but not cached: were it cached, the app's in-band
// invalidation of that very group would purge nothing and the old answer
// would be served until its TTL.
func TestInBandInvalidationOfAnUnkeepableGroup(t *testing.T) {
	for _, group := range []string{"user 42", strings.Repeat("g", 129)} {
		t.Run(group[:min(len(group), 10)], func(t *testing.T) {
			up := testenv.NewUpstream(t)
			up.Set(testID, testenv.Response{
				Header: http.Header{"Cache-Groups": {`"` + group + `"`}},
				Body:   testenv.ExportBody(testID, "completed", nil, map[string]any{"project_id": "p"})})
			h := newHandler(t, up, nil)
			download(t, h, testID, testKey)
			app := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				w.Header().Set("Cache-Group-Invalidation", `"`+group+`"`)
				w.WriteHeader(http.StatusNoContent)
				return nil
			})
			req := httptest.NewRequest(http.MethodPost, "/v1/groups/revoke", nil)
			req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			if err := h.ServeHTTP(httptest.NewRecorder(), req, app); err != nil {
				t.Fatal(err)
			}
			if cs := download(t, h, testID, testKey).Header().Get("Cache-Status"); cs == wantHit {
				t.Fatalf("after a 2xx Cache-Group-Invalidation of %q, the answer tagged with it is still a hit: Cache-Status %q", group, cs)
			}
		})
	}
}
