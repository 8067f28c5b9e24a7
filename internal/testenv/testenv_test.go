package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"go.uber.org/goleak"
)

// TestMain checks that the helpers' cleanups leave no goroutine behind, as
// the handler's own leak checks rely on that.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestS3Roundtrip(t *testing.T) {
	s := StartS3(t)
	if !strings.HasPrefix(s.Endpoint, "http://localhost:") {
		t.Errorf("Endpoint = %q, want http://localhost:PORT", s.Endpoint)
	}
	want := []byte("id,name\n1,alice\n")
	s.CreateBucket(t, "exports")
	s.PutObject(t, "exports", "exports/proj_1/a.csv", want)

	out, err := s.Client().GetObject(context.Background(), &s3.GetObjectInput{
		Bucket: aws.String("exports"),
		Key:    aws.String("exports/proj_1/a.csv"),
	})
	if err != nil {
		t.Fatalf("GetObject: %v", err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("body = %q, want %q", got, want)
	}
}

// TestS3Presigned proves that the server verifies SigV4 query signatures:
// the presigned URL works with a plain GET and a tampered one is refused.
func TestS3Presigned(t *testing.T) {
	s := StartS3(t)
	want := []byte("a,b\n1,2\n")
	s.CreateBucket(t, "exports")
	s.PutObject(t, "exports", "exports/proj_1/b.csv", want)

	req, err := s3.NewPresignClient(s.Client()).PresignGetObject(context.Background(), &s3.GetObjectInput{
		Bucket:                     aws.String("exports"),
		Key:                        aws.String("exports/proj_1/b.csv"),
		ResponseContentDisposition: aws.String(`attachment; filename="b.csv"`),
		ResponseContentType:        aws.String("text/csv"),
	}, s3.WithPresignExpires(5*time.Minute))
	if err != nil {
		t.Fatalf("PresignGetObject: %v", err)
	}
	u, err := url.Parse(req.URL)
	if err != nil {
		t.Fatalf("parse presigned URL: %v", err)
	}
	if got := u.Query().Get("X-Amz-SignedHeaders"); got != "host" {
		t.Errorf("X-Amz-SignedHeaders = %q, want host (a plain GET must work)", got)
	}

	resp, err := http.Get(req.URL)
	if err != nil {
		t.Fatalf("GET presigned: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
		t.Fatalf("GET presigned = %d %q, want 200 %q", resp.StatusCode, got, want)
	}
	if cd := resp.Header.Get("Content-Disposition"); cd != `attachment; filename="b.csv"` {
		t.Errorf("Content-Disposition = %q", cd)
	}

	q := u.Query()
	sig := []byte(q.Get("X-Amz-Signature"))
	if sig[0] == '0' {
		sig[0] = '1'
	} else {
		sig[0] = '0'
	}
	q.Set("X-Amz-Signature", string(sig))
	u.RawQuery = q.Encode()
	resp, err = http.Get(u.String())
	if err != nil {
		t.Fatalf("GET tampered: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET with tampered signature = %d, want 403", resp.StatusCode)
	}
	http.DefaultClient.CloseIdleConnections()
}

// fatalRecorder stands in for a test to observe a Fatalf: it records the
// message and ends the calling goroutine, as testing.T does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestMissingVersityGWFails checks that a machine without the binary fails
// loudly with the install command, instead of skipping the S3 tests.
func TestMissingVersityGWFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv("GOBIN", "")
	t.Setenv("GOPATH", t.TempDir())
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		findVersityGW(rec)
		t.Error("findVersityGW returned without failing the test")
	}()
	<-done
	if !strings.Contains(rec.msg, "go install "+versityGWModule) {
		t.Errorf("Fatalf message %q does not say how to install versitygw", rec.msg)
	}
}

