package presign

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// The tests in this file are about the credentials behind the URLs: how
// often the provider is asked (a role session shorter than presign_expiry
// must not cost one STS or IMDS call per URL), and how long a Presign waits
// for a provider that does not answer.

var credObj = Object{Bucket: "b", Key: "exports/x.csv", Filename: "x.csv", ContentType: "text/csv"}

// newTemp is a Presigner over prov with presign_expiry 15 minutes and, when
// timeout is not zero, that deadline.
func newTemp(t *testing.T, prov aws.CredentialsProvider, timeout time.Duration) *Presigner {
	t.Helper()
	p, err := New(context.Background(), Config{
		Region: "us-east-1", Endpoint: "http://s3.test:9000", PathStyle: true,
		Credentials: prov, Expiry: 15 * time.Minute,
		Timeout: timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRefreshOncePerCredentialSet: credentials that expire before
// presign_expiry are refreshed once, not once per URL (the refreshed set
// expires just as soon: asking again gains nothing).
func TestRefreshOncePerCredentialSet(t *testing.T) {
	for _, tc := range []struct {
		name      string
		lifetimes []time.Duration
		wantLife  time.Duration // at least; the URLs end with their keys
	}{
		{"every set lives 90s", []time.Duration{90 * time.Second}, 80 * time.Second},
		{"the first set 30s, the next ones an hour", []time.Duration{30 * time.Second, time.Hour}, 15 * time.Minute},
		{"every set lives 10 minutes", []time.Duration{10 * time.Minute}, 9 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prov := &tempCreds{lifetimes: tc.lifetimes}
			p := newTemp(t, prov, 0)
			for i := range 8 {
				s, err := p.Presign(context.Background(), credObj, time.Now(), time.Time{})
				if err != nil {
					t.Fatalf("presign %d: %v", i, err)
				}
				if s.Lifetime < tc.wantLife {
					t.Errorf("presign %d: Lifetime = %v, want at least %v", i, s.Lifetime, tc.wantLife)
				}
				if key := mustQuery(t, s.URL).Get("X-Amz-Credential"); key[:5] != "ASIA2" {
					t.Errorf("presign %d signed by %s, want the refreshed set ASIA2", i, key)
				}
			}
			if n := prov.Calls(); n > 2 {
				t.Errorf("8 presigns asked the provider %d times, want at most 2 (one fetch, one refresh)", n)
			}
		})
	}
}

// TestRefreshOnceConcurrently: presigns that all find the credentials too
// short at the same moment share one refresh.
func TestRefreshOnceConcurrently(t *testing.T) {
	prov := &tempCreds{lifetimes: []time.Duration{90 * time.Second}}
	p := newTemp(t, prov, 0)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			<-start
			for range 4 {
				if _, err := p.Presign(context.Background(), credObj, time.Now(), time.Time{}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if n := prov.Calls(); n > 2 {
		t.Errorf("64 concurrent presigns asked the provider %d times, want at most 2", n)
	}
}

// clockCreds hands out a new set per call that expires life after the
// test's clock (not the wall clock), so that a test can let time pass.
type clockCreds struct {
	mu    sync.Mutex
	now   time.Time
	life  time.Duration
	calls int
}

func (p *clockCreds) Retrieve(context.Context) (aws.Credentials, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	return aws.Credentials{
		AccessKeyID: fmt.Sprintf("ASIA%d", p.calls), SecretAccessKey: "s", SessionToken: fmt.Sprintf("t%d", p.calls),
		CanExpire: true, Expires: p.now.Add(p.life),
	}, nil
}

func (p *clockCreds) set(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now = now
}

func (p *clockCreds) Calls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// TestRefreshAgainAtHalfLife: a refreshed set is refreshed again once half
// of the time it had left has passed (the provider may have a newer one by
// then), so URLs keep at least half of what fresh credentials give them,
// at one provider call per half-life.
func TestRefreshAgainAtHalfLife(t *testing.T) {
	// Minutes ahead of the wall clock: the SDK's own cache reads the wall
	// clock to tell whether a set has expired, and must not think so here.
	base := time.Now().Add(time.Minute).Truncate(time.Second)
	prov := &clockCreds{now: base, life: 10 * time.Minute}
	p := newTemp(t, prov, 0)
	for _, step := range []struct {
		at        time.Duration // after base
		wantCalls int
		wantKey   string
		wantLife  time.Duration
	}{
		{0, 2, "ASIA2", 10 * time.Minute}, // fetched, too short for 15 min: refreshed once
		{time.Minute, 2, "ASIA2", 9 * time.Minute},
		{4 * time.Minute, 2, "ASIA2", 6 * time.Minute},
		{5*time.Minute - time.Second, 2, "ASIA2", 5*time.Minute + time.Second},
		{5 * time.Minute, 3, "ASIA3", 10 * time.Minute}, // half of the 10 minutes gone
		{6 * time.Minute, 3, "ASIA3", 9 * time.Minute},
	} {
		now := base.Add(step.at)
		prov.set(now)
		s, err := p.Presign(context.Background(), credObj, now, time.Time{})
		if err != nil {
			t.Fatalf("at +%v: %v", step.at, err)
		}
		if n := prov.Calls(); n != step.wantCalls {
			t.Errorf("at +%v: provider asked %d times, want %d", step.at, n, step.wantCalls)
		}
		if key := mustQuery(t, s.URL).Get("X-Amz-Credential"); key[:5] != step.wantKey {
			t.Errorf("at +%v: signed by %s, want %s", step.at, key, step.wantKey)
		}
		if s.Lifetime != step.wantLife {
			t.Errorf("at +%v: Lifetime = %v, want %v", step.at, s.Lifetime, step.wantLife)
		}
	}
}

// stuckCreds never answers until released; it may ignore its context (as
// a provider blocked in a system call would).
type stuckCreds struct {
	honourCtx    bool
	release      chan struct{}
	calls        atomic.Int32
	sawDeadline  atomic.Bool
	canceledOnce atomic.Bool
}

func (p *stuckCreds) Retrieve(ctx context.Context) (aws.Credentials, error) {
	p.calls.Add(1)
	if _, ok := ctx.Deadline(); ok {
		p.sawDeadline.Store(true)
	}
	if p.honourCtx {
		select {
		case <-ctx.Done():
			p.canceledOnce.Store(true)
			return aws.Credentials{}, ctx.Err()
		case <-p.release:
		}
	} else {
		<-p.release
	}
	return aws.Credentials{AccessKeyID: "AKID", SecretAccessKey: "s", CanExpire: true, Expires: time.Now().Add(time.Hour)}, nil
}

// presignAsync runs Presign in a goroutine; the channel gets its error.
func presignAsync(ctx context.Context, p *Presigner) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := p.Presign(ctx, credObj, time.Now(), time.Time{})
		ch <- err
	}()
	return ch
}

// wait is a liveness guard, not a timing assertion: far longer than any
// deadline below, it only turns a hang into a failure.
func wait(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Presign still waiting after 30s", what)
		return nil
	}
}

// TestPresignDeadline: a provider that never answers makes Presign fail
// at the deadline instead of holding the request (and every request that
// waits on the same shared presign) forever.
func TestPresignDeadline(t *testing.T) {
	for _, honour := range []bool{false, true} {
		t.Run(fmt.Sprintf("provider honours its context: %v", honour), func(t *testing.T) {
			prov := &stuckCreds{honourCtx: honour, release: make(chan struct{})}
			t.Cleanup(func() { close(prov.release) })
			p := newTemp(t, prov, 200*time.Millisecond)
			err := wait(t, presignAsync(context.Background(), p), "hung provider")
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want the deadline (context.DeadlineExceeded)", err)
			}
			if errors.Is(err, ErrExportExpired) {
				t.Errorf("a hung provider gave ErrExportExpired (410): %v", err)
			}
			if !prov.sawDeadline.Load() {
				t.Error("the provider was called without a deadline")
			}
		})
	}
}

