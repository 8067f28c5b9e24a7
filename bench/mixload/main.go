// Command mixload sends the realistic mix of bench/run.sh to one site and
// reports how fast it was answered.
//
// The mix is a fixed stream of download requests, the same for every site
// it is sent to in a round (it depends only on the flags and the round):
//
//   - -poll-share of the requests poll one of -pending exports, picked
//     uniformly; each is pending until a point of the stream drawn
//     uniformly from its first -complete-by share, where mixload tells the
//     application (-app, POST /debug/complete/{id}, see bench/altapp) that
//     it completed: the same point of the stream for every site, whatever
//     its speed;
//   - the others download one of -exports completed exports picked with
//     Zipf popularity (P(i) proportional to (1+i)^-s, s = -zipf-s): most
//     are downloaded once in a round, a few very often;
//   - each export belongs to one of -keys API keys (index mod keys) and is
//     asked for with that key.
//
// The stream depends on -seed and -round; the ids carry -tag, so that the
// same stream sent to two sites asks about two sets of exports, each cold
// in any cache and with its pending exports still pending. -connections keep-alive HTTP/1.1
// connections take the next request of the stream in turn, so the order of
// the stream is kept whatever the speed of the site. The requests are
// built before the clock starts and the responses read with a minimal
// parser, so that the generator costs little CPU on a 2-core machine: its
// cost is the same for every site.
//
// It prints one line of key=value pairs: requests, seconds, rps, the count
// of each status class (s302, s400, s4xx, s5xx, other) and errors.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Mix holds the parameters of the stream.
type Mix struct {
	Requests  int
	Exports   uint64
	ZipfS     float64
	Keys      int
	PollShare float64
	Pending   uint64
	Round     int // with Seed, chooses the stream
	Tag       int // goes into the ids: a new tag, a new set of exports
	Seed      uint64
	// CompleteBy is the share of the stream by which every pending export
	// has completed.
	CompleteBy float64
}

// Stream returns the request targets and API keys of the mix, in order,
// and the pending exports that complete before each position.
func (m Mix) Stream() (paths, keys []string, completeAt map[int][]string) {
	r := rand.New(rand.NewPCG(m.Seed, uint64(m.Round)))
	completeAt = map[int][]string{}
	for j := range m.Pending {
		at := int(r.Float64() * m.CompleteBy * float64(m.Requests))
		completeAt[at] = append(completeAt[at], ExportID(m.Tag, 1, j))
	}
	zipf := rand.NewZipf(r, m.ZipfS, 1, m.Exports-1)
	paths = make([]string, m.Requests)
	keys = make([]string, m.Requests)
	for i := range paths {
		var index uint64
		kind := 0
		if r.Float64() < m.PollShare {
			kind, index = 1, r.Uint64N(m.Pending)
		} else {
			index = zipf.Uint64()
		}
		paths[i] = "/v1/exports/" + ExportID(m.Tag, kind, index) + "/download"
		keys[i] = "hb_test_mix_" + strconv.FormatUint(index%uint64(m.Keys), 10)
	}
	return paths, keys, completeAt
}

// ExportID is the id bench/altapp knows: kind 0 completed, 1 pending.
func ExportID(tag, kind int, index uint64) string {
	return fmt.Sprintf("b3000000-%04x-4000-800%d-%012x", tag&0xffff, kind, index)
}

// Result counts what one run got.
type Result struct {
	Requests int
	Elapsed  time.Duration
	Status   map[string]int
	Errors   int
}

func main() {
	var m Mix
	addr := flag.String("addr", "", "host:port of the site (loopback)")
	conns := flag.Int("connections", 32, "keep-alive connections")
	app := flag.String("app", "", "base URL of bench/altapp, told when a pending export completes (empty: never)")
	flag.Float64Var(&m.CompleteBy, "complete-by", 0.8, "share of the stream by which every pending export has completed")
	flag.IntVar(&m.Requests, "requests", 40000, "requests in the stream")
	flag.Uint64Var(&m.Exports, "exports", 100000, "completed exports in the catalog")
	flag.Float64Var(&m.ZipfS, "zipf-s", 1.1, "Zipf exponent of their popularity (> 1)")
	flag.IntVar(&m.Keys, "keys", 8, "API keys")
	flag.Float64Var(&m.PollShare, "poll-share", 0.1, "share of requests that poll a pending export")
	flag.Uint64Var(&m.Pending, "pending", 200, "pending exports polled")
	flag.IntVar(&m.Round, "round", 1, "round: each has a stream of its own")
	flag.IntVar(&m.Tag, "tag", 1, "tag of the export ids: each site in each round needs its own, so that it starts cold and its pending exports are pending")
	flag.Uint64Var(&m.Seed, "seed", 7, "seed of the stream")
	flag.Parse()
	if *addr == "" || m.Requests < 1 || m.Exports < 2 || m.ZipfS <= 1 || m.Keys < 1 || m.Pending < 1 || *conns < 1 {
		fmt.Fprintln(os.Stderr, "mixload: need -addr, and positive sizes (zipf-s > 1)")
		os.Exit(2)
	}
	res, err := Run(*addr, *app, m, *conns)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mixload:", err)
		os.Exit(1)
	}
	fmt.Printf("requests=%d seconds=%.3f rps=%.0f s302=%d s400=%d s4xx=%d s5xx=%d other=%d errors=%d\n",
		res.Requests, res.Elapsed.Seconds(), float64(res.Requests)/res.Elapsed.Seconds(),
		res.Status["302"], res.Status["400"], res.Status["4xx"], res.Status["5xx"], res.Status["other"], res.Errors)
}

