package cache

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/exportedge/caddy-export-download/internal/presign"
)

func TestReuseFor(t *testing.T) {
	tests := []struct {
		reuse, life, want time.Duration
	}{
		{5 * time.Minute, 15 * time.Minute, 5 * time.Minute},  // the default: a third of presign_expiry
		{10 * time.Minute, 15 * time.Minute, 5 * time.Minute}, // never more than a third of the lifetime
		{5 * time.Minute, 6 * time.Minute, 2 * time.Minute},   // lifetime clamped by expires_at
		{5 * time.Minute, 3 * time.Second, time.Second},
		{0, 15 * time.Minute, 0}, // presign_reuse 0: no reuse
	}
	for _, tt := range tests {
		if got := ReuseFor(tt.reuse, tt.life); got != tt.want {
			t.Errorf("ReuseFor(%v, %v) = %v, want %v", tt.reuse, tt.life, got, tt.want)
		}
	}
}

var testObj = presign.Object{Bucket: "exports", Key: "exports/proj_1/a.csv", Filename: "a.csv", ContentType: "text/csv"}

// signer is a fake presigner: each call makes a distinct URL signed at the
// clock's time (whole seconds, as SigV4) with lifetime min(life, the time
// left before the export expires).
type signer struct {
	clock   *fakeClock
	life    time.Duration
	expires time.Time // the export's expiry; zero: none
	calls   atomic.Int32
}

func (s *signer) sign(context.Context) (*presign.Signed, error) {
	n := s.calls.Add(1)
	at := s.clock.Now().Truncate(time.Second)
	life := s.life
	if !s.expires.IsZero() {
		life = min(life, s.expires.Sub(at).Truncate(time.Second))
	}
	return &presign.Signed{URL: fmt.Sprintf("https://s3.test/%d", n), SignedAt: at, Lifetime: life}, nil
}

func TestURLsSign(t *testing.T) {
	const expiry = 15 * time.Minute
	type step struct {
		advance    time.Duration
		wantReused bool
	}
	tests := []struct {
		name    string
		reuse   time.Duration
		expires time.Duration // export expiry from the start; 0: none
		steps   []step
	}{
		{"reused inside the window, new after it", 5 * time.Minute, 0, []step{
			{0, false}, {time.Second, true}, {5*time.Minute - time.Second - time.Nanosecond, true}, {time.Nanosecond, false}, {time.Minute, true},
		}},
		// Lifetime 6m (the export expires then): reuse for a third, 2m.
		{"window is a third of a lifetime clamped by the export", 5 * time.Minute, 6 * time.Minute, []step{
			{0, false}, {2*time.Minute - time.Nanosecond, true}, {time.Nanosecond, false},
		}},
		{"presign_reuse 0 signs every time", 0, 0, []step{
			{0, false}, {0, false}, {time.Second, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			u := NewURLs(100, tt.reuse, clock.Now)
			defer u.Close()
			s := &signer{clock: clock, life: expiry}
			var exportExpires time.Time
			if tt.expires > 0 {
				exportExpires = clock.Now().Add(tt.expires)
				s.expires = exportExpires
			}
			var last string
			for i, st := range tt.steps {
				clock.Advance(st.advance)
				got, reused, err := u.Sign(context.Background(), testObj, exportExpires, s.sign)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if reused != st.wantReused || (reused && got.URL != last) || (!reused && got.URL == last) {
					t.Fatalf("step %d (+%v): got %s reused=%v, previous %s; want reused=%v", i, st.advance, got.URL, reused, last, st.wantReused)
				}
				if l, ok := lookup(u, testObj, exportExpires); ok != (tt.reuse > 0) || (ok && l.URL != got.URL) {
					t.Fatalf("step %d: Lookup = %v, %v right after Sign gave %s", i, l, ok, got.URL)
				}
				if !exportExpires.IsZero() && got.Expires().After(exportExpires) {
					t.Fatalf("step %d: URL valid until %v, after the export expires at %v", i, got.Expires(), exportExpires)
				}
				last = got.URL
			}
		})
	}
}

// TestURLsNeverOutliveTheExport: when the export's expiry moves earlier than
// a cached URL's, the URL is not handed out again.
func TestURLsNeverOutliveTheExport(t *testing.T) {
	clock := newFakeClock()
	u := NewURLs(100, 5*time.Minute, clock.Now)
	defer u.Close()
	s := &signer{clock: clock, life: 15 * time.Minute}
	first, _, err := u.Sign(context.Background(), testObj, time.Time{}, s.sign)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	sooner := clock.Now().Add(10 * time.Minute) // before first.Expires()
	if _, ok := lookup(u, testObj, sooner); ok {
		t.Fatal("Lookup handed out a URL that outlives the export")
	}
	s.expires = sooner
	second, reused, err := u.Sign(context.Background(), testObj, sooner, s.sign)
	if err != nil {
		t.Fatal(err)
	}
	if reused || second.URL == first.URL || second.Expires().After(sooner) {
		t.Fatalf("got %s (reused=%v) valid until %v; want a new URL valid until at most %v", second.URL, reused, second.Expires(), sooner)
	}
	// An expiry later than the URL's does not prevent reuse.
	if l, ok := lookup(u, testObj, sooner.Add(time.Hour)); !ok || l.URL != second.URL {
		t.Fatalf("Lookup with a later export expiry = %v, %v; want %s", l, ok, second.URL)
	}
}

// TestURLsSignCoalesces: concurrent Sign calls for one object sign once;
// exactly one caller is told it made the URL.
func TestURLsSignCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clock := newFakeClock()
		u := NewURLs(100, 5*time.Minute, clock.Now)
		defer u.Close()
		s := &signer{clock: clock, life: 15 * time.Minute}
		release := make(chan struct{})
		slowSign := func(ctx context.Context) (*presign.Signed, error) {
			<-release
			return s.sign(ctx)
		}
		const n = 50
		type res struct {
			url    string
			reused bool
		}
		results := make(chan res, n)
		for range n {
			go func() {
				got, reused, err := u.Sign(context.Background(), testObj, time.Time{}, slowSign)
				if err != nil {
					t.Errorf("Sign: %v", err)
					results <- res{}
					return
				}
				results <- res{got.URL, reused}
			}()
		}
		synctest.Wait() // every caller waits on the one signing
		close(release)
		made, urls := 0, map[string]bool{}
		for range n {
			r := <-results
			urls[r.url] = true
			if !r.reused {
				made++
			}
		}
		if s.calls.Load() != 1 || len(urls) != 1 || made != 1 {
			t.Fatalf("%d concurrent Sign calls: %d presigns, %d distinct URLs, %d not reused; want 1, 1, 1", n, s.calls.Load(), len(urls), made)
		}
	})
}

