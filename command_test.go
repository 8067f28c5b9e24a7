package exportdownload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

func TestCommandOutput(t *testing.T) {
	for _, tc := range []struct {
		out  purgeResponse
		want string
	}{
		{purgeResponse{Dropped: 3, Caches: 1, Fleet: "off"}, "dropped 3 entries in 1 cache; fleet: off (this node only)\n"},
		{purgeResponse{Dropped: 1, Caches: 2, Fleet: "published"}, "dropped 1 entry in 2 caches; fleet: published (every node drops them)\n"},
		{purgeResponse{Dropped: 0, Caches: 0, Fleet: "queued"}, "dropped 0 entries in 0 caches; fleet: queued (Redis unreachable: published when it answers)\n"},
		{purgeResponse{Fleet: "later"}, "dropped 0 entries in 0 caches; fleet: later\n"},
	} {
		var b bytes.Buffer
		writePurge(&b, tc.out)
		if b.String() != tc.want {
			t.Errorf("writePurge(%+v) = %q, want %q", tc.out, b.String(), tc.want)
		}
	}

	var b bytes.Buffer
	writeStats(&b, statsResponse{Caches: []cacheStats{{
		Name: "decisions:0123456789abcdef0123", Entries: 12, Hits: 40, Misses: 12, Collapsed: 2, StaleServed: 1, Tags: 3,
		Fleet: fleetStats{State: "off"},
	}}})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "CACHE") ||
		strings.Join(strings.Fields(lines[1]), " ") != "decisions:0123456789ab 12 40 12 2 1 3 off" {
		t.Errorf("writeStats:\n%s", b.String())
	}
	b.Reset()
	writeStats(&b, statsResponse{})
	if b.String() != "no export_download cache in this process\n" {
		t.Errorf("writeStats of none: %q", b.String())
	}

}

// TestAdminError checks how an error answer of the admin API reads: the
// message of Caddy's error object, or the start of a body that is not one,
// on one line.
func TestAdminError(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		want   string
	}{
		{400, `{"error":"nothing to purge"}` + "\n", "the admin API at localhost:2019 answered 400 Bad Request: nothing to purge"},
		{403, `{"error":"host not allowed: evil.example"}`, "the admin API at localhost:2019 answered 403 Forbidden: host not allowed: evil.example"},
		{404, "404 page not found\n", "the admin API at localhost:2019 answered 404 Not Found: 404 page not found"},
		{502, `{"not":"ours"}`, `the admin API at localhost:2019 answered 502 Bad Gateway: {"not":"ours"}`},
		{500, "line one\nline two\n", "the admin API at localhost:2019 answered 500 Internal Server Error: line one line two"},
		{500, strings.Repeat("x", 300), "the admin API at localhost:2019 answered 500 Internal Server Error: " + strings.Repeat("x", 200) + "..."},
	} {
		err := error(newAdminError("localhost:2019", tc.status, []byte(tc.body)))
		var ae *adminError
		if !errors.As(err, &ae) || ae.Status != tc.status || err.Error() != tc.want {
			t.Errorf("newAdminError(%d, %q) = %q, want %q", tc.status, tc.body, err, tc.want)
		}
	}
}

