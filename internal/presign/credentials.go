package presign

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"golang.org/x/sync/singleflight"
)

// DefaultTimeout is how long a Presign waits for credentials when
// Config.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// credentialSource hands out the signing credentials: the SDK's
// CredentialsCache (one retrieval shared by concurrent callers, each caller
// free to stop waiting) plus the rule for credentials that would end a URL
// early.
//
// Such credentials are refreshed once. The set that refresh returns is
// refreshed again only after half of the time it had left has passed:
// asking sooner would most likely return a set that ends no later (an IMDS
// or ECS endpoint serves the same set until it rotates it; a new STS
// session would gain only the time that has passed), and would cost one
// provider call per URL. So URLs keep at least half of what fresh
// credentials give them, for one provider call per half-life.
type credentialSource struct {
	cache   *aws.CredentialsCache
	timeout time.Duration
	// last is the set the cache last gave (or the set a failed refresh
	// keeps): while it is valid it is what the cache would return at
	// once, so a Presign takes it without setting up a deadline.
	last atomic.Pointer[aws.Credentials]

	refreshes singleflight.Group // keyed by the set being replaced
	// turn is held by the refresh that runs: one at a time, so that a
	// refresh finds the set the one before returned already recorded.
	turn chan struct{}

	mu        sync.Mutex
	refreshed aws.Credentials // the set the last refresh returned
	due       time.Time       // when that set may be refreshed again
}

// newCredentialSource caches provider. A provider that is not already a
// cache gets the deadline on each retrieval (the cache itself runs its
// retrieval with no deadline and no cancellation, shared by its callers).
func newCredentialSource(provider aws.CredentialsProvider, timeout time.Duration) *credentialSource {
	cache, ok := provider.(*aws.CredentialsCache)
	if !ok {
		cache = aws.NewCredentialsCache(&deadlineProvider{provider: provider, timeout: timeout})
	}
	return &credentialSource{cache: cache, timeout: timeout, turn: make(chan struct{}, 1)}
}

// forURL returns credentials to sign a URL that would be valid until
// until, refreshing them first when they would expire sooner and the rule
// above allows. It waits until ctx ends or the timeout passes: one
// deadline for the fetch and the refresh together, set up only when there
// is something to wait for.
//
// A refresh that fails or does not end by the deadline is not an error:
// the set in hand is still valid (the URL ends with it), and it is not
// refreshed again before its half-life, so a failing or hung provider
// costs one wait, not one per URL.
func (c *credentialSource) forURL(ctx context.Context, now, until time.Time) (aws.Credentials, error) {
	// The cache's own test of its set (Expired, with any expiry window
	// already applied to Expires): while it passes, the cache would return
	// this set at once, and there is nothing to wait for.
	last := c.last.Load()
	held := last != nil && !last.Expired()
	if held && !c.wantsRefresh(*last, now, until) {
		return *last, nil
	}
	wait, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var creds aws.Credentials
	if held {
		creds = *last
	} else {
		var err error
		if creds, err = c.cache.Retrieve(wait); err != nil {
			return aws.Credentials{}, fmt.Errorf("retrieving S3 credentials: %w", err)
		}
		c.last.Store(&creds)
		if !c.wantsRefresh(creds, now, until) {
			return creds, nil
		}
	}
	fresh, err := c.refreshShared(wait, creds, now)
	if err == nil {
		return fresh, nil
	}
	if ctx.Err() != nil {
		// The caller left; the refresh goes on for the others.
		return aws.Credentials{}, fmt.Errorf("refreshing S3 credentials: %w", context.Cause(ctx))
	}
	c.record(creds, now)
	return creds, nil
}

// wantsRefresh tells whether creds would end a URL valid until until
// early, and the rule above allows refreshing them now.
func (c *credentialSource) wantsRefresh(creds aws.Credentials, now, until time.Time) bool {
	return creds.CanExpire && creds.Expires.Before(until) && c.mayRefresh(creds, now)
}

