// Package testenv starts the outside world that the handler talks to, for
// tests only: a real S3-compatible server (versitygw, which verifies SigV4)
// and a programmable fake of the application's metadata API.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// versityGWModule is what to install when the binary is missing; the version
// is pinned so that every machine tests against the same SigV4 verifier.
const versityGWModule = "github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// S3 is a running versitygw server with the posix backend in a temporary
// directory. Its root credentials are fixed; the server dies with the test.
type S3 struct {
	// Endpoint is the base URL, e.g. http://localhost:41234. It names the
	// host "localhost" on purpose: tests put the API on 127.0.0.1, and Go's
	// HTTP client forwards Authorization on a redirect to the same host,
	// which S3 rejects next to a presigned query.
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string

	client    *s3.Client
	transport *http.Transport
}

// StartS3 starts versitygw on 127.0.0.1 and a free port, waits until it
// answers, and stops it (with its process group) when the test ends. A
// missing binary fails the test: S3 tests must never be skipped silently.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	bin := findVersityGW(t)
	checkLocalhost(t)
	// TempDir first: cleanups run in reverse, so the directory is removed
	// only after the server that writes into it has exited.
	root := t.TempDir()

	const attempts = 3
	var lastErr error
	for range attempts {
		// The port is picked by closing a listener, so another process may
		// grab it before versitygw binds; a retry with a new port covers that.
		port, err := FreePort()
		if err != nil {
			t.Fatalf("testenv: pick a port for versitygw: %v", err)
		}
		srv, err := startVersityGW(t, bin, root, port)
		if err == nil {
			return srv
		}
		lastErr = err
	}
	t.Fatalf("testenv: versitygw did not start after %d attempts: %v", attempts, lastErr)
	return nil
}

func findVersityGW(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	// Where `go install` puts binaries when $GOBIN/$GOPATH/bin is not on PATH.
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	if gopath := os.Getenv("GOPATH"); gopath != "" {
		for _, p := range filepath.SplitList(gopath) {
			dirs = append(dirs, filepath.Join(p, "bin"))
		}
	} else if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("testenv: versitygw not found in PATH nor in %s; the README's ./test.sh installs it, or: go install %s",
		strings.Join(dirs, ", "), versityGWModule)
	return ""
}

// checkLocalhost fails the test unless "localhost" resolves to 127.0.0.1,
// where the server listens. Names that also resolve to ::1 are fine: clients
// try the next address when ::1 refuses the connection.
func checkLocalhost(t testing.TB) {
	t.Helper()
	addrs, err := net.LookupHost("localhost")
	if err != nil {
		t.Fatalf("testenv: resolve localhost: %v", err)
	}
	for _, a := range addrs {
		if a == "127.0.0.1" {
			return
		}
	}
	t.Fatalf("testenv: localhost resolves to %v, not 127.0.0.1; add \"127.0.0.1 localhost\" to /etc/hosts", addrs)
}

// FreePort returns a loopback TCP port that was free a moment ago, for a
// server that must be told its port before it starts.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startVersityGW runs one attempt. On success it has registered the cleanup
// that kills the server; on failure the process is already gone.
func startVersityGW(t testing.TB, bin, root string, port int) (*S3, error) {
	t.Helper()
	s := &S3{
		Endpoint:  "http://localhost:" + strconv.Itoa(port),
		AccessKey: "testenv-access",
		SecretKey: "testenv-secret-0123456789",
		Region:    "us-east-1",
	}
	// Bound to 127.0.0.1 only; "localhost" reaches it because clients try
	// each address of the name, and it resolves to 127.0.0.1 on the CI
	// machines (a ::1 answered first is refused at once and skipped).
	cmd := exec.Command(bin,
		"--port", "127.0.0.1:"+strconv.Itoa(port),
		"--access", s.AccessKey,
		"--secret", s.SecretKey,
		"--region", s.Region,
		"posix", root)
	cmd.Env = cleanEnv()
	out := &tailBuffer{max: 64 << 10}
	cmd.Stdout = out
	cmd.Stderr = out
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		killProcessGroup(cmd)
		<-exited
	}

	if err := waitReady(s.Endpoint, exited, 20*time.Second); err != nil {
		stop()
		if errors.Is(err, errExited) {
			err = fmt.Errorf("%w (%v)", err, waitErr)
		}
		return nil, fmt.Errorf("%w; output:\n%s", err, out.String())
	}

	s.transport = http.DefaultTransport.(*http.Transport).Clone()
	s.client = s3.New(s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		HTTPClient:   &http.Client{Transport: s.transport},
	})
	t.Cleanup(func() {
		// Idle keep-alive connections would otherwise outlive the test
		// and show up as leaked goroutines.
		s.transport.CloseIdleConnections()
		stop()
		if t.Failed() {
			t.Logf("testenv: versitygw output (tail):\n%s", out.String())
		}
	})
	return s, nil
}

// cleanEnv drops VGW_* and ROOT_* variables from the environment, which
// versitygw reads as settings, so the developer's own setup cannot change
// the test server.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VGW_") || strings.HasPrefix(kv, "ROOT_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

var errExited = errors.New("versitygw exited")

// waitReady polls until the server answers any HTTP response (an anonymous
// request gets 403, which proves it is serving).
func waitReady(endpoint string, exited <-chan struct{}, limit time.Duration) error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(limit)
	for {
		resp, err := c.Get(endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw not answering on %s after %v: %w", endpoint, limit, err)
		}
		select {
		case <-exited:
			return errExited
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Client returns an S3 client for the server: path-style, static root
// credentials.
func (s *S3) Client() *s3.Client { return s.client }

// CreateBucket creates a bucket or fails the test.
func (s *S3) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("testenv: create bucket %q: %v", name, err)
	}
}

// PutObject stores body under bucket/key or fails the test.
func (s *S3) PutObject(t testing.TB, bucket, key string, body []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(body),
		ContentLength: aws.Int64(int64(len(body))),
	})
	if err != nil {
		t.Fatalf("testenv: put object %s/%s: %v", bucket, key, err)
	}
}

// tailBuffer keeps the last max bytes written to it; exec copies the
// child's output from another goroutine, hence the lock.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
