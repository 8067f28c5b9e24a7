package deploy_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// repoRoot is the module's root directory, the parent of deploy/.
var repoRoot string

var (
	buildOnce sync.Once
	buildDir  string
	caddyPath string
	buildErr  error
)

func TestMain(m *testing.M) {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	repoRoot = root
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// caddyBinary builds ./cmd/caddy once per test binary and returns its path.
func caddyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "deploy-test-")
		if buildErr != nil {
			return
		}
		caddyPath = filepath.Join(buildDir, "caddy")
		cmd := exec.Command("go", "build", "-o", caddyPath, "./cmd/caddy")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return caddyPath
}

// requireTool returns the path of a tool or fails the test with a hint.
func requireTool(t *testing.T, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found on PATH: %s", name, hint)
	}
	return p
}

func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// caddyEnv is a clean environment for a Caddy process: its own home and
// storage, static AWS keys for the default credential chain (presigning
// needs no network), no instance metadata lookups, plus extra.
func caddyEnv(t *testing.T, extra map[string]string) []string {
	t.Helper()
	home := t.TempDir()
	env := map[string]string{
		"PATH":                        os.Getenv("PATH"),
		"HOME":                        home,
		"XDG_DATA_HOME":               filepath.Join(home, "data"),
		"XDG_CONFIG_HOME":             filepath.Join(home, "config"),
		"AWS_ACCESS_KEY_ID":           "AKIAIOSFODNN7EXAMPLE",
		"AWS_SECRET_ACCESS_KEY":       "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_CONFIG_FILE":             filepath.Join(home, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(home, "no-aws-credentials"),
	}
	for k, v := range extra {
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// adapt runs `caddy adapt` on a Caddyfile and returns the JSON config; any
// warning (e.g. an unformatted Caddyfile) fails the test.
func adapt(t *testing.T, bin, caddyfile string, env map[string]string) map[string]any {
	t.Helper()
	cmd := exec.Command(bin, "adapt", "--config", caddyfile, "--adapter", "caddyfile")
	cmd.Env = caddyEnv(t, env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("caddy adapt %s: %v\n%s", caddyfile, err, stderr.String())
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Fatalf("caddy adapt %s reported:\n%s", caddyfile, s)
	}
	var cfg map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &cfg); err != nil {
		t.Fatalf("caddy adapt %s: %v", caddyfile, err)
	}
	return cfg
}

// adaptRefused runs `caddy adapt` on a Caddyfile that must be refused and
// returns Caddy's error output.
func adaptRefused(t *testing.T, bin, caddyfile string, env map[string]string) string {
	t.Helper()
	cmd := exec.Command(bin, "adapt", "--config", caddyfile, "--adapter", "caddyfile")
	cmd.Env = caddyEnv(t, env)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("caddy adapt %s accepted it, want a refusal", caddyfile)
	}
	return string(out)
}

// lineOf returns the 1-based number of the first line of text that holds
// substr (0 if none).
func lineOf(text, substr string) int {
	for i, line := range strings.Split(text, "\n") {
		if strings.Contains(line, substr) {
			return i + 1
		}
	}
	return 0
}

// syncBuffer collects a process's output for failure messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startCaddy runs `caddy <args>` until the test ends and waits until
// readyURL answers 200.
func startCaddy(t *testing.T, env []string, readyURL string, bin string, args ...string) *syncBuffer {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	out := new(syncBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("caddy exited before it was ready:\n%s", out.String())
		default:
		}
		resp, err := readyClient.Get(readyURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return out
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy not ready at %s after 30s (last error %v):\n%s", readyURL, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readyClient polls a starting Caddy.
var readyClient = &http.Client{Timeout: 2 * time.Second}

// noRedirects is a client that returns the 302 itself.
var noRedirects = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func download(t *testing.T, base, key, id string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/v1/exports/"+id+"/download", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

const (
	completedID = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a01"
	pendingID   = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a02"
	brokenID    = "01938f2a-5c10-7a3e-9b41-2c6d8e0f1a03"
	apiKey      = "hb_test_deploy"
)

// exportsUpstream is a fake app with a completed, a pending and a failing
// export.
func exportsUpstream(t *testing.T) *testenv.Upstream {
	t.Helper()
	up := testenv.NewUpstream(t)
	exp := time.Now().Add(24 * time.Hour)
	up.Set(completedID, testenv.Response{Body: testenv.ExportBody(completedID, "completed", &exp, nil)})
	up.Set(pendingID, testenv.Response{Body: testenv.ExportBody(pendingID, "pending", nil, nil)})
	up.Set(brokenID, testenv.Response{Status: http.StatusInternalServerError, Body: `{}`})
	return up
}

// ---------------------------------------------------------------- Caddyfiles

var (
	envPlaceholder   = regexp.MustCompile(`\{env\.([A-Za-z_][A-Za-z0-9_]*)\}`)
	adaptPlaceholder = regexp.MustCompile(`\{\$([A-Za-z_][A-Za-z0-9_]*)(:[^}]*)?\}`)
)

// placeholders returns the {env.NAME} names of a Caddyfile, and the {$NAME}
// names that have no default, outside comments.
func placeholders(caddyfile string) (provision, adaptRequired []string) {
	for _, line := range strings.Split(caddyfile, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, m := range envPlaceholder.FindAllStringSubmatch(line, -1) {
			provision = append(provision, m[1])
		}
		for _, m := range adaptPlaceholder.FindAllStringSubmatch(line, -1) {
			if m[2] == "" && m[1] != "CREDENTIALS_DIRECTORY" {
				adaptRequired = append(adaptRequired, m[1])
			}
		}
	}
	slices.Sort(provision)
	slices.Sort(adaptRequired)
	return slices.Compact(provision), slices.Compact(adaptRequired)
}

// uncommentFleet returns the Caddyfile with its commented `fleet { … }`
// block uncommented.
func uncommentFleet(t *testing.T, caddyfile string) string {
	t.Helper()
	lines := strings.Split(caddyfile, "\n")
	in, found := false, false
	for i, line := range lines {
		trimmed := strings.TrimLeft(line, "\t ")
		indent := line[:len(line)-len(trimmed)]
		switch {
		case trimmed == "# fleet {":
			in, found = true, true
		case !in:
			continue
		}
		lines[i] = indent + strings.TrimPrefix(trimmed, "# ")
		if trimmed == "# }" {
			in = false
		}
	}
	if !found {
		t.Fatal("no commented `# fleet {` block")
	}
	return strings.Join(lines, "\n")
}

// optionalAtProvision are the {env.NAME} of the kit's Caddyfiles that may
// be left unset: the handler reads an unset variable as "", which for their
// subdirectives means "not used" (username: the default user; sentinel: the
// redis addresses are Redis itself; sentinel_username and
// sentinel_password: no login to the Sentinels). TestComposeFleetRuns runs
// the container Caddyfile with them set (compose.sentinel.yaml) and with
// only REDIS_USERNAME (compose.fleet.yaml), TestMetricNamesExist with none.
var optionalAtProvision = map[string]bool{
	"REDIS_USERNAME":          true,
	"REDIS_SENTINEL_MASTER":   true,
	"REDIS_SENTINEL_USERNAME": true,
	"REDIS_SENTINEL_PASSWORD": true,
}

// caddyfileVars returns every variable a kit Caddyfile reads, with how it
// is required: "yes" (no default, outside the fleet block), "fleet" (no
// default, only in the commented fleet block) or "no" (a default, or one
// of optionalAtProvision).
func caddyfileVars(t *testing.T, caddyfile string) map[string]string {
	t.Helper()
	rank := map[string]int{"no": 0, "fleet": 1, "yes": 2}
	out := make(map[string]string)
	add := func(name, class string) {
		if cur, ok := out[name]; !ok || rank[class] > rank[cur] {
			out[name] = class
		}
	}
	shipped := strings.Split(caddyfile, "\n")
	for i, line := range strings.Split(uncommentFleet(t, caddyfile), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		inFleet := strings.HasPrefix(strings.TrimSpace(shipped[i]), "#")
		class := func(hasDefault bool) string {
			switch {
			case hasDefault:
				return "no"
			case inFleet:
				return "fleet"
			}
			return "yes"
		}
		for _, m := range envPlaceholder.FindAllStringSubmatch(line, -1) {
			add(m[1], class(optionalAtProvision[m[1]]))
		}
		for _, m := range adaptPlaceholder.FindAllStringSubmatch(line, -1) {
			add(m[1], class(m[2] != ""))
		}
	}
	return out
}

// readmeVars returns the variables that deploy/README.md lists in the
// table under the ### heading naming file, with their "required" cell.
func readmeVars(t *testing.T, readme, file string) map[string]string {
	t.Helper()
	nameRE := regexp.MustCompile("`([A-Z_][A-Z0-9_]*)`")
	out := make(map[string]string)
	in, found := false, false
	for _, line := range strings.Split(readme, "\n") {
		if strings.HasPrefix(line, "#") {
			in = strings.HasPrefix(line, "### ") && strings.Contains(line, "`"+file+"`")
			found = found || in
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			t.Errorf("deploy/README.md, %s: a row without a required column: %s", file, line)
			continue
		}
		required := strings.ToLower(strings.Trim(strings.TrimSpace(cells[2]), "*"))
		for _, m := range nameRE.FindAllStringSubmatch(cells[1], -1) {
			out[m[1]] = required
		}
	}
	if !found {
		t.Errorf("deploy/README.md has no ### heading naming `%s`", file)
	}
	return out
}

// TestDeployREADMEListsVariables checks that deploy/README.md lists every
// variable each kit file reads, no other, each with the right "required"
// (a Caddyfile's {$NAME} without default or {env.NAME}; compose's
// ${NAME:?}), and says what the app must do with X-Edge-Token when a
// Caddyfile sends it.
func TestDeployREADMEListsVariables(t *testing.T) {
	t.Parallel()
	readme := readFile(t, "deploy/README.md")
	for _, f := range []struct {
		file string
		vars map[string]string
	}{
		{"docker/Caddyfile", caddyfileVars(t, readFile(t, "deploy/docker/Caddyfile"))},
		{"systemd/Caddyfile", caddyfileVars(t, readFile(t, "deploy/systemd/Caddyfile"))},
		{"docker/compose.yaml", composeVars(readFile(t, "deploy/docker/compose.yaml"))},
		{"docker/compose.fleet.yaml", composeVars(readFile(t, "deploy/docker/compose.fleet.yaml"))},
		{"docker/compose.sentinel.yaml", composeVars(readFile(t, "deploy/docker/compose.sentinel.yaml"))},
	} {
		if len(f.vars) == 0 {
			t.Errorf("%s reads no variable: the parser is broken", f.file)
		}
		listed := readmeVars(t, readme, f.file)
		for _, name := range slices.Sorted(maps.Keys(f.vars)) {
			switch got, ok := listed[name]; {
			case !ok:
				t.Errorf("deploy/README.md, %s: %s is read but not listed", f.file, name)
			case got != f.vars[name]:
				t.Errorf("deploy/README.md, %s: %s is listed as required %q, want %q", f.file, name, got, f.vars[name])
			}
		}
		for _, name := range slices.Sorted(maps.Keys(listed)) {
			if _, ok := f.vars[name]; !ok {
				t.Errorf("deploy/README.md, %s: lists %s, which the file does not read", f.file, name)
			}
		}
	}
	// The optional ones are read by the container Caddyfile, so that the
	// list above cannot outlive its use.
	containerVars := caddyfileVars(t, readFile(t, "deploy/docker/Caddyfile"))
	for _, name := range slices.Sorted(maps.Keys(optionalAtProvision)) {
		if _, ok := containerVars[name]; !ok {
			t.Errorf("docker/Caddyfile does not read {env.%s}, which the test calls optional", name)
		}
	}
	// The fleet's Redis users, as the compose files define them.
	for _, acl := range []string{fleetACL, sentinelACL} {
		if !strings.Contains(readme, "`"+acl+"`") {
			t.Errorf("deploy/README.md does not give the ACL rules `%s`", acl)
		}
	}
	for _, rel := range []string{"deploy/docker/Caddyfile", "deploy/systemd/Caddyfile"} {
		if strings.Contains(readFile(t, rel), "upstream_header X-Edge-Token") &&
			!regexp.MustCompile("(?m)^## .*X-Edge-Token.*what your app must do").MatchString(readme) {
			t.Errorf("%s sends X-Edge-Token; deploy/README.md has no section on what the app must do with it", rel)
		}
	}
}

// caddyVersion returns go.mod's Caddy version, e.g. v2.11.9.
func caddyVersion(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/caddyserver/caddy/v2").Output()
	if err != nil {
		t.Fatalf("go list -m caddy: %v", err)
	}
	version := strings.TrimSpace(string(out))
	if !strings.HasPrefix(version, "v2.") {
		t.Fatalf("caddy version %q", version)
	}
	return version
}

// docFiles returns the repository's documentation that may name the image
// or the kit's figures: the Markdown files at the root and under docs/, and
// every file of deploy/ but the tests.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(repoRoot, "*.md"))
	for _, dir := range []string{"docs", "deploy"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d fs.DirEntry, err error) error {
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return fs.SkipDir
			case err != nil:
				return err
			case d.IsDir() || strings.HasSuffix(path, ".go"):
				return nil
			case dir == "docs" && !strings.HasSuffix(path, ".md"):
				return nil
			}
			files = append(files, path)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// TestImageTags checks that every mention of the kit's image, in the
// Dockerfile's comment, the READMEs, compose.yaml and the Deployment, has
// one tag: go.mod's Caddy version.
func TestImageTags(t *testing.T) {
	t.Parallel()
	want := "caddy-export-download:" + strings.TrimPrefix(caddyVersion(t), "v")
	imageRE := regexp.MustCompile(`caddy-export-download:[A-Za-z0-9][A-Za-z0-9._-]*`)
	seen := make(map[string]bool)
	for _, f := range docFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(repoRoot, f)
		for _, m := range imageRE.FindAllString(string(b), -1) {
			seen[rel] = true
			if m != want {
				t.Errorf("%s names the image %s, want %s", rel, m, want)
			}
		}
	}
	for _, rel := range []string{"deploy/docker/Dockerfile", "deploy/docker/README.md", "deploy/docker/compose.yaml", "deploy/kubernetes/deployment.yaml"} {
		if !seen[rel] {
			t.Errorf("%s does not name the image %s", rel, want)
		}
	}
}

// TestMemoryFigures checks the Deployment's memory comment against the
// measurement it quotes: the heap of 100,000 entries that
// TestHeap100kEntries records in the benchmarks' table.
func TestMemoryFigures(t *testing.T) {
	t.Parallel()
	dep := readFile(t, "deploy/kubernetes/deployment.yaml")
	m := regexp.MustCompile(`About (\d+)–(\d+) bytes[^.]*?TestHeap100kEntries[\s\S]*?some (\d+) MiB`).FindStringSubmatch(dep)
	if m == nil {
		t.Fatal("deployment.yaml: no \"About N–M bytes … TestHeap100kEntries … some N MiB\" memory comment")
	}
	rowRE := regexp.MustCompile(`(?m)^\|.*?([0-9.]+) MiB \((\d+) B per entry.*\x60TestHeap100kEntries\x60`)
	var row []string
	for _, f := range docFiles(t) {
		if b, err := os.ReadFile(f); err == nil && strings.HasSuffix(f, ".md") {
			if r := rowRE.FindStringSubmatch(string(b)); r != nil {
				row = r
				break
			}
		}
	}
	if row == nil {
		t.Fatal("no benchmarks table row with TestHeap100kEntries's heap (\"41.2 MiB (432 B per entry …) | `TestHeap100kEntries`\")")
	}
	measuredMiB, _ := strconv.ParseFloat(row[1], 64)
	perEntry, _ := strconv.Atoi(row[2])
	low, _ := strconv.Atoi(m[1])
	mib, _ := strconv.Atoi(m[3])
	if math.Round(measuredMiB) != float64(mib) {
		t.Errorf("deployment.yaml says %d MiB for 100,000 entries; TestHeap100kEntries measured %s MiB", mib, row[1])
	}
	if low > perEntry || perEntry-low >= 10 {
		t.Errorf("deployment.yaml says from %d bytes per answer; TestHeap100kEntries measured %d", low, perEntry)
	}
}

// listenPorts returns the ports each server of an adapted config listens on.
func listenPorts(t *testing.T, cfg map[string]any) map[int]map[string]any {
	t.Helper()
	servers, _ := dig(cfg, "apps", "http", "servers").(map[string]any)
	ports := make(map[int]map[string]any)
	for name, s := range servers {
		srv := s.(map[string]any)
		for _, l := range srv["listen"].([]any) {
			addr := l.(string)
			p, err := strconv.Atoi(addr[strings.LastIndex(addr, ":")+1:])
			if err != nil {
				t.Fatalf("server %s: listen %q", name, addr)
			}
			ports[p] = srv
		}
	}
	return ports
}

func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// TestCaddyfilesAdapt adapts every Caddyfile of the kit with the built
// Caddy, with its required settings and with the fleet block, and checks
// that without a required setting Caddy refuses it at that setting's line.
// With the fleet block: max_staleness is shown (5s) and set by
// FLEET_MAX_STALENESS, the Sentinel's master name is left to provision
// ({env.REDIS_SENTINEL_MASTER}), REDIS_ADDRESS may hold several addresses,
// and the block's own commented lines adapt once uncommented.
func TestCaddyfilesAdapt(t *testing.T) {
	t.Parallel()
	bin := caddyBinary(t)
	for _, rel := range []string{"deploy/docker/Caddyfile", "deploy/systemd/Caddyfile"} {
		t.Run(rel, func(t *testing.T) {
			path := filepath.Join(repoRoot, rel)
			text := readFile(t, rel)
			required := map[string]string{
				"CREDENTIALS_DIRECTORY": "/run/credentials/caddy-export-download.service",
				"APP_UPSTREAM":          "http://app.test:8080",
				"S3_BUCKET":             "exports-test",
			}
			cfg := adapt(t, bin, path, required)
			ports := listenPorts(t, cfg)
			if _, ok := ports[9180]; !ok {
				t.Errorf("no server on the metrics port 9180: %v", ports)
			}
			body, _ := json.Marshal(cfg)
			if !bytes.Contains(body, []byte(`"handler":"export_download"`)) {
				t.Error("no export_download handler in the adapted config")
			}
			if bytes.Contains(body, []byte("REPLACE-ME")) {
				t.Error("a secret value reached the adapted config")
			}

			// A required setting missing: refused, at its line.
			for _, c := range []struct{ name, directive string }{
				{"APP_UPSTREAM", "upstream {$APP_UPSTREAM}"},
				{"S3_BUCKET", "bucket {$S3_BUCKET}"},
			} {
				env := maps.Clone(required)
				delete(env, c.name)
				out := adaptRefused(t, bin, path, env)
				if want := fmt.Sprintf("%s:%d", filepath.Base(path), lineOf(text, c.directive)); !strings.Contains(out, want) {
					t.Errorf("without %s: want the refusal to name %s (%q), got:\n%s", c.name, want, c.directive, out)
				}
			}

			fleet := filepath.Join(t.TempDir(), "Caddyfile")
			if err := os.WriteFile(fleet, []byte(uncommentFleet(t, text)), 0o600); err != nil {
				t.Fatal(err)
			}
			withFleet := maps.Clone(required)
			withFleet["REDIS_ADDRESS"] = "redis.test:6379"
			block := fleetBlock(t, adapt(t, bin, fleet, withFleet))
			// max_staleness is shown (its default, 5s) and can be set; the
			// Sentinel's master name is read at provision ("" when unset).
			if got := block["max_staleness"]; got != "5s" {
				t.Errorf("fleet max_staleness %v, want 5s shown", got)
			}
			if got := block["sentinel"]; got != "{env.REDIS_SENTINEL_MASTER}" {
				t.Errorf("fleet sentinel %v, want {env.REDIS_SENTINEL_MASTER}", got)
			}
			withStaleness := maps.Clone(withFleet)
			withStaleness["FLEET_MAX_STALENESS"] = "1s"
			if got := fleetBlock(t, adapt(t, bin, fleet, withStaleness))["max_staleness"]; got != "1s" {
				t.Errorf("with FLEET_MAX_STALENESS=1s: max_staleness %v", got)
			}
			// The fleet block's own commented lines (the Sentinels' login
			// in the systemd Caddyfile), uncommented too, still adapt.
			nested := regexp.MustCompile(`(?m)^(\s*)# ((?:sentinel_username|sentinel_password) .*)$`)
			if all := nested.ReplaceAllString(uncommentFleet(t, text), "$1$2"); all != uncommentFleet(t, text) {
				path := filepath.Join(t.TempDir(), "Caddyfile")
				if err := os.WriteFile(path, []byte(all), 0o600); err != nil {
					t.Fatal(err)
				}
				if got := fleetBlock(t, adapt(t, bin, path, withFleet))["sentinel_password"]; got == nil {
					t.Error("the commented sentinel_password line, uncommented, sets no sentinel_password")
				}
			}
			// Several addresses in one variable (the Sentinels) are several.
			withFleet["REDIS_ADDRESS"] = "sentinel-1:26379 sentinel-2:26379"
			if got := fleetBlock(t, adapt(t, bin, fleet, withFleet))["redis"]; !reflect.DeepEqual(got, []any{"sentinel-1:26379", "sentinel-2:26379"}) {
				t.Errorf("REDIS_ADDRESS with two addresses: redis %v", got)
			}
			// The fleet's address has no default either.
			if out := adaptRefused(t, bin, fleet, required); !strings.Contains(out, "redis") {
				t.Errorf("the fleet block without REDIS_ADDRESS: want a refusal naming redis, got:\n%s", out)
			}
		})
	}
}

// fleetBlock returns the fleet block of the (only) export_download
// handler of an adapted config.
func fleetBlock(t *testing.T, cfg map[string]any) map[string]any {
	t.Helper()
	var found map[string]any
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			if x["handler"] == "export_download" {
				found, _ = x["fleet"].(map[string]any)
			}
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(cfg)
	if found == nil {
		t.Fatal("no export_download handler with a fleet block in the adapted config")
	}
	return found
}

// ------------------------------------------------------------------- Docker

// TestDockerfile checks that the Dockerfile builds the Caddy version of
// go.mod with the xcaddy command that xcaddy.md documents for a checkout.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	version := caddyVersion(t) // v2.11.9
	tag := strings.TrimPrefix(version, "v")

	instructions := dockerInstructions(readFile(t, "deploy/docker/Dockerfile"))
	var froms, runs, copies []string
	for _, in := range instructions {
		word, rest, _ := strings.Cut(in, " ")
		switch strings.ToUpper(word) {
		case "FROM":
			froms = append(froms, rest)
		case "RUN":
			runs = append(runs, rest)
		case "COPY":
			copies = append(copies, rest)
		}
	}
	wantFroms := []string{"caddy:" + tag + "-builder AS builder", "caddy:" + tag}
	if !slices.Equal(froms, wantFroms) {
		t.Errorf("FROM lines %q, want %q (go.mod's Caddy %s)", froms, wantFroms, version)
	}

	documented := documentedOfflineBuild(t)
	if !strings.Contains(documented, "xcaddy build "+version+" ") {
		t.Errorf("xcaddy.md builds %q, not go.mod's Caddy %s", documented, version)
	}
	want := documented + " --output /usr/bin/caddy"
	if !slices.Contains(runs, want) {
		t.Errorf("no RUN %q in the Dockerfile; RUN lines: %q", want, runs)
	}
	if !slices.Contains(copies, "--from=builder /usr/bin/caddy /usr/bin/caddy") {
		t.Errorf("the binary is not copied from the builder: %q", copies)
	}
	for _, c := range copies {
		f := strings.Fields(c)
		if strings.HasPrefix(f[0], "--from") || f[0] == "." {
			continue
		}
		if _, err := os.Stat(filepath.Join(repoRoot, f[0])); err != nil {
			t.Errorf("COPY %s: %v (the build context is the repository root)", f[0], err)
		}
	}
}

// dockerInstructions joins continuation lines and drops comments.
func dockerInstructions(dockerfile string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(dockerfile, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		cont := strings.HasSuffix(trimmed, "\\")
		cur.WriteString(strings.TrimSuffix(trimmed, "\\"))
		cur.WriteString(" ")
		if !cont {
			if s := strings.Join(strings.Fields(cur.String()), " "); s != "" {
				out = append(out, s)
			}
			cur.Reset()
		}
	}
	return out
}

// documentedOfflineBuild returns xcaddy.md's command for a checkout that
// works before the module is published, on one line.
func documentedOfflineBuild(t *testing.T) string {
	t.Helper()
	doc := readFile(t, "xcaddy.md")
	blocks := strings.Split(doc, "```")
	for i := 1; i < len(blocks); i += 2 {
		b := blocks[i]
		if strings.Contains(b, "GONOSUMDB") && strings.Contains(b, "xcaddy build") && strings.Contains(b, "@v0.0.0=.") {
			return strings.Join(strings.Fields(strings.ReplaceAll(b, "\\\n", " ")), " ")
		}
	}
	t.Fatal("xcaddy.md has no offline `GOPRIVATE=… GONOSUMDB=… xcaddy build … @v0.0.0=.` block")
	return ""
}

// composeService is what the tests read of a compose service.
type composeService struct {
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	ReadOnly    bool              `yaml:"read_only"`
	CapDrop     []string          `yaml:"cap_drop"`
	User        string            `yaml:"user"`
	DependsOn   []string          `yaml:"depends_on"`
}

// composeVarRE matches compose's interpolation: ${NAME}, ${NAME:-default},
// ${NAME-default}, ${NAME:?message}, ${NAME?message}, and $$ (a "$").
var composeVarRE = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}`)

// withoutComments drops a YAML file's comment lines, which compose does
// not interpolate.
func withoutComments(text string) string {
	var b strings.Builder
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// composeVars returns the variables a compose file reads: "yes" for a
// required one (${NAME:?…}), else "no".
func composeVars(text string) map[string]string {
	out := make(map[string]string)
	for _, m := range composeVarRE.FindAllStringSubmatch(withoutComments(text), -1) {
		if m[1] == "" {
			continue
		}
		if m[2] == ":?" || m[2] == "?" {
			out[m[1]] = "yes"
		} else if out[m[1]] == "" {
			out[m[1]] = "no"
		}
	}
	return out
}

// interpolate substitutes a compose file's variables from env as compose
// does, and fails as compose does on a required one that is unset or
// empty, naming it.
func interpolate(text string, env map[string]string) (string, error) {
	var err error
	out := composeVarRE.ReplaceAllStringFunc(withoutComments(text), func(m string) string {
		if m == "$$" {
			return "$"
		}
		sm := composeVarRE.FindStringSubmatch(m)
		name, op, arg := sm[1], sm[2], sm[3]
		v, set := env[name]
		switch {
		case op == ":-" && v == "", op == "-" && !set:
			return arg
		case (op == ":?" && v == "") || (op == "?" && !set):
			if err == nil {
				err = fmt.Errorf("required variable %s is missing a value: %s", name, arg)
			}
		}
		return v
	})
	return out, err
}

// loadCompose interpolates compose files with env and merges them in
// order, as `docker compose -f a -f b` does for what the tests read:
// services are added, environments merged, depends_on joined.
func loadCompose(t *testing.T, env map[string]string, texts ...string) (map[string]*composeService, error) {
	t.Helper()
	model := make(map[string]*composeService)
	for _, text := range texts {
		src, err := interpolate(text, env)
		if err != nil {
			return nil, err
		}
		var f struct {
			Services map[string]*composeService `yaml:"services"`
		}
		if err := yaml.Unmarshal([]byte(src), &f); err != nil {
			t.Fatal(err)
		}
		for name, s := range f.Services {
			cur, ok := model[name]
			if !ok {
				model[name] = s
				continue
			}
			if cur.Environment == nil {
				cur.Environment = make(map[string]string)
			}
			maps.Copy(cur.Environment, s.Environment)
			for _, d := range s.DependsOn {
				if !slices.Contains(cur.DependsOn, d) {
					cur.DependsOn = append(cur.DependsOn, d)
				}
			}
			if s.Image != "" {
				cur.Image = s.Image
			}
			if s.Command != nil {
				cur.Command = s.Command
			}
		}
	}
	return model, nil
}

// envExample reads env.example's NAME=value lines.
func envExample(t *testing.T) map[string]string {
	t.Helper()
	out := make(map[string]string)
	for _, line := range strings.Split(readFile(t, "deploy/docker/env.example"), "\n") {
		if name, value, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			out[name] = value
		}
	}
	return out
}

// fleetOverlays are the compose files that add the fleet tier to
// compose.yaml (one or the other), and the services each adds.
var fleetOverlays = []struct {
	file     string
	services []string
}{
	{"compose.fleet.yaml", []string{"valkey"}},
	{"compose.sentinel.yaml", []string{"sentinel-1", "sentinel-2", "sentinel-3", "valkey-primary", "valkey-replica"}},
}

// TestCompose checks compose.yaml and the fleet overlays against the
// Dockerfile, the Caddyfile they mount and env.example, interpolated as
// compose does: without an overlay, no fleet variable is needed; with one,
// its secrets are required; a required value left empty (as env.example
// ships) stops compose, naming it. For the overlays, it also checks the
// fleet's Redis users and the Sentinel set's wiring.
func TestCompose(t *testing.T) {
	t.Parallel()
	base := readFile(t, "deploy/docker/compose.yaml")
	caddyfile := readFile(t, "deploy/docker/Caddyfile")
	var fleetVars []string
	for name, class := range caddyfileVars(t, caddyfile) {
		if class == "fleet" {
			fleetVars = append(fleetVars, name)
		}
	}
	if len(fleetVars) == 0 {
		t.Fatal("the Caddyfile's fleet block reads no variable of its own")
	}

	// env.example lists every variable each file reads.
	example := envExample(t)
	baseVars := composeVars(base)
	allVars := []map[string]string{baseVars}
	for _, o := range fleetOverlays {
		allVars = append(allVars, composeVars(readFile(t, "deploy/docker/"+o.file)))
	}
	for _, vars := range allVars {
		for name := range vars {
			if _, ok := example[name]; !ok {
				t.Errorf("compose reads ${%s}, env.example does not list it", name)
			}
		}
	}
	for _, name := range fleetVars {
		if _, ok := baseVars[name]; ok {
			t.Errorf("compose.yaml reads ${%s}, which only the fleet block needs: it belongs in the fleet overlays", name)
		}
	}

	// Every listed variable filled in but the overlays' own.
	filled := make(map[string]string)
	for name := range example {
		filled[name] = "test-" + strings.ToLower(name)
	}
	for _, vars := range allVars[1:] {
		for name := range vars {
			if _, ok := baseVars[name]; !ok {
				delete(filled, name)
			}
		}
	}
	noFleet, err := loadCompose(t, filled, base)
	if err != nil {
		t.Fatalf("compose.yaml with the fleet off and no fleet variable: %v", err)
	}
	for name, class := range baseVars {
		if class != "yes" {
			continue
		}
		env := maps.Clone(filled)
		env[name] = ""
		if _, err := loadCompose(t, env, base); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("compose.yaml with %s empty: %v, want a refusal naming it", name, err)
		}
	}
	if _, err := loadCompose(t, example, base); err == nil {
		t.Error("env.example as shipped passes compose.yaml's required variables: its values would be used as they are")
	}
	checkCompose(t, "compose.yaml", noFleet, caddyfile, []string{"app", "caddy-1", "caddy-2"})

	for i, o := range fleetOverlays {
		overlay, vars := readFile(t, "deploy/docker/"+o.file), allVars[i+1]
		what := "compose.yaml + " + o.file
		if _, err := loadCompose(t, filled, base, overlay); err == nil {
			t.Errorf("%s without the fleet's secrets: accepted, want a refusal", o.file)
		}
		withFleet := maps.Clone(filled)
		for name := range vars {
			withFleet[name] = "test-" + strings.ToLower(name)
		}
		for name, class := range vars {
			if class != "yes" {
				continue
			}
			env := maps.Clone(withFleet)
			env[name] = ""
			if _, err := loadCompose(t, env, base, overlay); err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("%s with %s empty: %v, want a refusal naming it", what, name, err)
			}
		}
		model, err := loadCompose(t, withFleet, base, overlay)
		if err != nil {
			t.Fatalf("%s with the fleet's secrets: %v", what, err)
		}
		checkCompose(t, what, model, uncommentFleet(t, caddyfile), slices.Sorted(slices.Values(append([]string{"app", "caddy-1", "caddy-2"}, o.services...))))
		checkFleetUsers(t, what, model)
	}
}

// fleetACL and sentinelACL are the rules of the fleet's Redis users
// (deploy/README.md, "The fleet's Redis users"): the Caddy nodes' user on
// Redis or Valkey (the data nodes of a Sentinel set included), and their
// user on the Sentinels. The compose files define exactly these;
// TestComposeFleetRuns shows, with a real redis-server, that the nodes need
// nothing more.
const (
	fleetACL = "~export_download:* -@all +get +set +del +exists +pttl +pexpire +eval +evalsha" +
		" +xadd +xread +xinfo|stream +multi +exec +time +info +role +wait +ping +cluster|slots +cluster|shards"
	sentinelACL = "-@all +ping +sentinel|get-master-addr-by-name +sentinel|sentinels +subscribe +unsubscribe" +
		" &+sentinel &+slave &-sdown &+sdown &+switch-master &+reboot"
)

// aclUser is a user that a Redis command line (--user …) or configuration
// file (user …) defines.
type aclUser struct {
	on        bool
	passwords []string
	rules     []string // sorted, without on/off, passwords and resets
}

func parseACLUser(tokens []string) aclUser {
	var u aclUser
	for _, tok := range tokens {
		switch {
		case tok == "on":
			u.on = true
		case tok == "off":
			u.on = false
		case strings.HasPrefix(tok, ">"):
			u.passwords = append(u.passwords, tok[1:])
		case tok == "resetchannels" || tok == "resetkeys" || tok == "resetpass" || tok == "reset":
		default:
			u.rules = append(u.rules, tok)
		}
	}
	slices.Sort(u.rules)
	return u
}

// commandUsers returns the users a redis-server or valkey-server command
// line defines with --user.
func commandUsers(argv []string) map[string]aclUser {
	users := make(map[string]aclUser)
	for i := 0; i < len(argv); i++ {
		if argv[i] != "--user" || i+1 >= len(argv) {
			continue
		}
		j := i + 2
		for j < len(argv) && !strings.HasPrefix(argv[j], "--") {
			j++
		}
		users[argv[i+1]] = parseACLUser(argv[i+2 : j])
		i = j - 1
	}
	return users
}

// scriptUsers returns the users of the `user …` lines of a Sentinel's
// start script (the configuration it writes).
func scriptUsers(script string) map[string]aclUser {
	users := make(map[string]aclUser)
	for _, line := range strings.Split(script, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "user" {
			users[f[1]] = parseACLUser(f[2:])
		}
	}
	return users
}

func sortedFields(s string) []string {
	f := strings.Fields(s)
	slices.Sort(f)
	return f
}

// isSentinel reports whether a service runs a Sentinel (its start script
// ends in `… --sentinel`), and returns the script.
func isSentinel(s *composeService) (string, bool) {
	if len(s.Command) == 3 && s.Command[0] == "sh" && s.Command[1] == "-c" && strings.Contains(s.Command[2], " --sentinel") {
		return s.Command[2], true
	}
	return "", false
}

// checkFleetUsers checks a fleet overlay's Redis side: the Caddy nodes log
// in as a user that every data node defines with fleetACL and the password
// the nodes are given; with Sentinel, as a user every Sentinel defines
// with sentinelACL, the Sentinels monitor the master set the nodes name,
// the nodes' addresses are the Sentinels at their port, one data node is
// the primary and the others replicate it, and every server announces its
// service name.
func checkFleetUsers(t *testing.T, what string, model map[string]*composeService) {
	t.Helper()
	node := model["caddy-1"]
	env := node.Environment
	data := make(map[string]*composeService)
	sentinels := make(map[string]string) // service → start script
	for name, s := range model {
		if script, ok := isSentinel(s); ok {
			sentinels[name] = script
		} else if len(s.Command) > 0 && s.Command[0] == "valkey-server" {
			data[name] = s
		}
	}
	if len(data) == 0 {
		t.Fatalf("%s: no service runs valkey-server", what)
	}
	for name, s := range data {
		u, ok := commandUsers(s.Command)[env["REDIS_USERNAME"]]
		switch {
		case env["REDIS_USERNAME"] == "":
			t.Errorf("%s: the nodes log in as the default user; want a user limited to the fleet", what)
		case !ok:
			t.Errorf("%s: %s does not define the nodes' user %q", what, name, env["REDIS_USERNAME"])
		case !u.on || !slices.Equal(u.passwords, []string{env["REDIS_PASSWORD"]}):
			t.Errorf("%s: %s: user %s is not on with the nodes' REDIS_PASSWORD", what, name, env["REDIS_USERNAME"])
		case !slices.Equal(u.rules, sortedFields(fleetACL)):
			t.Errorf("%s: %s: user %s has rules %q, want %q", what, name, env["REDIS_USERNAME"], u.rules, fleetACL)
		}
		// The default user has a password or is off (protected mode refuses
		// other hosts otherwise).
		if d, ok := commandUsers(s.Command)["default"]; !(ok && !d.on) && !slices.Contains(s.Command, "--requirepass") {
			t.Errorf("%s: %s: the default user is neither off nor given a password", what, name)
		}
	}
	if len(sentinels) == 0 {
		if env["REDIS_SENTINEL_MASTER"] != "" {
			t.Errorf("%s: REDIS_SENTINEL_MASTER set without Sentinels", what)
		}
		return
	}

	master := env["REDIS_SENTINEL_MASTER"]
	if master == "" {
		t.Fatalf("%s: Sentinels, but the nodes' REDIS_SENTINEL_MASTER is empty", what)
	}
	var addrs []string
	for _, a := range strings.Fields(env["REDIS_ADDRESS"]) {
		host, _, _ := strings.Cut(a, ":")
		addrs = append(addrs, host)
		if script, ok := sentinels[host]; !ok {
			t.Errorf("%s: REDIS_ADDRESS %s is not a Sentinel", what, a)
		} else if !strings.Contains(script, "\nport "+strings.TrimPrefix(a, host+":")+"\n") {
			t.Errorf("%s: REDIS_ADDRESS %s: the Sentinel does not listen on that port", what, a)
		}
	}
	if slices.Sort(addrs); !slices.Equal(addrs, slices.Sorted(maps.Keys(sentinels))) {
		t.Errorf("%s: REDIS_ADDRESS %q, want every Sentinel", what, env["REDIS_ADDRESS"])
	}
	var primary string
	for name, s := range data {
		if i := slices.Index(s.Command, "--replicaof"); i < 0 {
			if primary != "" {
				t.Errorf("%s: %s and %s are both primaries", what, primary, name)
			}
			primary = name
		}
		if i := slices.Index(s.Command, "--replica-announce-ip"); i < 0 || i+1 >= len(s.Command) || s.Command[i+1] != name {
			t.Errorf("%s: %s does not announce its service name (--replica-announce-ip %s)", what, name, name)
		}
		if !slices.Contains(s.Command, "--masterauth") {
			t.Errorf("%s: %s has no masterauth: it cannot follow a new primary", what, name)
		}
	}
	for name, s := range data {
		if i := slices.Index(s.Command, "--replicaof"); i >= 0 && (i+2 >= len(s.Command) || s.Command[i+1] != primary || s.Command[i+2] != "6379") {
			t.Errorf("%s: %s replicates %q, want %s 6379", what, name, s.Command[i+1:], primary)
		}
	}
	monitor := regexp.MustCompile(`(?m)^sentinel monitor (\S+) (\S+) (\d+) (\d+)$`)
	for name, script := range sentinels {
		m := monitor.FindStringSubmatch(script)
		if m == nil || m[1] != master || m[2] != primary || m[3] != "6379" {
			t.Errorf("%s: %s monitors %q, want master set %s at %s 6379", what, name, m, master, primary)
		} else if q, _ := strconv.Atoi(m[4]); q <= len(sentinels)/2 || q > len(sentinels) {
			t.Errorf("%s: quorum %d of %d Sentinels: want a majority", what, q, len(sentinels))
		}
		if model[name].Environment["SENTINEL_HOSTNAME"] != name || !strings.Contains(script, "sentinel announce-ip $SENTINEL_HOSTNAME") {
			t.Errorf("%s: %s does not announce its service name", what, name)
		}
		u, ok := scriptUsers(script)[env["REDIS_SENTINEL_USERNAME"]]
		switch {
		case env["REDIS_SENTINEL_USERNAME"] == "":
			t.Errorf("%s: the nodes log in to the Sentinels as the default user", what)
		case !ok:
			t.Errorf("%s: %s does not define the nodes' Sentinel user %q", what, name, env["REDIS_SENTINEL_USERNAME"])
		case !u.on || !slices.Equal(u.passwords, []string{"$REDIS_SENTINEL_PASSWORD"}) ||
			model[name].Environment["REDIS_SENTINEL_PASSWORD"] != env["REDIS_SENTINEL_PASSWORD"]:
			t.Errorf("%s: %s: user %s is not on with the nodes' REDIS_SENTINEL_PASSWORD", what, name, env["REDIS_SENTINEL_USERNAME"])
		case !slices.Equal(u.rules, sortedFields(sentinelACL)):
			t.Errorf("%s: %s: user %s has rules %q, want %q", what, name, env["REDIS_SENTINEL_USERNAME"], u.rules, sentinelACL)
		}
	}
}

// checkCompose checks one compose model: its services, and that its
// Caddy nodes are built from the Dockerfile, mount the Caddyfile, set
// every variable it reads, and run with least privilege.
func checkCompose(t *testing.T, what string, model map[string]*composeService, caddyfile string, services []string) {
	t.Helper()
	if got := slices.Sorted(maps.Keys(model)); !slices.Equal(got, services) {
		t.Errorf("%s: services %q, want %q", what, got, services)
	}
	provision, adaptRequired := placeholders(caddyfile)
	nodes := 0
	for name, s := range model {
		for _, d := range s.DependsOn {
			if _, ok := model[d]; !ok {
				t.Errorf("%s: %s depends on %q, which is not a service here", what, name, d)
			}
		}
		if s.Build == nil {
			continue
		}
		nodes++
		if got := filepath.Join(repoRoot, "deploy/docker", s.Build.Context); got != repoRoot {
			t.Errorf("%s: %s: build context %s, want the repository root", what, name, got)
		}
		if s.Build.Dockerfile != "deploy/docker/Dockerfile" {
			t.Errorf("%s: %s: dockerfile %q", what, name, s.Build.Dockerfile)
		}
		if !slices.Contains(s.Volumes, "./Caddyfile:/etc/caddy/Caddyfile:ro") {
			t.Errorf("%s: %s: the Caddyfile is not mounted read-only at /etc/caddy/Caddyfile: %q", what, name, s.Volumes)
		}
		for _, v := range append(provision, adaptRequired...) {
			if s.Environment[v] == "" && !optionalAtProvision[v] {
				t.Errorf("%s: %s: the Caddyfile reads %s, which the service does not set", what, name, v)
			}
		}
		for _, v := range []string{"APP_UPSTREAM", "REDIS_ADDRESS"} {
			value, ok := s.Environment[v]
			if !ok {
				continue
			}
			for _, addr := range strings.Fields(value) {
				host := strings.TrimPrefix(addr, "http://")
				host, _, _ = strings.Cut(host, ":")
				if _, ok := model[host]; !ok {
					t.Errorf("%s: %s: %s=%q names no service", what, name, v, value)
				}
			}
		}
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") || !strings.HasSuffix(p, ":8080") {
				t.Errorf("%s: %s: port %q: want 127.0.0.1:<host port>:8080", what, name, p)
			}
		}
		if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") || s.User == "" || strings.HasPrefix(s.User, "0") {
			t.Errorf("%s: %s: want read_only, cap_drop ALL and a non-root user", what, name)
		}
	}
	if nodes != 2 {
		t.Errorf("%s: %d Caddy nodes built from the Dockerfile, want 2", what, nodes)
	}
}

// ------------------------------------------------ the fleet overlays, run

// redisDo sends one command to the Redis server or Sentinel at addr, after
// AUTH when password is set, and returns the reply as text.
func redisDo(addr, user, password string, args ...string) (string, error) {
	return testenv.RedisCommand(addr, user, password, args...)
}

// localNet stands for a compose network: each service is 127.0.0.1 and a
// port of its own.
type localNet map[string]int

// fields rewrites "<service>:<port>", and "<service>" with the port as the
// next field, to 127.0.0.1 and the service's port here; a lone
// "<service>" (an announced name) to 127.0.0.1.
func (n localNet) fields(f []string) []string {
	f = slices.Clone(f)
	for i := 0; i < len(f); i++ {
		host, _, hasPort := strings.Cut(f[i], ":")
		p, ok := n[host]
		if !ok {
			continue
		}
		if hasPort {
			f[i] = "127.0.0.1:" + strconv.Itoa(p)
			continue
		}
		f[i] = "127.0.0.1"
		if i+1 < len(f) && f[i+1] != "" && strings.Trim(f[i+1], "0123456789") == "" {
			f[i+1] = strconv.Itoa(p)
			i++
		}
	}
	return f
}

// text rewrites the lines of s that name a service, as fields does.
func (n localNet) text(s string) string {
	lines := strings.Split(s, "\n")
	for i, line := range lines {
		f := strings.Fields(line)
		if g := n.fields(f); !slices.Equal(f, g) {
			lines[i] = line[:len(line)-len(strings.TrimLeft(line, " \t"))] + strings.Join(g, " ")
		}
	}
	return strings.Join(lines, "\n")
}

// localServer is a compose service's server run here.
type localServer struct {
	name, addr string
	cmd        *exec.Cmd
	out        *syncBuffer
	exited     chan struct{}
}

// Test-only administrator added to the data nodes, to read their ACL LOG
// and replication state whatever the compose file's default user is.
const testAdmin, testAdminPass = "kit-test-admin", "kit-test-admin-pass"

// startLocalServer starts cmd and waits until addr answers (any reply,
// NOAUTH included). It is stopped when the test ends.
func startLocalServer(t *testing.T, name, addr string, cmd *exec.Cmd) *localServer {
	t.Helper()
	s := &localServer{name: name, addr: addr, cmd: cmd, out: new(syncBuffer), exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(s.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := redisDo(addr, "", "", "PING")
		var re testenv.RedisError
		if err == nil || errors.As(err, &re) {
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("%s exited before it answered:\n%s", name, s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not answering on %s after 20s (%v):\n%s", name, addr, err, s.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the server (SIGTERM, then SIGKILL after 10s) and waits for it.
func (s *localServer) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// startOverlayServer runs one Redis-side service of a fleet overlay as the
// compose file says, in dir: valkey-server as redis-server (its command
// plus this test's port, and the test's administrator), or a Sentinel's
// start script under sh with an entrypoint that runs redis-server.
func startOverlayServer(t *testing.T, n localNet, name string, s *composeService, dir string) *localServer {
	t.Helper()
	redisServer := requireTool(t, "redis-server", "install Debian's package: apt-get install -y redis-server")
	addr := "127.0.0.1:" + strconv.Itoa(n[name])
	if script, ok := isSentinel(s); ok {
		// The image's docker-entrypoint.sh, here: runs redis-server for
		// valkey-server, on the service's port.
		bin := filepath.Join(dir, "bin")
		entry := fmt.Sprintf("#!/bin/sh\n[ \"$1\" = valkey-server ] || { echo \"entrypoint: want valkey-server, got $1\" >&2; exit 90; }\nshift\nexec %s \"$@\" --port %d --bind 127.0.0.1\n", redisServer, n[name])
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bin, "docker-entrypoint.sh"), []byte(entry), 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", n.text(script))
		cmd.Dir = dir
		cmd.Env = []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "HOME=" + dir}
		for k, v := range s.Environment {
			cmd.Env = append(cmd.Env, k+"="+n.text(v))
		}
		return startLocalServer(t, name, addr, cmd)
	}
	if len(s.Command) == 0 || s.Command[0] != "valkey-server" {
		t.Fatalf("%s: command %q: want valkey-server or a Sentinel's start script", name, s.Command)
	}
	args := append(n.fields(s.Command[1:]),
		"--port", strconv.Itoa(n[name]), "--bind", "127.0.0.1", "--dir", dir, "--daemonize", "no", "--logfile", "",
		// A replica's sync starts at once, not after 5s.
		"--repl-diskless-sync-delay", "0",
		"--user", testAdmin, "on", ">"+testAdminPass, "~*", "&*", "+@all")
	cmd := exec.Command(redisServer, args...)
	cmd.Dir = dir
	return startLocalServer(t, name, addr, cmd)
}

// metricValue returns the value of the sample of name with the label
// fleet=fleet on a /metrics page, or "" if there is none.
func metricValue(t *testing.T, url, name, fleet string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	prefix := name + `{fleet="` + fleet + `"} `
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			return v
		}
	}
	return ""
}

// waitFor polls cond every 50 ms until it is true, and fails the test
// with what after 20 s (a bound only a hang exceeds).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 20s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestComposeFleetRuns runs each fleet overlay's Redis side as local
// processes, from the commands the compose file gives (valkey-server is
// redis-server here, each Sentinel's start script runs under sh, and each
// service name with its port is 127.0.0.1 and a port of this test), then
// two Caddy nodes with the container Caddyfile, its fleet block
// uncommented, and the environment the overlay gives them. Both read the
// fleet's stream (fleet_up 1 under the overlay's fleet label); the second
// node redirects from the first one's shared decision without asking the
// app; an admin API purge on the first reaches the second; and no server
// logged an ACL refusal of the nodes' users. With Sentinel, the replica is
// in sync; after a SENTINEL FAILOVER the nodes follow the promoted replica,
// a purge still reaches the other node, the old primary replicates the new
// one (masterauth) and both hold the purges' events; and a Sentinel started
// again with new passwords keeps its state and takes them.
func TestComposeFleetRuns(t *testing.T) {
	t.Parallel()
	bin := caddyBinary(t)
	requireTool(t, "redis-server", "install Debian's package: apt-get install -y redis-server")
	base := readFile(t, "deploy/docker/compose.yaml")
	caddyfile := filepath.Join(t.TempDir(), "Caddyfile")
	// A generous fleet timeout (the kit leaves the 50 ms default): the test
	// counts the app's requests, and a Redis call that a loaded CI machine
	// delays past 50 ms is an unavailable lookup and one more request.
	fleetText := uncommentFleet(t, readFile(t, "deploy/docker/Caddyfile"))
	withTimeout := strings.Replace(fleetText, "max_staleness {$FLEET_MAX_STALENESS", "timeout 1s\n\t\t\tmax_staleness {$FLEET_MAX_STALENESS", 1)
	if withTimeout == fleetText {
		t.Fatal("the kit's fleet block has no max_staleness line to put the timeout before")
	}
	if err := os.WriteFile(caddyfile, []byte(withTimeout), 0o600); err != nil {
		t.Fatal(err)
	}
	// Hex values, as env.example asks for (the Sentinels' script writes
	// them into their configuration), one per variable.
	env := make(map[string]string)
	for name := range envExample(t) {
		sum := sha256.Sum256([]byte(name))
		env[name] = hex.EncodeToString(sum[:])
	}
	for _, o := range fleetOverlays {
		t.Run(o.file, func(t *testing.T) {
			overlay := readFile(t, "deploy/docker/"+o.file)
			model, err := loadCompose(t, env, base, overlay)
			if err != nil {
				t.Fatal(err)
			}
			nodeEnv, err := loadCompose(t, env, overlay)
			if err != nil {
				t.Fatal(err)
			}
			n := make(localNet)
			for _, name := range o.services {
				n[name] = freePort(t)
			}
			// Data nodes first, the primary before its replicas, then the
			// Sentinels.
			order := slices.Clone(o.services)
			slices.SortStableFunc(order, func(a, b string) int {
				rank := func(name string) int {
					switch {
					case strings.HasPrefix(name, "sentinel"):
						return 2
					case slices.Contains(model[name].Command, "--replicaof"):
						return 1
					}
					return 0
				}
				return rank(a) - rank(b)
			})
			servers := make(map[string]*localServer)
			for _, name := range order {
				servers[name] = startOverlayServer(t, n, name, model[name], t.TempDir())
			}
			admin := env["REDIS_ADMIN_PASSWORD"]
			fleetEnv := nodeEnv["caddy-1"].Environment
			for name := range servers {
				if _, ok := isSentinel(model[name]); ok {
					// Each Sentinel tells the nodes' Sentinel user where
					// the primary is.
					waitFor(t, name+" names the primary", func() bool {
						out, err := redisDo(servers[name].addr, fleetEnv["REDIS_SENTINEL_USERNAME"], fleetEnv["REDIS_SENTINEL_PASSWORD"],
							"SENTINEL", "GET-MASTER-ADDR-BY-NAME", fleetEnv["REDIS_SENTINEL_MASTER"])
						return err == nil && out == "127.0.0.1\n"+strconv.Itoa(n["valkey-primary"])
					})
				} else if slices.Contains(model[name].Command, "--replicaof") {
					waitFor(t, name+" in sync with the primary", func() bool {
						out, err := redisDo(servers[name].addr, testAdmin, testAdminPass, "INFO", "replication")
						return err == nil && strings.Contains(out, "master_link_status:up")
					})
				}
			}

			// Two Caddy nodes, with the overlay's environment for them.
			up := exportsUpstream(t)
			type node struct{ base, metrics, admin string }
			var nodes []node
			var outputs []*syncBuffer
			for range 2 {
				httpPort, metricsPort, adminPort := freePort(t), freePort(t), freePort(t)
				vars := map[string]string{
					"CADDY_BIND":   "127.0.0.1",
					"CADDY_ADMIN":  "127.0.0.1:" + strconv.Itoa(adminPort),
					"HTTP_PORT":    strconv.Itoa(httpPort),
					"METRICS_PORT": strconv.Itoa(metricsPort),
					"APP_UPSTREAM": up.URL,
					"S3_BUCKET":    "exports-test",
					"EDGE_TOKEN":   "edge-token-from-env",
				}
				for k, v := range fleetEnv {
					vars[k] = n.text(v)
				}
				nd := node{
					base:    fmt.Sprintf("http://127.0.0.1:%d", httpPort),
					metrics: fmt.Sprintf("http://127.0.0.1:%d", metricsPort),
					admin:   fmt.Sprintf("http://127.0.0.1:%d", adminPort),
				}
				outputs = append(outputs, startCaddy(t, caddyEnv(t, vars), nd.metrics+"/healthz", bin, "run", "--config", caddyfile, "--adapter", "caddyfile"))
				nodes = append(nodes, nd)
			}
			// The fleet's name: the prefix and the master set, or the
			// first address.
			fleetName := "export_download@" + strings.Fields(n.text(fleetEnv["REDIS_ADDRESS"]))[0]
			if m := fleetEnv["REDIS_SENTINEL_MASTER"]; m != "" {
				fleetName = "export_download@" + m
			}
			for i, nd := range nodes {
				waitFor(t, fmt.Sprintf("node %d: fleet_up{fleet=%q} 1", i+1, fleetName), func() bool {
					return metricValue(t, nd.metrics+"/metrics", "caddy_export_download_fleet_up", fleetName) == "1"
				})
			}

			first := download(t, nodes[0].base, apiKey, completedID)
			second := download(t, nodes[1].base, apiKey, completedID)
			if first.StatusCode != http.StatusFound || second.StatusCode != http.StatusFound {
				t.Fatalf("downloads: %d and %d, want 302", first.StatusCode, second.StatusCode)
			}
			if got := first.Header.Get("Cache-Status"); !strings.HasPrefix(got, "export_download_fleet; fwd=miss; stored") {
				t.Errorf("node 1: Cache-Status %q, want the decision stored in the fleet", got)
			}
			if got := second.Header.Get("Cache-Status"); !strings.HasPrefix(got, "export_download_fleet; hit") {
				t.Errorf("node 2: Cache-Status %q, want a shared hit", got)
			}
			if got := len(up.Requests()); got != 1 {
				t.Errorf("the app was asked %d times for one export on two nodes, want 1", got)
			}

			// A purge on node 1 reaches node 2: its next download asks the
			// app again.
			purgeReaches(t, nodes[0].admin, nodes[1].base, up)

			if _, ok := servers["sentinel-1"]; ok {
				// A failover: the Sentinels promote the replica and make the
				// old primary its replica (masterauth); the nodes follow,
				// and a purge still goes from one node to the other.
				if _, err := redisDo(servers["sentinel-1"].addr, "", admin, "SENTINEL", "FAILOVER", fleetEnv["REDIS_SENTINEL_MASTER"]); err != nil {
					t.Fatalf("SENTINEL FAILOVER: %v", err)
				}
				for _, name := range []string{"sentinel-1", "sentinel-2", "sentinel-3"} {
					waitFor(t, name+" names the promoted replica", func() bool {
						out, err := redisDo(servers[name].addr, "", admin, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", fleetEnv["REDIS_SENTINEL_MASTER"])
						return err == nil && out == "127.0.0.1\n"+strconv.Itoa(n["valkey-replica"])
					})
				}
				for i, nd := range nodes {
					waitFor(t, fmt.Sprintf("node %d: fleet_up 1 after the failover", i+1), func() bool {
						return metricValue(t, nd.metrics+"/metrics", "caddy_export_download_fleet_up", fleetName) == "1"
					})
				}
				purgeReaches(t, nodes[0].admin, nodes[1].base, up)
				// The Sentinels make the old primary a replica of the new
				// one some 10s after a forced failover.
				waitFor(t, "the old primary in sync with the new one", func() bool {
					out, err := redisDo(servers["valkey-primary"].addr, testAdmin, testAdminPass, "INFO", "replication")
					return err == nil && strings.Contains(out, "master_port:"+strconv.Itoa(n["valkey-replica"])) && strings.Contains(out, "master_link_status:up")
				})
			}

			// No refusal of the nodes' users anywhere.
			for name, srv := range servers {
				user, pass := testAdmin, testAdminPass
				if _, ok := isSentinel(model[name]); ok {
					user, pass = "", admin
				}
				if out, err := redisDo(srv.addr, user, pass, "ACL", "LOG"); err != nil || out != "" {
					t.Errorf("%s: ACL LOG: %v\n%s", name, err, out)
				}
				if _, ok := isSentinel(model[name]); !ok && len(o.services) > 1 {
					// Both data nodes hold the purges' events.
					if out, err := redisDo(srv.addr, testAdmin, testAdminPass, "XLEN", "export_download:inv"); err != nil || out == "0" {
						t.Errorf("%s: the purges' events are not there: XLEN %q %v", name, out, err)
					}
				}
			}
			for i, out := range outputs {
				for _, line := range strings.Split(out.String(), "\n") {
					if strings.Contains(line, "NOPERM") || strings.Contains(line, "WRONGPASS") {
						t.Errorf("node %d logged an ACL refusal: %s", i+1, line)
					}
				}
			}

			if _, ok := servers["sentinel-1"]; ok {
				// Last: the nodes' logins to it fail from now on.
				checkSentinelRestart(t, n, model["sentinel-1"], servers["sentinel-1"], fleetEnv, admin)
			}
		})
	}
}

// purgeReaches purges completedID through the admin API at admin (one
// node), and waits until the node at base asks the app for it again, after
// making sure that node holds a fresh entry for it (two downloads, the
// second one answered without the app).
func purgeReaches(t *testing.T, admin, base string, up *testenv.Upstream) {
	t.Helper()
	get := func() {
		if r := download(t, base, apiKey, completedID); r.StatusCode != http.StatusFound {
			t.Fatalf("download: %d, want 302", r.StatusCode)
		}
	}
	get()
	before := len(up.Requests())
	get()
	if got := len(up.Requests()); got != before {
		t.Fatalf("a second download asked the app (%d calls, %d before): no entry to purge", got, before)
	}
	req, _ := http.NewRequest(http.MethodPost, admin+"/export_download/purge", strings.NewReader(`{"export_ids":["`+completedID+`"]}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var purged struct{ Fleet string }
	err = json.NewDecoder(resp.Body).Decode(&purged)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || (purged.Fleet != "published" && purged.Fleet != "queued") {
		t.Fatalf("purge: %d %+v %v", resp.StatusCode, purged, err)
	}
	t.Logf("purge: fleet %s", purged.Fleet)
	waitFor(t, "the other node asks the app again after the purge", func() bool {
		get()
		return len(up.Requests()) > before
	})
}

