package testenv

import (
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// redisMissing is the one line a test fails with when redis-server is not
// installed: fleet tests must never be skipped silently.
const redisMissing = "redis-server not found: install Debian's redis-server package (apt-get install redis-server) or run ./test.sh"

// RedisOption changes how StartRedis runs the server.
type RedisOption func(*redisConfig)

type redisConfig struct {
	tls   bool
	users []redisUser

	// Set by StartCluster and StartSentinel, which run several servers.
	label     string                                     // the process's name in messages; "redis-server" by default
	certs     *redisCerts                                // TLS files shared by the servers of a deployment
	confFile  func(dir string, port int) (string, error) // writes a configuration file to pass first (Sentinel needs one)
	extraArgs func(port int) []string                    // more arguments for a start on port
	adminAuth []string                                   // AUTH arguments of the admin connection (Do)
}

type redisUser struct {
	name, password, rules string
}

// RedisTLS serves TLS only (no plain port), with a CA and a server
// certificate for 127.0.0.1 and localhost generated for this test.
// Clients are not asked for certificates. Redis.TLSConfig returns a client
// configuration that trusts the CA.
func RedisTLS() RedisOption { return func(c *redisConfig) { c.tls = true } }

// RedisUser adds an ACL user with a password and ACL rules, e.g.
// "~export_download:* +get +set". The default user stays enabled without a
// password for the test's admin connection (Redis.Do).
func RedisUser(name, password, rules string) RedisOption {
	return func(c *redisConfig) { c.users = append(c.users, redisUser{name, password, rules}) }
}

// Redis is a redis-server started for one test, on 127.0.0.1 and a free port,
// without persistence (--save ” --appendonly no), so a restart is empty.
// The servers of a Cluster or a SentinelSet (Sentinels included) are Redis
// values too, so Kill, Pause, ClientKill and Do work on each of them.
type Redis struct {
	// Addr is host:port of the server, also after Restart.
	Addr string

	t    testing.TB
	bin  string
	dir  string
	port int
	cfg  redisConfig
	tlsC *tls.Config // client side, nil without TLS

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	out    *tailBuffer
	paused bool
	// Error counts (INFO errorstats) of this server's earlier processes
	// (killed or restarted), and of the current one when it was paused,
	// so that ErrorCount covers the whole test.
	pastErrors   map[string]int64
	pausedErrors map[string]int64
}

// StartRedis starts redis-server and stops it when the test ends. A missing
// binary fails the test with one line naming the package to install.
func StartRedis(t testing.TB, opts ...RedisOption) *Redis {
	t.Helper()
	var cfg redisConfig
	for _, o := range opts {
		o(&cfg)
	}
	return startRedis(t, cfg)
}

// startRedis starts one server of any kind (plain, cluster node, Sentinel)
// as cfg says, retrying on another port when the one picked was taken.
func startRedis(t testing.TB, cfg redisConfig) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(redisMissing)
	}
	if cfg.label == "" {
		cfg.label = "redis-server"
	}
	r := &Redis{t: t, bin: bin, dir: t.TempDir(), cfg: cfg}
	if r.cfg.tls {
		if r.cfg.certs == nil {
			r.cfg.certs = &redisCerts{dir: r.dir, client: writeRedisCerts(t, r.dir)}
		}
		r.tlsC = r.cfg.certs.client
	}
	if len(r.cfg.users) > 0 {
		var b strings.Builder
		b.WriteString("user default on nopass ~* &* +@all\n")
		for _, u := range r.cfg.users {
			fmt.Fprintf(&b, "user %s on >%s resetchannels %s\n", u.name, u.password, u.rules)
		}
		if err := os.WriteFile(filepath.Join(r.dir, "users.acl"), []byte(b.String()), 0o600); err != nil {
			t.Fatalf("testenv: write ACL file: %v", err)
		}
	}
	t.Cleanup(r.stop)

	const attempts = 3
	var lastErr error
	for range attempts {
		// The port is picked by closing a listener, so another process may
		// take it first; a new port covers that.
		port, err := FreePort()
		if err != nil {
			t.Fatalf("testenv: pick a port for %s: %v", r.cfg.label, err)
		}
		r.port = port
		r.Addr = "127.0.0.1:" + strconv.Itoa(port)
		if lastErr = r.start(); lastErr == nil {
			return r
		}
	}
	t.Fatalf("testenv: %s did not start after %d attempts: %v", r.cfg.label, attempts, lastErr)
	return nil
}

