package fleet

import (
	"context"
	"sync"
	"time"
)

// outboxLoop retries queued events on its own timer, so they go out within
// a second of Redis answering again even when no connection ever saw an
// error (a partition that loses packets looks like silence).
func (c *Client) outboxLoop() {
	defer c.wg.Done()
	t := time.NewTicker(retryEvery)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.flushOutbox()
	}
}

func (c *Client) flushOutbox() {
	for {
		q, ok := c.out.head()
		if !ok {
			return
		}
		if err := c.publishQueued(q.ev); err != nil {
			return
		}
		c.out.remove(q.seq)
	}
}

func (c *Client) publishQueued(ev Event) error {
	cl := c.client()
	if cl == nil {
		return errUnavailable
	}
	if !c.breaker.allow() {
		// Probe with one bounded PING, without letting requests through:
		// success closes the breaker.
		ctx, cancel := context.WithTimeout(c.rootCtx, c.cfg.Timeout)
		err := cl.Do(ctx, cl.B().Ping().Build()).Error()
		cancel()
		if err != nil {
			return err
		}
		c.breaker.reset()
	}
	return c.publishNow(c.rootCtx, ev)
}

// outbox holds the events waiting for Redis, in order. Each has a sequence
// number: the retry loop removes exactly what it published, also when the
// outbox coalesced meanwhile.
type outbox struct {
	mu     sync.Mutex
	events []queued
	items  int // ids and tags held
	creds  int // refused credentials held
	seq    uint64
	closed bool // drained for good: nothing more is held
}

type queued struct {
	seq uint64
	ev  Event
}

func (o *outbox) init() {}

// push appends ev and returns the outbox's length. Past outboxMaxItems ids
// and tags, or outboxMaxCreds refused credentials, everything held
// coalesces into one purge of all, written as the newest event held (so it
// refuses every shared decision any of them refused): nothing is lost.
// Refusals have a bound of their own: a client trying random keys while
// Redis is away makes many (each a 401), and only a flood past that bound
// costs the fleet its caches.
func (o *outbox) push(ev Event) (n int, coalesced, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return 0, false, false
	}
	o.seq++
	o.events = append(o.events, queued{o.seq, ev})
	o.items += len(ev.IDs) + len(ev.Tags)
	o.creds += len(ev.Creds) + len(ev.CredNames)
	if o.items > outboxMaxItems || o.creds > outboxMaxCreds {
		newest := o.events[0].ev.Written
		for _, q := range o.events {
			if q.ev.Written.After(newest) {
				newest = q.ev.Written
			}
		}
		o.seq++
		o.events = []queued{{o.seq, Event{All: true, Written: newest}}}
		o.items, o.creds = 0, 0
		coalesced = true
	}
	return len(o.events), coalesced, true
}

func (o *outbox) head() (queued, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.events) == 0 {
		return queued{}, false
	}
	return o.events[0], true
}

// remove drops the event seq if it is still the head.
func (o *outbox) remove(seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.events) == 0 || o.events[0].seq != seq {
		return
	}
	ev := o.events[0].ev
	o.items -= len(ev.IDs) + len(ev.Tags)
	o.creds -= len(ev.Creds) + len(ev.CredNames)
	o.events[0] = queued{}
	o.events = o.events[1:]
	if len(o.events) == 0 {
		o.events, o.items, o.creds = nil, 0, 0
	}
}

func (o *outbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.events)
}

// drain empties the outbox for good and returns what it held: a later
// push is refused.
func (o *outbox) drain() []Event {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.creds = 0
	out := make([]Event, 0, len(o.events))
	for _, q := range o.events {
		out = append(out, q.ev)
	}
	o.events, o.items = nil, 0
	return out
}

// Pending reports whether invalidations of this client wait in its outbox.
func (c *Client) Pending() bool { return c.out.len() > 0 }
