package exportdownload

import (
	"context"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestFleetCaddyfile(t *testing.T) {
	for _, tc := range []struct{ name, block, want string }{
		{"missing secret", "fleet {\n redis 127.0.0.1:6379\n}", "fleet: secret: required"},
		{"short secret", "fleet {\n redis 127.0.0.1:6379\n secret tooshort\n}", "fleet: secret: must be at least 32 bytes"},
		{"missing redis", "fleet {\n secret " + fleetSecret + "\n}", "fleet: redis: required"},
		{"bad address", "fleet {\n redis localhost\n secret " + fleetSecret + "\n}", `fleet: redis: "localhost" is not host:port`},
		{"skip verify", "fleet {\n redis a:1\n secret " + fleetSecret + "\n tls insecure_skip_verify yes\n}", "there is no skip-verify"},
		{"unknown", "fleet {\n redis a:1\n secret " + fleetSecret + "\n pool 3\n}", `fleet: unrecognized subdirective "pool"`},
		{"duplicate", "fleet {\n redis a:1\n secret " + fleetSecret + "\n timeout 1s\n timeout 2s\n}", "fleet: timeout: duplicate"},
		{"glob prefix", "fleet {\n redis a:1\n secret " + fleetSecret + "\n prefix a*\n}", "fleet: prefix"},
		{"max_staleness not a duration", "fleet {\n redis a:1\n secret " + fleetSecret + "\n max_staleness soon\n}", `fleet: max_staleness: want a positive duration or off, got "soon"`},
		{"max_staleness too short", "fleet {\n redis a:1\n secret " + fleetSecret + "\n max_staleness 10ms\n}", "fleet: max_staleness: 10ms is too short"},
		{"sentinel credentials without sentinel", "fleet {\n redis a:1\n secret " + fleetSecret + "\n sentinel_password pw\n}", "fleet: sentinel: sentinel_username and sentinel_password need sentinel"},
		{"sentinel twice", "fleet {\n redis a:1\n secret " + fleetSecret + "\n sentinel a\n sentinel b\n}", "fleet: sentinel: duplicate"},
		// The usual way to write a Redis URL holds a password: refused
		// without quoting it.
		{"redis URL with a password", "fleet {\n redis redis://caddy:s3cretpw@10.0.0.5:6379\n secret " + fleetSecret + "\n}", "fleet: redis: want host:port, not a URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "export_download {\n upstream http://127.0.0.1:9\n bucket b\n object_key k/{id}\n " + tc.block + "\n}"
			err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
			for _, secret := range []string{fleetSecret, "s3cretpw"} {
				if err != nil && strings.Contains(err.Error(), secret) {
					t.Fatalf("the error quotes a secret: %v", err)
				}
			}
		})
	}
	// Placeholders are checked at provision, and the secret never shows.
	h := new(Handler)
	src := "export_download {\n upstream http://127.0.0.1:9\n bucket b\n object_key k/{id}\n fleet {\n redis {env.REDIS_ADDR}\n password {file./run/secrets/redis}\n secret {env.FLEET_SECRET}\n tls ca_file /etc/ca.pem server_name redis.internal\n }\n}"
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(src)); err != nil {
		t.Fatalf("placeholders in the fleet block: %v", err)
	}
	if h.Fleet.Secret != "{env.FLEET_SECRET}" || h.Fleet.TLS.ServerName != "redis.internal" {
		t.Fatalf("parsed %+v", h.Fleet)
	}
	t.Setenv("FLEET_SECRET", "short")
	t.Setenv("REDIS_ADDR", "127.0.0.1:1")
	h.Fleet.Password = ""
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := h.Provision(ctx)
	if err == nil || !strings.Contains(err.Error(), "fleet: secret: must be at least 32 bytes") || strings.Contains(err.Error(), "short") {
		t.Fatalf("Provision with a short secret from the environment = %v", err)
	}
	_ = h.Cleanup()
}
