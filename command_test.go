package exportdownload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
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

	for in, want := range map[string]string{
		`caddy responded with error: HTTP 400: {"error":"nothing to purge"}` + "\n": "caddy responded with error: HTTP 400: nothing to purge",
		`caddy responded with error: HTTP 404: 404 page not found`:                  "caddy responded with error: HTTP 404: 404 page not found",
		`performing request: dial tcp 127.0.0.1:1: connect: connection refused`:     "performing request: dial tcp 127.0.0.1:1: connect: connection refused",
		`caddy responded with error: HTTP 502: {"not":"ours"}`:                      `caddy responded with error: HTTP 502: {"not":"ours"}`,
	} {
		if got := apiMessage(errors.New(in)).Error(); got != want {
			t.Errorf("apiMessage(%q) = %q, want %q", in, got, want)
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

	// Failures exit non-zero with the admin API's message.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"purge", "--id", "nope", "--address", adminAddr}, `export_ids[0]: \"nope\" is not an export id`},
		{[]string{"purge", "--surrogate-key", "a b", "--address", adminAddr}, `surrogate_keys[0]: \"a b\" is not a surrogate key`},
		{[]string{"purge", "--address", adminAddr}, "nothing to purge"},
		{[]string{"purge", "--all", "--id", testID, "--address", adminAddr}, "purges everything"},
		{[]string{"stats", "--address", "127.0.0.1:1"}, "connection refused"},
		{[]string{"stats", "extra", "--address", adminAddr}, "unknown command"},
	} {
		r := cli(tc.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("caddy export-download %s: exit %d, stdout %q, stderr %q; want a failure saying %s",
				strings.Join(tc.args, " "), r.code, r.stdout, r.stderr, tc.want)
		}
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
