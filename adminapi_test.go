package exportdownload

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// adminEdge is a running in-process Caddy with export_download in front of
// reverse_proxy, like startEdge's, and its admin endpoint on a free
// loopback port.
type adminEdge struct {
	*edge
	admin string // http://localhost:port
}

// startAdminEdge runs Caddy with the admin endpoint on, on a random port.
func startAdminEdge(t *testing.T) *adminEdge {
	t.Helper()
	e := newEdge(t)
	_, adminPort, _ := net.SplitHostPort(freeAddr(t))
	runCaddy(t, globalOptions("localhost:"+adminPort)+e.site(e.addr, "", ""))
	t.Cleanup(func() {
		// caddy.Stop leaves the admin endpoint up; a config without
		// one closes it.
		if err := caddy.Load([]byte(`{"admin":{"disabled":true}}`), true); err != nil {
			t.Errorf("closing the admin endpoint: %v", err)
		}
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
	})
	e.s3.CreateBucket(t, "exports")
	return &adminEdge{edge: e, admin: "http://localhost:" + adminPort}
}

// adminCall is one request to the admin API and its answer.
type adminCall struct {
	status int
	header http.Header
	body   []byte
}

// call sends method path with body (Content-Type application/json when
// body is not empty) to the admin API; header entries override.
func (a *adminEdge) call(t *testing.T, method, path, body string, header ...string) adminCall {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, a.admin+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
		} else if header[i+1] == "" {
			req.Header.Del(header[i])
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return adminCall{status: resp.StatusCode, header: resp.Header, body: b}
}

// purge POSTs body to the purge route and wants 200.
func (a *adminEdge) purge(t *testing.T, body string) purgeResponse {
	t.Helper()
	c := a.call(t, http.MethodPost, adminPurgePath, body)
	if c.status != http.StatusOK {
		t.Fatalf("purge %s: %d %s", body, c.status, c.body)
	}
	var out purgeResponse
	if err := json.Unmarshal(c.body, &out); err != nil {
		t.Fatalf("purge answer %s: %v", c.body, err)
	}
	return out
}

// stats sums the counters of every cache (other tests' caches, if any
// outlive them, do not move, so differences are this test's) and wants
// every cache's fleet state to be off.
func (a *adminEdge) stats(t *testing.T) cacheStats {
	t.Helper()
	c := a.call(t, http.MethodGet, adminStatsPath, "")
	if c.status != http.StatusOK || c.header.Get("Content-Type") != "application/json" {
		t.Fatalf("stats: %d %v %s", c.status, c.header, c.body)
	}
	var out statsResponse
	if err := json.Unmarshal(c.body, &out); err != nil {
		t.Fatalf("stats answer %s: %v", c.body, err)
	}
	if len(out.Caches) == 0 {
		t.Fatalf("stats lists no cache: %s", c.body)
	}
	var sum cacheStats
	for _, s := range out.Caches {
		if s.Fleet.State != "off" || !strings.HasPrefix(s.Name, "decisions:") {
			t.Errorf("cache %+v: want a decisions cache with fleet state off", s)
		}
		sum.Entries += s.Entries
		sum.Hits += s.Hits
		sum.Misses += s.Misses
		sum.Collapsed += s.Collapsed
		sum.StaleServed += s.StaleServed
		sum.Tags += s.Tags
	}
	return sum
}

// cacheStatus GETs id's download path with key and returns Cache-Status,
// wanting status.
func (a *adminEdge) cacheStatus(t *testing.T, id, key string, status int) string {
	t.Helper()
	resp, body := a.get(t, noRedirects, http.MethodGet, "/v1/exports/"+id+"/download", key)
	if resp.StatusCode != status {
		t.Fatalf("GET %s with %s: %d %s, want %d", id, key, resp.StatusCode, body, status)
	}
	if sk := resp.Header.Values("Surrogate-Key"); len(sk) > 0 {
		t.Errorf("GET %s: the client got Surrogate-Key %q, want it kept at the edge", id, sk)
	}
	return resp.Header.Get("Cache-Status")
}

