package exportdownload

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
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

On failure a command prints one line, "ERROR <command>: <message>", on
stderr and exits 1.

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
--all stands alone. A mistake in these flags (no selection, an id that
is not a UUID, a key with a space, --all with others) is refused before
anything is sent, by the admin API's own rules.

Prints what was dropped on this node and what became of the purge on the
fleet: "off" (no fleet tier: this node only), "published" (every node
drops the entries) or "queued" (Redis unreachable: published when it
answers). With --json, prints the admin API's answer as is.`,
				Args: cobra.NoArgs,
				RunE: runCLI(cmdPurge),
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
				RunE: runCLI(cmdStats),
			}
			addAdminFlags(stats)

			cmd.AddCommand(purge, stats)
			// Without a subcommand, the help; with an unknown one, an
			// error (cobra would print the help and exit 0).
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unknown command %q: want purge or stats", args[0])
				}
				return cmd.Help()
			}
			// Errors, flag errors included, print as one plain line,
			// "ERROR purge: <message>", terminal or not (see runCLI).
			for _, c := range []*cobra.Command{cmd, purge, stats} {
				c.SetErrPrefix("ERROR " + c.Name() + ":")
			}
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

func cmdPurge(fl caddycmd.Flags) error {
	ids, err := fl.GetStringSlice("id")
	if err != nil {
		return err
	}
	for i := range ids {
		ids[i] = strings.TrimSpace(ids[i])
	}
	keys, err := fl.GetStringArray("surrogate-key")
	if err != nil {
		return err
	}
	// Checked here, by the admin API's rules, so that a mistake is told in
	// the flags' words and nothing is sent.
	ids, keys, err = checkPurge(ids, keys, fl.Bool("all"), flagWords)
	if err != nil {
		return err
	}
	body, err := json.Marshal(purgeRequest{ExportIDs: ids, SurrogateKeys: keys, All: fl.Bool("all")})
	if err != nil {
		return err
	}
	raw, err := adminRequest(fl, http.MethodPost, adminPurgePath, body)
	if err != nil {
		return err
	}
	if fl.Bool("json") {
		_, _ = os.Stdout.Write(raw)
		return nil
	}
	var out purgeResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decoding the admin API's answer: %v", err)
	}
	writePurge(os.Stdout, out)
	return nil
}

func cmdStats(fl caddycmd.Flags) error {
	raw, err := adminRequest(fl, http.MethodGet, adminStatsPath, nil)
	if err != nil {
		return err
	}
	if fl.Bool("json") {
		_, _ = os.Stdout.Write(raw)
		return nil
	}
	var out statsResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decoding the admin API's answer: %v", err)
	}
	writeStats(os.Stdout, out)
	return nil
}

// runCLI adapts a subcommand for cobra. Its error goes back to cobra,
// which prints it after the command's error prefix ("ERROR purge:") as
// one plain line on stderr, and caddycmd.Main then exits 1. It does not
// go through caddycmd.WrapCommandFuncForCobra, which logs the error with
// Caddy's logger: a JSON log line when stderr is not a terminal.
func runCLI(f func(caddycmd.Flags) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if err := f(caddycmd.Flags{FlagSet: cmd.Flags()}); err != nil {
			return errors.New(oneLine(err.Error()))
		}
		return nil
	}
}

// oneLine keeps an error message on one line, whatever an answer or a
// lower layer put in it.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// flagWords are the CLI's words. A value is quoted whole: the user typed
// it, and strconv.Quote keeps it on one line.
var flagWords = purgeWords{
	ids:   "--id",
	keys:  "--surrogate-key",
	all:   "--all",
	allOn: "--all",
	many:  func(list string) string { return list + " values" },
	value: func(list string, _ int, v string) string { return list + " " + strconv.Quote(v) },
}

// adminRequest sends one request to the admin API found the way
// 'caddy reload' finds it, and returns the answer's body.
//
// It does what caddycmd.AdminAPIRequest does (the same address forms,
// Origin and dialing), except on an error answer: AdminAPIRequest folds
// the body into an untyped error string, while this decodes Caddy's
// error object ({"error": "…"}, caddy.APIError) into an *adminError.
func adminRequest(fl caddycmd.Flags, method, uri string, body []byte) ([]byte, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("finding the admin API's address: %v", err)
	}
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil || na.PortRangeSize() > 1 {
		return nil, fmt.Errorf("invalid admin address %q: want one address, e.g. localhost:2019 or unix//run/caddy/admin.sock", addr)
	}
	origin, dial := "http://"+na.JoinHostPort(0), na.JoinHostPort(0)
	if na.IsUnixNetwork() {
		// The admin endpoint wants a Host of 127.0.0.1 or ::1 on a
		// socket, and the socket's permission bits ("path|0220", which
		// ParseNetworkAddress checked) are not part of its path.
		origin = "http://127.0.0.1"
		dial, _, _ = strings.Cut(na.Host, "|")
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, origin+uri, rd)
	if err != nil {
		return nil, err
	}
	if !na.IsUnixNetwork() {
		req.Header.Set("Origin", origin)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, na.Network, dial)
		},
	}}
	resp, err := client.Do(req)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) {
			err = opErr
		}
		return nil, fmt.Errorf("cannot reach the admin API at %s (is Caddy running? --address or --config names another): %v", addr, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the admin API's answer: %v", err)
	}
	if resp.StatusCode >= 400 {
		return nil, newAdminError(addr, resp.StatusCode, raw)
	}
	return raw, nil
}

// adminError is an error answer of the admin API.
type adminError struct {
	Addr    string // the admin address asked
	Status  int
	Message string // the "error" of Caddy's error object, or the start of a body that is not one
}

func newAdminError(addr string, status int, body []byte) *adminError {
	var obj caddy.APIError
	msg := ""
	if json.Unmarshal(body, &obj) == nil {
		msg = obj.Message
	}
	if msg == "" {
		// Not Caddy's error object: something else answers there.
		msg = string(body)
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
	}
	return &adminError{Addr: addr, Status: status, Message: oneLine(msg)}
}

func (e *adminError) Error() string {
	return fmt.Sprintf("the admin API at %s answered %d %s: %s", e.Addr, e.Status, http.StatusText(e.Status), e.Message)
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