// TestCheckPurgeFlags checks the CLI's words for each mistake the admin
// API's rules refuse, and what a valid selection becomes.
func TestCheckPurgeFlags(t *testing.T) {
	many := func(n int, f func(i int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		ids, keys []string
		all       bool
		want      string // the error, or "" for none
		wantIDs   []string
		wantKeys  []string
	}{
		{name: "nothing", want: "nothing to purge: name --id, --surrogate-key, or --all"},
		{name: "all with an id", ids: []string{testID}, all: true, want: "--all purges everything: name no --id or --surrogate-key with it"},
		{name: "all with a key", keys: []string{"k"}, all: true, want: "--all purges everything: name no --id or --surrogate-key with it"},
		{name: "bad id", ids: []string{testID, "nope"}, want: `--id "nope" is not an export id (a UUID, e.g. 01935abc-def0-7123-4567-890abcdef012)`},
		{name: "empty id", ids: []string{""}, want: `--id "" is not an export id (a UUID, e.g. 01935abc-def0-7123-4567-890abcdef012)`},
		{name: "key with a space", keys: []string{"key_8f2a proj_91c0"}, want: `--surrogate-key "key_8f2a proj_91c0" is not a surrogate key (1 to 128 bytes of visible ASCII, no spaces)`},
		{name: "key with a newline", keys: []string{"a\nb"}, want: `--surrogate-key "a\nb" is not a surrogate key (1 to 128 bytes of visible ASCII, no spaces)`},
		{name: "key too long", keys: []string{strings.Repeat("k", 129)}, want: "is not a surrogate key"},
		{name: "too many ids", ids: many(10_001, func(int) string { return testID }), want: "too many --id values: 10001, at most 10000 per request"},
		{name: "too many keys", keys: many(10_001, func(i int) string { return fmt.Sprint("k", i) }), want: "too many --surrogate-key values: 10001, at most 10000 per request"},
		{name: "all", all: true},
		{name: "ids and keys, canonical and once each", ids: []string{strings.ToUpper(testID), testID2, testID}, keys: []string{"key_8f2a", "proj_91c0", "key_8f2a"},
			wantIDs: []string{testID, testID2}, wantKeys: []string{"key_8f2a", "proj_91c0"}},
		{name: "10000 ids", ids: many(10_000, func(int) string { return testID }), wantIDs: []string{testID}},
	} {
		ids, keys, err := checkPurge(tc.ids, tc.keys, tc.all, flagWords)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		case tc.want == "" && (!slices.Equal(ids, tc.wantIDs) || !slices.Equal(keys, tc.wantKeys)):
			t.Errorf("%s: ids %q keys %q, want %q %q", tc.name, ids, keys, tc.wantIDs, tc.wantKeys)
		}
	}
}

// caddyBinary builds ./cmd/caddy into dir.
func buildCaddy(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "caddy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin
}

// lockedBuffer collects a subprocess's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cliResult is one run of the caddy binary.
type cliResult struct {
	code           int
	stdout, stderr string
}

// TestCommandPurgeAndStats runs `caddy run` as a subprocess and operates
// it with `caddy export-download`, as an operator would.
func TestCommandPurgeAndStats(t *testing.T) {
	dir := t.TempDir()
	bin := buildCaddy(t, dir)
	up := testenv.NewUpstream(t)
	s3 := testenv.StartS3(t)
	app := httptest.NewServer(new(echoApp))
	t.Cleanup(app.Close)
	s3.CreateBucket(t, "exports")
	for id, tag := range map[string]string{testID: "key_8f2a", testID2: "key_77b1"} {
		up.Set(id, testenv.Response{
			Header: http.Header{"Surrogate-Key": {tag + " proj_91c0"}},
			Body:   testenv.ExportBody(id, "completed", nil, nil),
		})
	}

	addr := freeAddr(t)
	_, adminPort, _ := net.SplitHostPort(freeAddr(t))
	adminAddr := "localhost:" + adminPort
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	default_bind 127.0.0.1
}

