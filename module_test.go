package exportdownload

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/testenv"
)

const moduleID = "http.handlers.export_download"

// baseConfig is the smallest valid JSON config, with static credentials so
// that Provision never consults the AWS default chain.
func baseConfig() map[string]any {
	return map[string]any{
		"upstream":          "http://127.0.0.1:9080",
		"bucket":            "exports",
		"object_key":        "exports/{export.project_id}/{id}.csv",
		"access_key_id":     "AKIDEXAMPLE",
		"secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
	}
}

// withConfig returns base with changes applied; a nil value deletes the key.
func withConfig(changes map[string]any) []byte {
	cfg := baseConfig()
	for k, v := range changes {
		if v == nil {
			delete(cfg, k)
		} else {
			cfg[k] = v
		}
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		panic(err)
	}
	return b
}

// decodeHandler decodes raw the way Caddy does (unknown fields are errors),
// without provisioning.
func decodeHandler(t *testing.T, raw []byte) *Handler {
	t.Helper()
	h := new(Handler)
	if err := caddy.StrictUnmarshalJSON(raw, h); err != nil {
		t.Fatalf("decoding %s: %v", raw, err)
	}
	return h
}

// loadHandler runs Caddy's own module lifecycle on raw: strict decoding,
// Provision, Validate, Cleanup on failure, and Cleanup when the context is
// cancelled at the end of the test.
func loadHandler(t *testing.T, raw []byte) (*Handler, error) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	m, err := ctx.LoadModuleByID(moduleID, raw)
	if err != nil {
		return nil, err
	}
	return m.(*Handler), nil
}

