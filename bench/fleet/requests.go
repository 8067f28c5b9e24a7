package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

var client = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Transport:     &http.Transport{MaxIdleConnsPerHost: 64},
}

type reply struct {
	status int
	cs     string
	took   time.Duration
	at     time.Time // when the answer arrived
}

func do(method, url string) (reply, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	now := time.Now()
	return reply{status: resp.StatusCode, cs: resp.Header.Get("Cache-Status"), took: now.Sub(start), at: now}, nil
}

// download GETs id on base and checks the status and, when want is not
// empty, the Cache-Status.
func download(base, id, want string) (reply, error) {
	r, err := do(http.MethodGet, base+"/v1/exports/"+id+"/download")
	if err != nil {
		return r, err
	}
	if r.status != http.StatusFound {
		return r, fmt.Errorf("GET %s on %s: %d %q, want 302", id, base, r.status, r.cs)
	}
	if want != "" && r.cs != want {
		return r, &otherPathError{got: r.cs, want: want}
	}
	return r, nil
}

// otherPathError is a 302 that took another path than the one measured,
// e.g. a Redis call over the fleet timeout on a busy host ("detail=
// unavailable"): not a broken setup, but not a sample of that path.
type otherPathError struct{ got, want string }

func (e *otherPathError) Error() string {
	return fmt.Sprintf("Cache-Status %q, want %q", e.got, e.want)
}

// skipped counts samples that took another path, by Cache-Status.
type skipped map[string]int

// take reports whether err is nil; an otherPathError is counted and
// reported as false; any other error is returned.
func (s skipped) take(err error) (bool, error) {
	var o *otherPathError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &o):
		s[o.got]++
		return false, nil
	}
	return false, err
}

func (s skipped) String() string {
	if len(s) == 0 {
		return "none"
	}
	var parts []string
	for cs, n := range s {
		parts = append(parts, fmt.Sprintf("%d × %q", n, cs))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

var idSeq atomic.Int64

// newID is an export id no node has seen in this run.
func newID() string {
	return fmt.Sprintf("01935abc-def0-7123-4567-%012x", idSeq.Add(1))
}