// checkSentinelRestart stops a Sentinel and starts its script again in the
// same directory with new passwords, as a container restarted after .env
// changed: it keeps its ID and what it learned (the primary after a
// failover), and takes the new passwords, not the old ones.
func checkSentinelRestart(t *testing.T, n localNet, s *composeService, old *localServer, fleetEnv map[string]string, admin string) {
	t.Helper()
	user, master := fleetEnv["REDIS_SENTINEL_USERNAME"], fleetEnv["REDIS_SENTINEL_MASTER"]
	id, err := redisDo(old.addr, "", admin, "SENTINEL", "MYID")
	if err != nil {
		t.Fatal(err)
	}
	primary, err := redisDo(old.addr, "", admin, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)
	if err != nil {
		t.Fatal(err)
	}
	old.stop()
	restarted := *s
	restarted.Environment = maps.Clone(s.Environment)
	newPass := fleetEnv["REDIS_SENTINEL_PASSWORD"] + "0"
	restarted.Environment["REDIS_SENTINEL_PASSWORD"] = newPass
	srv := startOverlayServer(t, n, old.name, &restarted, old.cmd.Dir)
	if _, err := redisDo(srv.addr, user, fleetEnv["REDIS_SENTINEL_PASSWORD"], "PING"); err == nil {
		t.Error("the restarted Sentinel still takes the old password")
	}
	if got, err := redisDo(srv.addr, "", admin, "SENTINEL", "MYID"); err != nil || got != id {
		t.Errorf("the restarted Sentinel's ID: %q %v, want %q (its state kept)", got, err, id)
	}
	// After the failover, the primary it learned, not the one its first
	// configuration named.
	if got, err := redisDo(srv.addr, user, newPass, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master); err != nil || got != primary {
		t.Errorf("the restarted Sentinel, new password: %q %v, want the primary it knew, %q", got, err, primary)
	}
}

