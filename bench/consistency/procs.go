package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// The processes of a run: one redis-server, N `caddy run` nodes, each
// reaching Redis through its own proxy so that one node's link can be cut
// alone. Every process is stopped by its PID, never by name.

// buildCaddy builds ./cmd/caddy of the module this program belongs to
// into dir and returns the binary's path.
func buildCaddy(ctx context.Context, dir string) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		return "", errors.New("not inside the module: run from the repository, or pass -caddy")
	}
	bin := filepath.Join(dir, "caddy")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
}

// proc is a started process and the channel closed when it has exited.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func startProc(dir string, logf io.Writer, bin string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	cmd.Stdout, cmd.Stderr = logf, logf
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// kill sends SIGKILL to the process (by PID) and waits until it is gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// --- redis-server ------------------------------------------------------------

// redisServer runs redis-server without persistence on a fixed port, so
// that a restart is empty and the nodes' proxies find it again.
type redisServer struct {
	bin, dir string
	port     int
	Addr     string
	logf     *os.File

	mu sync.Mutex
	p  *proc
}

func startRedis(bin, dir string) (*redisServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		return nil, err
	}
	r := &redisServer{bin: bin, dir: dir, logf: logf}
	var lastErr error
	for range 3 { // a port picked by closing a listener may be taken meanwhile
		if r.port, err = testenv.FreePort(); err != nil {
			return nil, err
		}
		r.Addr = "127.0.0.1:" + strconv.Itoa(r.port)
		if lastErr = r.start(); lastErr == nil {
			return r, nil
		}
	}
	return nil, lastErr
}