// slowThenHungCreds answers its first call after delay with a set that
// expires in 90s (sooner than a 15-minute URL: Presign wants it
// refreshed), and hangs on every later call until its context ends.
type slowThenHungCreds struct {
	delay time.Duration
	calls atomic.Int32
}

func (p *slowThenHungCreds) Retrieve(ctx context.Context) (aws.Credentials, error) {
	if p.calls.Add(1) == 1 {
		time.Sleep(p.delay)
		return aws.Credentials{AccessKeyID: "ASIA1", SecretAccessKey: "s", SessionToken: "t1", CanExpire: true, Expires: time.Now().Add(90 * time.Second)}, nil
	}
	<-ctx.Done()
	return aws.Credentials{}, ctx.Err()
}

// TestOneDeadlinePerPresign: on a cold start with short-lived credentials,
// the first fetch and the refresh share one deadline: the Presign returns
// by Timeout (with the set in hand), not after a full Timeout for each.
// The clock is synctest's, so the bound only catches a second wait.
func TestOneDeadlinePerPresign(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = time.Second
		prov := &slowThenHungCreds{delay: 800 * time.Millisecond}
		p := newTemp(t, prov, timeout)
		start := time.Now()
		s, err := p.Presign(context.Background(), credObj, start, time.Time{})
		elapsed := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if elapsed > timeout+100*time.Millisecond {
			t.Errorf("Presign took %v with Timeout %v: the fetch and the refresh each waited a full Timeout", elapsed, timeout)
		}
		if n := prov.calls.Load(); n != 2 {
			t.Errorf("provider asked %d times, want 2 (the fetch, then the refresh that hangs)", n)
		}
		if key := mustQuery(t, s.URL).Get("X-Amz-Credential"); !strings.HasPrefix(key, "ASIA1/") || s.Lifetime > 90*time.Second {
			t.Errorf("signed by %s for %v, want the set in hand (ASIA1) for at most its 90s", key, s.Lifetime)
		}
		// The refresh the Presign left goes on, for other callers, until
		// its own deadline; the bubble may end only after it.
		time.Sleep(timeout)
	})
}