// TestValidate feeds JSON configs with one bad value each to Validate (as
// `caddy validate` would after provisioning) and to Caddy's full module
// loading; both must reject the value with a message naming the field.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		changes map[string]any
		want    []string // substrings of the error, in any order
	}{
		{"upstream missing", map[string]any{"upstream": nil}, []string{"upstream: required"}},
		{"upstream ftp", map[string]any{"upstream": "ftp://x"}, []string{"upstream:", `"ftp://x"`}},
		{"upstream without host", map[string]any{"upstream": "http://"}, []string{"upstream:", "host"}},
		{"upstream with query", map[string]any{"upstream": "http://127.0.0.1:9080?x=1"}, []string{"upstream:", "query"}},
		{"upstream with user info", map[string]any{"upstream": "http://u:p@127.0.0.1:9080"}, []string{"upstream:", "user info"}},
		{"bucket missing", map[string]any{"bucket": nil}, []string{"bucket: required"}},
		{"bucket bad template", map[string]any{"bucket": "exports-{region"}, []string{"bucket:", "unclosed {"}},
		{"object_key missing", map[string]any{"object_key": nil}, []string{"object_key: required"}},
		{"object_key unknown placeholder", map[string]any{"object_key": "{foo}.csv"}, []string{"object_key:", "{foo}"}},
		{"filename unknown placeholder", map[string]any{"filename": "{name}.csv"}, []string{"filename:", "{name}"}},
		{"path without id", map[string]any{"path": "/v1/exports/download"}, []string{"path:", "{id}"}},
		{"path with two ids", map[string]any{"path": "/v1/{id}/{id}"}, []string{"path:", "{id}"}},
		{"path relative", map[string]any{"path": "v1/exports/{id}/download"}, []string{"path:", "must start with /"}},
		{"upstream_path without id", map[string]any{"upstream_path": "/v1/exports"}, []string{"upstream_path:", "{id}"}},
		{"invalidate_path id not a segment", map[string]any{"invalidate_path": "/v1/exports/x{id}"}, []string{"invalidate_path:", "whole path segment"}},
		{"upstream_timeout negative", map[string]any{"upstream_timeout": -1}, []string{"upstream_timeout:"}},
		{"presign_expiry negative", map[string]any{"presign_expiry": "-1m"}, []string{"presign_expiry:"}},
		{"presign_expiry over 7 days", map[string]any{"presign_expiry": "8d"}, []string{"presign_expiry:", "7 days"}},
		{"presign_expiry under 1s", map[string]any{"presign_expiry": "500ms"}, []string{"presign_expiry:", "at least 1s"}},
		{"endpoint without scheme", map[string]any{"endpoint": "s3.example.com"}, []string{"endpoint:", `"s3.example.com"`}},
		{"access_key_id without secret", map[string]any{"secret_access_key": nil}, []string{"access_key_id", "secret_access_key"}},
		{"secret without access_key_id", map[string]any{"access_key_id": nil}, []string{"access_key_id", "secret_access_key"}},
		{"session_token without keys", map[string]any{"access_key_id": nil, "secret_access_key": nil, "session_token": "tok"}, []string{"session_token:"}},
		{"content_type on two lines", map[string]any{"content_type": "text/csv\r\nX-Evil: 1"}, []string{"content_type:"}},
		{"on_upstream_error unknown", map[string]any{"on_upstream_error": "maybe"}, []string{"on_upstream_error:", `"maybe"`}},
		{"upstream_header bad name", map[string]any{"upstream_header": map[string]string{"X Edge": "1"}}, []string{"upstream_header:", `"X Edge"`}},
		{"upstream_header value on two lines", map[string]any{"upstream_header": map[string]string{"X-Edge": "1\r\nX-Evil: 1"}}, []string{"upstream_header:", "X-Edge"}},
		{"forward_header bad name", map[string]any{"forward_header": []string{"X-Ok", "Bad:Name"}}, []string{"forward_header:", `"Bad:Name"`}},
		{"key_prefixes empty prefix", map[string]any{"key_prefixes": []string{"hb_live_", ""}}, []string{"key_prefixes:", `""`}},
		{"key_prefixes with space", map[string]any{"key_prefixes": []string{"hb live"}}, []string{"key_prefixes:", `"hb live"`}},
		{"max_entries negative", map[string]any{"cache": map[string]any{"max_entries": -1}}, []string{"max_entries:"}},
		{"ttl unknown outcome", map[string]any{"cache": map[string]any{"ttl": map[string]any{"bogus": "5s"}}}, []string{"ttl:", `"bogus"`}},
		{"ttl negative", map[string]any{"cache": map[string]any{"ttl": map[string]any{"failed": "-5s"}}}, []string{"ttl:", "failed"}},
		{"stale_if_error negative", map[string]any{"cache": map[string]any{"stale_if_error": "-1m"}}, []string{"stale_if_error:"}},
		{"presign_reuse negative", map[string]any{"cache": map[string]any{"presign_reuse": "-1m"}}, []string{"presign_reuse:"}},
		// Every mistake is reported at once, so a user fixes the config
		// in one round instead of one error per `caddy validate`.
		{"two mistakes", map[string]any{"upstream": "ftp://x", "on_upstream_error": "maybe"}, []string{"upstream:", "on_upstream_error:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := withConfig(tc.changes)
			check := func(step string, err error) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s accepted %s; want an error containing %q", step, raw, tc.want)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: error %q does not contain %q", step, err, w)
					}
				}
			}
			check("Validate", decodeHandler(t, raw).Validate())
			_, err := loadHandler(t, raw)
			check("LoadModuleByID", err)
		})
	}
}

// TestValidateAcceptsValid guards TestValidate against passing because
// everything is rejected: the base config and its edge values are fine.
func TestValidateAcceptsValid(t *testing.T) {
	for _, tc := range []struct {
		name    string
		changes map[string]any
	}{
		{"base", nil},
		{"https upstream with a path prefix", map[string]any{"upstream": "https://api.example.com/internal"}},
		{"presign_expiry exactly 7 days", map[string]any{"presign_expiry": "168h"}},
		{"presign_expiry 1s", map[string]any{"presign_expiry": "1s"}},
		{"passthrough", map[string]any{"on_upstream_error": "passthrough"}},
		{"zero ttl and stale_if_error", map[string]any{"cache": map[string]any{"ttl": map[string]any{"pending": 0}, "stale_if_error": 0, "presign_reuse": 0}}},
		{"cache disabled", map[string]any{"cache": map[string]any{"disabled": true}}},
		{"session token with keys", map[string]any{"session_token": "tok"}},
		{"templated bucket", map[string]any{"bucket": "exports-{export.region}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := withConfig(tc.changes)
			if err := decodeHandler(t, raw).Validate(); err != nil {
				t.Errorf("Validate(%s) = %v", raw, err)
			}
			if _, err := loadHandler(t, raw); err != nil {
				t.Errorf("LoadModuleByID(%s) = %v", raw, err)
			}
		})
	}
}

