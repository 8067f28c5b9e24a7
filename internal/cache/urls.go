package cache

import (
	"context"
	"encoding/binary"
	"strings"
	"time"

	"github.com/maypok86/otter/v2"
	"golang.org/x/sync/singleflight"

	"github.com/exportedge/caddy-export-download/internal/presign"
)

// URLs reuses presigned URLs per object (bucket, key, file name, content
// type), so that presigning happens at most once per object per reuse
// window, and each URL handed out keeps at least two thirds of its lifetime.
type URLs struct {
	store   *otter.Cache[presign.Object, *signed]
	flights singleflight.Group
	reuse   time.Duration
	now     func() time.Time
}

type signed struct {
	*presign.Signed
	until time.Time // handed out until then
}

// NewURLs returns an empty URL cache. reuse is presign_reuse; 0 disables
// reuse (every Sign presigns).
func NewURLs(maxEntries int, reuse time.Duration, now func() time.Time) *URLs {
	if now == nil {
		now = time.Now
	}
	u := &URLs{reuse: reuse, now: now}
	if reuse > 0 {
		u.store = otter.Must(&otter.Options[presign.Object, *signed]{
			MaximumSize: maxEntries,
			Clock:       noClock{}, // windows are checked against u.now
		})
	}
	return u
}

// Close stops the store's maintenance goroutine. Like Cache.Close, it keeps
// the entries for requests still draining after a reload.
func (u *URLs) Close() {
	if u.store != nil {
		u.store.StopAllGoroutines()
	}
}

// ReuseFor is how long a URL of lifetime life may be handed out:
// min(reuse, life/3).
func ReuseFor(reuse, life time.Duration) time.Duration { return min(reuse, life/3) }

// Sign returns a URL for obj: a reused one when it is inside its window
// and does not outlive exportExpires (zero: none), else a new one from
// sign (called once for concurrent callers of one object). reused is false
// only for the caller whose call of sign made the URL.
func (u *URLs) Sign(ctx context.Context, obj presign.Object, exportExpires time.Time, sign func(context.Context) (*presign.Signed, error)) (s *presign.Signed, reused bool, err error) {
	if u.store == nil {
		s, err = sign(ctx)
		return s, false, err
	}
	if e, ok := u.store.GetIfPresent(obj); ok && u.usable(e, exportExpires) {
		return e.Signed, true, nil
	}
	signedHere := false
	ch := u.flights.DoChan(flightKey(obj), func() (any, error) {
		// Another caller may have signed while this one waited for the lock.
		if e, ok := u.store.GetIfPresent(obj); ok && u.usable(e, exportExpires) {
			return e, nil
		}
		signedHere = true
		// Detached: callers that stay still get the URL when this one
		// leaves. The signer bounds its own time.
		s, err := sign(context.WithoutCancel(ctx))
		if err != nil {
			return nil, err
		}
		e := &signed{Signed: s, until: u.ReuseUntil(s)}
		u.store.Set(obj, e)
		return e, nil
	})
	var v any
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, false, r.Err
		}
		v = r.Val
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	if e := v.(*signed); signedHere || e.usableAt(u.now(), exportExpires) {
		return e.Signed, !signedHere, nil
	}
	// Joined another caller's presign made for an export that expires
	// later than this one: this caller's URL must not outlive its export.
	s, err = sign(ctx)
	return s, false, err
}

// flightKey names obj's presign: one key per object. Each field is
// preceded by its length, since the fields may hold any byte: joined with a
// separator, two objects could share a key, and a caller would take the
// URL of another's object.
func flightKey(obj presign.Object) string {
	fields := [...]string{obj.Bucket, obj.Key, obj.Filename, obj.ContentType}
	n := 0
	for _, f := range fields {
		n += binary.MaxVarintLen64 + len(f)
	}
	var b strings.Builder
	b.Grow(n)
	var lenBuf [binary.MaxVarintLen64]byte
	for _, f := range fields {
		b.Write(binary.AppendUvarint(lenBuf[:0], uint64(len(f))))
		b.WriteString(f)
	}
	return b.String()
}

func (u *URLs) usable(e *signed, exportExpires time.Time) bool {
	return e.usableAt(u.now(), exportExpires)
}

func (e *signed) usableAt(now, exportExpires time.Time) bool {
	if !now.Before(e.until) {
		return false
	}
	return exportExpires.IsZero() || !e.Expires().After(exportExpires)
}

// LookupAt returns a URL for obj that may be handed out at now, without
// signing, and until when: the hit path, which allocates nothing.
func (u *URLs) LookupAt(obj presign.Object, exportExpires, now time.Time) (s *presign.Signed, until time.Time, ok bool) {
	if u.store == nil {
		return nil, time.Time{}, false
	}
	if e, ok := u.store.GetIfPresent(obj); ok && e.usableAt(now, exportExpires) {
		return e.Signed, e.until, true
	}
	return nil, time.Time{}, false
}

// ReuseUntil is until when s may be handed out.
func (u *URLs) ReuseUntil(s *presign.Signed) time.Time {
	return s.SignedAt.Add(ReuseFor(u.reuse, s.Lifetime))
}