func (r *Redis) buildArgs() ([]string, error) {
	p := strconv.Itoa(r.port)
	var args []string
	if r.cfg.confFile != nil {
		path, err := r.cfg.confFile(r.dir, r.port)
		if err != nil {
			return nil, fmt.Errorf("write configuration file: %w", err)
		}
		args = append(args, path)
	}
	args = append(args,
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--daemonize", "no",
		"--logfile", "",
		"--databases", "1",
		// A replica's first sync starts at once, not after the default
		// 5s wait for more replicas to share the transfer.
		"--repl-diskless-sync-delay", "0",
	)
	if r.cfg.tls {
		d := r.cfg.certs.dir
		args = append(args,
			"--port", "0",
			"--tls-port", p,
			"--tls-cert-file", filepath.Join(d, "server.pem"),
			"--tls-key-file", filepath.Join(d, "server.key"),
			"--tls-ca-cert-file", filepath.Join(d, "ca.pem"),
			"--tls-auth-clients", "no")
	} else {
		args = append(args, "--port", p)
	}
	if len(r.cfg.users) > 0 {
		args = append(args, "--aclfile", filepath.Join(r.dir, "users.acl"))
	}
	if r.cfg.extraArgs != nil {
		args = append(args, r.cfg.extraArgs(r.port)...)
	}
	return args, nil
}

// start runs the server on r.port and waits until it answers PING.
func (r *Redis) start() error {
	args, err := r.buildArgs()
	if err != nil {
		return err
	}
	cmd := exec.Command(r.bin, args...)
	cmd.Dir = r.dir
	out := &tailBuffer{max: 64 << 10}
	cmd.Stdout = out
	cmd.Stderr = out
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", r.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	r.mu.Lock()
	r.cmd, r.exited, r.out, r.paused = cmd, exited, out, false
	r.mu.Unlock()

	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.do("PING"); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			r.kill(false)
			return fmt.Errorf("%s not answering on %s: %v; output:\n%s", r.cfg.label, r.Addr, err, out.String())
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited; output:\n%s", r.cfg.label, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill sends SIGKILL to the server (by its PID) and waits until it is gone:
// clients see their connections reset, as after a crash. A paused server is
// killed too. Its error counts are kept for ErrorCount.
func (r *Redis) Kill() { r.kill(true) }

func (r *Redis) kill(keepErrors bool) {
	r.mu.Lock()
	cmd, exited, paused, pausedErrors := r.cmd, r.exited, r.paused, r.pausedErrors
	r.cmd, r.paused, r.pausedErrors = nil, false, nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	if keepErrors {
		errs := pausedErrors
		if !paused {
			// Best effort: a server too busy to answer loses its counts.
			errs, _ = r.errorStats(500 * time.Millisecond)
		}
		r.mu.Lock()
		r.pastErrors = addCounts(r.pastErrors, errs)
		r.mu.Unlock()
	}
	killProcessGroup(cmd)
	<-exited
}

// Restart kills the server if it runs and starts a new, empty one on the
// same port (no persistence: every key is gone, as after a restart without
// a dump; a cluster node keeps its node ID and its view of the cluster,
// which live in its nodes.conf). It fails the test if the port cannot be
// bound again.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Kill()
	var err error
	for range 50 { // the port may linger for a moment after the kill
		if err = r.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatalf("testenv: restart %s on %s: %v", r.cfg.label, r.Addr, err)
}

func (r *Redis) stop() {
	r.kill(false)
	if r.t.Failed() && r.out != nil {
		r.t.Logf("testenv: %s %s output (tail):\n%s", r.cfg.label, r.Addr, r.out.String())
	}
}

// Running reports whether the server's process is alive (started and not
// killed); a paused server is running.
func (r *Redis) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil
}

// Paused reports whether the server is stopped by Pause.
func (r *Redis) Paused() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.paused
}

// Pause stops the server's process with SIGSTOP: its connections stay open
// and the kernel still accepts new ones, but nothing is answered until
// Resume, as with a server frozen by a long fork, a swap storm or a VM
// pause. Peers see it time out, not fail. It fails the test if the server
// is not running.
func (r *Redis) Pause() {
	r.t.Helper()
	r.mu.Lock()
	cmd, paused := r.cmd, r.paused
	r.mu.Unlock()
	if cmd == nil {
		r.t.Fatalf("testenv: pause %s %s: not running", r.cfg.label, r.Addr)
	}
	if paused {
		return
	}
	// Error counts cannot be read while paused; keep them from now.
	errs, _ := r.errorStats(500 * time.Millisecond)
	if err := stopProcessGroup(cmd); err != nil {
		r.t.Fatalf("testenv: pause %s %s: %v", r.cfg.label, r.Addr, err)
	}
	r.mu.Lock()
	r.paused, r.pausedErrors = true, errs
	r.mu.Unlock()
}

// Resume continues a server stopped by Pause (SIGCONT); it answers what it
// received meanwhile. Resuming a server that is not paused does nothing.
func (r *Redis) Resume() {
	r.t.Helper()
	r.mu.Lock()
	cmd, paused := r.cmd, r.paused
	r.mu.Unlock()
	if cmd == nil || !paused {
		return
	}
	if err := continueProcessGroup(cmd); err != nil {
		r.t.Fatalf("testenv: resume %s %s: %v", r.cfg.label, r.Addr, err)
	}
	r.mu.Lock()
	r.paused, r.pausedErrors = false, nil
	r.mu.Unlock()
}
