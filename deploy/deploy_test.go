package deploy_test

import (
	"bufio"
	"bytes"
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

// caddyfileVars returns every variable a kit Caddyfile reads, with how it
// is required: "yes" (no default, outside the fleet block), "fleet" (no
// default, only in the commented fleet block) or "no" (a default).
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
			add(m[1], class(false))
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
			adapt(t, bin, fleet, withFleet)
			// The fleet's address has no default either.
			if out := adaptRefused(t, bin, fleet, required); !strings.Contains(out, "redis") {
				t.Errorf("the fleet block without REDIS_ADDRESS: want a refusal naming redis, got:\n%s", out)
			}
		})
	}
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

// TestCompose checks compose.yaml and compose.fleet.yaml against the
// Dockerfile, the Caddyfile they mount and env.example, interpolated as
// compose does: without the fleet file, no fleet variable is needed; with
// it, the fleet's secrets are required; a required value left empty (as
// env.example ships) stops compose, naming it.
func TestCompose(t *testing.T) {
	t.Parallel()
	base := readFile(t, "deploy/docker/compose.yaml")
	fleetFile := readFile(t, "deploy/docker/compose.fleet.yaml")
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

	// env.example lists every variable either file reads.
	example := envExample(t)
	baseVars, fleetFileVars := composeVars(base), composeVars(fleetFile)
	for _, vars := range []map[string]string{baseVars, fleetFileVars} {
		for name := range vars {
			if _, ok := example[name]; !ok {
				t.Errorf("compose reads ${%s}, env.example does not list it", name)
			}
		}
	}
	for _, name := range fleetVars {
		if _, ok := baseVars[name]; ok {
			t.Errorf("compose.yaml reads ${%s}, which only the fleet block needs: it belongs in compose.fleet.yaml", name)
		}
	}

	// Every listed variable filled in, the fleet's left out.
	filled := make(map[string]string)
	for name := range example {
		if !slices.Contains(fleetVars, name) {
			filled[name] = "test-" + strings.ToLower(name)
		}
	}
	for _, name := range fleetVars {
		delete(filled, name)
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
	if _, err := loadCompose(t, filled, base, fleetFile); err == nil {
		t.Error("compose.fleet.yaml without the fleet's secrets: accepted, want a refusal")
	}
	withFleet := maps.Clone(filled)
	for name := range fleetFileVars {
		withFleet[name] = "test-" + strings.ToLower(name)
	}
	fleet, err := loadCompose(t, withFleet, base, fleetFile)
	if err != nil {
		t.Fatalf("compose.yaml and compose.fleet.yaml with the fleet's secrets: %v", err)
	}

	checkCompose(t, "compose.yaml", noFleet, caddyfile, []string{"app", "caddy-1", "caddy-2"})
	checkCompose(t, "compose.yaml + compose.fleet.yaml", fleet, uncommentFleet(t, caddyfile), []string{"app", "caddy-1", "caddy-2", "valkey"})
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
			if s.Environment[v] == "" {
				t.Errorf("%s: %s: the Caddyfile reads %s, which the service does not set", what, name, v)
			}
		}
		for _, v := range []string{"APP_UPSTREAM", "REDIS_ADDRESS"} {
			value, ok := s.Environment[v]
			if !ok {
				continue
			}
			host := strings.TrimPrefix(value, "http://")
			host, _, _ = strings.Cut(host, ":")
			if _, ok := model[host]; !ok {
				t.Errorf("%s: %s: %s=%q names no service", what, name, v, value)
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
			case vars[e.Name] == "fleet" && !ref.Optional:
				t.Errorf("env %s (the fleet block's) refers to key %q without optional: true: the fleet's secrets would be needed with the fleet off", e.Name, ref.Key)
			case vars[e.Name] != "fleet" && !inSecret:
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
		if e := env[v]; !strings.HasPrefix(e, "secret-") {
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
