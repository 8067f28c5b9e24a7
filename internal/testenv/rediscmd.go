package testenv

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

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