// refreshShared refreshes stale once for all the callers that hold it,
// waiting until wait ends.
func (c *credentialSource) refreshShared(wait context.Context, stale aws.Credentials, now time.Time) (aws.Credentials, error) {
	ch := c.refreshes.DoChan(setKey(stale), func() (any, error) {
		// None of the callers may cancel it for the others; it has its
		// own deadline.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(wait), c.timeout)
		defer cancel()
		return c.refresh(ctx, stale, now)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return aws.Credentials{}, res.Err
		}
		return res.Val.(aws.Credentials), nil
	case <-wait.Done():
		return aws.Credentials{}, context.Cause(wait)
	}
}

func (c *credentialSource) mayRefresh(creds aws.Credentials, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !sameSet(creds, c.refreshed) || !now.Before(c.due)
}

// refresh replaces stale in the cache, unless another caller already did
// or stale is the set a refresh just returned. A caller can get that set
// from the cache before the refresh that fetched it recorded it, and ask
// to refresh it: so refreshes take turns, and each checks the rule again.
func (c *credentialSource) refresh(ctx context.Context, stale aws.Credentials, now time.Time) (aws.Credentials, error) {
	select {
	case c.turn <- struct{}{}:
		defer func() { <-c.turn }()
	case <-ctx.Done():
		return aws.Credentials{}, context.Cause(ctx)
	}
	if !c.mayRefresh(stale, now) {
		return stale, nil
	}
	creds, err := c.cache.Retrieve(ctx)
	if err != nil || !sameSet(creds, stale) {
		if err == nil {
			c.last.Store(&creds)
		}
		return creds, err
	}
	c.cache.Invalidate()
	if creds, err = c.cache.Retrieve(ctx); err != nil {
		return creds, err
	}
	// Recorded before it is handed out: a caller that finds it in last
	// must also find that it may not be refreshed yet, or it would
	// refresh it at once.
	c.record(creds, now)
	c.last.Store(&creds)
	return creds, nil
}

// record notes that creds came from a refresh (or that refreshing them
// failed) at now: they are not refreshed again before half of the time
// they had left has passed. A newer set already recorded stays.
func (c *credentialSource) record(creds aws.Credentials, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refreshed.Expires.After(creds.Expires) {
		return
	}
	c.refreshed, c.due = creds, now.Add(creds.Expires.Sub(now)/2)
}

// sameSet tells whether a and b are one credential set: same keys, same
// expiry (a provider may extend a set's expiry: that is a newer one).
func sameSet(a, b aws.Credentials) bool {
	return a.AccessKeyID == b.AccessKeyID && a.SessionToken == b.SessionToken &&
		a.CanExpire == b.CanExpire && a.Expires.Equal(b.Expires)
}

func setKey(c aws.Credentials) string {
	return c.AccessKeyID + "\x00" + c.SessionToken + "\x00" + strconv.FormatInt(c.Expires.UnixNano(), 10)
}

// deadlineProvider gives each retrieval of provider a deadline, and passes
// on the cache strategies the provider implements.
type deadlineProvider struct {
	provider aws.CredentialsProvider
	timeout  time.Duration
}

func (d *deadlineProvider) Retrieve(ctx context.Context) (aws.Credentials, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	return d.provider.Retrieve(ctx)
}

func (d *deadlineProvider) HandleFailToRefresh(ctx context.Context, prev aws.Credentials, err error) (aws.Credentials, error) {
	if s, ok := d.provider.(aws.HandleFailRefreshCredentialsCacheStrategy); ok {
		return s.HandleFailToRefresh(ctx, prev, err)
	}
	return aws.Credentials{}, err
}

func (d *deadlineProvider) AdjustExpiresBy(creds aws.Credentials, dur time.Duration) (aws.Credentials, error) {
	if s, ok := d.provider.(aws.AdjustExpiresByCredentialsCacheStrategy); ok {
		return s.AdjustExpiresBy(creds, dur)
	}
	if creds.CanExpire {
		creds.Expires = creds.Expires.Add(dur)
	}
	return creds, nil
}

func (d *deadlineProvider) ProviderSources() []aws.CredentialSource {
	if s, ok := d.provider.(aws.CredentialProviderSource); ok {
		return s.ProviderSources()
	}
	return nil
}
