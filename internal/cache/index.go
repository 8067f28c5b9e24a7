package cache

import (
	"encoding/binary"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"unsafe"
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
	seed  maphash.Seed
	ids   map[uint64]*Entry[V] // by idHash; lists are filtered on the full id
	creds map[uint64]*Entry[V] // by credHash; lists are filtered on the full digest
	tags  map[string]*tagList[V]
}

// links is an entry's place in the index, guarded by index.mu.
type links[V any] struct {
	idPrev, idNext     *Entry[V]
	credPrev, credNext *Entry[V]
	// The entry's links in the lists of its tags: ntags of them from
	// tags (an array of their own, nil for an entry without tags).
	tags  *tagLink[V]
	ntags uint16
}

// tagList is the list of one surrogate key, with its only copy of the
// text (the entries point to it).
type tagList[V any] struct {
	tag  string
	head *Entry[V]
}

type tagLink[V any] struct {
	list       *tagList[V]
	prev, next *Entry[V]
}

type linkState uint8

const (
	unlinked linkState = iota // not yet linked
	linked
	gone // deleted: never link it (again)
)

func (x *index[V]) init(seed maphash.Seed) {
	x.seed = seed
	x.ids = make(map[uint64]*Entry[V])
	x.creds = make(map[uint64]*Entry[V])
	x.tags = make(map[string]*tagList[V])
}

func credHash(cred [32]byte) uint64 { return binary.LittleEndian.Uint64(cred[:8]) }

// idHash is seeded: ids are the callers' choice, so a list per id hash
// must not be something a caller can make long.
func (x *index[V]) idHash(id *idBytes) uint64 { return maphash.Bytes(x.seed, id[:]) }

// tagLinks are e's links in the lists of its tags.
func (e *Entry[V]) tagLinks() []tagLink[V] {
	if e.links.tags == nil {
		return nil
	}
	return unsafe.Slice(e.links.tags, e.links.ntags)
}

// link adds e, just stored, to the lists of its id, credential and tags,
// unless the store already deleted it.
func (x *index[V]) link(e *Entry[V], tags []string) {
	tags = dedupTags(tags)
	tl := newTagLinks[V](tags)
	x.mu.Lock()
	defer x.mu.Unlock()
	l := &e.links
	if e.state != unlinked {
		return
	}
	e.state = linked
	ih := x.idHash(&e.key.id)
	if head := x.ids[ih]; head != nil {
		l.idNext = head
		head.links.idPrev = e
	}
	x.ids[ih] = e
	ch := credHash(e.key.cred)
	if head := x.creds[ch]; head != nil {
		l.credNext = head
		head.links.credPrev = e
	}
	x.creds[ch] = e
	if len(tl) == 0 {
		return
	}
	for i, tag := range tags[:len(tl)] {
		list := x.tags[tag]
		if list == nil {
			// A copy: the caller's text may be a slice of a whole header.
			list = &tagList[V]{tag: strings.Clone(tag)}
			x.tags[list.tag] = list
		}
		tl[i].list = list
		if head := list.head; head != nil {
			tl[i].next = head
			head.tagLink(list).prev = e
		}
		list.head = e
	}
	l.tags, l.ntags = &tl[0], uint16(len(tl))
}

// newTagLinks returns the links for tags (at most 1<<16-1 are kept),
// which link fills in.
func newTagLinks[V any](tags []string) []tagLink[V] {
	if len(tags) == 0 {
		return nil
	}
	return make([]tagLink[V], min(len(tags), 1<<16-1))
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
	ih := x.idHash(&e.key.id)
	if l.idPrev != nil {
		l.idPrev.links.idNext = l.idNext
	} else if l.idNext != nil {
		x.ids[ih] = l.idNext
	} else {
		delete(x.ids, ih)
	}
	if l.idNext != nil {
		l.idNext.links.idPrev = l.idPrev
	}
	ch := credHash(e.key.cred)
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
	for i := range e.tagLinks() {
		t := &e.tagLinks()[i]
		if t.prev != nil {
			t.prev.tagLink(t.list).next = t.next
		} else if t.next != nil {
			t.list.head = t.next
		} else {
			delete(x.tags, t.list.tag)
		}
		if t.next != nil {
			t.next.tagLink(t.list).prev = t.prev
		}
	}
	*l = links[V]{}
}

// tagLink returns e's link in list; e is in that list.
func (e *Entry[V]) tagLink(list *tagList[V]) *tagLink[V] {
	tl := e.tagLinks()
	for i := range tl {
		if tl[i].list == list {
			return &tl[i]
		}
	}
	panic("cache: entry is not in the list of its tag")
}

func (x *index[V]) byID(id idBytes) []*Entry[V] {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []*Entry[V]
	for e := x.ids[x.idHash(&id)]; e != nil; e = e.links.idNext {
		if e.key.id == id {
			out = append(out, e)
		}
	}
	return out
}

func (x *index[V]) byCred(cred [32]byte) []*Entry[V] {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []*Entry[V]
	for e := x.creds[credHash(cred)]; e != nil; e = e.links.credNext {
		if e.key.cred == cred {
			out = append(out, e)
		}
	}
	return out
}

func (x *index[V]) byTag(tag string) []*Entry[V] {
	x.mu.Lock()
	defer x.mu.Unlock()
	list := x.tags[tag]
	if list == nil {
		return nil
	}
	var out []*Entry[V]
	for e := list.head; e != nil; e = e.tagLink(list).next {
		out = append(out, e)
	}
	return out
}

// tagCount counts the surrogate keys held: tags that begin with a space
// are the caller's own marks (no surrogate key can hold a space), not
// counted.
func (x *index[V]) tagCount() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	for tag := range x.tags {
		if tag == "" || tag[0] != ' ' {
			n++
		}
	}
	return n
}

// dedupTags returns tags with each tag once, in order; it copies only when
// there is a duplicate.
func dedupTags(tags []string) []string {
	for i := 1; i < len(tags); i++ {
		if slices.Contains(tags[:i], tags[i]) {
			out := slices.Clone(tags[:i])
			for _, t := range tags[i+1:] {
				if !slices.Contains(out, t) {
					out = append(out, t)
				}
			}
			return out
		}
	}
	return tags
}
