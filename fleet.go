package exportdownload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/exportedge/caddy-export-download/internal/cache"
	"github.com/exportedge/caddy-export-download/internal/decision"
	"github.com/exportedge/caddy-export-download/internal/fleet"
	"github.com/exportedge/caddy-export-download/internal/tmpl"
)

// pooledFleet is a fleet client in its pool. When the last config using it
// is cleaned up, what its outbox still holds goes to the clients that
// remain (a reload that changed the fleet block must not lose the
// invalidations that waited for Redis).
type pooledFleet struct{ *fleet.Client }

func (p pooledFleet) Destruct() error {
	handOver(p.Close())
	return nil
}

// handOver gives events that a closing client still held (its outbox, or
// a publish that failed as it closed) to the clients that remain: the
// pool no longer holds the closing one, and a reload provisions the new
// config, with its clients, before it cleans the old one up.
func handOver(events []fleet.Event) {
	if len(events) == 0 {
		return
	}
	heirs := collect[pooledFleet](fleetClients)
	for _, c := range heirs {
		c.value.Adopt(events)
	}
	if len(heirs) == 0 {
		// No fleet left on this node: nobody could deliver them.
		caddy.Log().Named("export_download.fleet").Warn("fleet: invalidations dropped with the fleet block", zap.Int("events", len(events)))
	}
}

// publish sends sel to every fleet this process belongs to: "published",
// "queued" (Redis unreachable: it is sent when Redis answers again) or
// "off" without any. The clients are read under the pool's lock and called
// outside it. A client whose last config was cleaned up meanwhile queues
// the event and hands it, as it closes, to the clients that remain.
func publish(ctx context.Context, sel purgeSelection) string {
	state := "off"
	for _, c := range collect[pooledFleet](fleetClients) {
		if c.value.Publish(ctx, fleet.Event{IDs: sel.IDs, Tags: sel.Tags, Creds: sel.Creds, All: sel.All}) {
			if state == "off" {
				state = "published"
			}
		} else {
			state = "queued"
		}
	}
	return state
}

// publishRefusal makes the application's refusal of a credential (a
// 401/403 answer) hold everywhere, like a purge: every cache of this node
// and of every node of the fleet drops that credential's entries, and no
// node takes a shared decision made for it before. The event names the
// credential by its HMAC, as keys do.
func publishRefusal(cred [32]byte) {
	purge(context.Background(), purgeSelection{Creds: [][32]byte{cred}})
}

// statsOfFleet is what the admin API shows of the fleet a cache follows;
// nil without one.
func statsOfFleet(c *fleet.Client) *fleet.Stats {
	if c == nil {
		return nil
	}
	s := c.Stats()
	return &s
}

// sharedTier is the fleet as the lookup sees it (lookup.go): the shared
// decisions under the local cache. It also applies the fleet's
// invalidations to this config's cache.
type sharedTier struct {
	client         *fleet.Client
	site           string   // this site's scope in the keys (fleet.Client.Site)
	fields         []string // the export fields the templates name: all a decision shares
	now            func() time.Time
	logger         *zap.Logger
	release        func()
	removeObserver func()
	unsubscribe    func()
}

// upstreamCall asks the application: the answer and how long it stays
// fresh here (0: not cacheable).
type upstreamCall func(context.Context) (*decision.Answer, time.Duration, error)

// sharedResult is what the shared tier answered for one fill.
type sharedResult struct {
	answer  *decision.Answer
	ttl     time.Duration // how long it stays fresh here; 0: not cacheable
	decided time.Time     // when the upstream was asked, by whichever node
	by      sharedAnswer
}

// load returns the decision for (id, cred): a valid shared one fresh past
// minFresh and made after notBefore, else one from ask, called once for
// the whole fleet (a lease) and shared. It says how the shared tier
// answered, also with an error.
func (s *sharedTier) load(ctx context.Context, id string, cred [32]byte, minFresh, notBefore time.Time, ask upstreamCall) (sharedResult, error) {
	var mine *decision.Answer
	var mineTTL time.Duration
	q := fleet.Query{ID: id, Cred: cred, Site: s.site, MinFresh: minFresh, NotBefore: notBefore}
	d, err := s.client.Load(ctx, q, func(ctx context.Context) (fleet.Fill, error) {
		a, ttl, err := ask(ctx)
		if err != nil {
			return fleet.Fill{}, err
		}
		mine, mineTTL = a, ttl
		switch {
		case ttl > 0 && a.Kind != decision.KindRateLimited:
			return fleet.Fill{Payload: s.encode(a), Tags: a.SurrogateKeys, TTL: ttl}, nil
		case a.Kind == decision.KindUnauthorized || a.Kind == decision.KindNotFound:
			// A refusal this node does not cache still refutes the
			// shared decision: delete it, so no node takes it again.
			return fleet.Fill{Refutes: true}, nil
		}
		return fleet.Fill{}, nil // not cacheable here: not shared either
	})
	res := sharedResult{by: sharedAnswerOf(d.Source), decided: d.DecidedAt}
	if err != nil {
		return res, err
	}
	if mine != nil {
		res.answer, res.ttl = mine, mineTTL
		return res, nil
	}
	a, err := s.decode(d.Payload, d.Tags)
	if err != nil {
		// Authenticated, so written by a node of this fleet, but with
		// another version's format (a rolling deploy). Ask the app rather
		// than guess.
		s.logger.Warn("unusable shared decision", zap.String("export_id", id), zap.Error(err))
		res.decided = s.now()
		res.answer, res.ttl, err = ask(ctx)
		return res, err
	}
	res.answer, res.ttl = a, d.FreshUntil.Sub(s.now())
	return res, nil
}