// Run sends the stream of m to addr over conns connections, and tells app
// when a pending export completes.
func Run(addr, app string, m Mix, conns int) (Result, error) {
	paths, keys, completeAt := m.Stream()
	reqs := make([][]byte, len(paths))
	for i := range paths {
		reqs[i] = []byte("GET " + paths[i] + " HTTP/1.1\r\nHost: " + addr +
			"\r\nAuthorization: Bearer " + keys[i] + "\r\nUser-Agent: mixload\r\n\r\n")
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	counts := make([]map[string]int, conns)
	errs := make([]int, conns)
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	for c := range conns {
		counts[c] = map[string]int{}
		wg.Go(func() {
			var conn *client
			defer func() {
				if conn != nil {
					conn.Close()
				}
			}()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) {
					return
				}
				if app != "" {
					for _, id := range completeAt[i] {
						if err := complete(app, id); err != nil {
							errOnce.Do(func() { firstErr = err })
							errs[c]++
						}
					}
				}
				// One retry on a fresh connection: a server may close an
				// idle keep-alive connection as the request goes out.
				var status int
				var err error
				for attempt := 0; attempt < 2; attempt++ {
					if conn == nil {
						if conn, err = dial(addr); err != nil {
							continue
						}
					}
					var keep bool
					status, keep, err = conn.do(reqs[i])
					if err == nil && keep {
						break
					}
					conn.Close()
					conn = nil
					if err == nil {
						break
					}
				}
				if err != nil {
					errs[c]++
					errOnce.Do(func() { firstErr = err })
					continue
				}
				counts[c][class(status)]++
			}
		})
	}
	wg.Wait()
	res := Result{Requests: len(reqs), Elapsed: time.Since(start), Status: map[string]int{}}
	for c := range conns {
		for k, v := range counts[c] {
			res.Status[k] += v
		}
		res.Errors += errs[c]
	}
	if res.Errors == len(reqs) {
		return res, fmt.Errorf("every request failed: %v", firstErr)
	}
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "mixload: first error:", firstErr)
	}
	return res, nil
}

// complete tells the application that a pending export has completed.
func complete(app, id string) error {
	resp, err := http.Post(app+"/debug/complete/"+id, "text/plain", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("completing %s: status %d", id, resp.StatusCode)
	}
	return nil
}

func class(status int) string {
	switch {
	case status == 302 || status == 400:
		return strconv.Itoa(status)
	case status >= 400 && status < 500:
		return "4xx"
	case status >= 500 && status < 600:
		return "5xx"
	}
	return "other"
}

// client is one keep-alive HTTP/1.1 connection.
type client struct {
	net.Conn
	r *bufio.Reader
}

func dial(addr string) (*client, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &client{Conn: c, r: bufio.NewReaderSize(c, 8<<10)}, nil
}

// do sends req and reads the response: its status, headers and body
// (Content-Length or chunked). keep is false when the server closes the
// connection after it.
func (c *client) do(req []byte) (status int, keep bool, err error) {
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(req); err != nil {
		return 0, false, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	length, chunked, closing := int64(0), false, false
	for {
		h, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, _ := bytes.Cut(h, []byte(":"))
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.ParseInt(string(value), 10, 64); err != nil {
				return 0, false, fmt.Errorf("bad Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			closing = bytes.EqualFold(value, []byte("close"))
		}
	}
	if chunked {
		err = c.chunked()
	} else {
		_, err = c.r.Discard(int(length))
	}
	if err != nil {
		return 0, false, err
	}
	return status, !closing, nil
}

// chunked reads a chunked body (RFC 9112 §7.1) and its trailers.
func (c *client) chunked() error {
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		size, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
		if err != nil {
			return fmt.Errorf("bad chunk size %q", line)
		}
		if n == 0 {
			for {
				t, err := c.r.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(bytes.TrimRight(t, "\r\n")) == 0 {
					return nil
				}
			}
		}
		if _, err := io.CopyN(io.Discard, c.r, n+2); err != nil {
			return err
		}
	}
}
