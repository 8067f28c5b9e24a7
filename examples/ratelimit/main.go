// Command caddy is Caddy with its standard modules, export_download and
// rate_limit (github.com/mholt/caddy-ratelimit): the binary for the
// Caddyfile beside it, which limits downloads per API key.
//
//	go build -o caddy .
//	./caddy run --config Caddyfile --adapter caddyfile
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-ratelimit"

	_ "github.com/exportedge/caddy-export-download"
)

func main() {
	caddycmd.Main()
}
