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
}

// StartRedis starts redis-server and stops it when the test ends. A missing
// binary fails the test with one line naming the package to install.
func StartRedis(t testing.TB, opts ...RedisOption) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(redisMissing)
	}
	r := &Redis{t: t, bin: bin, dir: t.TempDir()}
	for _, o := range opts {
		o(&r.cfg)
	}
	if r.cfg.tls {
		r.tlsC = writeRedisCerts(t, r.dir)
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
			t.Fatalf("testenv: pick a port for redis-server: %v", err)
		}
		r.port = port
		r.Addr = "127.0.0.1:" + strconv.Itoa(port)
		if lastErr = r.start(); lastErr == nil {
			return r
		}
	}
	t.Fatalf("testenv: redis-server did not start after %d attempts: %v", attempts, lastErr)
	return nil
}

func (r *Redis) buildArgs() []string {
	p := strconv.Itoa(r.port)
	args := []string{
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--daemonize", "no",
		"--logfile", "",
		"--databases", "1",
	}
	if r.cfg.tls {
		args = append(args,
			"--port", "0",
			"--tls-port", p,
			"--tls-cert-file", filepath.Join(r.dir, "server.pem"),
			"--tls-key-file", filepath.Join(r.dir, "server.key"),
			"--tls-ca-cert-file", filepath.Join(r.dir, "ca.pem"),
			"--tls-auth-clients", "no")
	} else {
		args = append(args, "--port", p)
	}
	if len(r.cfg.users) > 0 {
		args = append(args, "--aclfile", filepath.Join(r.dir, "users.acl"))
	}
	return args
}

// start runs redis-server on r.port and waits until it answers PING.
func (r *Redis) start() error {
	cmd := exec.Command(r.bin, r.buildArgs()...)
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
	r.cmd, r.exited, r.out = cmd, exited, out
	r.mu.Unlock()

	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.do("PING"); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			r.Kill()
			return fmt.Errorf("redis-server not answering on %s: %v; output:\n%s", r.Addr, err, out.String())
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited; output:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill sends SIGKILL to the server (by its PID) and waits until it is gone:
// clients see their connections reset, as after a crash.
func (r *Redis) Kill() {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	killProcessGroup(cmd)
	<-exited
}

// Restart kills the server if it runs and starts a new, empty one on the
// same port (no persistence: every key is gone, as after a restart without
// a dump). It fails the test if the port cannot be bound again.
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
	r.t.Fatalf("testenv: restart redis-server on %s: %v", r.Addr, err)
}

func (r *Redis) stop() {
	r.Kill()
	if r.t.Failed() && r.out != nil {
		r.t.Logf("testenv: redis-server output (tail):\n%s", r.out.String())
	}
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
// returned as an error. It fails the test when the server cannot be reached.
func (r *Redis) Do(t testing.TB, args ...string) (string, error) {
	t.Helper()
	s, err := r.do(args...)
	var re RedisError
	if err != nil && !errors.As(err, &re) {
		t.Fatalf("testenv: redis %s: %v", args[0], err)
	}
	return s, err
}

// MustDo is Do that fails the test on a Redis error reply too.
func (r *Redis) MustDo(t testing.TB, args ...string) string {
	t.Helper()
	s, err := r.Do(t, args...)
	if err != nil {
		t.Fatalf("testenv: redis %s: %v", strings.Join(args, " "), err)
	}
	return s
}

// RedisError is an error reply from the server.
type RedisError string

func (e RedisError) Error() string { return string(e) }

func (r *Redis) do(args ...string) (string, error) {
	var conn net.Conn
	var err error
	d := &net.Dialer{Timeout: 2 * time.Second}
	if r.tlsC != nil {
		conn, err = tls.DialWithDialer(d, "tcp", r.Addr, r.tlsC)
	} else {
		conn, err = d.Dial("tcp", r.Addr)
	}
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return "", err
	}
	return readRESP(bufio.NewReader(conn))
}

// readRESP reads one RESP2 reply and flattens it to text.
func readRESP(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply line")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", RedisError(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		if n < 0 {
			return "(nil)", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		if n < 0 {
			return "(nil)", nil
		}
		parts := make([]string, 0, n)
		var firstErr error
		for range n {
			s, err := readRESP(br)
			if err != nil {
				var re RedisError
				if !errors.As(err, &re) {
					return "", err
				}
				if firstErr == nil {
					firstErr = err
				}
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, "\n"), firstErr
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// writeRedisCerts writes a CA and a server certificate (for 127.0.0.1 and
// localhost, ECDSA P-256, valid for a day) into dir and returns a client
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
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
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
	return filepath.Join(r.dir, "ca.pem")
}