func TestAdminAPIRequests(t *testing.T) {
	a := startAdminEdge(t)
	longID := strings.Repeat("z", 1000)
	manyIDs := `{"export_ids":["` + strings.Repeat(testID+`","`, maxPurgeValues) + testID + `"]}`
	manyKeys := `{"surrogate_keys":["` + strings.Repeat(`k","`, maxPurgeValues) + `k"]}`
	huge := `{"surrogate_keys":["` + strings.Repeat("k", maxPurgeBody) + `"]}`

	for _, tc := range []struct {
		name, method, path, body string
		header                   []string
		status                   int
		want                     string // in the body: an error message, or the answer
		allow                    string // the Allow header of a 405
	}{
		{name: "stats", method: "GET", path: adminStatsPath, status: 200, want: `"fleet":{"state":"off"}`},
		{name: "purge by id", method: "POST", path: adminPurgePath, body: `{"export_ids":["` + testID + `"]}`, status: 200, want: `{"dropped":0,"caches":1,"fleet":"off"}`},
		{name: "purge by upper-case id", method: "POST", path: adminPurgePath, body: `{"export_ids":["` + strings.ToUpper(testID) + `"]}`, status: 200, want: `"fleet":"off"`},
		{name: "purge by surrogate key", method: "POST", path: adminPurgePath, body: `{"surrogate_keys":["key_8f2a","proj_91c0"]}`, status: 200, want: `"dropped":0`},
		{name: "purge ids and keys", method: "POST", path: adminPurgePath, body: `{"export_ids":["` + testID + `"],"surrogate_keys":["key_8f2a"],"all":false}`, status: 200, want: `"dropped":0`},
		{name: "purge all", method: "POST", path: adminPurgePath, body: ` {"all": true} ` + "\n", status: 200, want: `"caches":1`},
		{name: "charset parameter", method: "POST", path: adminPurgePath, body: `{"all":true}`, header: []string{"Content-Type", "application/json; charset=utf-8"}, status: 200, want: `"fleet":"off"`},

		{name: "stats by POST", method: "POST", path: adminStatsPath, body: `{}`, status: 405, allow: "GET", want: "method not allowed: POST"},
		{name: "stats by HEAD", method: "HEAD", path: adminStatsPath, status: 405, allow: "GET"},
		{name: "purge by GET", method: "GET", path: adminPurgePath, status: 405, allow: "POST", want: "method not allowed: GET"},
		{name: "purge by PUT", method: "PUT", path: adminPurgePath, body: `{"all":true}`, status: 405, allow: "POST"},
		{name: "purge by DELETE", method: "DELETE", path: adminPurgePath, status: 405, allow: "POST"},
		{name: "unknown route", method: "GET", path: adminEndpointBase + "purges", status: 404, want: "resource not found"},
		{name: "base", method: "GET", path: adminEndpointBase, status: 404, want: "resource not found"},

		{name: "no Content-Type", method: "POST", path: adminPurgePath, body: `{"all":true}`, header: []string{"Content-Type", ""}, status: 415, want: "Content-Type must be application/json"},
		{name: "form Content-Type", method: "POST", path: adminPurgePath, body: `{"all":true}`, header: []string{"Content-Type", "application/x-www-form-urlencoded"}, status: 415, want: "Content-Type must be application/json"},
		{name: "text Content-Type", method: "POST", path: adminPurgePath, body: `{"all":true}`, header: []string{"Content-Type", "text/plain"}, status: 415, want: `got \"text/plain\"`},
		{name: "empty body", method: "POST", path: adminPurgePath, header: []string{"Content-Type", "application/json"}, status: 400, want: "empty body"},
		{name: "empty object", method: "POST", path: adminPurgePath, body: `{}`, status: 400, want: "nothing to purge"},
		{name: "null", method: "POST", path: adminPurgePath, body: `null`, status: 400, want: "nothing to purge"},
		{name: "all false", method: "POST", path: adminPurgePath, body: `{"all":false}`, status: 400, want: "nothing to purge"},
		{name: "empty lists", method: "POST", path: adminPurgePath, body: `{"export_ids":[],"surrogate_keys":[]}`, status: 400, want: "nothing to purge"},
		{name: "all with ids", method: "POST", path: adminPurgePath, body: `{"all":true,"export_ids":["` + testID + `"]}`, status: 400, want: `\"all\" purges everything`},
		{name: "all with keys", method: "POST", path: adminPurgePath, body: `{"all":true,"surrogate_keys":["k"]}`, status: 400, want: `\"all\" purges everything`},
		{name: "bad id", method: "POST", path: adminPurgePath, body: `{"export_ids":["` + testID + `","nope"]}`, status: 400, want: `export_ids[1]: \"nope\" is not an export id`},
		{name: "empty id", method: "POST", path: adminPurgePath, body: `{"export_ids":[""]}`, status: 400, want: `export_ids[0]: \"\" is not an export id`},
		{name: "long bad id", method: "POST", path: adminPurgePath, body: `{"export_ids":["` + longID + `"]}`, status: 400, want: `\"` + longID[:maxQuotedValue] + `...\" is not`},
		{name: "key with a space", method: "POST", path: adminPurgePath, body: `{"surrogate_keys":["key_8f2a proj_91c0"]}`, status: 400, want: `surrogate_keys[0]: \"key_8f2a proj_91c0\" is not a surrogate key`},
		{name: "empty key", method: "POST", path: adminPurgePath, body: `{"surrogate_keys":[""]}`, status: 400, want: `surrogate_keys[0]: \"\" is not a surrogate key`},
		{name: "key too long", method: "POST", path: adminPurgePath, body: `{"surrogate_keys":["` + strings.Repeat("k", 129) + `"]}`, status: 400, want: "1 to 128 bytes"},
		{name: "non-ASCII key", method: "POST", path: adminPurgePath, body: `{"surrogate_keys":["schlüssel"]}`, status: 400, want: "is not a surrogate key"},
		{name: "unknown field", method: "POST", path: adminPurgePath, body: `{"ids":["` + testID + `"]}`, status: 400, want: `unknown field \"ids\"`},
		{name: "member name in another case", method: "POST", path: adminPurgePath, body: `{"ALL":true}`, status: 400, want: `unknown field \"ALL\"`},
		{name: "repeated member", method: "POST", path: adminPurgePath, body: `{"export_ids":["` + testID + `"],"export_ids":["` + testID2 + `"]}`, status: 400, want: `\"export_ids\" given twice`},
		{name: "trailing object", method: "POST", path: adminPurgePath, body: `{"all":true}{"all":true}`, status: 400, want: "data after the object"},
		{name: "trailing garbage", method: "POST", path: adminPurgePath, body: `{"all":true} x`, status: 400, want: "invalid JSON body: invalid character"},
		{name: "truncated", method: "POST", path: adminPurgePath, body: `{"all":`, status: 400, want: "invalid JSON body: unexpected end"},
		{name: "array", method: "POST", path: adminPurgePath, body: `["` + testID + `"]`, status: 400, want: "want an object, got array"},
		{name: "all as a string", method: "POST", path: adminPurgePath, body: `{"all":"yes"}`, status: 400, want: "all wants true or false, got string"},
		{name: "ids as a string", method: "POST", path: adminPurgePath, body: `{"export_ids":"` + testID + `"}`, status: 400, want: "export_ids wants a list of strings, got string"},
		{name: "too many ids", method: "POST", path: adminPurgePath, body: manyIDs, status: 400, want: "too many export_ids: 10001, at most 10000"},
		{name: "too many keys", method: "POST", path: adminPurgePath, body: manyKeys, status: 400, want: "too many surrogate_keys: 10001, at most 10000"},
		{name: "body too large", method: "POST", path: adminPurgePath, body: huge, status: 413, want: "body larger than 1048576 bytes"},

		// The admin endpoint's own access control applies.
		{name: "foreign origin", method: "POST", path: adminPurgePath, body: `{"all":true}`, header: []string{"Origin", "https://evil.example"}, status: 403, want: "not allowed to access from origin"},
		{name: "foreign host", method: "GET", path: adminStatsPath, header: []string{"Host", "evil.example"}, status: 403, want: "host not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := a.call(t, tc.method, tc.path, tc.body, tc.header...)
			if c.status != tc.status {
				t.Fatalf("status %d, want %d: %s", c.status, tc.status, c.body)
			}
			if tc.method != http.MethodHead && (c.header.Get("Content-Type") != "application/json" || !json.Valid(c.body)) {
				t.Errorf("answer is not JSON: %v %s", c.header, c.body)
			}
			if !bytes.Contains(c.body, []byte(tc.want)) {
				t.Errorf("body %s, want it to contain %s", c.body, tc.want)
			}
			if got := c.header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow %q, want %q", got, tc.allow)
			}
			if c.status >= 400 && tc.method != http.MethodHead {
				var e struct{ Error string }
				if err := json.Unmarshal(c.body, &e); err != nil || e.Error == "" {
					t.Errorf("error answer %s: want {\"error\": message}", c.body)
				}
				if len(e.Error) > 300 {
					t.Errorf("error message of %d bytes: want it bounded", len(e.Error))
				}
			}
		})
	}
}

