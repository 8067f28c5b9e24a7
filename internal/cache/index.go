package cache

import (
	"encoding/binary"
	"sync"
)

// index finds the entries of an export id, a credential or a surrogate key
// without walking the store: a purge costs what it drops. Each entry sits
// in one doubly linked list per id, per credential and per tag; the maps
// hold the heads. The store's deletion hook unlinks entries atomically with
// their deletion, so the index is bounded with the store and never keeps a
// dropped entry alive.
//
// Lock order: the store's bucket lock (held while the deletion hook runs),
// then mu. So nothing may call a store write while holding mu.
type index[V any] struct {
	mu    sync.Mutex
	ids   map[string]*Entry[V]
	creds map[uint64]*Entry[V] // by credHash; lists are filtered on the full digest
	tags  map[string]*Entry[V]
}

// links is an entry's place in the index, guarded by index.mu.
type links[V any] struct {
	idPrev, idNext     *Entry[V]
	credPrev, credNext *Entry[V]
	tags               *[]tagLink[V] // nil for an entry without tags
}

type tagLink[V any] struct {
	tag        string // shared with the list's other entries
	prev, next *Entry[V]
}

type linkState uint8

const (
	unlinked linkState = iota // not yet linked
	linked
	gone // deleted: never link it (again)
)

func (x *index[V]) init() {
	x.ids = make(map[string]*Entry[V])
	x.creds = make(map[uint64]*Entry[V])
	x.tags = make(map[string]*Entry[V])
}

func credHash(cred [32]byte) uint64 { return binary.LittleEndian.Uint64(cred[:8]) }

// link adds e, just stored, to the lists of its id, credential and tags,
// unless the store already deleted it.
func (x *index[V]) link(e *Entry[V], tags []string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	l := &e.links
	if e.state != unlinked {
		return
	}
	e.state = linked
	if head := x.ids[e.key.ID]; head != nil {
		l.idNext = head
		head.links.idPrev = e
	}
	x.ids[e.key.ID] = e
	ch := credHash(e.key.Cred)
	if head := x.creds[ch]; head != nil {
		l.credNext = head
		head.links.credPrev = e
	}
	x.creds[ch] = e
	if len(tags) == 0 {
		return
	}
	tl := make([]tagLink[V], len(tags))
	for i, tag := range tags {
		tl[i].tag = tag
		if head := x.tags[tag]; head != nil {
			hl := head.tagLink(tag)
			tl[i].tag = hl.tag // one copy of each tag's text
			tl[i].next = head
			hl.prev = e
		}
		x.tags[tl[i].tag] = e
	}
	l.tags = &tl
}

// unlink removes e from every list; the store calls it as it deletes e.
func (x *index[V]) unlink(e *Entry[V]) {
	x.mu.Lock()
	defer x.mu.Unlock()
	l := &e.links
	if e.state != linked {
		e.state = gone
		return
	}
	e.state = gone
	if l.idPrev != nil {
		l.idPrev.links.idNext = l.idNext
	} else if l.idNext != nil {
		x.ids[e.key.ID] = l.idNext
	} else {
		delete(x.ids, e.key.ID)
	}
	if l.idNext != nil {
		l.idNext.links.idPrev = l.idPrev
	}
	ch := credHash(e.key.Cred)
	if l.credPrev != nil {
		l.credPrev.links.credNext = l.credNext
	} else if l.credNext != nil {
		x.creds[ch] = l.credNext
	} else {
		delete(x.creds, ch)
	}
	if l.credNext != nil {
		l.credNext.links.credPrev = l.credPrev
	}
	if l.tags != nil {
		for i := range *l.tags {
			t := &(*l.tags)[i]
			if t.prev != nil {
				t.prev.tagLink(t.tag).next = t.next
			} else if t.next != nil {
				x.tags[t.tag] = t.next
			} else {
				delete(x.tags, t.tag)
			}
			if t.next != nil {
				t.next.tagLink(t.tag).prev = t.prev
			}
		}
	}
	l.idPrev, l.idNext, l.credPrev, l.credNext, l.tags = nil, nil, nil, nil, nil
}

// tagLink returns e's link in the list of tag; e is in that list.
func (e *Entry[V]) tagLink(tag string) *tagLink[V] {
	tl := *e.links.tags
	for i := range tl {
		if tl[i].tag == tag {
			return &tl[i]
		}
	}
	panic("cache: entry is not in the list of its tag")
}

func (x *index[V]) byID(id string) []*Entry[V] {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []*Entry[V]
	for e := x.ids[id]; e != nil; e = e.links.idNext {
		out = append(out, e)
	}
	return out
}

func (x *index[V]) byCred(cred [32]byte) []*Entry[V] {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []*Entry[V]
	for e := x.creds[credHash(cred)]; e != nil; e = e.links.credNext {
		if e.key.Cred == cred {
			out = append(out, e)
		}
	}
	return out
}

func (x *index[V]) byTag(tag string) []*Entry[V] {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []*Entry[V]
	for e := x.tags[tag]; e != nil; e = e.tagLink(tag).next {
		out = append(out, e)
	}
	return out
}

func (x *index[V]) tagCount() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.tags)
}