// TestURLsSignKeepsObjectsApart: concurrent Sign calls for two objects
// whose fields, joined with NULs, read the same never share a presign: each
// caller gets its own object's URL, and so do later hits. (The fields come
// from the app's answer and may hold any byte.)
func TestURLsSignKeepsObjectsApart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clock := newFakeClock()
		u := NewURLs(100, 5*time.Minute, clock.Now)
		defer u.Close()
		// Both read "exports\x00p2/b.csv\x00Z/a.csv\x00n1\x00text/csv": a key
		// template {export.project_id}/{id}.csv and a filename {export.name},
		// with a NUL in one export's project_id and in the other's name.
		objs := [2]presign.Object{
			{Bucket: "exports", Key: "p2/b.csv\x00Z/a.csv", Filename: "n1", ContentType: "text/csv"},
			{Bucket: "exports", Key: "p2/b.csv", Filename: "Z/a.csv\x00n1", ContentType: "text/csv"},
		}
		urlFor := func(i int) string { return fmt.Sprintf("https://s3.test/object-%d", i) }
		release := make(chan struct{})
		var results [2]chan string
		for i, obj := range objs {
			results[i] = make(chan string, 1)
			sign := func(context.Context) (*presign.Signed, error) {
				<-release
				return &presign.Signed{URL: urlFor(i), SignedAt: clock.Now().Truncate(time.Second), Lifetime: 15 * time.Minute}, nil
			}
			go func() {
				s, _, err := u.Sign(context.Background(), obj, time.Time{}, sign)
				if err != nil {
					t.Errorf("Sign(object %d): %v", i, err)
					results[i] <- ""
					return
				}
				results[i] <- s.URL
			}()
			synctest.Wait() // the first caller's presign is running when the second arrives
		}
		close(release)
		for i := range objs {
			if got := <-results[i]; got != urlFor(i) {
				t.Errorf("object %d was handed %s, want %s", i, got, urlFor(i))
			}
		}
		for i, obj := range objs {
			if got, ok := lookup(u, obj, time.Time{}); !ok || got.URL != urlFor(i) {
				t.Errorf("a later hit for object %d: %v, %v; want %s", i, got, ok, urlFor(i))
			}
		}
	})
}

// TestURLsSignError: a failed presign is not cached, and a caller that gives
// up does not cancel the presign others wait on.
func TestURLsSignError(t *testing.T) {
	clock := newFakeClock()
	u := NewURLs(100, 5*time.Minute, clock.Now)
	defer u.Close()
	boom := errors.New("no credentials")
	if _, _, err := u.Sign(context.Background(), testObj, time.Time{}, func(context.Context) (*presign.Signed, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("Sign error = %v, want %v", err, boom)
	}
	if _, ok := lookup(u, testObj, time.Time{}); ok {
		t.Fatal("a failed presign left a URL behind")
	}
	s := &signer{clock: clock, life: 15 * time.Minute}
	gone, cancel := context.WithCancel(context.Background())
	release, signedCtx := make(chan struct{}), make(chan error, 1)
	go func() { <-release; cancel() }()
	_, _, err := u.Sign(gone, testObj, time.Time{}, func(ctx context.Context) (*presign.Signed, error) {
		close(release) // the caller leaves while the presign runs
		<-gone.Done()
		signedCtx <- ctx.Err()
		return s.sign(ctx)
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that left got %v, want context.Canceled at once", err)
	}
	if err := <-signedCtx; err != nil {
		t.Fatalf("the presign's context ended with the caller's: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got, ok := lookup(u, testObj, time.Time{}); ok && got != nil {
			break // the detached presign finished and is reused by the next caller
		}
		if time.Now().After(deadline) {
			t.Fatal("the presign a leaving caller started was not stored for the others")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestURLsLookupAllocs: Lookup is on every cache hit; it must not allocate.
func TestURLsLookupAllocs(t *testing.T) {
	clock := newFakeClock()
	u := NewURLs(100, 5*time.Minute, clock.Now)
	defer u.Close()
	s := &signer{clock: clock, life: 15 * time.Minute}
	if _, _, err := u.Sign(context.Background(), testObj, time.Time{}, s.sign); err != nil {
		t.Fatal(err)
	}
	var ok bool
	allocs := testing.AllocsPerRun(1000, func() { _, ok = lookup(u, testObj, time.Time{}) })
	if !ok || allocs > 0 {
		t.Fatalf("Lookup: ok=%v, %v allocations per call; want a hit and 0", ok, allocs)
	}
}

// lookup is LookupAt at the URL cache's own clock.
func lookup(u *URLs, obj presign.Object, exportExpires time.Time) (*presign.Signed, bool) {
	s, _, ok := u.LookupAt(obj, exportExpires, u.now())
	return s, ok
}