// --------------------------------------------------------------- Kubernetes

type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name        string            `yaml:"name"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	// ServiceAccount
	AutomountServiceAccountToken *bool `yaml:"automountServiceAccountToken"`
	Spec                         struct {
		// Deployment
		Replicas int `yaml:"replicas"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		// PodDisruptionBudget
		MinAvailable any `yaml:"minAvailable"`
		// Service (selector is a plain map there)
		Ports []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
	raw map[string]any
}

type podSpec struct {
	ServiceAccountName           string `yaml:"serviceAccountName"`
	AutomountServiceAccountToken *bool  `yaml:"automountServiceAccountToken"`
	SecurityContext              struct {
		RunAsNonRoot *bool `yaml:"runAsNonRoot"`
		RunAsUser    *int  `yaml:"runAsUser"`
	} `yaml:"securityContext"`
	Containers []struct {
		Name    string   `yaml:"name"`
		Image   string   `yaml:"image"`
		Command []string `yaml:"command"`
		Ports   []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		Env []struct {
			Name      string `yaml:"name"`
			Value     string `yaml:"value"`
			ValueFrom *struct {
				SecretKeyRef *struct {
					Name     string `yaml:"name"`
					Key      string `yaml:"key"`
					Optional bool   `yaml:"optional"`
				} `yaml:"secretKeyRef"`
			} `yaml:"valueFrom"`
		} `yaml:"env"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		SecurityContext struct {
			AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
			ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
			Capabilities             struct {
				Drop []string `yaml:"drop"`
				Add  []string `yaml:"add"`
			} `yaml:"capabilities"`
		} `yaml:"securityContext"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
		} `yaml:"volumeMounts"`
	} `yaml:"containers"`
	Volumes []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
		EmptyDir any `yaml:"emptyDir"`
	} `yaml:"volumes"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

// loadKubernetes parses every YAML document under deploy/kubernetes.
func loadKubernetes(t *testing.T) (map[string]*k8sObject, []string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "deploy/kubernetes/*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	objs := make(map[string]*k8sObject)
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var node yaml.Node
			if err := dec.Decode(&node); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			o := new(k8sObject)
			if err := node.Decode(o); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if err := node.Decode(&o.raw); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o.Kind == "" || o.APIVersion == "" {
				t.Fatalf("%s: a document without kind or apiVersion", f)
			}
			if _, dup := objs[o.Kind]; dup {
				t.Fatalf("%s: a second %s", f, o.Kind)
			}
			objs[o.Kind] = o
		}
	}
	return objs, names
}

func subset(sub, super map[string]string) bool {
	if len(sub) == 0 {
		return false
	}
	for k, v := range sub {
		if super[k] != v {
			return false
		}
	}
	return true
}

// TestKubernetesManifests parses the manifests, checks that they fit
// together, and adapts the ConfigMap's Caddyfile with the Deployment's
// environment to check that the probes reach a port the Caddyfile serves.
func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	objs, files := loadKubernetes(t)
	kinds := slices.Sorted(maps.Keys(objs))
	want := []string{"ConfigMap", "Deployment", "Kustomization", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("kinds %q, want %q", kinds, want)
	}
	// The Kustomization lists every other file.
	resources, _ := objs["Kustomization"].raw["resources"].([]any)
	for _, f := range files {
		if f != "kustomization.yaml" && !slices.Contains(resources, any(f)) {
			t.Errorf("kustomization.yaml does not list %s", f)
		}
	}

	dep := objs["Deployment"]
	pod := dep.Spec.Template.Spec
	podLabels := dep.Spec.Template.Metadata.Labels
	if dep.Spec.Replicas < 2 {
		t.Errorf("replicas %d, want 2 or more", dep.Spec.Replicas)
	}
	if !subset(dep.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("Deployment selector %v does not match the pod labels %v", dep.Spec.Selector.MatchLabels, podLabels)
	}
	svcSelector := map[string]string{}
	for k, v := range dig(objs["Service"].raw, "spec", "selector").(map[string]any) {
		svcSelector[k] = v.(string)
	}
	if !subset(svcSelector, podLabels) {
		t.Errorf("Service selector %v does not match the pod labels %v", svcSelector, podLabels)
	}
	pdb := objs["PodDisruptionBudget"]
	if !subset(pdb.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not match the pod labels %v", pdb.Spec.Selector.MatchLabels, podLabels)
	}
	if min, ok := pdb.Spec.MinAvailable.(int); !ok || min < 1 || min >= dep.Spec.Replicas {
		t.Errorf("PodDisruptionBudget minAvailable %v: want 1 ≤ n < replicas", pdb.Spec.MinAvailable)
	}

	sa := objs["ServiceAccount"]
	if pod.ServiceAccountName != sa.Metadata.Name {
		t.Errorf("pods run as %q, the ServiceAccount is %q", pod.ServiceAccountName, sa.Metadata.Name)
	}
	if arn := sa.Metadata.Annotations["eks.amazonaws.com/role-arn"]; !regexp.MustCompile(`^arn:aws:iam::\d{12}:role/[\w+=,.@/-]+$`).MatchString(arn) {
		t.Errorf("ServiceAccount role-arn annotation %q is not an IAM role ARN", arn)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("pods mount a Kubernetes API token they do not need")
	}
	if pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot ||
		pod.SecurityContext.RunAsUser == nil || *pod.SecurityContext.RunAsUser == 0 {
		t.Error("pods must run as a non-root user")
	}

	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" {
			t.Errorf("no %s request", r)
		}
	}
	if c.Resources.Limits["memory"] == "" {
		t.Error("no memory limit")
	}
	sc := c.SecurityContext
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		!slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("container must drop ALL capabilities, forbid privilege escalation and have a read-only root file system")
	}

	// The ConfigMap holds the container Caddyfile, mounted where the
	// command reads it.
	cm := objs["ConfigMap"]
	caddyfile := cm.Data["Caddyfile"]
	if caddyfile != readFile(t, "deploy/docker/Caddyfile") {
		t.Error("the ConfigMap's Caddyfile differs from deploy/docker/Caddyfile")
	}
	configPath := ""
	if i := slices.Index(c.Command, "--config"); i >= 0 && i+1 < len(c.Command) {
		configPath = c.Command[i+1]
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Metadata.Name &&
				configPath == filepath.Join(m.MountPath, "Caddyfile") {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("the command reads %q, which is not the ConfigMap's Caddyfile", configPath)
	}
	// Everything the Caddyfile writes to must be a volume.
	for _, dir := range []string{"/data", "/config", "/tmp"} {
		if !slices.ContainsFunc(c.VolumeMounts, func(m struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
		}) bool {
			return m.MountPath == dir
		}) {
			t.Errorf("%s is not a volume on the read-only root file system", dir)
		}
	}

	// The environment provides every placeholder; secrets come from the
	// Secret, the fleet's from optional keys, so that a Secret without
	// them runs pods without the fleet tier.
	secret := objs["Secret"]
	vars := caddyfileVars(t, caddyfile)
	env := make(map[string]string)
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != secret.Metadata.Name {
				t.Errorf("env %s refers to Secret %q", e.Name, ref.Name)
			}
			_, inSecret := secret.StringData[ref.Key]
			switch {
			case vars[e.Name] != "yes" && !ref.Optional:
				t.Errorf("env %s (the fleet block's, or optional) refers to key %q without optional: true: the fleet's secrets would be needed with the fleet off", e.Name, ref.Key)
			case vars[e.Name] == "yes" && !inSecret:
				t.Errorf("env %s refers to key %q, which the Secret lacks", e.Name, ref.Key)
			}
			env[e.Name] = "secret-" + ref.Key
		default:
			env[e.Name] = e.Value
		}
	}
	fleetCaddyfile := uncommentFleet(t, caddyfile)
	provision, adaptRequired := placeholders(fleetCaddyfile)
	for _, v := range append(provision, adaptRequired...) {
		if _, ok := env[v]; !ok {
			t.Errorf("the Caddyfile reads %s, which the Deployment does not set", v)
		}
	}
	for _, v := range provision {
		if e := env[v]; !strings.HasPrefix(e, "secret-") && !optionalAtProvision[v] {
			t.Logf("{env.%s} is set from a plain value", v)
		}
	}

	// As shipped, the required settings are empty and Caddy refuses the
	// Caddyfile at its upstream line: a placeholder is never used.
	bin := caddyBinary(t)
	dir := t.TempDir()
	shipped := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(shipped, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, want := adaptRefused(t, bin, shipped, env), fmt.Sprintf("Caddyfile:%d", lineOf(caddyfile, "upstream {$APP_UPSTREAM}")); !strings.Contains(out, want) {
		t.Errorf("the Caddyfile with the Deployment's env as shipped: want a refusal at %s (upstream), got:\n%s", want, out)
	}
	samples := map[string]string{"APP_UPSTREAM": "http://app.test:8080", "S3_BUCKET": "exports-test", "REDIS_ADDRESS": "redis.test:6379"}
	for _, v := range adaptRequired {
		if env[v] != "" {
			continue
		}
		if vars[v] == "yes" {
			t.Logf("%s is left empty in the Deployment, to fill in", v)
		}
		if env[v] = samples[v]; env[v] == "" {
			t.Errorf("the Deployment leaves %s empty; the test has no sample value for it", v)
		}
	}

	// Adapt with the Deployment's environment, filled in: the probes and
	// the container ports must be ports the Caddyfile serves.
	path := filepath.Join(dir, "Caddyfile.fleet")
	if err := os.WriteFile(path, []byte(fleetCaddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := adapt(t, bin, path, env)
	ports := listenPorts(t, cfg)
	named := make(map[string]int)
	for _, p := range c.Ports {
		named[p.Name] = p.ContainerPort
		if _, ok := ports[p.ContainerPort]; !ok {
			t.Errorf("container port %s (%d) is not served by the Caddyfile (%v)", p.Name, p.ContainerPort, slices.Collect(maps.Keys(ports)))
		}
		if p.ContainerPort < 1024 && !slices.Contains(sc.Capabilities.Add, "NET_BIND_SERVICE") {
			t.Errorf("port %d needs NET_BIND_SERVICE", p.ContainerPort)
		}
	}
	if len(sc.Capabilities.Add) > 0 && !slices.ContainsFunc(c.Ports, func(p struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	}) bool {
		return p.ContainerPort < 1024
	}) {
		t.Errorf("capabilities %q added, but no port below 1024", sc.Capabilities.Add)
	}
	for name, pr := range map[string]*probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", name)
			continue
		}
		port := 0
		switch p := pr.HTTPGet.Port.(type) {
		case int:
			port = p
		case string:
			port = named[p]
		}
		srv, ok := ports[port]
		if !ok {
			t.Errorf("%s probe port %v is not served by the Caddyfile", name, pr.HTTPGet.Port)
			continue
		}
		routes, _ := json.Marshal(srv["routes"])
		if !bytes.Contains(routes, []byte(strconv.Quote(pr.HTTPGet.Path))) {
			t.Errorf("%s probe path %s has no route on port %d", name, pr.HTTPGet.Path, port)
		}
	}
	for _, sp := range objs["Service"].Spec.Ports {
		name, _ := sp.TargetPort.(string)
		if _, ok := named[name]; !ok {
			t.Errorf("Service port %s targets %v, not a named container port", sp.Name, sp.TargetPort)
		}
	}
}

// ------------------------------------------------- metrics, rules, dashboard

// scrape returns every sample name on a /metrics page, with the values of
// each label seen on it.
func scrape(t *testing.T, url string) map[string]map[string]map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	labelRE := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	series := make(map[string]map[string]map[string]bool)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, labels := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
			if line[i] == '{' {
				labels = line[i:strings.LastIndex(line, "}")]
			}
		}
		if series[name] == nil {
			series[name] = make(map[string]map[string]bool)
		}
		for _, m := range labelRE.FindAllStringSubmatch(labels, -1) {
			if series[name][m[1]] == nil {
				series[name][m[1]] = make(map[string]bool)
			}
			series[name][m[1]][m[2]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return series
}

// selectorRE finds metric names (not recording rules' level:name:op names)
// and their label matchers in PromQL.
var (
	selectorRE = regexp.MustCompile(`(?:^|[^a-zA-Z0-9_:])(caddy_[a-zA-Z0-9_]+)(\{[^}]*\})?`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"`)
)