// trusts reports whether an answer decided at decided (Unix nanoseconds)
// may still be served at now: the bound of max_staleness.
func (s *sharedTier) trusts(decided int64, now time.Time) bool {
	return s.client.Trusts(decided, now.UnixNano())
}

// current reports whether the fleet confirmed within max_staleness (on the
// monotonic clock) that every invalidation is applied here; recent whether
// rec's answer is within max_staleness of now (lookup.go reads current
// before the local cache, then recent of what it found). Its age is the
// older of two: since it was decided (the wall clock, by whichever node)
// and since this node filled it (the monotonic clock), so a wall clock that
// steps back does not make it younger than its time here.
func (s *sharedTier) current() bool { return s.client.Current() }

func (s *sharedTier) recent(rec *record, now time.Time) bool {
	decided := min(rec.decided, now.UnixNano()-(monoNow()-rec.filled))
	return s.client.Recent(decided, now.UnixNano())
}

func sharedAnswerOf(src fleet.Source) sharedAnswer {
	switch src {
	case fleet.Hit:
		return sharedHit
	case fleet.Stored:
		return sharedStored
	case fleet.Collapsed:
		return sharedCollapsed
	case fleet.Fetched:
		return sharedFetched
	case fleet.Unavailable:
		return sharedUnavailable
	}
	return sharedNotAsked
}

// subscribe applies the fleet's invalidations to d, this config's cache.
func (s *sharedTier) subscribe(d *cache.Cache[*record]) {
	s.unsubscribe = s.client.Subscribe(func(ev fleet.Event) {
		var n int
		if ev.Demote {
			n = d.Demote()
		} else {
			// A refused credential's entries carry its name as a tag
			// (credentialTag): found the way a purge by surrogate key
			// finds entries, without knowing the credential.
			tags := ev.Tags
			for _, name := range ev.CredNames {
				tags = append(tags[:len(tags):len(tags)], credentialTag(name))
			}
			n = dropLocal(d, purgeSelection{IDs: ev.IDs, Tags: tags, All: ev.All})
		}
		s.logger.Debug("fleet invalidation applied", zap.Strings("export_ids", firstN(ev.IDs, 16)),
			zap.Int("surrogate_keys", len(ev.Tags)), zap.Int("refused_credentials", len(ev.CredNames)), zap.Bool("all", ev.All),
			zap.Bool("demote", ev.Demote), zap.Int("entries", n))
	})
}

// close ends this config's use of the client: its subscription and its
// metrics (a config that failed to load leaves the running one's series
// alone), then its hold on the pooled client.
func (s *sharedTier) close() {
	if s == nil {
		return
	}
	if s.unsubscribe != nil {
		s.unsubscribe()
	}
	if s.removeObserver != nil {
		s.removeObserver()
	}
	s.release()
}

// credentialTag is the tag that names a credential among an entry's
// surrogate keys: its fleet name behind a space, which no surrogate key can
// hold, so an operator's purge never names it.
func credentialTag(name string) string { return " cred:" + name }

// tagOf is credentialTag of cred's fleet name.
func (s *sharedTier) tagOf(cred [32]byte) string { return credentialTag(s.client.CredentialName(cred)) }

// sharedVersion names the layout of sharedDecision; it is part of the site
// digest, so nodes of another layout never read this one's decisions.
const sharedVersion = 2

// sharedDecision is what a node shares: the decision and only the fields
// the templates name, never a credential or the upstream's body. The
// answer's surrogate keys travel beside it (fleet.Fill.Tags).
type sharedDecision struct {
	Kind      decision.Kind     `json:"k"`
	Status    string            `json:"s,omitempty"`
	ExpiresAt *[2]int64         `json:"x,omitempty"` // Unix seconds and nanoseconds; nil: none
	Fields    map[string]string `json:"f,omitempty"`
}

func (s *sharedTier) encode(a *decision.Answer) []byte {
	d := sharedDecision{Kind: a.Kind, Status: a.Export.Status}
	if t := a.Export.ExpiresAt; !t.IsZero() {
		d.ExpiresAt = &[2]int64{t.Unix(), int64(t.Nanosecond())}
	}
	for _, name := range s.fields {
		// A value over the templates' cap fails to render here anyway:
		// it is not worth a megabyte in Redis.
		if v, ok := a.Fields[name]; ok && len(v) <= tmpl.MaxValueLen {
			if d.Fields == nil {
				d.Fields = make(map[string]string, len(s.fields))
			}
			d.Fields[name] = v
		}
	}
	b, _ := json.Marshal(d)
	return b
}

// decode reads a shared decision; a completed one must carry every field
// this node's templates name.
func (s *sharedTier) decode(b []byte, tags []string) (*decision.Answer, error) {
	var d sharedDecision
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	switch d.Kind {
	case decision.KindExport, decision.KindUnauthorized, decision.KindNotFound:
	default:
		return nil, errors.New("not a cacheable kind")
	}
	a := &decision.Answer{Kind: d.Kind, Fields: d.Fields, SurrogateKeys: tags}
	a.Export.Status = d.Status
	if d.ExpiresAt != nil {
		a.Export.ExpiresAt = time.Unix(d.ExpiresAt[0], d.ExpiresAt[1]).UTC()
		if a.Export.ExpiresAt.IsZero() {
			a.Export.ExpiresAt = a.Export.ExpiresAt.Add(time.Nanosecond) // a past instant, not "none"
		}
	}
	if a.Kind == decision.KindExport && a.Export.Status == "completed" {
		for _, f := range s.fields {
			if _, ok := a.Fields[f]; !ok {
				return nil, fmt.Errorf("the shared decision lacks the field %q that the templates name", f)
			}
		}
	}
	return a, nil
}
