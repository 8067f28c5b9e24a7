package testenv

import (
	"net"
	"sync"
	"testing"
)

// TCPProxy forwards connections from a loopback port to a target, and can
// stop forwarding without closing anything: a partition that looks like
// silence (packets lost), not like a reset connection. Freeze holds the
// bytes back and delivers them on Resume (a partition that heals before
// TCP gives up); Blackhole discards them (one that does not).
type TCPProxy struct {
	// Addr is host:port to connect to instead of the target.
	Addr string

	target string
	ln     net.Listener

	mu         sync.Mutex
	cond       *sync.Cond
	frozen     bool
	blackholed bool
	closed     bool
	links      map[*proxyLink]struct{}
	wg         sync.WaitGroup
}

// proxyLink is one client connection and the connection to the target
// made for it.
type proxyLink struct {
	in, out net.Conn // out is nil until the target answered
	// holed: bytes of this link were discarded by a blackhole, so its
	// streams have a gap that TCP would never deliver.
	holed bool
}

func (l *proxyLink) close() {
	_ = l.in.Close()
	if l.out != nil {
		_ = l.out.Close()
	}
}

// StartTCPProxy listens on 127.0.0.1 and a free port and forwards each
// connection to target. It is closed when the test ends.
func StartTCPProxy(t testing.TB, target string) *TCPProxy {
	t.Helper()
	p, err := NewTCPProxy(target)
	if err != nil {
		t.Fatalf("testenv: proxy listen: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// NewTCPProxy is StartTCPProxy for programs without a testing.TB (such as
// bench/consistency): the caller closes the proxy.
func NewTCPProxy(target string) (*TCPProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &TCPProxy{Addr: ln.Addr().String(), target: target, ln: ln, links: map[*proxyLink]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Freeze stops forwarding in both directions. Connections stay open and
// new ones are still accepted, but no byte passes until Resume, which
// delivers what was held back. It ends a Blackhole.
func (p *TCPProxy) Freeze() {
	p.mu.Lock()
	p.frozen, p.blackholed = true, false
	p.mu.Unlock()
	p.cond.Broadcast()
}

// Blackhole discards every byte in both directions until Resume:
// connections stay open and new ones are still accepted, but what either
// side sends is lost, as in a partition that drops packets. It ends a
// Freeze (bytes held by it are discarded too).
func (p *TCPProxy) Blackhole() {
	p.mu.Lock()
	p.frozen, p.blackholed = false, true
	p.mu.Unlock()
	p.cond.Broadcast()
}

// Resume forwards again. After a Freeze, what was held back is delivered.
// After a Blackhole, the connections that lost bytes are closed: TCP never
// delivers a stream with a gap, so the sender's retransmissions would have
// given up on them; connections that lost nothing go on.
func (p *TCPProxy) Resume() {
	p.mu.Lock()
	p.frozen, p.blackholed = false, false
	for l := range p.links {
		if l.holed {
			l.close()
			delete(p.links, l)
		}
	}
	p.mu.Unlock()
	p.cond.Broadcast()
}

// Close stops listening, closes every connection and waits for the
// forwarding goroutines. Safe to call more than once.
func (p *TCPProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	for l := range p.links {
		l.close()
	}
	p.links = nil
	p.mu.Unlock()
	p.cond.Broadcast()
	_ = p.ln.Close()
	p.wg.Wait()
}

// track registers l, or closes it when the proxy is closed.
func (p *TCPProxy) track(l *proxyLink) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		l.close()
		return false
	}
	p.links[l] = struct{}{}
	return true
}

func (p *TCPProxy) untrack(l *proxyLink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.links, l)
}

func (p *TCPProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		l := &proxyLink{in: in}
		if !p.track(l) {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			out, err := net.Dial("tcp", p.target)
			if err != nil {
				p.untrack(l)
				_ = in.Close()
				return
			}
			p.mu.Lock()
			closed := p.closed
			if !closed {
				l.out = out
			}
			p.mu.Unlock()
			if closed {
				_ = in.Close()
				_ = out.Close()
				return
			}
			p.wg.Add(2)
			go p.pump(l, in, out)
			go p.pump(l, out, in)
		}()
	}
}

// pump copies src to dst. While frozen it holds the chunk it has read and
// stops reading, so the sender sees a peer that does not answer; while
// blackholed it reads and discards, so the sender sees a peer that takes
// everything and never answers.
func (p *TCPProxy) pump(l *proxyLink, src, dst net.Conn) {
	defer p.wg.Done()
	defer func() {
		p.untrack(l)
		l.close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.frozen && !p.closed {
				p.cond.Wait()
			}
			closed, drop := p.closed, p.blackholed
			if drop {
				l.holed = true
			}
			p.mu.Unlock()
			if closed {
				return
			}
			if !drop {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}
