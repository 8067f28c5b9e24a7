package fleet

import (
	"sync"
	"sync/atomic"
	"time"
)

// Observer receives the fleet tier's metrics. Implementations must be safe
// for concurrent use and fast.
type Observer interface {
	// Lookup counts one Load by result, one of LookupResults.
	Lookup(result string)
	// Invalidation counts one event by direction: sent or received.
	Invalidation(direction string)
	// Lag observes the time from an event's write to its delivery here.
	Lag(d time.Duration)
	// Up reports the stream reader's state when it changes, and once when
	// the observer is added.
	Up(up bool)
}

// LookupResults are the values Observer.Lookup is given: a usable shared
// decision, none (this node asked the app), another node's answer waited
// for, a value that failed authentication, or Redis unavailable.
var LookupResults = []string{"hit", "miss", "collapsed", "invalid", "unavailable"}

type counters struct {
	hit, miss, collapsed, invalid, unavailable atomic.Uint64
	sent, received, queued, invalidEvents      atomic.Uint64
	demotes                                    atomic.Uint64
}

// Stats is a snapshot of a Client's counters, for the admin API.
type Stats struct {
	Lookups struct {
		Hit         uint64 `json:"hit"`
		Miss        uint64 `json:"miss"`
		Collapsed   uint64 `json:"collapsed"`
		Invalid     uint64 `json:"invalid"`
		Unavailable uint64 `json:"unavailable"`
	} `json:"lookups"`
	Invalidations struct {
		Sent     uint64 `json:"sent"`
		Received uint64 `json:"received"`
		// Queued counts events that waited in the outbox.
		Queued uint64 `json:"queued"`
		// Invalid counts stream entries that failed authentication.
		Invalid uint64 `json:"invalid"`
		// Demotes counts demotions (resume was impossible).
		Demotes uint64 `json:"demotes"`
	} `json:"invalidations"`
	OutboxLen   int  `json:"outbox_len"`
	Up          bool `json:"up"`
	BreakerOpen bool `json:"breaker_open"`
	// ConfirmedAgoMS is how long ago the stream reader last confirmed that
	// every invalidation was applied; -1 if it never did.
	ConfirmedAgoMS int64 `json:"confirmed_ago_ms"`
}

// AddObserver adds a metrics observer and tells it the current state; the
// returned function removes it. Every observer added and not removed gets
// every report: each Caddy config has its own metrics registry, and a
// config that fails to load must not take the running one's series.
func (c *Client) AddObserver(o Observer) (remove func()) {
	c.obsMu.Lock()
	cur := c.observers()
	next := append(append(make([]Observer, 0, len(cur)+1), cur...), o)
	c.obs.Store(&next)
	c.obsMu.Unlock()
	o.Up(c.Up())
	var once sync.Once
	return func() {
		once.Do(func() {
			c.obsMu.Lock()
			defer c.obsMu.Unlock()
			cur := c.observers()
			next := make([]Observer, 0, len(cur))
			removed := false
			for _, x := range cur {
				if x == o && !removed {
					removed = true
					continue
				}
				next = append(next, x)
			}
			c.obs.Store(&next)
		})
	}
}

func (c *Client) observers() []Observer {
	if p := c.obs.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *Client) countLookup(result string) {
	switch result {
	case "hit":
		c.st.hit.Add(1)
	case "miss":
		c.st.miss.Add(1)
	case "collapsed":
		c.st.collapsed.Add(1)
	case "invalid":
		c.st.invalid.Add(1)
	case "unavailable":
		c.st.unavailable.Add(1)
	}
	for _, o := range c.observers() {
		o.Lookup(result)
	}
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	var s Stats
	s.Lookups.Hit = c.st.hit.Load()
	s.Lookups.Miss = c.st.miss.Load()
	s.Lookups.Collapsed = c.st.collapsed.Load()
	s.Lookups.Invalid = c.st.invalid.Load()
	s.Lookups.Unavailable = c.st.unavailable.Load()
	s.Invalidations.Sent = c.st.sent.Load()
	s.Invalidations.Received = c.st.received.Load()
	s.Invalidations.Queued = c.st.queued.Load()
	s.Invalidations.Invalid = c.st.invalidEvents.Load()
	s.Invalidations.Demotes = c.st.demotes.Load()
	s.OutboxLen = c.out.len()
	s.Up = c.Up()
	s.BreakerOpen = !c.breaker.allow()
	s.ConfirmedAgoMS = -1
	if at := c.confirmed.Load(); at != 0 {
		s.ConfirmedAgoMS = (time.Since(c.mono) - time.Duration(at-1)).Milliseconds()
	}
	return s
}
