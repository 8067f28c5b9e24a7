package exportdownload

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/goleak"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

const fleetSecret = "0123456789abcdef0123456789abcdef-test"

func withFleet(addr string) func(*Handler) {
	return func(h *Handler) {
		h.Fleet = &FleetConfig{Redis: []string{addr}, Secret: fleetSecret, Prefix: "t" + strings.ReplaceAll(addr, ":", "_")}
	}
}

// TestFleetCacheStatus: in one process the fleet tier sits under the local
// cache: a miss asks Redis and shares the app's answer; a local hit asks
// nothing; once the local entry is gone, the shared decision answers.
func TestFleetCacheStatus(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	h := newHandler(t, up, nil, withFleet(r.Addr))
	waitUntil(t, "the fleet is up", h.shared.client.Up)

	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; fwd=miss; stored, export_download; fwd=miss; stored")
	checkReply(t, download(t, h, testID, testKey), http.StatusFound, wantHit)
	// Another node would have no local entry: drop this one's without
	// telling the fleet.
	h.caches.decisions.PurgeAll()
	checkReply(t, download(t, h, testID, testKey), http.StatusFound,
		"export_download_fleet; hit, export_download; fwd=miss; stored")
	checkCalls(t, up, testID, 1)

	// The admin API shows the fleet, and a purge is published to it.
	up2 := false
	for _, c := range statsOf(cachesStats()).Caches {
		up2 = up2 || (c.Fleet.State == "up" && c.Fleet.Stats != nil && c.Fleet.Lookups.Hit >= 1)
	}
	if !up2 {
		t.Fatalf("stats show no cache with the fleet up: %+v", statsOf(cachesStats()))
	}
	if out := purge(context.Background(), purgeSelection{IDs: []string{testID}}); out.Fleet != "published" || out.Dropped != 1 {
		t.Fatalf("purge with the fleet up = %+v, want 1 dropped and published", out)
	}

	// Redis gone: the node answers as if it had no fleet tier.
	r.Kill()
	completed(up, testID2, time.Time{})
	rec := download(t, h, testID2, testKey)
	if rec.Code != http.StatusFound || !strings.HasPrefix(rec.Header().Get("Cache-Status"), "export_download_fleet; fwd=miss; detail=unavailable, ") {
		t.Fatalf("with Redis down: %d %q", rec.Code, rec.Header().Get("Cache-Status"))
	}
}

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
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "export_download {\n upstream http://127.0.0.1:9\n bucket b\n object_key k/{id}\n " + tc.block + "\n}"
			err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), fleetSecret) {
				t.Fatalf("the error quotes the secret: %v", err)
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

// TestFleetNoGoroutineLeak: reloads and a Redis restart leave nothing
// running once the last config is cleaned up.
func TestFleetNoGoroutineLeak(t *testing.T) {
	r := testenv.StartRedis(t)
	up := testenv.NewUpstream(t)
	completed(up, testID, time.Time{})
	// The restarted redis-server is the test's, with its own waiters.
	opts := []goleak.Option{goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("github.com/exportedge/caddy-export-download/internal/testenv.(*Redis).start.func1"),
		goleak.IgnoreAnyFunction("os/exec.(*Cmd).writerDescriptor.func1"),
		// rueidis schedules a topology refresh after a connection error
		// (the restart): a goroutine that sleeps a random, bounded delay,
		// then finds the client closed and returns. Not one per reload.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1")}
	var prev *Handler
	for i := range 3 {
		h := &Handler{Upstream: up.URL, Bucket: "b", ObjectKey: "k/{id}", Endpoint: "http://localhost:1", PathStyle: true,
			AccessKeyID: "AKID", SecretAccessKey: "secret"}
		withFleet(r.Addr)(h)
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		if prev != nil {
			_ = prev.Cleanup()
		}
		prev = h
		download(t, h, testID, testKey)
		if i == 1 {
			r.Restart()
		}
		defer cancel()
	}
	_ = prev.Cleanup()
	goleak.VerifyNone(t, opts...)
}
