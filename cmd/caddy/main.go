// Command caddy is Caddy with its standard modules and export_download:
// `go build ./cmd/caddy` gives the custom binary that xcaddy would build.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/exportedge/caddy-export-download"
)

func main() {
	caddycmd.Main()
}