// metricUse is one selector: a metric name and its label matchers.
type metricUse struct {
	source, name string
	matchers     [][3]string // label, op, value
}

func metricUses(source, promql string) []metricUse {
	var uses []metricUse
	for _, m := range selectorRE.FindAllStringSubmatch(promql, -1) {
		u := metricUse{source: source, name: m[1]}
		for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			u.matchers = append(u.matchers, [3]string{mm[1], mm[2], mm[3]})
		}
		uses = append(uses, u)
	}
	return uses
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record string `yaml:"record"`
			Alert  string `yaml:"alert"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T, rel string) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := yaml.Unmarshal([]byte(readFile(t, rel)), &rf); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s: no rule groups", rel)
	}
	return rf
}

// dashboardQueries returns every query of the dashboard: the panels'
// expressions and the template variables' queries.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(readFile(t, "deploy/grafana/export_download.json")), &v); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					out = append(out, s)
				}
				walk(e)
			}
		}
	}
	walk(v)
	return out
}

// TestMetricNamesExist runs the container Caddyfile (the Kubernetes
// ConfigMap's) against a fake app, checks the probe and the answers, then
// reads /metrics and fails on any metric name or label value used by the
// alerts, the recording rules or the dashboard that Caddy does not expose.
func TestMetricNamesExist(t *testing.T) {
	t.Parallel()
	bin := caddyBinary(t)
	up := exportsUpstream(t)
	httpPort, metricsPort := freePort(t), freePort(t)
	vars := map[string]string{
		"CADDY_BIND":   "127.0.0.1",
		"CADDY_ADMIN":  "off",
		"HTTP_PORT":    strconv.Itoa(httpPort),
		"METRICS_PORT": strconv.Itoa(metricsPort),
		"APP_UPSTREAM": up.URL,
		"S3_BUCKET":    "exports-test",
		"EDGE_TOKEN":   "edge-token-from-env",
	}
	caddyfile := filepath.Join(repoRoot, "deploy/docker/Caddyfile")
	{
		// The fleet block on, against a real redis-server, so that the
		// fleet tier's series exist.
		redis := testenv.StartRedis(t)
		vars["REDIS_ADDRESS"] = redis.Addr
		vars["REDIS_PASSWORD"] = "any: the default user has no password"
		vars["FLEET_SECRET"] = strings.Repeat("fleet-secret-", 4)
		caddyfile = filepath.Join(t.TempDir(), "Caddyfile")
		if err := os.WriteFile(caddyfile, []byte(uncommentFleet(t, readFile(t, "deploy/docker/Caddyfile"))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := caddyEnv(t, vars)
	metricsBase := fmt.Sprintf("http://127.0.0.1:%d", metricsPort)
	startCaddy(t, env, metricsBase+"/healthz", bin, "run", "--config", caddyfile, "--adapter", "caddyfile")

	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	for _, c := range []struct {
		id   string
		want int
	}{
		{completedID, http.StatusFound},
		{completedID, http.StatusFound},
		{pendingID, http.StatusBadRequest},
		{brokenID, http.StatusServiceUnavailable},
	} {
		if resp := download(t, base, apiKey, c.id); resp.StatusCode != c.want {
			t.Errorf("download %s: %d, want %d", c.id, resp.StatusCode, c.want)
		}
	}
	reqs := up.Requests()
	if len(reqs) == 0 || reqs[0].Header.Get("X-Edge-Token") != "edge-token-from-env" {
		t.Errorf("the app did not get the {env.EDGE_TOKEN} header: %v", reqs)
	}
	// Anything but the probe and /metrics is a 404 on the metrics port.
	if resp, err := http.Get(metricsBase + "/config/"); err != nil {
		t.Error(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("metrics port /config/: %d, want 404", resp.StatusCode)
		}
	}

	series := scrape(t, metricsBase+"/metrics")
	// fleet_up has one series per fleet block, named by the prefix and
	// the first address.
	if got, want := slices.Sorted(maps.Keys(series["caddy_export_download_fleet_up"]["fleet"])), []string{"export_download@" + vars["REDIS_ADDRESS"]}; !slices.Equal(got, want) {
		t.Errorf("caddy_export_download_fleet_up fleet labels %q, want %q", got, want)
	}
	var uses []metricUse
	files := []string{"deploy/prometheus/alerts.yml", "deploy/prometheus/rules.yml", "deploy/prometheus/fleet-alerts.yml"}
	for _, rel := range files {
		for _, g := range loadRules(t, rel).Groups {
			for _, r := range g.Rules {
				uses = append(uses, metricUses(rel+" "+r.Record+r.Alert, r.Expr)...)
			}
		}
	}
	for _, s := range dashboardQueries(t) {
		uses = append(uses, metricUses("export_download.json", s)...)
	}

	// The checks must see the module's metrics, or they check nothing.
	used := make(map[string]bool)
	for _, u := range uses {
		used[u.name] = true
	}
	for _, name := range []string{
		"caddy_export_download_requests_total",
		"caddy_export_download_cache_lookups_total",
		"caddy_export_download_upstream_requests_total",
		"caddy_export_download_upstream_duration_seconds_bucket",
		"caddy_export_download_presigns_total",
	} {
		if !used[name] {
			t.Errorf("%s is used by no alert, rule or panel", name)
		}
	}

	checked := 0
	for _, u := range uses {
		labels, ok := series[u.name]
		if !ok {
			t.Errorf("%s: metric %s is not on Caddy's /metrics", u.source, u.name)
			continue
		}
		checked++
		for _, m := range u.matchers {
			label, op, value := m[0], m[1], m[2]
			if label == "job" || label == "instance" || strings.Contains(value, "$") {
				continue // set by Prometheus, or a dashboard variable
			}
			values, ok := labels[label]
			if !ok {
				t.Errorf("%s: %s has no label %q", u.source, u.name, label)
				continue
			}
			var want []string
			switch op {
			case "=", "!=":
				want = []string{value}
			case "=~", "!~":
				if regexp.MustCompile(`^[A-Za-z0-9_.+|]+$`).MatchString(value) {
					want = strings.Split(value, "|")
				}
			}
			for _, w := range want {
				if !values[w] {
					t.Errorf("%s: %s{%s%s%q}: Caddy exposes no %s=%q (has %v)", u.source, u.name, label, op, value, label, w, slices.Sorted(maps.Keys(values)))
				}
			}
		}
	}
	t.Logf("%d metric selectors checked against /metrics, the fleet tier's included", checked)
}

// fleetUpAggregations returns, for each aggregation whose argument holds
// caddy_export_download_fleet_up in a PromQL expression, its operator and
// grouping clause ("by (…)", "without (…)" or "").
func fleetUpAggregations(promql string) [][2]string {
	opRE := regexp.MustCompile(`\b(sum|min|max|avg|group|count|count_values|stddev|stdvar|quantile|topk|bottomk|limitk|limit_ratio)\s*((?:by|without)\s*\([^)]*\))?\s*\(`)
	groupRE := regexp.MustCompile(`^\s*((?:by|without)\s*\([^)]*\))`)
	var out [][2]string
	for _, m := range opRE.FindAllStringSubmatchIndex(promql, -1) {
		open := m[1] - 1
		depth, end := 0, -1
		for i := open; i < len(promql) && end < 0; i++ {
			switch promql[i] {
			case '(':
				depth++
			case ')':
				if depth--; depth == 0 {
					end = i
				}
			}
		}
		if end < 0 || !strings.Contains(promql[open:end], "caddy_export_download_fleet_up") {
			continue
		}
		group := ""
		if m[4] >= 0 {
			group = promql[m[4]:m[5]]
		} else if g := groupRE.FindStringSubmatch(promql[end+1:]); g != nil {
			group = g[1]
		}
		out = append(out, [2]string{promql[m[2]:m[3]], strings.Join(strings.Fields(group), " ")})
	}
	return out
}

// TestFleetUpPerFleet checks that every rule and panel that aggregates
// caddy_export_download_fleet_up keeps its fleet label (by (…, fleet, …)),
// so that one fleet down is never hidden by another one up, and checks the
// check on the expression the fleet alerts had before the label.
func TestFleetUpPerFleet(t *testing.T) {
	t.Parallel()
	if got := fleetUpAggregations("max by (job) (caddy_export_download_fleet_up) == 0"); len(got) != 1 || got[0][1] != "by (job)" {
		t.Fatalf("the parser does not see max by (job): %q", got)
	}
	if got := fleetUpAggregations("max(caddy_export_download_fleet_up) without (fleet)"); len(got) != 1 || got[0][1] != "without (fleet)" {
		t.Fatalf("the parser does not see a trailing without: %q", got)
	}
	type use struct{ source, expr string }
	var uses []use
	for _, rel := range []string{"deploy/prometheus/alerts.yml", "deploy/prometheus/rules.yml", "deploy/prometheus/fleet-alerts.yml"} {
		for _, g := range loadRules(t, rel).Groups {
			for _, r := range g.Rules {
				uses = append(uses, use{rel + " " + r.Record + r.Alert, r.Expr})
			}
		}
	}
	for _, q := range dashboardQueries(t) {
		uses = append(uses, use{"export_download.json", q})
	}
	seen := 0
	byFleet := regexp.MustCompile(`^by \((?:[^)]*[ ,])?fleet(?:[ ,][^)]*)?\)$`)
	for _, u := range uses {
		for _, agg := range fleetUpAggregations(u.expr) {
			seen++
			if !byFleet.MatchString(agg[1]) {
				t.Errorf("%s: %s %s (… caddy_export_download_fleet_up …) aggregates the fleets together: group by fleet too", u.source, agg[0], agg[1])
			}
		}
	}
	if seen == 0 {
		t.Error("no rule or panel aggregates caddy_export_download_fleet_up: the check checks nothing")
	}
}

// TestPrometheusRules runs promtool on the rule files and their unit tests.
func TestPrometheusRules(t *testing.T) {
	t.Parallel()
	promtool := requireTool(t, "promtool", "install Debian's package: apt-get install -y prometheus")
	dir := filepath.Join(repoRoot, "deploy/prometheus")
	run := func(args ...string) string {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ruleFiles := []string{"rules.yml", "alerts.yml", "fleet-alerts.yml"}
	run(append([]string{"check", "rules"}, ruleFiles...)...)
	tests, _ := filepath.Glob(filepath.Join(dir, "tests", "*_test.yml"))
	if len(tests) != len(ruleFiles) {
		t.Errorf("%d promtool test files, want one per rule file (%d)", len(tests), len(ruleFiles))
	}
	for i := range tests {
		tests[i], _ = filepath.Rel(dir, tests[i])
	}
	out := run(append([]string{"test", "rules"}, tests...)...)
	if strings.Count(out, "SUCCESS") != len(tests) {
		t.Errorf("promtool test rules: want %d SUCCESS:\n%s", len(tests), out)
	}
	// Every alert is exercised by a unit test.
	var testText strings.Builder
	for _, f := range tests {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		testText.Write(b)
	}
	for _, f := range ruleFiles {
		for _, g := range loadRules(t, "deploy/prometheus/"+f).Groups {
			for _, r := range g.Rules {
				name := r.Alert
				if name == "" {
					name = r.Record
				}
				if !strings.Contains(testText.String(), name) {
					t.Errorf("%s: %s has no unit test", f, name)
				}
			}
		}
	}
}

// TestPromtoolFailsOnBrokenRules is the control: the check above can fail.
func TestPromtoolFailsOnBrokenRules(t *testing.T) {
	t.Parallel()
	promtool := requireTool(t, "promtool", "install Debian's package: apt-get install -y prometheus")
	bad := filepath.Join(t.TempDir(), "bad.yml")
	if err := os.WriteFile(bad, []byte("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m]) > 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", bad).CombinedOutput(); err == nil {
		t.Errorf("promtool accepted a broken expression:\n%s", out)
	}
}

// TestGrafanaDashboard checks the dashboard's shape: the panels the kit
// promises, each with a query on the chosen data source.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	var dash struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			GridPos struct{ H, W, X, Y int } `json:"gridPos"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(readFile(t, "deploy/grafana/export_download.json")), &dash); err != nil {
		t.Fatal(err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Error("dashboard without title or uid")
	}
	vars := make(map[string]string)
	for _, v := range dash.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["job"] != "query" {
		t.Errorf("template variables %v: want datasource and job", vars)
	}
	ids := make(map[int]bool)
	exprs := make(map[string]string) // title → queries
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W <= 0 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: empty query", p.Title)
			}
			exprs[p.Title] += tg.Expr + "\n"
		}
	}
	for _, w := range []struct{ title, contains string }{
		{"Requests by outcome", "by (outcome)"},
		{"Cache lookups by result", "by (result)"},
		{"Upstream latency", "histogram_quantile(0.99"},
		{"Presigned URLs: new vs reused", "by (reused)"},
		{"Fleet store reachable", "by (instance, fleet) (caddy_export_download_fleet_up"},
		{"Fleet lookups by result", "caddy_export_download_fleet_lookups_total"},
		{"Invalidation lag", "caddy_export_download_fleet_invalidation_lag_seconds"},
	} {
		if !strings.Contains(exprs[w.title], w.contains) {
			t.Errorf("panel %q: want a query with %q, have %q", w.title, w.contains, exprs[w.title])
		}
	}
}

