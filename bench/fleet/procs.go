package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

func (b *bench) start(name string, stderr io.Writer, bin string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = b.dir
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(b.dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(b.dir, "config"))
	if stderr == nil {
		f, err := os.Create(filepath.Join(b.dir, name+".log"))
		if err != nil {
			return nil, err
		}
		stderr = f
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	b.mu.Lock()
	b.procs = append(b.procs, cmd)
	b.mu.Unlock()
	return cmd, nil
}

func (b *bench) stop(cmd *exec.Cmd) {
	b.mu.Lock()
	b.procs = slices.DeleteFunc(b.procs, func(p *exec.Cmd) bool { return p == cmd })
	b.mu.Unlock()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

func (b *bench) startRedis() (string, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	_, err = b.start("redis", nil, b.cfg.redisServer, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", b.dir, "--daemonize", "no")
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, err := redisDo(addr, "PING"); err == nil && s == "PONG" {
			return addr, nil
		} else if time.Now().After(deadline) {
			return "", fmt.Errorf("redis-server not answering on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// redisDo sends one command on a new connection and returns the reply as
// text.
func redisDo(addr string, args ...string) (string, error) {
	return testenv.RedisCommand(addr, "", "", args...)
}

// redisCommands is Redis's count of commands processed so far.
func (b *bench) redisCommands() int64 {
	s, err := redisDo(b.redis, "INFO", "stats")
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(`total_commands_processed:(\d+)`).FindStringSubmatch(s)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// fakeApp is the metadata API and the app behind reverse_proxy: GET
// /v1/exports/{id} answers a completed export, DELETE answers 204.
type fakeApp struct {
	srv     *http.Server
	addr    string
	gets    atomic.Int64
	deletes atomic.Int64
}

func startApp(delay time.Duration) (*fakeApp, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &fakeApp{addr: l.Addr().String()}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := strings.CutPrefix(r.URL.Path, "/v1/exports/")
		if !ok || strings.Contains(id, "/") {
			_, _ = io.WriteString(w, "ok")
			return
		}
		if r.Method == http.MethodDelete {
			a.deletes.Add(1)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		a.gets.Add(1)
		if delay > 0 {
			time.Sleep(delay)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"data":{"id":%q,"project_id":"proj_bench","status":"completed","expires_at":null},"meta":{"request_id":"req_app"}}`, id)
	})}
	go func() { _ = a.srv.Serve(l) }()
	return a, nil
}

// site is one export_download site of a node's Caddyfile.
type site struct {
	port  int
	fleet bool
}

func (b *bench) caddyfile(debug bool, sites ...site) string {
	var sb strings.Builder
	sb.WriteString("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n\tgrace_period 1s\n")
	if debug {
		sb.WriteString("\tlog {\n\t\tlevel DEBUG\n\t}\n")
	}
	sb.WriteString("}\n")
	for _, s := range sites {
		fmt.Fprintf(&sb, `
http://127.0.0.1:%d {
	export_download {
		upstream http://%s
		key_prefixes hb_test_
		bucket bench-exports
		object_key exports/{export.project_id}/{id}.csv
		endpoint http://localhost:7070
		path_style
		access_key_id AKIABENCHEXAMPLE0001
		secret_access_key bench/secret/key/not/used/for/anything/real
`, s.port, b.app.addr)
		if s.fleet {
			fmt.Fprintf(&sb, "\t\tfleet {\n\t\t\tredis %s\n\t\t\tsecret %s\n\t\t\tprefix %s\n", b.redis, secret, prefix)
			if b.cfg.fleetTimeout > 0 {
				fmt.Fprintf(&sb, "\t\t\ttimeout %s\n", b.cfg.fleetTimeout)
			}
			sb.WriteString("\t\t}\n")
		}
		fmt.Fprintf(&sb, "\t}\n\treverse_proxy %s\n}\n", b.app.addr)
	}
	return sb.String()
}

// node is a running Caddy process.
type node struct {
	name  string
	cmd   *exec.Cmd
	bases []string // one per site
	out   *logTap
}

func (b *bench) startNode(ctx context.Context, name string, debug bool, tap *logTap, sites ...site) (*node, error) {
	cfg := filepath.Join(b.dir, name+".Caddyfile")
	if err := os.WriteFile(cfg, []byte(b.caddyfile(debug, sites...)), 0o600); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(b.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	if tap == nil {
		tap = &logTap{}
	}
	tap.file = f
	cmd, err := b.start(name, tap, b.cfg.caddy, "run", "--config", cfg, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	n := &node{name: name, cmd: cmd, out: tap}
	for _, s := range sites {
		n.bases = append(n.bases, "http://127.0.0.1:"+strconv.Itoa(s.port))
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, base := range n.bases {
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			resp, err := http.Get(base + "/ready")
			if err == nil {
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s not answering on %s (see %s)", name, base, f.Name())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return n, nil
}

// logTap copies a node's log to its file and hands the lines it watches
// for to onLine.
type logTap struct {
	file   *os.File
	mu     sync.Mutex
	buf    []byte
	onLine func(line []byte)
}

func (t *logTap) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.file != nil {
		_, _ = t.file.Write(p)
	}
	if t.onLine == nil {
		return len(p), nil
	}
	t.buf = append(t.buf, p...)
	for {
		i := slices.Index(t.buf, '\n')
		if i < 0 {
			break
		}
		t.onLine(t.buf[:i])
		t.buf = t.buf[i+1:]
	}
	return len(p), nil
}
