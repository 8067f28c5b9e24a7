package exportdownload

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "export-download",
		Usage: "<purge|stats> [--address <listen>] [--config <path> [--adapter <name>]]",
		Short: "Purges and inspects the export_download caches of a running Caddy",
		Long: `
Operates the export_download caches of a running Caddy through its admin
API (the /export_download/ routes).

  caddy export-download purge --surrogate-key key_8f2a
  caddy export-download purge --id 01935abc-def0-7123-4567-890abcdef012
  caddy export-download purge --all
  caddy export-download stats

A purge drops the named entries from every export_download cache of the
process; the next request for them goes to the application. Without the
fleet tier it reaches this node only, and says so ("fleet: off"); with
it, it is published to every node.

Like 'caddy reload', these commands talk to the admin API at
'` + caddy.DefaultAdminListen + `' unless --address names another, or --config
names the config file to read the admin address from.`,
		CobraFunc: func(cmd *cobra.Command) {
			purge := &cobra.Command{
				Use:   "purge (--id <id>... | --surrogate-key <key>... | --all) [--address <listen>] [--config <path> [--adapter <name>]] [--json]",
				Short: "Drops cached answers by export id, by surrogate key, or all",
				Long: `
Drops cached answers from every export_download cache of the running Caddy:
those of the export ids named with --id (repeatable, or a comma-separated
list), those tagged with the surrogate keys named with --surrogate-key
(repeatable), or, with --all, everything. Ids and keys can be combined;
--all stands alone.

Prints what was dropped on this node and what became of the purge on the
fleet: "off" (no fleet tier: this node only), "published" (every node
drops the entries) or "queued" (Redis unreachable: published when it
answers). With --json, prints the admin API's answer as is.`,
				Args: cobra.NoArgs,
				RunE: caddycmd.WrapCommandFuncForCobra(cmdPurge),
			}
			purge.Flags().StringSlice("id", nil, "Export id to purge (repeatable, or comma-separated)")
			purge.Flags().StringArray("surrogate-key", nil, "Surrogate key to purge (repeatable)")
			purge.Flags().Bool("all", false, "Purge every entry")
			addAdminFlags(purge)

			stats := &cobra.Command{
				Use:   "stats [--address <listen>] [--config <path> [--adapter <name>]] [--json]",
				Short: "Prints the counters of every export_download cache",
				Long: `
Prints, for every export_download cache of the running Caddy, its entries,
hits, misses, collapsed requests, stale answers served, surrogate keys held
and fleet state. With --json, prints the admin API's answer as is.`,
				Args: cobra.NoArgs,
				RunE: caddycmd.WrapCommandFuncForCobra(cmdStats),
			}
			addAdminFlags(stats)

			cmd.AddCommand(purge, stats)
		},
	})
}

// addAdminFlags adds the flags that say where the admin API is, as
// 'caddy reload' and 'caddy trust' spell them, and --json.
func addAdminFlags(cmd *cobra.Command) {
	cmd.Flags().String("address", "", "Address of the administration API listener (if --config is not used)")
	cmd.Flags().StringP("config", "c", "", "Configuration file to read the admin address from (if --address is not used)")
	cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (if --config is used)")
	cmd.Flags().Bool("json", false, "Print the admin API's JSON answer")
}

func cmdPurge(fl caddycmd.Flags) (int, error) {
	ids, err := fl.GetStringSlice("id")
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	for i := range ids {
		ids[i] = strings.TrimSpace(ids[i])
	}
	keys, err := fl.GetStringArray("surrogate-key")
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	// The admin API checks the selection, so that the rules live in one
	// place and the CLI prints its words.
	body, err := json.Marshal(purgeRequest{ExportIDs: ids, SurrogateKeys: keys, All: fl.Bool("all")})
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	raw, err := adminRequest(fl, http.MethodPost, adminPurgePath, body)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("purge: %w", err)
	}
	if fl.Bool("json") {
		_, _ = os.Stdout.Write(raw)
		return caddy.ExitCodeSuccess, nil
	}
	var out purgeResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("purge: decoding the admin API's answer: %v", err)
	}
	writePurge(os.Stdout, out)
	return caddy.ExitCodeSuccess, nil
}

func cmdStats(fl caddycmd.Flags) (int, error) {
	raw, err := adminRequest(fl, http.MethodGet, adminStatsPath, nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("stats: %w", err)
	}
	if fl.Bool("json") {
		_, _ = os.Stdout.Write(raw)
		return caddy.ExitCodeSuccess, nil
	}
	var out statsResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("stats: decoding the admin API's answer: %v", err)
	}
	writeStats(os.Stdout, out)
	return caddy.ExitCodeSuccess, nil
}

// adminRequest sends one request to the admin API found the way
// 'caddy reload' finds it, and returns the answer's body. An error answer
// becomes an error carrying the API's message.
func adminRequest(fl caddycmd.Flags, method, uri string, body []byte) ([]byte, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("couldn't determine admin API address: %v", err)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, make(http.Header), rd)
	if err != nil {
		return nil, apiMessage(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the admin API's answer: %v", err)
	}
	return raw, nil
}

// apiMessage replaces the JSON error body that AdminAPIRequest quotes
// ("caddy responded with error: HTTP 400: {"error":"…"}") with its
// message.
func apiMessage(err error) error {
	s := err.Error()
	i := strings.Index(s, "{")
	if i < 0 {
		return err
	}
	var body struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(s[i:]), &body) != nil || body.Error == "" {
		return err
	}
	return fmt.Errorf("%s%s", s[:i], body.Error)
}

// writePurge prints a purge's outcome as one line, e.g. "dropped 3
// entries in 1 cache; fleet: off (this node only)".
func writePurge(w io.Writer, out purgeResponse) {
	fmt.Fprintf(w, "dropped %s in %s; fleet: %s\n",
		plural(out.Dropped, "entry", "entries"), plural(out.Caches, "cache", "caches"), fleetMeaning(out.Fleet))
}

func fleetMeaning(state string) string {
	switch state {
	case "off":
		return "off (this node only)"
	case "published":
		return "published (every node drops them)"
	case "queued":
		return "queued (Redis unreachable: published when it answers)"
	}
	return state
}

// writeStats prints one line per cache, under a header.
func writeStats(w io.Writer, out statsResponse) {
	if len(out.Caches) == 0 {
		fmt.Fprintln(w, "no export_download cache in this process")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CACHE\tENTRIES\tHITS\tMISSES\tCOLLAPSED\tSTALE SERVED\tSURROGATE KEYS\tFLEET\t")
	for _, c := range out.Caches {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n",
			shortName(c.Name), c.Entries, c.Hits, c.Misses, c.Collapsed, c.StaleServed, c.Tags, c.Fleet.State)
	}
	_ = tw.Flush()
}

// shortName keeps enough of a cache's digest name to tell caches apart.
func shortName(name string) string {
	kind, digest, ok := strings.Cut(name, ":")
	if !ok || len(digest) <= 12 {
		return name
	}
	return kind + ":" + digest[:12]
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