// TestConfigErrorsHideUserInfo: a URL with a password in it is refused
// without quoting the password back into Caddy's error log.
func TestConfigErrorsHideUserInfo(t *testing.T) {
	h := &Handler{Upstream: "http://user:hunter2@127.0.0.1:9/", Bucket: "b", ObjectKey: "k",
		Endpoint: "http://AKID:s3cretpw@localhost:1"}
	err := h.Validate()
	if err == nil || !strings.Contains(err.Error(), "upstream:") || !strings.Contains(err.Error(), "endpoint:") {
		t.Fatalf("want upstream and endpoint refused, got %v", err)
	}
	for _, secret := range []string{"hunter2", "s3cretpw"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error quotes the password %q: %v", secret, err)
		}
	}
}

// TestProvisionDefaults checks the defaults of the README's "Configuration
// reference" after Provision, and that values given explicitly (including
// an explicit 0) are kept.
func TestProvisionDefaults(t *testing.T) {
	dur := func(p *caddy.Duration) any {
		if p == nil {
			return "unset"
		}
		return time.Duration(*p)
	}
	t.Run("defaults", func(t *testing.T) {
		h, err := loadHandler(t, withConfig(nil))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			field     string
			got, want any
		}{
			{"path", h.Path, "/v1/exports/{id}/download"},
			{"upstream_path", h.UpstreamPath, "/v1/exports/{id}"},
			{"upstream_timeout", time.Duration(h.UpstreamTimeout), 2 * time.Second},
			{"region", h.Region, "us-east-1"},
			{"presign_expiry", time.Duration(h.PresignExpiry), 15 * time.Minute},
			{"filename", h.Filename, "export-{id}.csv"},
			{"content_type", h.ContentType, "text/csv"},
			{"on_upstream_error", h.OnUpstreamError, "error"},
			{"invalidate_path", h.InvalidatePath, "/v1/exports/{id}"},
			{"cache.disabled", h.Cache.Disabled, false},
			{"cache.max_entries", h.Cache.MaxEntries, 100000},
			{"cache.stale_if_error", dur(h.Cache.StaleIfError), 10 * time.Minute},
			// A third of presign_expiry, so a reused URL keeps two thirds
			// of its lifetime.
			{"cache.presign_reuse", dur(h.Cache.PresignReuse), 5 * time.Minute},
			{"ttls", h.ttls, decision.DefaultTTLs()},
			{"forward", strings.Join(h.forward, ","), "Authorization"},
			{"passthrough", h.passthrough, false},
			{"caches", h.caches != nil, true},
		} {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
			}
		}
	})
	t.Run("presign_reuse follows presign_expiry", func(t *testing.T) {
		h, err := loadHandler(t, withConfig(map[string]any{"presign_expiry": "30m"}))
		if err != nil {
			t.Fatal(err)
		}
		if got := dur(h.Cache.PresignReuse); got != 10*time.Minute {
			t.Errorf("presign_reuse = %v, want 10m (a third of presign_expiry 30m)", got)
		}
	})
	t.Run("explicit values kept", func(t *testing.T) {
		h, err := loadHandler(t, withConfig(map[string]any{
			"path":              "/api/exports/{id}/file",
			"upstream_timeout":  "750ms",
			"region":            "eu-west-1",
			"filename":          "{export.name}.csv",
			"content_type":      "text/plain",
			"on_upstream_error": "passthrough",
			// Lowercase, and Authorization given again: canonicalised,
			// and Authorization stays first and single.
			"forward_header": []string{"x-project-id", "authorization"},
			"cache": map[string]any{
				"max_entries":    10,
				"ttl":            map[string]any{"pending": 0, "completed": "1m"},
				"stale_if_error": 0,
				"presign_reuse":  0,
			},
		}))
		if err != nil {
			t.Fatal(err)
		}
		want := decision.DefaultTTLs()
		want[decision.Pending] = 0
		want[decision.Completed] = time.Minute
		for _, c := range []struct {
			field     string
			got, want any
		}{
			{"path", h.Path, "/api/exports/{id}/file"},
			{"upstream_timeout", time.Duration(h.UpstreamTimeout), 750 * time.Millisecond},
			{"region", h.Region, "eu-west-1"},
			{"filename", h.Filename, "{export.name}.csv"},
			{"content_type", h.ContentType, "text/plain"},
			{"passthrough", h.passthrough, true},
			{"forward", strings.Join(h.forward, ","), "Authorization,X-Project-Id"},
			{"cache.max_entries", h.Cache.MaxEntries, 10},
			// 0 means "never serve stale" / "do not reuse", not "default".
			{"cache.stale_if_error", dur(h.Cache.StaleIfError), time.Duration(0)},
			{"cache.presign_reuse", dur(h.Cache.PresignReuse), time.Duration(0)},
			{"ttls", h.ttls, want},
		} {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
			}
		}
	})
	t.Run("cache off builds no cache", func(t *testing.T) {
		h, err := loadHandler(t, withConfig(map[string]any{"cache": map[string]any{"disabled": true}}))
		if err != nil {
			t.Fatal(err)
		}
		if h.caches != nil {
			t.Error("cache disabled, yet Provision loaded caches")
		}
	})
}