// ------------------------------------------------------------------ systemd

const unitName = "caddy-export-download.service"

// unitExec returns the argv of an Exec*= line of the unit.
func unitExec(t *testing.T, unit, key string) []string {
	t.Helper()
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("the unit has no %s=", key)
	return nil
}

// systemdRoot lays out a file system root for systemd-analyze --root:
// Debian's unit files (for the default dependencies), the unit under test
// and, at its ExecStart path, the built Caddy.
func systemdRoot(t *testing.T, unit string) string {
	t.Helper()
	root := t.TempDir()
	src := "/usr/lib/systemd/system"
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("%s: %v (install Debian's systemd: apt-get install -y systemd)", src, err)
	}
	if err := copyTree(src, filepath.Join(root, src)); err != nil {
		t.Fatalf("copying %s: %v", src, err)
	}
	unitDir := filepath.Join(root, "etc/systemd/system")
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(unitDir, unitName), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(root, unitExec(t, unit, "ExecStart")[0])
	if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := caddyBinary(t)
	if err := os.Link(bin, exe); err != nil {
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(exe, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// copyTree copies a directory of regular files and symbolic links (which
// os.CopyFS refuses); systemd resolves absolute links inside --root.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		default:
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, 0o644)
		}
	})
}

func systemdVerify(t *testing.T, unit string) (string, error) {
	t.Helper()
	tool := requireTool(t, "systemd-analyze", "install Debian's package: apt-get install -y systemd")
	root := systemdRoot(t, unit)
	out, err := exec.Command(tool, "verify", "--man=no", "--root="+root, unitName).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestSystemdUnit runs `systemd-analyze verify` on the unit, which must
// report nothing, and `systemd-analyze security --offline=true`, whose
// exposure score it logs and bounds.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	unit := readFile(t, "deploy/systemd/"+unitName)
	out, err := systemdVerify(t, unit)
	if err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, want := range []string{
		"DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
		"NoNewPrivileges=yes", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "SystemCallFilter=@system-service",
		"LoadCredential=edge-token:",
	} {
		if !strings.Contains(unit, "\n"+want) {
			t.Errorf("the unit lacks %s", want)
		}
	}

	tool := requireTool(t, "systemd-analyze", "install Debian's package: apt-get install -y systemd")
	help, _ := exec.Command(tool, "--help").CombinedOutput()
	if !bytes.Contains(help, []byte("--offline")) {
		t.Log("this systemd-analyze has no `security --offline`; exposure not measured")
		return
	}
	root := systemdRoot(t, unit)
	sec, err := exec.Command(tool, "security", "--offline=true", "--root="+root, unitName).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, sec)
	}
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\S+)`).FindSubmatch(sec)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", sec)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security exposure: %s %s", m[1], m[2])
	if score > 2.0 {
		t.Errorf("exposure %.1f, want at most 2.0:\n%s", score, sec)
	}
}

// TestSystemdVerifyFailsOnBrokenUnit is the control: verify's output is
// what the test above reads.
func TestSystemdVerifyFailsOnBrokenUnit(t *testing.T) {
	t.Parallel()
	unit := strings.Replace(readFile(t, "deploy/systemd/"+unitName), "ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes", 1)
	if out, _ := systemdVerify(t, unit); !strings.Contains(out, "ProtectHomme") {
		t.Errorf("systemd-analyze verify did not report an unknown key: %q", out)
	}
}

// TestSystemdCaddyfile runs the unit's ExecStart and ExecReload command
// lines on the systemd Caddyfile, with a credentials directory as
// LoadCredential= makes it: the secret read with
// {file.{$CREDENTIALS_DIRECTORY}/edge-token} reaches the app, and the
// reload finds the admin socket.
func TestSystemdCaddyfile(t *testing.T) {
	t.Parallel()
	bin := caddyBinary(t)
	unit := readFile(t, "deploy/systemd/"+unitName)
	start, reload := unitExec(t, unit, "ExecStart"), unitExec(t, unit, "ExecReload")
	caddyfile := filepath.Join(repoRoot, "deploy/systemd/Caddyfile")
	argv := func(cmd []string) []string {
		out := slices.Clone(cmd[1:])
		for i, a := range out {
			if a == "/etc/caddy-export-download/Caddyfile" {
				out[i] = caddyfile
			}
		}
		if slices.Equal(out, cmd[1:]) {
			t.Fatalf("%q does not read /etc/caddy-export-download/Caddyfile", cmd)
		}
		return out
	}

	creds := t.TempDir()
	if err := os.WriteFile(filepath.Join(creds, "edge-token"), []byte("edge-token-from-credential\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := exportsUpstream(t)
	sitePort, metricsPort := freePort(t), freePort(t)
	// A short path: Unix socket names are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "ced")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	env := caddyEnv(t, map[string]string{
		"CREDENTIALS_DIRECTORY": creds,
		"CADDY_BIND":            "127.0.0.1",
		"CADDY_ADMIN":           "unix/" + filepath.Join(sockDir, "admin.sock"),
		"SITE_ADDRESS":          fmt.Sprintf("http://127.0.0.1:%d", sitePort),
		"METRICS_PORT":          strconv.Itoa(metricsPort),
		"APP_UPSTREAM":          up.URL,
		"S3_BUCKET":             "exports-test",
	})
	out := startCaddy(t, env, fmt.Sprintf("http://127.0.0.1:%d/healthz", metricsPort), bin, argv(start)...)

	base := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	if resp := download(t, base, apiKey, completedID); resp.StatusCode != http.StatusFound {
		t.Fatalf("download: %d, want 302\n%s", resp.StatusCode, out.String())
	}
	reqs := up.Requests()
	if len(reqs) != 1 || reqs[0].Header.Get("X-Edge-Token") != "edge-token-from-credential" {
		t.Fatalf("the app did not get the credential's X-Edge-Token: %v", reqs)
	}

	cmd := exec.Command(bin, argv(reload)...)
	cmd.Env = env
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ExecReload %q: %v\n%s", reload, err, b)
	}
	// The reload returns before the old config's server stopped accepting
	// (each config has its own SO_REUSEPORT socket): a connection the old
	// one takes now would be reset when it closes.
	waitFor(t, "the old config's listener to close", func() bool { return testenv.ListeningSockets()[sitePort] <= 1 })
	if resp := download(t, base, apiKey, pendingID); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("after the reload: %d, want 400", resp.StatusCode)
	}
	if strings.Contains(out.String(), "edge-token-from-credential") {
		t.Error("the secret appears in Caddy's output")
	}
}

// --------------------------------------------------------------- rate limit

// TestRateLimitRecipe builds examples/ratelimit (its own module, so this
// go.mod does not grow), adapts its Caddyfile and runs it: the third
// download of one key within the window gets the 429 envelope, another key
// still gets its 302.
func TestRateLimitRecipe(t *testing.T) {
	t.Parallel()
	src := filepath.Join(repoRoot, "examples/ratelimit")
	work := t.TempDir()
	for _, f := range []string{"go.mod", "go.sum", "main.go", "Caddyfile"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "go.mod" {
			mod := string(b)
			if !strings.Contains(mod, "replace github.com/exportedge/caddy-export-download => ../..") {
				t.Fatal("examples/ratelimit/go.mod does not replace this module with the checkout")
			}
			if !regexp.MustCompile(`(?m)^\s*github.com/mholt/caddy-ratelimit v\d+\.\d+\.\d+$`).MatchString(mod) {
				t.Error("examples/ratelimit/go.mod does not pin caddy-ratelimit to a release")
			}
			b = []byte(strings.Replace(mod, "=> ../..", "=> "+repoRoot, 1))
		}
		if err := os.WriteFile(filepath.Join(work, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(work, "caddy")
	// -mod=mod: the copy's go.sum may lack entries that this module's
	// go.mod gained since; the committed go.sum is compared below.
	build := exec.Command("go", "build", "-mod=mod", "-o", bin, ".")
	build.Dir = work
	build.Env = append(os.Environ(), "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build examples/ratelimit: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(work, "go.sum")); !bytes.Equal(got, []byte(readFile(t, "examples/ratelimit/go.sum"))) {
		t.Log("examples/ratelimit/go.sum is behind this module's go.mod: run `go mod tidy` there")
	}
	if out, err := exec.Command(bin, "list-modules").Output(); err != nil ||
		!bytes.Contains(out, []byte("http.handlers.rate_limit")) || !bytes.Contains(out, []byte("http.handlers.export_download")) {
		t.Fatalf("the example's Caddy lacks rate_limit or export_download: %v\n%s", err, out)
	}

	up := exportsUpstream(t)
	port := freePort(t)
	extra := map[string]string{
		"CADDY_BIND":           "127.0.0.1",
		"CADDY_ADMIN":          "off",
		"SITE_ADDRESS":         fmt.Sprintf("http://127.0.0.1:%d", port),
		"APP_UPSTREAM":         up.URL,
		"DOWNLOADS_PER_MINUTE": "2",
	}
	caddyfile := filepath.Join(work, "Caddyfile")
	cfg := adapt(t, bin, caddyfile, extra)
	body, _ := json.Marshal(cfg)
	rl, ed := bytes.Index(body, []byte(`"handler":"rate_limit"`)), bytes.Index(body, []byte(`"handler":"export_download"`))
	if rl < 0 || ed < 0 || rl > ed {
		t.Fatalf("rate_limit must come before export_download in the adapted routes:\n%s", body)
	}

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	// Any path answers once the server is up: other paths go to the app.
	startCaddy(t, caddyEnv(t, extra), base+"/v1/exports/"+completedID, bin, "run", "--config", caddyfile, "--adapter", "caddyfile")

	for i, want := range []int{http.StatusFound, http.StatusFound, http.StatusTooManyRequests} {
		if resp := download(t, base, "hb_test_alice", completedID); resp.StatusCode != want {
			t.Errorf("alice's download %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/exports/"+completedID+"/download", nil)
	req.Header.Set("Authorization", "Bearer hb_test_alice")
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var envelope struct {
		Error struct{ Code, Message string }
		Meta  struct {
			RequestID string `json:"request_id"`
		}
	}
	if resp.StatusCode != http.StatusTooManyRequests || json.Unmarshal(b, &envelope) != nil ||
		envelope.Error.Code != "RATE_LIMITED" || envelope.Meta.RequestID == "" ||
		resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("limited answer: %d %v %s", resp.StatusCode, resp.Header, b)
	}
	if resp := download(t, base, "hb_test_bob", completedID); resp.StatusCode != http.StatusFound {
		t.Errorf("bob's download: %d, want 302 (his own window)", resp.StatusCode)
	}
}
