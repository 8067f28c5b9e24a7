package testenv

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
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

// redisCerts is a test CA and a server certificate for 127.0.0.1.
type redisCerts struct {
	dir    string // holds ca.pem, server.pem and server.key
	client *tls.Config
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
		port, err := freePort()
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

// Ping sends PING on a new connection and waits at most timeout for the
// answer: nil when the server answered, an error when it did not (killed,
// paused, or too slow).
func (r *Redis) Ping(timeout time.Duration) error {
	_, err := r.doTimeout(timeout, "PING")
	return err
}

// ClientKill closes the server's client connections that match the CLIENT
// KILL filters, e.g. ClientKill(t, "USER", "edge") or ClientKill(t, "TYPE",
// "normal"), and returns how many it closed. The admin connection itself is
// never closed (SKIPME yes).
func (r *Redis) ClientKill(t testing.TB, filter ...string) int {
	t.Helper()
	if len(filter) == 0 || len(filter)%2 != 0 {
		t.Fatalf("testenv: ClientKill needs filter name/value pairs, got %q", filter)
	}
	s := r.MustDo(t, append([]string{"CLIENT", "KILL"}, filter...)...)
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("testenv: CLIENT KILL answered %q", s)
	}
	return n
}

// ErrorCount returns how many error replies whose code is code (e.g.
// "CROSSSLOT", "MOVED", "NOPERM") the server has sent during the test, from
// INFO errorstats, including those of its processes that were killed or
// restarted (read just before the kill) and of a paused one (read just
// before the pause).
func (r *Redis) ErrorCount(t testing.TB, code string) int64 {
	t.Helper()
	r.mu.Lock()
	n := r.pastErrors[code]
	running, paused, pausedErrors := r.cmd != nil, r.paused, r.pausedErrors
	r.mu.Unlock()
	switch {
	case paused:
		n += pausedErrors[code]
	case running:
		errs, err := r.errorStats(5 * time.Second)
		if err != nil {
			t.Fatalf("testenv: INFO errorstats on %s: %v", r.Addr, err)
		}
		n += errs[code]
	}
	return n
}

// errorStats reads INFO errorstats: lines like "errorstat_CROSSSLOT:count=3".
func (r *Redis) errorStats(timeout time.Duration) (map[string]int64, error) {
	s, err := r.doTimeout(timeout, "INFO", "errorstats")
	if err != nil {
		return nil, err
	}
	counts := map[string]int64{}
	for _, line := range strings.Split(s, "\n") {
		code, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		code, found := strings.CutPrefix(code, "errorstat_")
		if !ok || !found {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "count="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				counts[code] = n
			}
		}
	}
	return counts, nil
}

func addCounts(dst, src map[string]int64) map[string]int64 {
	if len(src) == 0 {
		return dst
	}
	if dst == nil {
		dst = map[string]int64{}
	}
	for k, v := range src {
		dst[k] += v
	}
	return dst
}

// TLSConfig returns a client TLS configuration that trusts the test CA
// (server name 127.0.0.1), or nil when the server is not TLS.
func (r *Redis) TLSConfig() *tls.Config {
	if r.tlsC == nil {
		return nil
	}
	return r.tlsC.Clone()
}

// Do sends one command as the default (admin) user on a new connection and
// returns the reply flattened to text: integers and strings as they are,
// nil as "(nil)", arrays one element per line. A Redis error reply is
// returned as an error. It fails the test when the server cannot be reached
// (or does not answer within 5s, e.g. while paused).
func (r *Redis) Do(t testing.TB, args ...string) (string, error) {
	t.Helper()
	s, err := r.do(args...)
	var re RedisError
	if err != nil && !errors.As(err, &re) {
		t.Fatalf("testenv: redis %s on %s: %v", args[0], r.Addr, err)
	}
	return s, err
}

// MustDo is Do that fails the test on a Redis error reply too.
func (r *Redis) MustDo(t testing.TB, args ...string) string {
	t.Helper()
	s, err := r.Do(t, args...)
	if err != nil {
		t.Fatalf("testenv: redis %s on %s: %v", strings.Join(args, " "), r.Addr, err)
	}
	return s
}

// MustDoMulti sends commands in order on one connection, as the default
// user, and returns their replies flattened as Do does. It fails the test
// on any error reply. Commands whose meaning depends on the connection need
// it: WAIT counts the replicas that acknowledged this connection's last
// write, so a WAIT on a new connection answers at once.
func (r *Redis) MustDoMulti(t testing.TB, cmds ...[]string) []string {
	t.Helper()
	vals, errs, err := r.doValues(5*time.Second, cmds...)
	if err != nil {
		t.Fatalf("testenv: redis pipeline on %s: %v", r.Addr, err)
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		if errs[i] != nil {
			t.Fatalf("testenv: redis %s on %s: %v", strings.Join(cmds[i], " "), r.Addr, errs[i])
		}
		out[i] = flatten(v)
	}
	return out
}

// RedisError is an error reply from the server.
type RedisError string

