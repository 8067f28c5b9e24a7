package testenv

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// startEcho runs a line echo server on loopback for the test.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func dialLine(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, bufio.NewReader(c)
}

// proxyRoundTrip writes line and reads one line back within wait; it returns
// the error of a read that timed out or failed.
func proxyRoundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string, wait time.Duration) (string, error) {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	s, err := r.ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}

func TestTCPProxyFreezeDeliversOnResume(t *testing.T) {
	p := StartTCPProxy(t, startEcho(t))
	c, r := dialLine(t, p.Addr)
	if got, err := proxyRoundTrip(t, c, r, "before", 5*time.Second); err != nil || got != "before" {
		t.Fatalf("before the freeze: %q, %v", got, err)
	}
	p.Freeze()
	if got, err := proxyRoundTrip(t, c, r, "held", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("while frozen: got %q, %v; want a read timeout", got, err)
	}
	p.Resume()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "held\n" {
		t.Fatalf("after Resume, the held line: %q, %v", got, err)
	}
}

func TestTCPProxyBlackholeDiscardsAndEndsDamagedConnections(t *testing.T) {
	p := StartTCPProxy(t, startEcho(t))
	damaged, dr := dialLine(t, p.Addr)
	intact, ir := dialLine(t, p.Addr)
	for _, cr := range []struct {
		c net.Conn
		r *bufio.Reader
	}{{damaged, dr}, {intact, ir}} {
		if got, err := proxyRoundTrip(t, cr.c, cr.r, "before", 5*time.Second); err != nil || got != "before" {
			t.Fatalf("before the blackhole: %q, %v", got, err)
		}
	}
	p.Blackhole()
	if got, err := proxyRoundTrip(t, damaged, dr, "lost", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("while blackholed: got %q, %v; want a read timeout on an open connection", got, err)
	}
	// New connections are accepted while blackholed, and lose their bytes.
	fresh, fr := dialLine(t, p.Addr)
	if got, err := proxyRoundTrip(t, fresh, fr, "lost too", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection while blackholed: got %q, %v; want a read timeout", got, err)
	}
	p.Resume()
	// A connection that lost bytes ends; nothing it sent comes back.
	_ = damaged.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := dr.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("damaged connection after Resume: read %q, %v; want it closed", got, err)
	}
	// One that lost nothing goes on.
	if got, err := proxyRoundTrip(t, intact, ir, "after", 5*time.Second); err != nil || got != "after" {
		t.Fatalf("intact connection after Resume: %q, %v", got, err)
	}
	c, r := dialLine(t, p.Addr)
	if got, err := proxyRoundTrip(t, c, r, "new", 5*time.Second); err != nil || got != "new" {
		t.Fatalf("new connection after Resume: %q, %v", got, err)
	}
}