// TestProvisionExpandsPlaceholders sets the environment the way a deployment
// does and checks that {env.*} is expanded at provision, in the fields and
// in what the handler actually sends, while the templates' own {id} and
// {export.*} are left for request time.
func TestProvisionExpandsPlaceholders(t *testing.T) {
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Now().Add(time.Hour))
	t.Setenv("ED_TEST_UPSTREAM", up.URL)
	t.Setenv("ED_TEST_BUCKET", "env-bucket")
	t.Setenv("ED_TEST_ENDPOINT", "http://s3.test.invalid:9000")
	t.Setenv("ED_TEST_AKID", "AKIDFROMENV")
	t.Setenv("ED_TEST_SECRET", "secret-from-env")
	t.Setenv("ED_TEST_TOKEN", "edge-token-from-env")
	t.Setenv("ED_TEST_PREFIX", "hb_test_")

	h, err := loadHandler(t, withConfig(map[string]any{
		"upstream":          "{env.ED_TEST_UPSTREAM}",
		"bucket":            "{env.ED_TEST_BUCKET}",
		"object_key":        "exports/{export.project_id}/{id}.csv",
		"endpoint":          "{env.ED_TEST_ENDPOINT}",
		"path_style":        true,
		"access_key_id":     "{env.ED_TEST_AKID}",
		"secret_access_key": "{env.ED_TEST_SECRET}",
		"upstream_header":   map[string]string{"X-Edge-Token": "Bearer {env.ED_TEST_TOKEN}"},
		"key_prefixes":      []string{"{env.ED_TEST_PREFIX}"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ field, got, want string }{
		{"upstream", h.Upstream, up.URL},
		{"bucket", h.Bucket, "env-bucket"},
		{"endpoint", h.Endpoint, "http://s3.test.invalid:9000"},
		{"access_key_id", h.AccessKeyID, "AKIDFROMENV"},
		{"secret_access_key", h.SecretAccessKey, "secret-from-env"},
		{"upstream_header", h.UpstreamHeader["X-Edge-Token"], "Bearer edge-token-from-env"},
		{"key_prefixes", strings.Join(h.KeyPrefixes, ","), "hb_test_"},
		// Not Caddy placeholders: rendered per request from the answer.
		{"object_key", h.ObjectKey, "exports/{export.project_id}/{id}.csv"},
		{"filename", h.Filename, "export-{id}.csv"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.field, c.got, c.want)
		}
	}

	// The expanded values are the ones in use, not only the ones stored:
	// the upstream call reaches the expanded URL with the expanded header,
	// and the URL is signed for the expanded bucket, endpoint and key id.
	rec := download(t, h, testID, testKey)
	if rec.Code != 302 {
		t.Fatalf("download: %d %s", rec.Code, rec.Body)
	}
	reqs := up.Requests()
	if len(reqs) != 1 {
		t.Fatalf("upstream got %d requests, want 1", len(reqs))
	}
	if got := reqs[0].Header.Get("X-Edge-Token"); got != "Bearer edge-token-from-env" {
		t.Errorf("upstream X-Edge-Token = %q, want the expanded value", got)
	}
	loc, err := url.Parse(rec.Header().Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if loc.Host != "s3.test.invalid:9000" || !strings.HasPrefix(loc.Path, "/env-bucket/exports/") {
		t.Errorf("Location %s: want the expanded endpoint and bucket", loc.Redacted())
	}
	if cred := loc.Query().Get("X-Amz-Credential"); !strings.HasPrefix(cred, "AKIDFROMENV/") {
		t.Errorf("X-Amz-Credential = %q, want the expanded access key id", cred)
	}

	// An unset variable expands to nothing, and Validate then names the
	// field, rather than Provision dialling "{env.…}".
	_, err = loadHandler(t, withConfig(map[string]any{"upstream": "{env.ED_TEST_UNSET_VARIABLE}"}))
	if err == nil || !strings.Contains(err.Error(), "upstream:") {
		t.Errorf("upstream from an unset variable: err = %v, want one naming upstream", err)
	}
}

// TestCaddyModule checks the registration Caddy and xcaddy rely on.
func TestCaddyModule(t *testing.T) {
	info := new(Handler).CaddyModule()
	if info.ID != moduleID {
		t.Errorf("ID = %q, want %q", info.ID, moduleID)
	}
	// The directive name must equal the module name (httpcaddyfile looks
	// handlers up as http.handlers.<directive>).
	if name := info.ID.Name(); name != "export_download" {
		t.Errorf("module name = %q, want export_download", name)
	}
	registered, err := caddy.GetModule(moduleID)
	if err != nil {
		t.Fatalf("module not registered: %v", err)
	}
	for name, newFn := range map[string]func() caddy.Module{"CaddyModule().New": info.New, "registered New": registered.New} {
		a, b := newFn(), newFn()
		ha, ok := a.(*Handler)
		if !ok {
			t.Fatalf("%s returned %T, want *Handler", name, a)
		}
		// New must have no side effects and share nothing: Caddy calls it
		// for every config load.
		if !reflect.DeepEqual(ha, new(Handler)) {
			t.Errorf("%s returned a non-zero Handler: %+v", name, ha)
		}
		if a == b {
			t.Errorf("%s returned the same instance twice", name)
		}
	}
}

// TestModuleCleanup checks that Cleanup is safe whatever Provision got through,
// as Caddy calls it after a failed Provision or Validate as well.
func TestModuleCleanup(t *testing.T) {
	t.Run("zero handler", func(t *testing.T) {
		var h Handler
		for i := 0; i < 2; i++ {
			if err := h.Cleanup(); err != nil {
				t.Errorf("Cleanup #%d = %v", i+1, err)
			}
		}
	})

	t.Run("provision failed halfway", func(t *testing.T) {
		// No static keys and a named profile that does not exist: the
		// AWS default chain fails after the upstream client is built.
		empty := filepath.Join(t.TempDir(), "empty")
		if err := os.WriteFile(empty, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("AWS_CONFIG_FILE", empty)
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", empty)
		t.Setenv("AWS_PROFILE", "export-download-no-such-profile")
		h := decodeHandler(t, withConfig(map[string]any{"access_key_id": nil, "secret_access_key": nil}))
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		err := h.Provision(ctx)
		if err == nil {
			t.Fatal("Provision succeeded; this test needs it to fail in the presigner")
		}
		if h.upstream == nil {
			t.Fatalf("Provision failed before the upstream client was built (%v); this test needs a later failure", err)
		}
		for i := 0; i < 2; i++ {
			if err := h.Cleanup(); err != nil {
				t.Errorf("Cleanup #%d after a failed Provision = %v", i+1, err)
			}
		}
	})

	t.Run("releases the pooled caches", func(t *testing.T) {
		// An upstream of this test's own, so no other test shares the
		// pooled caches.
		raw := withConfig(map[string]any{"upstream": "http://cleanup-releases.test.invalid"})
		provision := func() *Handler {
			t.Helper()
			h := decodeHandler(t, raw)
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			t.Cleanup(cancel)
			if err := h.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			return h
		}
		// A reload provisions the new config before cleaning up the
		// old one, so both see the same cache ...
		old, reloaded := provision(), provision()
		if old.caches.decisions != reloaded.caches.decisions {
			t.Fatal("a config with the same settings did not get the pooled cache")
		}
		first := old.caches.decisions
		if err := old.Cleanup(); err != nil {
			t.Fatal(err)
		}
		if err := old.Cleanup(); err != nil {
			t.Fatalf("second Cleanup = %v", err)
		}
		// A second Cleanup of the same config must not drop the hold of
		// the config still running: the pool must still hand out its
		// cache ...
		if again := provision(); again.caches.decisions != first {
			t.Fatal("a repeated Cleanup released another config's hold on the pooled cache")
		} else if err := again.Cleanup(); err != nil {
			t.Fatal(err)
		}
		// ... and once the last holder is cleaned up, the next config
		// starts afresh (the pool entry was released, not leaked).
		if err := reloaded.Cleanup(); err != nil {
			t.Fatal(err)
		}
		if next := provision(); next.caches.decisions == first {
			t.Error("after every holder's Cleanup the pool still handed out the old cache")
		} else {
			_ = next.Cleanup()
		}
	})
}

// fullConfig sets every JSON field of the README's configuration reference, durations as Caddy writes
// them (nanoseconds), with the zero values that must survive a round trip.
const fullConfig = `{
	"path": "/api/v1/exports/{id}/download",
	"upstream": "https://app.internal:9443",
	"upstream_path": "/internal/exports/{id}",
	"upstream_timeout": 1500000000,
	"upstream_header": {"X-Edge-Client": "export_download", "X-Edge-Token": "{env.EDGE_TOKEN}"},
	"forward_header": ["X-Project-Id"],
	"key_prefixes": ["hb_live_", "hb_test_"],
	"bucket": "exports-{export.region}",
	"object_key": "exports/{export.project_id}/{id}.csv",
	"region": "eu-west-1",
	"endpoint": "{env.S3_ENDPOINT}",
	"path_style": true,
	"access_key_id": "{env.S3_ACCESS_KEY_ID}",
	"secret_access_key": "{env.S3_SECRET}",
	"session_token": "{env.S3_SESSION_TOKEN}",
	"presign_expiry": 1800000000000,
	"filename": "report {export.name}.csv",
	"content_type": "text/csv; charset=utf-8",
	"on_upstream_error": "passthrough",
	"invalidate_path": "/api/v1/exports/{id}",
	"cache": {
		"disabled": true,
		"max_entries": 5000,
		"ttl": {"completed": 600000000000, "pending": 0, "failed": 60000000000},
		"stale_if_error": 0,
		"presign_reuse": 120000000000
	},
	"surrogate_key_header": "Xkey",
	"fleet": {
		"redis": ["{env.REDIS_ADDR}", "10.0.0.2:6379"],
		"username": "edge",
		"password": "{file./run/secrets/redis}",
		"tls": {"ca_file": "/etc/redis-ca.pem", "server_name": "redis.internal"},
		"prefix": "edge1",
		"secret": "{env.FLEET_SECRET}",
		"timeout": 100000000,
		"lock_wait": 500000000,
		"sentinel": "mymaster",
		"sentinel_username": "sentinel-user",
		"sentinel_password": "{env.SENTINEL_PASSWORD}",
		"max_staleness": "1s"
	}
}`

// TestModuleJSONRoundTrip decodes the full config and encodes it again:
// nothing may be lost, renamed or defaulted on the way, since Caddy stores
// and reloads configs as JSON (and `caddy adapt` output is fed back in).
func TestModuleJSONRoundTrip(t *testing.T) {
	h := decodeHandler(t, []byte(fullConfig))
	out, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var want, got map[string]any
	if err := json.Unmarshal([]byte(fullConfig), &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip changed the config\n got: %s\nwant: %s", out, fullConfig)
	}

	// Keep fullConfig complete: a new config field must be added to it,
	// or the round trip above would not cover that field.
	for _, typ := range []struct {
		t    reflect.Type
		keys map[string]any
	}{
		{reflect.TypeFor[Handler](), want},
		{reflect.TypeFor[CacheConfig](), want["cache"].(map[string]any)},
		{reflect.TypeFor[FleetConfig](), want["fleet"].(map[string]any)},
		{reflect.TypeFor[FleetTLS](), want["fleet"].(map[string]any)["tls"].(map[string]any)},
	} {
		for _, f := range reflect.VisibleFields(typ.t) {
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || tag == "" || tag == "-" {
				continue
			}
			if _, ok := typ.keys[tag]; !ok {
				t.Errorf("fullConfig lacks %s.%s (json %q)", typ.t.Name(), f.Name, tag)
			}
		}
	}
}