func (r *redisServer) start() error {
	p, err := startProc(r.dir, r.logf, r.bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port),
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--daemonize", "no", "--databases", "1")
	if err != nil {
		return fmt.Errorf("start %s: %w", r.bin, err)
	}
	r.mu.Lock()
	r.p = p
	r.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, err := redisDo(r.Addr, "PING"); err == nil && s == "PONG" {
			return nil
		} else if time.Now().After(deadline) {
			r.kill()
			return fmt.Errorf("redis-server not answering on %s: %v (see %s)", r.Addr, err, r.logf.Name())
		}
		select {
		case <-p.exited:
			return fmt.Errorf("redis-server exited (see %s)", r.logf.Name())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kill stops redis-server with SIGKILL, as a crash would.
func (r *redisServer) kill() {
	r.mu.Lock()
	p := r.p
	r.p = nil
	r.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// restart starts an empty redis-server on the same port.
func (r *redisServer) restart() error {
	var err error
	for range 50 { // the port may linger for a moment after the kill
		if err = r.start(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restart redis-server on %s: %w", r.Addr, err)
}

func (r *redisServer) close() {
	r.kill()
	_ = r.logf.Close()
}

// redisDo sends one command on a new connection and returns the reply as
// text.
func redisDo(addr string, args ...string) (string, error) {
	return testenv.RedisCommand(addr, "", "", args...)
}

// --- Caddy nodes -------------------------------------------------------------

const (
	fleetSecret = "consistency-checker-secret-not-for-production-0123"
	fleetPrefix = "consistency"
)

// nodeConfig is what every node's Caddyfile shares.
type nodeConfig struct {
	app          string // host:port of the fake app
	fleetTimeout time.Duration
	fleetExtra   string // more lines of the fleet block, separated by newlines or ";"
}

// node is one `caddy run` process with its own ports and its own proxy to
// Redis.
type node struct {
	i               int
	name            string
	dir, cfgPath    string
	port, adminPort int
	base, admin     string
	proxy           *testenv.TCPProxy
	redisAddr       string // the proxy's address
	bin             string
	cfg             nodeConfig
	logf            *os.File
	down            atomic.Bool // killed and not yet ready again: readers skip it
	// timeout is the fleet timeout of the running config; restarts and
	// reloads count what the faults did (only the fault goroutine writes
	// them).
	timeout           time.Duration
	restarts, reloads int

	mu sync.Mutex // guards p and the config file
	p  *proc
}

// caddyfile is the node's config with the given fleet timeout.
func (n *node) caddyfile(timeout time.Duration) string {
	var extra strings.Builder
	for _, l := range strings.FieldsFunc(n.cfg.fleetExtra, func(r rune) bool { return r == '\n' || r == ';' }) {
		if l = strings.TrimSpace(l); l != "" {
			extra.WriteString("\t\t\t" + l + "\n")
		}
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	default_bind 127.0.0.1
	grace_period 1s
}

http://127.0.0.1:%d {
	export_download {
		upstream http://%s
		upstream_timeout 5s
		key_prefixes hb_test_
		bucket exports
		object_key exports/{export.project_id}/{id}.csv
		endpoint http://localhost:1
		path_style
		access_key_id AKIDCONSISTENCY
		secret_access_key consistency-s3-secret
		fleet {
			redis %s
			secret %s
			prefix %s
			timeout %s
%s		}
	}
	reverse_proxy %s
}
`, n.adminPort, n.port, n.cfg.app, n.redisAddr, fleetSecret, fleetPrefix, timeout, extra.String(), n.cfg.app)
}

// startNode picks ports, writes the Caddyfile and starts the node; a port
// taken by another process meanwhile is retried with others.
func startNode(ctx context.Context, i int, bin, dir string, cfg nodeConfig, redisAddr string) (*node, error) {
	proxy, err := testenv.NewTCPProxy(redisAddr)
	if err != nil {
		return nil, err
	}
	n := &node{i: i, name: fmt.Sprintf("node%d", i), dir: filepath.Join(dir, fmt.Sprintf("node%d", i)), bin: bin, cfg: cfg,
		proxy: proxy, redisAddr: proxy.Addr, timeout: cfg.fleetTimeout}
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		proxy.Close()
		return nil, err
	}
	n.cfgPath = filepath.Join(n.dir, "Caddyfile")
	if n.logf, err = os.Create(filepath.Join(n.dir, "caddy.log")); err != nil {
		proxy.Close()
		return nil, err
	}
	for range 3 {
		if n.port, err = testenv.FreePort(); err != nil {
			break
		}
		if n.adminPort, err = testenv.FreePort(); err != nil {
			break
		}
		n.base = "http://127.0.0.1:" + strconv.Itoa(n.port)
		n.admin = "http://127.0.0.1:" + strconv.Itoa(n.adminPort)
		if err = os.WriteFile(n.cfgPath, []byte(n.caddyfile(n.timeout)), 0o600); err != nil {
			break
		}
		if err = n.start(ctx); err == nil {
			return n, nil
		}
		if !strings.Contains(readFile(n.logf.Name()), "address already in use") {
			break // only a port taken meanwhile is worth another try
		}
	}
	n.close()
	return nil, err
}

// start runs `caddy run` with the node's Caddyfile and waits until it is
// ready.
func (n *node) start(ctx context.Context) error {
	p, err := startProc(n.dir, n.logf, n.bin, "run", "--config", n.cfgPath, "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.p = p
	n.mu.Unlock()
	if err := n.waitReady(ctx, p); err != nil {
		n.kill()
		return err
	}
	return nil
}

// waitReady waits until the node answers HTTP and its admin API reports
// every fleet client reading the invalidation stream, or fails early if
// the process exits.
func (n *node) waitReady(ctx context.Context, p *proc) error {
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: time.Second}
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before it was ready: %s", n.name, lastError(n.logf.Name()))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := client.Get(n.base + "/ready"); err == nil {
			resp.Body.Close()
			state, err := n.fleetState(client)
			if err == nil && state == "up" {
				return nil
			}
			last = fmt.Sprintf("fleet state %q, %v", state, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within 30s (%s); its log ends:\n%s", n.name, last, tailFile(n.logf.Name(), 10))
}

// fleetState is the admin API's fleet state over every cache of the node:
// "up" when each reads the invalidation stream.
func (n *node) fleetState(client *http.Client) (string, error) {
	resp, err := client.Get(n.admin + "/export_download/stats")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var stats struct {
		Caches []struct {
			Fleet struct {
				State string `json:"state"`
			} `json:"fleet"`
		} `json:"caches"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		return "", err
	}
	if len(stats.Caches) == 0 {
		return "", errors.New("no cache")
	}
	for _, c := range stats.Caches {
		if c.Fleet.State != "up" {
			return c.Fleet.State, nil
		}
	}
	return "up", nil
}

// kill stops the node with SIGKILL (by PID), as a crash would.
func (n *node) kill() {
	n.mu.Lock()
	p := n.p
	n.p = nil
	n.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// restart starts the node again on the same ports with its current
// Caddyfile.
func (n *node) restart(ctx context.Context) error {
	var err error
	for range 5 {
		if err = n.start(ctx); err == nil {
			n.restarts++
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
	}
	return err
}

// reload replaces the node's config through its admin API (POST /load,
// Caddyfile adapted by Caddy) with one whose fleet block has another
// timeout.
func (n *node) reload(ctx context.Context, timeout time.Duration) error {
	src := n.caddyfile(timeout)
	n.mu.Lock()
	err := os.WriteFile(n.cfgPath, []byte(src), 0o600) // a later restart starts from it
	n.mu.Unlock()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.admin+"/load", strings.NewReader(src))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("%s: POST /load: %w", n.name, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: POST /load: %d %s", n.name, resp.StatusCode, body)
	}
	n.timeout = timeout
	n.reloads++
	return nil
}

func (n *node) close() {
	n.kill()
	n.proxy.Close()
	if n.logf != nil {
		_ = n.logf.Close()
	}
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

// lastError is the message of the last error line of a Caddy log, or its
// last line.
func lastError(name string) string {
	lines := strings.Split(strings.TrimRight(readFile(name), "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var l struct{ Level, Msg string }
		if json.Unmarshal([]byte(lines[i]), &l) == nil && l.Level == "error" {
			return l.Msg
		}
	}
	return lines[len(lines)-1]
}

// tailFile is the last lines of a log file, for error messages.
func tailFile(name string, lines int) string {
	parts := strings.Split(strings.TrimRight(readFile(name), "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
