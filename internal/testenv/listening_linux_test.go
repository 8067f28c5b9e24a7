package testenv

import (
	"context"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// ListeningSockets counts each listening socket of a port: two bound with
// SO_REUSEPORT (as Caddy binds across a reload) count two, and a closed one
// no more.
func TestListeningSockets(t *testing.T) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	first, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	port := first.Addr().(*net.TCPAddr).Port
	if n := ListeningSockets()[port]; n != 1 {
		t.Fatalf("%d listening sockets on port %d, want 1", n, port)
	}
	second, err := lc.Listen(context.Background(), "tcp", first.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if n := ListeningSockets()[port]; n != 2 {
		t.Fatalf("%d listening sockets on port %d with a second bound, want 2", n, port)
	}
	first.Close()
	if n := ListeningSockets()[port]; n != 1 {
		t.Fatalf("%d listening sockets on port %d after closing one, want 1", n, port)
	}
}
