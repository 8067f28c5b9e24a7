package exportdownload

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/exportedge/caddy-export-download/internal/testenv"
)

// signedURL is what a test reads from a presigned Location.
type signedURL struct {
	raw     string
	signed  time.Time     // X-Amz-Date
	life    time.Duration // X-Amz-Expires
	expires time.Time
}

func parseLocation(t testing.TB, rec *httptest.ResponseRecorder) signedURL {
	t.Helper()
	loc := rec.Header().Get("Location")
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatalf("Location %q: %v", loc, err)
	}
	q := u.Query()
	at, err := time.Parse("20060102T150405Z", q.Get("X-Amz-Date"))
	if err != nil {
		t.Fatalf("Location %q: X-Amz-Date: %v", loc, err)
	}
	secs, err := strconv.Atoi(q.Get("X-Amz-Expires"))
	if err != nil {
		t.Fatalf("Location %q: X-Amz-Expires: %v", loc, err)
	}
	life := time.Duration(secs) * time.Second
	return signedURL{raw: loc, signed: at, life: life, expires: at.Add(life)}
}

// TestCachePresignReuse: a URL is handed out again for min(presign_reuse,
// a third of its lifetime), so it always has two thirds of its lifetime
// left, and never outlives the export.
func TestCachePresignReuse(t *testing.T) {
	type step struct {
		advance time.Duration
		same    bool // the URL of the previous step
	}
	reuse := func(d time.Duration) *caddy.Duration { c := caddy.Duration(d); return &c }
	tests := []struct {
		name    string
		reuse   *caddy.Duration // nil: the default, a third of presign_expiry (15m)
		expires time.Duration   // the export's, from the start; 0: none
		steps   []step
	}{
		{"default window", nil, 0, []step{
			{0, false}, {time.Second, true}, {5*time.Minute - 2*time.Second, true}, {time.Second, false}, {time.Minute, true},
		}},
		{"presign_reuse 1m", reuse(time.Minute), 0, []step{
			{0, false}, {59 * time.Second, true}, {time.Second, false},
		}},
		// Lifetime 6m, clamped by expires_at: a third of it is 2m.
		{"lifetime clamped by the export", nil, 6 * time.Minute, []step{
			{0, false}, {2*time.Minute - time.Second, true}, {time.Second, false},
		}},
		{"presign_reuse 0", reuse(0), 0, []step{
			{0, false}, {time.Second, false}, {time.Second, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := testenv.NewUpstream(t)
			clock := newClock()
			var expires time.Time
			if tt.expires > 0 {
				expires = clock.Now().Add(tt.expires)
			}
			completed(up, testID, expires)
			h := newHandler(t, up, clock, func(h *Handler) {
				// A long fresh lifetime keeps refresh-ahead out of the way.
				h.Cache = &CacheConfig{PresignReuse: tt.reuse, TTL: map[string]caddy.Duration{"completed": caddy.Duration(time.Hour)}}
			})
			var prev signedURL
			for i, st := range tt.steps {
				clock.Advance(st.advance)
				rec := download(t, h, testID, testKey)
				if rec.Code != http.StatusFound {
					t.Fatalf("step %d: %d %q", i, rec.Code, rec.Body)
				}
				u := parseLocation(t, rec)
				if same := u.raw == prev.raw; same != st.same {
					t.Fatalf("step %d (+%v): same URL = %v, want %v\nprevious %s\ngot      %s", i, st.advance, same, st.same, prev.raw, u.raw)
				}
				now := clock.Now()
				if left := u.expires.Sub(now); left*3 < u.life*2 {
					t.Fatalf("step %d: handed out a URL with %v of its %v left, under two thirds", i, left, u.life)
				}
				if !expires.IsZero() && u.expires.After(expires) {
					t.Fatalf("step %d: URL valid until %v, after the export expires at %v", i, u.expires, expires)
				}
				prev = u
			}
			checkCalls(t, up, testID, 1)
		})
	}

	t.Run("export expiry moved earlier", func(t *testing.T) {
		up := testenv.NewUpstream(t)
		clock := newClock()
		start := clock.Now()
		completed(up, testID, start.Add(time.Hour))
		h := newHandler(t, up, clock, func(h *Handler) {
			h.Cache = &CacheConfig{TTL: map[string]caddy.Duration{"completed": caddy.Duration(time.Minute)}}
		})
		first := parseLocation(t, download(t, h, testID, testKey))
		if first.life != 15*time.Minute {
			t.Fatalf("first URL lifetime %v, want presign_expiry 15m", first.life)
		}
		sooner := start.Add(10 * time.Minute)
		completed(up, testID, sooner)
		clock.Advance(time.Minute) // the entry is stale: the next request reloads it
		rec := download(t, h, testID, testKey)
		checkReply(t, rec, http.StatusFound, wantRefreshed)
		second := parseLocation(t, rec)
		if second.raw == first.raw || second.expires.After(sooner) {
			t.Fatalf("after the export's expiry moved to %v: URL valid until %v (first URL: %v); want a new one within it", sooner, second.expires, first.expires)
		}
	})
}