// TestAdminAPIPurgeSurrogateKey revokes one API key by its surrogate key,
// as the README's "Revoke a key in one command" does: the app tags each "Get export"
// answer with the key's id; a purge of that tag sends the key's next
// request to the app, and leaves the other key's answers cached.
func TestAdminAPIPurgeSurrogateKey(t *testing.T) {
	a := startAdminEdge(t)
	for _, id := range []string{testID, testID2} {
		a.s3.PutObject(t, "exports", "exports/proj_1/"+id+".csv", []byte("a,b\n"))
		for key, tag := range map[string]string{testKey: "key_8f2a", otherKy: "key_77b1"} {
			a.up.SetFor(key, id, testenv.Response{
				Header: http.Header{"Surrogate-Key": {tag + " proj_91c0"}},
				Body:   testenv.ExportBody(id, "completed", nil, nil),
			})
		}
	}
	before := a.stats(t)

	// Four answers cached: two exports, two keys.
	for _, id := range []string{testID, testID2} {
		for _, key := range []string{testKey, otherKy} {
			if cs := a.cacheStatus(t, id, key, http.StatusFound); cs != csStored {
				t.Fatalf("first GET %s with %s: Cache-Status %q, want %q", id, key, cs, csStored)
			}
			if cs := a.cacheStatus(t, id, key, http.StatusFound); cs != csHit {
				t.Fatalf("second GET %s with %s: Cache-Status %q, want %q", id, key, cs, csHit)
			}
		}
	}
	s := a.stats(t)
	if d := (cacheStats{Entries: s.Entries - before.Entries, Hits: s.Hits - before.Hits, Misses: s.Misses - before.Misses, Tags: s.Tags - before.Tags}); d != (cacheStats{Entries: 4, Hits: 4, Misses: 4, Tags: 3}) {
		t.Errorf("stats moved by %+v, want 4 entries, 4 hits, 4 misses, 3 surrogate keys", d)
	}
	calls := a.up.Calls()

	// The app revokes testKey and the operator purges its tag.
	a.up.SetKeys(otherKy)
	if out := a.purge(t, `{"surrogate_keys":["key_8f2a"]}`); out != (purgeResponse{Dropped: 2, Caches: 1, Fleet: "off"}) {
		t.Errorf("purge of key_8f2a: %+v, want 2 dropped in 1 cache, fleet off", out)
	}
	if cs := a.cacheStatus(t, testID, testKey, http.StatusUnauthorized); !strings.Contains(cs, "fwd=miss") {
		t.Errorf("the revoked key after the purge: Cache-Status %q, want a miss", cs)
	}
	if got := a.up.Calls(); got != calls+1 {
		t.Errorf("%d upstream calls after the purge, want %d", got, calls+1)
	}
	for _, id := range []string{testID, testID2} {
		if cs := a.cacheStatus(t, id, otherKy, http.StatusFound); cs != csHit {
			t.Errorf("the other key's %s after the purge: Cache-Status %q, want a hit", id, cs)
		}
	}
	if got := a.up.Calls(); got != calls+1 {
		t.Errorf("%d upstream calls, want %d: the other key's answers stay cached", got, calls+1)
	}
	s = a.stats(t)
	if s.Tags-before.Tags != 2 {
		t.Errorf("%d surrogate keys held after the purge, want 2 (key_77b1, proj_91c0)", s.Tags-before.Tags)
	}

	// By export id, in any case: only that export's answers go.
	a.up.SetKeys()
	if out := a.purge(t, `{"export_ids":["`+strings.ToUpper(testID2)+`"]}`); out.Dropped != 1 {
		t.Errorf("purge of %s: %+v, want 1 dropped (otherKy's)", testID2, out)
	}
	if cs := a.cacheStatus(t, testID2, otherKy, http.StatusFound); cs != csStored {
		t.Errorf("%s after its purge: Cache-Status %q, want %q", testID2, cs, csStored)
	}
	if cs := a.cacheStatus(t, testID, otherKy, http.StatusFound); cs != csHit {
		t.Errorf("%s after another export's purge: Cache-Status %q, want a hit", testID, cs)
	}

	// All.
	entries := a.stats(t).Entries
	if out := a.purge(t, `{"all":true}`); out.Dropped < entries-before.Entries || out.Dropped > entries {
		t.Errorf("purge of all: %+v, want %d..%d dropped", out, entries-before.Entries, entries)
	}
	if s := a.stats(t); s.Entries != 0 || s.Tags != 0 {
		t.Errorf("after purging all: %d entries, %d surrogate keys", s.Entries, s.Tags)
	}
	calls = a.up.Calls()
	for _, id := range []string{testID, testID2} {
		if cs := a.cacheStatus(t, id, otherKy, http.StatusFound); cs != csStored {
			t.Errorf("%s after purging all: Cache-Status %q, want %q", id, cs, csStored)
		}
	}
	if got := a.up.Calls(); got != calls+2 {
		t.Errorf("%d upstream calls after purging all, want %d", got, calls+2)
	}
}

