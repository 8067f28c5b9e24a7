package exportdownload

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// Two sites with one fleet block but different upstreams (staging and
// production sharing a Redis) never take each other's decisions: the one
// whose app answers 404 must not redirect from the other's shared 302.
func TestFleetSitesDoNotShareDecisions(t *testing.T) {
	r := testenv.StartRedis(t)
	prod, staging := testenv.NewUpstream(t), testenv.NewUpstream(t)
	completed(prod, testID, time.Time{})
	notFoundFor(staging, testKey, testID)
	a := newHandler(t, prod, nil, withFleet(r.Addr))
	waitUntil(t, "the fleet is up", a.shared.client.Up)
	checkReply(t, download(t, a, testID, testKey), http.StatusFound, fleetStored)
	for _, tc := range []struct {
		name string
		mod  func(*Handler)
	}{
		{"another upstream", func(h *Handler) { h.Upstream = staging.URL }},
		{"another upstream_path", func(h *Handler) { h.Upstream = staging.URL; h.UpstreamPath = "/v1/exports/{id}/" }},
		{"another upstream_header", func(h *Handler) {
			h.Upstream = staging.URL
			h.UpstreamHeader = map[string]string{"X-Edge-Token": "staging"}
		}},
		{"another TTL", func(h *Handler) {
			h.Upstream = staging.URL
			h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"completed": caddy.Duration(time.Minute)}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newHandler(t, prod, nil, withFleet(r.Addr), tc.mod)
			waitUntil(t, "the fleet is up", b.shared.client.Up)
			if rec := download(t, b, testID, testKey); rec.Code == http.StatusFound {
				t.Fatalf("a site whose app answers 404 redirected: %q", rec.Header().Get("Cache-Status"))
			}
		})
	}
	// The same settings on another node do share.
	c := newHandler(t, prod, nil, withFleet(r.Addr))
	checkReply(t, download(t, c, testID, otherKy), http.StatusFound, fleetStored)
	c.caches.decisions.PurgeAll()
	checkReply(t, download(t, c, testID, otherKy), http.StatusFound, "export_download_fleet; hit, export_download; fwd=miss; stored")
}

// A password given as {file.<path>} is read again at every new connection,
// so a rotated token is used without a reload; other passwords are fixed.
func TestFleetPasswordFileReadPerConnection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "redis_password")
	if err := os.WriteFile(path, []byte("first-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &FleetConfig{Redis: []string{"127.0.0.1:6379"}, Username: "edge", Password: "{file." + path + "}", Secret: fleetSecret}
	c.expand(caddy.NewReplacer())
	if c.Password != "first-token" {
		t.Fatalf("expanded password %q", c.Password)
	}
	cfg, err := c.clientConfig(time.Second, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Credentials == nil {
		t.Fatal("a {file.*} password is not read per connection")
	}
	for _, want := range []string{"first-token", "rotated-token"} {
		if want != "first-token" {
			if err := os.WriteFile(path, []byte(want+"\r\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		user, pass, err := cfg.Credentials()
		if err != nil || user != "edge" || pass != want {
			t.Fatalf("Credentials() = %q, %q, %v; want edge, %q", user, pass, err, want)
		}
	}
	os.Remove(path)
	if _, _, err := cfg.Credentials(); err == nil || strings.Contains(err.Error(), "rotated-token") {
		t.Fatalf("a missing file: %v", err)
	}
	fixed := &FleetConfig{Redis: []string{"127.0.0.1:6379"}, Password: "{env.REDIS_PASSWORD}", Secret: fleetSecret}
	t.Setenv("REDIS_PASSWORD", "from-env")
	fixed.expand(caddy.NewReplacer())
	if cfg, _ := fixed.clientConfig(time.Second, time.Minute); cfg.Credentials != nil || cfg.Password != "from-env" {
		t.Fatalf("an {env.*} password: %+v", cfg)
	}
}