http://%s {
	export_download {
		upstream %s
		key_prefixes hb_test_ hb_live_
		bucket exports
		object_key exports/{export.project_id}/{id}.csv
		endpoint %s
		path_style
		region %s
		access_key_id %s
		secret_access_key %s
	}
	reverse_proxy %s
}
`, adminAddr, addr, up.URL, s3.Endpoint, s3.Region, s3.AccessKey, s3.SecretKey, strings.TrimPrefix(app.URL, "http://"))), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))

	server := exec.Command(bin, "run", "--config", config, "--adapter", "caddyfile")
	server.Env = env
	serverOut := new(lockedBuffer)
	server.Stdout, server.Stderr = serverOut, serverOut
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = server.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = server.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = server.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("caddy run output:\n%s", serverOut.String())
		}
	})
	base := "http://" + addr
	waitForCaddy(t, base, exited, serverOut)

	cli := func(args ...string) cliResult {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"export-download"}, args...)...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("caddy export-download %s: %v", strings.Join(args, " "), err)
		}
		return cliResult{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	}
	ok := func(args ...string) string {
		t.Helper()
		r := cli(args...)
		if r.code != 0 {
			t.Fatalf("caddy export-download %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}
	get := func(id string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/exports/"+id+"/download", nil)
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("GET %s: %d", id, resp.StatusCode)
		}
		return resp.Header.Get("Cache-Status")
	}

	// Two exports cached, one hit each.
	for _, id := range []string{testID, testID2} {
		if cs := get(id); cs != csStored {
			t.Fatalf("first GET %s: %q", id, cs)
		}
		if cs := get(id); cs != csHit {
			t.Fatalf("second GET %s: %q", id, cs)
		}
	}

	// stats, in lines and in JSON, by --address and by --config.
	out := ok("stats", "--address", adminAddr)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "CACHE") {
		t.Fatalf("stats: want a header and one cache:\n%s", out)
	}
	if f := strings.Fields(lines[1]); len(f) != 8 || !strings.HasPrefix(f[0], "decisions:") || strings.Join(f[1:], " ") != "2 2 2 0 0 3 off" {
		t.Errorf("stats line %q: want 2 entries, 2 hits, 2 misses, 0 collapsed, 0 stale, 3 surrogate keys, fleet off", lines[1])
	}
	var stats statsResponse
	if err := json.Unmarshal([]byte(ok("stats", "--json", "--config", config, "--adapter", "caddyfile")), &stats); err != nil {
		t.Fatalf("stats --json: %v", err)
	}
	if len(stats.Caches) != 1 || stats.Caches[0].Entries != 2 || stats.Caches[0].Hits != 2 || stats.Caches[0].Fleet.State != "off" {
		t.Errorf("stats --json: %+v", stats)
	}

	// Revoke by surrogate key in one command: the next request goes to
	// the app, the other export stays cached.
	if out := ok("purge", "--surrogate-key", "key_8f2a", "--address", adminAddr); out != "dropped 1 entry in 1 cache; fleet: off (this node only)\n" {
		t.Errorf("purge --surrogate-key: %q", out)
	}
	if log := serverOut.String(); !strings.Contains(log, `"logger":"admin.api.export_download","msg":"purge"`) ||
		!strings.Contains(log, `"surrogate_keys_first":["key_8f2a"],"dropped":1,"caches":1,"fleet":"off"`) {
		t.Errorf("want the purge logged at info by the admin logger, got:\n%s", log)
	}
	if cs := get(testID); cs != csStored || up.CallsFor(testID) != 2 {
		t.Errorf("after the purge: Cache-Status %q, %d upstream calls, want a miss and 2", cs, up.CallsFor(testID))
	}
	if cs := get(testID2); cs != csHit || up.CallsFor(testID2) != 1 {
		t.Errorf("the other export after the purge: Cache-Status %q, %d upstream calls, want a hit and 1", cs, up.CallsFor(testID2))
	}

	// By ids, a comma list and a repeated flag, found with --config.
	if out := ok("purge", "--id", strings.ToUpper(testID)+","+testID2, "--id", testID, "--config", config, "--adapter", "caddyfile"); out != "dropped 2 entries in 1 cache; fleet: off (this node only)\n" {
		t.Errorf("purge --id: %q", out)
	}
	get(testID)
	var purged purgeResponse
	if err := json.Unmarshal([]byte(ok("purge", "--all", "--json", "--address", adminAddr)), &purged); err != nil || purged != (purgeResponse{Dropped: 1, Caches: 1, Fleet: "off"}) {
		t.Errorf("purge --all --json: %+v, %v", purged, err)
	}

	// Mistakes in the flags are refused in the flags' words, before any
	// request: the admin log shows no further purge request. Every failure
	// is one plain line on stderr and exit 1.
	purgesLogged := func() int { return strings.Count(serverOut.String(), `"uri":"/export_download/purge"`) }
	before := purgesLogged()
	tooManyKeys := []string{"purge", "--address", adminAddr}
	for i := range 10_001 {
		tooManyKeys = append(tooManyKeys, fmt.Sprintf("--surrogate-key=k%d", i))
	}
	// An admin endpoint that refuses, as Caddy's does a Host it does not
	// allow: its error object is what the CLI prints.
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"error":"host not allowed: `+r.Host+`"}`+"\n")
	}))
	t.Cleanup(refusing.Close)
	refusingAddr := strings.TrimPrefix(refusing.URL, "http://")
	for _, tc := range []struct {
		args []string
		want string // the whole line
	}{
		{[]string{"purge", "--address", adminAddr}, "ERROR purge: nothing to purge: name --id, --surrogate-key, or --all"},
		{[]string{"purge", "--id", "nope", "--address", adminAddr}, `ERROR purge: --id "nope" is not an export id (a UUID, e.g. 01935abc-def0-7123-4567-890abcdef012)`},
		{[]string{"purge", "--id", testID + ",nope", "--address", adminAddr}, `ERROR purge: --id "nope" is not an export id (a UUID, e.g. 01935abc-def0-7123-4567-890abcdef012)`},
		{[]string{"purge", "--all", "--id", testID, "--address", adminAddr}, "ERROR purge: --all purges everything: name no --id or --surrogate-key with it"},
		{[]string{"purge", "--surrogate-key", "a b", "--address", adminAddr}, `ERROR purge: --surrogate-key "a b" is not a surrogate key (1 to 128 bytes of visible ASCII, no spaces)`},
		{tooManyKeys, "ERROR purge: too many --surrogate-key values: 10001, at most 10000 per request"},
		{[]string{"purge", "--all=maybe", "--address", adminAddr}, `ERROR purge: invalid argument "maybe" for "--all" flag: strconv.ParseBool: parsing "maybe": invalid syntax`},
		{[]string{"purge", "--bogus", "--address", adminAddr}, "ERROR purge: unknown flag: --bogus"},
		{[]string{"stats", "extra", "--address", adminAddr}, `ERROR stats: unknown command "extra" for "caddy export-download stats"`},
		{[]string{"bogus"}, `ERROR export-download: unknown command "bogus": want purge or stats`},
		{[]string{"stats", "--address", "127.0.0.1:1"}, "ERROR stats: cannot reach the admin API at 127.0.0.1:1 (is Caddy running? --address or --config names another): dial tcp 127.0.0.1:1: connect: connection refused"},
		{[]string{"stats", "--address", "localhost:1-3"}, `ERROR stats: invalid admin address "localhost:1-3": want one address, e.g. localhost:2019 or unix//run/caddy/admin.sock`},
		{[]string{"purge", "--all", "--address", refusingAddr}, "ERROR purge: the admin API at " + refusingAddr + " answered 403 Forbidden: host not allowed: " + refusingAddr},
	} {
		r := cli(tc.args...)
		args := strings.Join(tc.args, " ")
		if len(args) > 120 {
			args = args[:120] + "..."
		}
		if r.code != 1 || r.stdout != "" || r.stderr != tc.want+"\n" {
			t.Errorf("caddy export-download %s: exit %d, stdout %q, stderr %q; want exit 1 and the one line %q",
				args, r.code, r.stdout, r.stderr, tc.want)
		}
	}
	if n := purgesLogged(); n != before {
		t.Errorf("the admin API got %d purge requests from refused flags, want none", n-before)
	}

	// The same plain line when stderr is a terminal: script(1) runs the
	// CLI on a pseudo-terminal (util-linux; Debian's bsdutils).
	script, err := exec.LookPath("script")
	if err != nil {
		t.Fatal("script not found on PATH: install util-linux's script (Debian: bsdutils)")
	}
	tty := exec.Command(script, "--quiet", "--return", "--command", bin+" export-download purge --address "+adminAddr, "/dev/null")
	tty.Env = append(env, "TERM=xterm-256color")
	ttyOut, err := tty.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 ||
		strings.ReplaceAll(string(ttyOut), "\r\n", "\n") != "ERROR purge: nothing to purge: name --id, --surrogate-key, or --all\n" {
		t.Errorf("on a terminal: %v, output %q; want exit 1 and the one plain line", err, ttyOut)
	}
	if n := purgesLogged(); n != before {
		t.Errorf("the admin API got %d purge requests from refused flags, want none", n-before)
	}
}

// waitForCaddy waits until the site answers (reverse_proxy to the app).
func waitForCaddy(t *testing.T, base string, exited <-chan struct{}, out *lockedBuffer) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("caddy exited before it was ready:\n%s", out.String())
		default:
		}
		resp, err := client.Get(base + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy not ready at %s after 30s (last error %v):\n%s", base, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