// TestReadPurgeRequest reads purge bodies the way the admin route does:
// member names are matched exactly and each may come once, and what an
// error quotes of the body is bounded.
func TestReadPurgeRequest(t *testing.T) {
	long := strings.Repeat("A", 100_000)
	for _, tc := range []struct {
		name, body string
		want       purgeSelection // with err == ""
		err        string         // in the 400's message
	}{
		{name: "ids", body: `{"export_ids":["` + testID + `","` + testID + `"]}`, want: purgeSelection{IDs: []string{testID}}},
		{name: "all", body: `{"all":true}`, want: purgeSelection{All: true}},
		// Go's decoder matches names in any case; the README's names are exact.
		{name: "ALL is not all", body: `{"ALL":true}`, err: `unknown field "ALL"`},
		{name: "Export_IDs is not export_ids", body: `{"Export_IDs":["` + testID + `"]}`, err: `unknown field "Export_IDs"`},
		{name: "both spellings", body: `{"export_ids":["` + testID + `"],"Export_IDs":["` + testID2 + `"]}`, err: `unknown field "Export_IDs"`},
		// A repeated member would keep only its last list: the first ids would never be purged.
		{name: "repeated export_ids", body: `{"export_ids":["` + testID + `"],"export_ids":["` + testID2 + `"]}`, err: `"export_ids" given twice`},
		{name: "repeated all", body: `{"all":true,"all":true}`, err: `"all" given twice`},
		// SECURITY.md: an invalid value is quoted back only up to 64 bytes,
		// a member's name included (once quoted whole, up to 1 MiB).
		{name: "unknown member quoted bounded", body: `{"` + long + `":1}`, err: `unknown field "` + long[:maxQuotedValue] + `..."`},
		{name: "wrong type quoted bounded", body: `{"export_ids":"` + long + `"}`, err: "export_ids wants a list of strings, got string"},
		{name: "end inside the object", body: `{"all":true`, err: "unexpected end"},
		{name: "end after a name", body: `{"all"`, err: "unexpected end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, adminPurgePath, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			sel, err := readPurgeRequest(httptest.NewRecorder(), req)
			if tc.err == "" {
				if err != nil || !slices.Equal(sel.IDs, tc.want.IDs) || !slices.Equal(sel.Tags, tc.want.Tags) || sel.All != tc.want.All {
					t.Fatalf("got %+v, %v; want %+v", sel, err, tc.want)
				}
				return
			}
			var apiErr caddy.APIError
			if !errors.As(err, &apiErr) || apiErr.HTTPStatus != http.StatusBadRequest || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %+v, %v; want a 400 saying %s", sel, err, tc.err)
			}
			if n := len(err.Error()); n > 1024 {
				t.Fatalf("the error is %d bytes long: it quotes the client's text whole", n)
			}
		})
	}
}
