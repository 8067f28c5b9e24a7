package exportdownload

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestRegressionFleetRedisURLRefused: `redis` takes host:port. A Redis URL with
// credentials (redis://user:password@host:6379, the usual way to write
// one) is refused, but the message quotes it whole, password included, on
// the terminal of `caddy adapt`/`run` and in logs; the block's own doc says
// its messages "never quote the password or the secret". Quote only what
// cannot hold one (e.g. u.Redacted(), or the host part).
func TestRegressionFleetRedisURLRefused(t *testing.T) {
	src := "export_download {\n upstream http://127.0.0.1:9\n bucket b\n object_key k/{id}\n fleet {\n redis redis://caddy:s3cretpw@10.0.0.5:6379\n secret " + fleetSecret + "\n }\n}"
	err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
	if err == nil {
		t.Fatal("a redis URL with a password is accepted as host:port")
	}
	if strings.Contains(err.Error(), "s3cretpw") {
		t.Fatalf("the error quotes the password: %v", err)
	}
}