// TestDefaultDeadline: with no Timeout configured, the retrieval still has
// a deadline (DefaultTimeout).
func TestDefaultDeadline(t *testing.T) {
	prov := &stuckCreds{honourCtx: true, release: make(chan struct{})}
	p := newTemp(t, prov, 0)
	ch := presignAsync(context.Background(), p)
	// Let the retrieval start, then answer it: only its context matters.
	for prov.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(prov.release)
	if err := wait(t, ch, "released provider"); err != nil {
		t.Fatal(err)
	}
	if !prov.sawDeadline.Load() {
		t.Error("the provider was called without a deadline")
	}
}

// TestPresignCallerLeaves: a caller whose context ends stops waiting at
// once, and its leaving does not cancel the retrieval that another caller
// shares.
func TestPresignCallerLeaves(t *testing.T) {
	prov := &stuckCreds{honourCtx: true, release: make(chan struct{})}
	p := newTemp(t, prov, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	leaver := presignAsync(ctx, p)
	for prov.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	stayer := presignAsync(context.Background(), p)
	cancel()
	if err := wait(t, leaver, "canceled caller"); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled caller: err = %v, want context.Canceled", err)
	}
	close(prov.release)
	if err := wait(t, stayer, "the caller that stayed"); err != nil {
		t.Errorf("the caller that stayed: %v", err)
	}
	if prov.canceledOnce.Load() {
		t.Error("the leaving caller canceled the shared retrieval")
	}
	if n := prov.calls.Load(); n != 1 {
		t.Errorf("provider asked %d times, want 1 shared retrieval", n)
	}
}

// TestPresignCanceledBeforeStart: a context that has already ended gets
// its error, not a URL and not a wait.
func TestPresignCanceledBeforeStart(t *testing.T) {
	prov := &stuckCreds{honourCtx: false, release: make(chan struct{})}
	t.Cleanup(func() { close(prov.release) })
	p := newTemp(t, prov, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := wait(t, presignAsync(ctx, p), "canceled context"); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

// scriptedCreds answers its first call with a set that expires in 90s,
// and later calls with fail (an error, or a hang until its context ends).
type scriptedCreds struct {
	calls atomic.Int32
	hang  bool
}

func (p *scriptedCreds) Retrieve(ctx context.Context) (aws.Credentials, error) {
	if p.calls.Add(1) == 1 {
		return aws.Credentials{AccessKeyID: "ASIA1", SecretAccessKey: "s", SessionToken: "t1", CanExpire: true, Expires: time.Now().Add(90 * time.Second)}, nil
	}
	if p.hang {
		<-ctx.Done()
		return aws.Credentials{}, ctx.Err()
	}
	return aws.Credentials{}, errors.New("sts: throttled")
}

// TestRefreshFailureKeepsValidSet: a refresh that fails or hangs does not
// fail the URL, which the set in hand can still sign (ending with it); and
// the failing provider is not asked again for each URL.
func TestRefreshFailureKeepsValidSet(t *testing.T) {
	for _, hang := range []bool{false, true} {
		t.Run(fmt.Sprintf("hang %v", hang), func(t *testing.T) {
			prov := &scriptedCreds{hang: hang}
			p := newTemp(t, prov, 200*time.Millisecond)
			for i := range 6 {
				ch := make(chan error, 1)
				var s *Signed
				go func() {
					var err error
					s, err = p.Presign(context.Background(), credObj, time.Now(), time.Time{})
					ch <- err
				}()
				if err := wait(t, ch, "refresh failing"); err != nil {
					t.Fatalf("presign %d: %v", i, err)
				}
				if key := mustQuery(t, s.URL).Get("X-Amz-Credential"); key[:5] != "ASIA1" {
					t.Errorf("presign %d signed by %s, want ASIA1", i, key)
				}
				if s.Lifetime > 90*time.Second || s.Lifetime < 80*time.Second {
					t.Errorf("presign %d: Lifetime = %v, want the 90s the keys have left", i, s.Lifetime)
				}
			}
			if n := prov.calls.Load(); n != 2 {
				t.Errorf("provider asked %d times, want 2 (one fetch, one failed refresh)", n)
			}
		})
	}
}