func TestExportBody(t *testing.T) {
	exp := time.Date(2030, 1, 2, 3, 4, 5, 500_000_000, time.FixedZone("x", 3600))
	for _, tc := range []struct {
		name      string
		expiresAt *time.Time
		extra     map[string]any
		want      string
	}{
		{"null expiry", nil, nil,
			`{"data":{"expires_at":null,"id":"e1","project_id":"proj_1","status":"completed"},"meta":{"request_id":"req_up"}}`},
		{"expiry in UTC", &exp, map[string]any{"row_count": 3, "project_id": "proj_9"},
			`{"data":{"expires_at":"2030-01-02T02:04:05.5Z","id":"e1","project_id":"proj_9","row_count":3,"status":"completed"},"meta":{"request_id":"req_up"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ExportBody("e1", "completed", tc.expiresAt, tc.extra); got != tc.want {
				t.Errorf("ExportBody =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestUpstreamAnswers(t *testing.T) {
	u := NewUpstream(t)
	u.SetKeys("hb_test_a", "hb_test_b")
	u.Set("e1", Response{Body: ExportBody("e1", "completed", nil, nil)})
	u.Set("e2", Response{Status: 429, Header: http.Header{"Retry-After": {"7"}}, Body: `{}`})
	u.SetFor("hb_test_b", "e1", Response{Status: 404, Body: `{"b":1}`})

	for _, tc := range []struct {
		name, method, path, auth string
		wantStatus               int
		wantBody                 string // substring
		wantHeader               string // Retry-After
	}{
		{"completed", "GET", "/v1/exports/e1", "Bearer hb_test_a", 200, `"status":"completed"`, ""},
		{"scheme any case", "GET", "/v1/exports/e1", "bearer hb_test_a", 200, `"status":"completed"`, ""},
		{"per key answer", "GET", "/v1/exports/e1", "Bearer hb_test_b", 404, `{"b":1}`, ""},
		{"programmed header", "GET", "/v1/exports/e2", "Bearer hb_test_a", 429, `{}`, "7"},
		{"unknown id", "GET", "/v1/exports/nope", "Bearer hb_test_a", 404, `"code":"NOT_FOUND"`, ""},
		{"wrong key", "GET", "/v1/exports/e1", "Bearer hb_test_x", 401, `"code":"UNAUTHORIZED"`, ""},
		{"no key", "GET", "/v1/exports/e1", "", 401, `"request_id":"req_up"`, ""},
		{"delete", "DELETE", "/v1/exports/e1", "Bearer hb_test_a", 204, "", ""},
		{"other path", "GET", "/v1/health", "Bearer hb_test_a", 404, `"code":"NOT_FOUND"`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, u.URL+tc.path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus || !strings.Contains(string(body), tc.wantBody) {
				t.Errorf("%s %s = %d %s, want %d containing %s", tc.method, tc.path, resp.StatusCode, body, tc.wantStatus, tc.wantBody)
			}
			if got := resp.Header.Get("Retry-After"); got != tc.wantHeader {
				t.Errorf("Retry-After = %q, want %q", got, tc.wantHeader)
			}
			if len(body) > 0 && !json.Valid(body) {
				t.Errorf("body is not JSON: %s", body)
			}
		})
	}

	if got := u.Calls(); got != 9 {
		t.Errorf("Calls = %d, want 9", got)
	}
	if got := u.CallsFor("e1"); got != 6 {
		t.Errorf("CallsFor(e1) = %d, want 6", got)
	}
	reqs := u.Requests()
	if len(reqs) != 9 || reqs[0].Method != "GET" || reqs[0].Path != "/v1/exports/e1" ||
		reqs[0].Header.Get("Authorization") != "Bearer hb_test_a" {
		t.Fatalf("Requests()[0] = %+v (of %d)", reqs[0], len(reqs))
	}
	// Requests hands out copies: changing one must not change the record.
	reqs[0].Header.Set("Authorization", "changed")
	if got := u.Requests()[0].Header.Get("Authorization"); got != "Bearer hb_test_a" {
		t.Errorf("recorded header changed through a copy: %q", got)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestUpstreamDelayHonoursCancel(t *testing.T) {
	u := NewUpstream(t)
	u.Set("slow", Response{Delay: time.Hour, Body: "{}"})

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", u.URL+"/v1/exports/slow", nil)
	start := time.Now()
	_, err := http.DefaultClient.Do(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled request took %v", d)
	}
	// Cleanup must not wait an hour for the abandoned handler either; the
	// test's own duration proves it.
	http.DefaultClient.CloseIdleConnections()
}

func TestUpstreamDelay(t *testing.T) {
	u := NewUpstream(t)
	u.Set("e1", Response{Delay: 150 * time.Millisecond, Body: "{}"})
	start := time.Now()
	resp, err := http.Get(u.URL + "/v1/exports/e1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("answered after %v, want at least the 150ms delay", d)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestUpstreamConcurrent(t *testing.T) {
	u := NewUpstream(t)
	u.Set("e1", Response{Body: ExportBody("e1", "pending", nil, nil)})
	const n = 1000
	tr := &http.Transport{MaxConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id := "e1"
			if i%2 == 1 {
				id = "other"
			}
			resp, err := c.Get(u.URL + "/v1/exports/" + id)
			if err != nil {
				errs <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := u.Calls(); got != n {
		t.Errorf("Calls = %d, want %d", got, n)
	}
	if a, b := u.CallsFor("e1"), u.CallsFor("other"); a != n/2 || b != n/2 {
		t.Errorf("CallsFor = %d, %d, want %d each", a, b, n/2)
	}
	if got := len(u.Requests()); got != n {
		t.Errorf("len(Requests) = %d, want %d", got, n)
	}
}