func (e RedisError) Error() string { return string(e) }

func (r *Redis) do(args ...string) (string, error) {
	return r.doTimeout(5*time.Second, args...)
}

func (r *Redis) doTimeout(timeout time.Duration, args ...string) (string, error) {
	v, err := r.doValue(timeout, args...)
	if err != nil {
		var re RedisError
		if !errors.As(err, &re) {
			return "", err
		}
	}
	return flatten(v), err
}

// doValue sends one command on a new connection (after AUTH when the
// admin connection needs it) and returns the reply as a value: string,
// int64, nil or []any. An error reply is returned as a RedisError, with the
// rest of the reply.
func (r *Redis) doValue(timeout time.Duration, args ...string) (any, error) {
	vals, errs, err := r.doValues(timeout, args)
	if err != nil {
		return nil, err
	}
	return vals[0], errs[0]
}

// doValues sends commands in order on one new connection and returns each
// reply and error reply; err is a failure to reach the server.
func (r *Redis) doValues(timeout time.Duration, cmds ...[]string) (vals []any, errs []error, err error) {
	var conn net.Conn
	d := &net.Dialer{Timeout: timeout}
	if r.tlsC != nil {
		conn, err = tls.DialWithDialer(d, "tcp", r.Addr, r.tlsC)
	} else {
		conn, err = d.Dial("tcp", r.Addr)
	}
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	var b strings.Builder
	if len(r.cfg.adminAuth) > 0 {
		cmds = append([][]string{r.cfg.adminAuth}, cmds...)
	}
	for _, cmd := range cmds {
		fmt.Fprintf(&b, "*%d\r\n", len(cmd))
		for _, a := range cmd {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(conn)
	for i := range cmds {
		v, err := readValue(br)
		var re RedisError
		if err != nil && !errors.As(err, &re) {
			return nil, nil, err
		}
		if i == 0 && len(r.cfg.adminAuth) > 0 {
			if err != nil {
				return nil, nil, fmt.Errorf("AUTH: %w", err)
			}
			continue
		}
		vals, errs = append(vals, v), append(errs, err)
	}
	return vals, errs, nil
}

// flatten turns a reply into text: nil as "(nil)", arrays one element per
// line (nested arrays too).
func flatten(v any) string {
	switch v := v.(type) {
	case nil:
		return "(nil)"
	case string:
		return v
	case int64:
		return strconv.FormatInt(v, 10)
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = flatten(e)
		}
		return strings.Join(parts, "\n")
	}
	return fmt.Sprint(v)
}

// readValue reads one RESP2 reply. An error reply is returned as a
// RedisError; inside an array it becomes an empty string element and the
// first one is returned with the whole array.
func readValue(br *bufio.Reader) (any, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '-':
		return nil, RedisError(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		parts := make([]any, 0, n)
		var firstErr error
		for range n {
			v, err := readValue(br)
			if err != nil {
				var re RedisError
				if !errors.As(err, &re) {
					return nil, err
				}
				if firstErr == nil {
					firstErr = err
				}
				v = ""
			}
			parts = append(parts, v)
		}
		return parts, firstErr
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// writeRedisCerts writes a CA and a server certificate (for 127.0.0.1 and
// localhost, ECDSA P-256, valid for a day, also usable as a client
// certificate) into dir and returns a client
// configuration that trusts the CA.
func writeRedisCerts(t testing.TB, dir string) *tls.Config {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testenv: CA key: %v", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "testenv redis CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("testenv: CA certificate: %v", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatalf("testenv: parse CA certificate: %v", err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testenv: server key: %v", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Client use too: cluster nodes present it to each other, and the
		// cluster bus always asks for a client certificate.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:    []string{"localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("testenv: server certificate: %v", err)
	}
	srvKeyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		t.Fatalf("testenv: marshal server key: %v", err)
	}
	write := func(name, typ string, der []byte) {
		b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatalf("testenv: write %s: %v", name, err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	write("server.pem", "CERTIFICATE", srvDER)
	write("server.key", "PRIVATE KEY", srvKeyDER)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// CAFile is the path of the test CA's PEM file (TLS servers only), for
// configurations that take a file, like the Caddyfile's tls ca_file.
func (r *Redis) CAFile() string {
	if r.tlsC == nil {
		return ""
	}
	return filepath.Join(r.cfg.certs.dir, "ca.pem")
}

// RedisCommand sends one command to the Redis server or Sentinel at addr
// (plain TCP) on a new connection, after AUTH when password is set (with
// user when it is set too), and returns the reply flattened to text as
// Redis.Do does; an error reply is an error. For programs without a
// testing.TB, such as the benchmark drivers.
func RedisCommand(addr, user, password string, args ...string) (string, error) {
	r := &Redis{Addr: addr}
	switch {
	case password != "" && user != "":
		r.cfg.adminAuth = []string{"AUTH", user, password}
	case password != "":
		r.cfg.adminAuth = []string{"AUTH", password}
	}
	return r.doTimeout(5*time.Second, args...)
}
