package decision

import (
	"fmt"
	"strings"
	"time"
)

// Class is an answer's caching class: each has its own fresh lifetime
// (docs/caching.md "Caching"), set with `ttl <class> <duration>`.
type Class uint8

// The caching classes.
const (
	Completed Class = iota
	Pending
	Processing // also any status value this version does not know
	Failed
	ExpiredClass
	NotFoundClass
	UnauthorizedClass
	numClasses
)

var classNames = [numClasses]string{"completed", "pending", "processing", "failed", "expired", "not_found", "unauthorized"}

// String returns the name used in the configuration.
func (c Class) String() string {
	if c < numClasses {
		return classNames[c]
	}
	return "unknown"
}

// ParseClass maps a configuration name to its Class.
func ParseClass(name string) (Class, error) {
	for i, n := range classNames {
		if n == name {
			return Class(i), nil
		}
	}
	return 0, fmt.Errorf("unknown outcome %q (want one of %s)", name, strings.Join(classNames[:], ", "))
}

// TTLs holds a fresh lifetime per Class; zero means "do not cache".
type TTLs [numClasses]time.Duration

// DefaultTTLs are the docs/caching.md "Caching" defaults.
func DefaultTTLs() TTLs {
	return TTLs{
		Completed:         5 * time.Minute,
		Pending:           time.Second,
		Processing:        time.Second,
		Failed:            30 * time.Second,
		ExpiredClass:      5 * time.Minute,
		NotFoundClass:     5 * time.Second,
		UnauthorizedClass: 5 * time.Second,
	}
}

// ClassOf returns the caching class of a usable answer and whether it may be
// cached at all: a 429 never is.
func ClassOf(a *Answer) (Class, bool) {
	switch a.Kind {
	case KindUnauthorized:
		return UnauthorizedClass, true
	case KindNotFound:
		return NotFoundClass, true
	case KindRateLimited:
		return 0, false
	}
	switch a.Export.Status {
	case "completed":
		return Completed, true
	case "pending":
		return Pending, true
	case "failed":
		return Failed, true
	case "expired":
		return ExpiredClass, true
	default:
		return Processing, true
	}
}

// FreshFor returns how long answer a, received at now, stays fresh; zero
// means it must not be stored. A completed export keeps its TTL: at its
// expires_at, Decide turns the cached answer into 410 without asking the
// upstream. Only when expired answers are not cached (TTL 0) does a
// completed entry end at expires_at, so that the upstream is asked then.
func (t *TTLs) FreshFor(a *Answer, now time.Time) time.Duration {
	c, ok := ClassOf(a)
	if !ok {
		return 0
	}
	d := t[c]
	if c == Completed && t[ExpiredClass] == 0 && !a.Export.ExpiresAt.IsZero() {
		if left := a.Export.ExpiresAt.Sub(now); left < d {
			d = max(left, 0)
		}
	}
	return d
}
