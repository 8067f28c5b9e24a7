package testenv

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SlotRange is an inclusive range of hash slots.
type SlotRange struct{ From, To int }

// ClusterNodeState is a node as it describes itself in CLUSTER NODES.
type ClusterNodeState struct {
	Node   *ClusterNode
	Master bool
	// MasterID is, for a replica, the ID of the master it follows.
	MasterID string
	// Slots are the slots a master serves.
	Slots []SlotRange
}

// State returns every running, unpaused node as it describes itself: its
// role, its master (replicas) and its slots (masters).
func (c *Cluster) State(t testing.TB) []ClusterNodeState {
	t.Helper()
	views, err := c.views()
	if err != nil {
		t.Fatalf("testenv: cluster state: %v", err)
	}
	states := make([]ClusterNodeState, 0, len(views))
	for _, v := range views {
		states = append(states, ClusterNodeState{
			Node:     v.node,
			Master:   v.self.master,
			MasterID: v.self.masterID,
			Slots:    v.self.slots,
		})
	}
	return states
}

// Masters returns the nodes that serve slots, as the running nodes see the
// cluster (the highest configuration epoch wins), in slot order. A master
// that was killed or paused is listed until a replica replaces it.
func (c *Cluster) Masters(t testing.TB) []*ClusterNode {
	t.Helper()
	owners := c.currentOwners(t)
	var masters []*ClusterNode
	for _, id := range owners {
		if n := c.byID(id); n != nil && !slices.Contains(masters, n) {
			masters = append(masters, n)
		}
	}
	return masters
}

// MasterFor returns the master that serves key's slot (see Slot), as the
// running nodes see the cluster. It fails the test if no node serves it.
func (c *Cluster) MasterFor(t testing.TB, key string) *ClusterNode {
	t.Helper()
	return c.MasterForSlot(t, Slot(key))
}

// MasterForSlot returns the master that serves slot, as MasterFor.
func (c *Cluster) MasterForSlot(t testing.TB, slot int) *ClusterNode {
	t.Helper()
	if slot < 0 || slot >= ClusterSlots {
		t.Fatalf("testenv: no slot %d", slot)
	}
	n := c.byID(c.currentOwners(t)[slot])
	if n == nil {
		t.Fatalf("testenv: no node serves slot %d", slot)
	}
	return n
}

// ReplicaOf returns a running, unpaused node that replicates master, or nil
// when there is none (e.g. after its replica took over).
func (c *Cluster) ReplicaOf(t testing.TB, master *ClusterNode) *ClusterNode {
	t.Helper()
	for _, s := range c.State(t) {
		if !s.Master && s.MasterID == master.ID {
			return s.Node
		}
	}
	return nil
}

// WaitHealthy waits until every running, unpaused node reports
// cluster_state:ok and agrees on who serves each of the 16384 slots, each
// slot is served by a running, unpaused master, and each running replica's
// link to its master is up. It fails the test after 30s.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	c.waitFor(t, "cluster healthy", func(owners []string) bool { return true })
}

// WaitFailover waits until the slots that old served are served by another
// node (its replica, promoted) and the cluster is healthy again (see
// WaitHealthy), and returns the new master. Call it after Kill or Pause of
// a master. It fails the test after 30s, or if old was not a master when
// the cluster was last seen healthy.
func (c *Cluster) WaitFailover(t testing.TB, old *ClusterNode) *ClusterNode {
	t.Helper()
	c.mu.Lock()
	first := slices.Index(c.owners, old.ID)
	c.mu.Unlock()
	if first < 0 {
		t.Fatalf("testenv: WaitFailover: %s (%s) served no slot when the cluster was last healthy", old.Addr, old.ID)
	}
	var next *ClusterNode
	c.waitFor(t, "failover of "+old.Addr, func(owners []string) bool {
		if owners[first] == old.ID {
			return false
		}
		next = c.byID(owners[first])
		return true
	})
	return next
}

// waitFor polls until the cluster is healthy and done says so, then keeps
// the slot owners for WaitFailover.
func (c *Cluster) waitFor(t testing.TB, what string, done func(owners []string) bool) {
	t.Helper()
	waitUntil(t, what, func() string {
		owners, problem := c.check()
		if problem != "" {
			return problem
		}
		if !done(owners) {
			return "not yet"
		}
		c.mu.Lock()
		c.owners = owners
		c.mu.Unlock()
		return ""
	})
}

// check says what keeps the cluster from being healthy ("" when it is),
// with the slot owners the running nodes agree on.
func (c *Cluster) check() (owners []string, problem string) {
	views, err := c.views()
	if err != nil {
		return nil, err.Error()
	}
	if len(views) == 0 {
		return nil, "no node is running"
	}
	owners = ownersOf(views)
	for slot, id := range owners {
		n := c.byID(id)
		switch {
		case id == "":
			return nil, fmt.Sprintf("slot %d is not assigned", slot)
		case n == nil:
			return nil, fmt.Sprintf("slot %d is served by unknown node %s", slot, id)
		case !n.Running() || n.Paused():
			return nil, fmt.Sprintf("slot %d is served by %s, which is killed or paused", slot, n.Addr)
		}
	}
	for _, v := range views {
		// The owners' own views are among these, so each owner claims its
		// slots itself.
		for slot, id := range v.slotMap() {
			if id != owners[slot] {
				return nil, fmt.Sprintf("%s sees slot %d served by %q, not %q", v.node.Addr, slot, id, owners[slot])
			}
		}
		info, err := v.node.doTimeout(2*time.Second, "CLUSTER", "INFO")
		if err != nil {
			return nil, fmt.Sprintf("CLUSTER INFO on %s: %v", v.node.Addr, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return nil, v.node.Addr + " does not report cluster_state:ok"
		}
		if !v.self.master {
			repl, err := v.node.doTimeout(2*time.Second, "INFO", "replication")
			if err != nil {
				return nil, fmt.Sprintf("INFO replication on %s: %v", v.node.Addr, err)
			}
			if !strings.Contains(repl, "master_link_status:up") {
				return nil, "replica " + v.node.Addr + " is not in sync with its master"
			}
		}
	}
	return owners, ""
}

// currentOwners maps each slot to its master's ID as the running nodes see
// it now, healthy or not.
func (c *Cluster) currentOwners(t testing.TB) []string {
	t.Helper()
	views, err := c.views()
	if err != nil {
		t.Fatalf("testenv: cluster state: %v", err)
	}
	if len(views) == 0 {
		t.Fatalf("testenv: cluster state: no node is running")
	}
	return ownersOf(views)
}

func (c *Cluster) byID(id string) *ClusterNode {
	for _, n := range c.nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// clusterView is CLUSTER NODES as one node answers it.
type clusterView struct {
	node  *ClusterNode
	self  clusterLine
	lines []clusterLine
}

// clusterLine is one line of CLUSTER NODES.
type clusterLine struct {
	id       string
	master   bool
	masterID string
	epoch    int64
	slots    []SlotRange
}

// views asks every running, unpaused node for CLUSTER NODES.
func (c *Cluster) views() ([]clusterView, error) {
	var views []clusterView
	for _, n := range c.nodes {
		if !n.Running() || n.Paused() {
			continue
		}
		s, err := n.doTimeout(2*time.Second, "CLUSTER", "NODES")
		if err != nil {
			return nil, fmt.Errorf("CLUSTER NODES on %s: %w", n.Addr, err)
		}
		v := clusterView{node: n}
		for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
			l, myself, err := parseClusterLine(line)
			if err != nil {
				return nil, fmt.Errorf("CLUSTER NODES on %s: %w", n.Addr, err)
			}
			if myself {
				v.self = l
			}
			v.lines = append(v.lines, l)
		}
		if v.self.id != n.ID {
			return nil, fmt.Errorf("CLUSTER NODES on %s: no line for itself (%s)", n.Addr, n.ID)
		}
		views = append(views, v)
	}
	return views, nil
}

// slotMap maps each slot to the ID of the master that serves it in this
// view.
func (v clusterView) slotMap() []string {
	m := make([]string, ClusterSlots)
	for _, l := range v.lines {
		if !l.master {
			continue
		}
		for _, r := range l.slots {
			for s := r.From; s <= r.To; s++ {
				m[s] = l.id
			}
		}
	}
	return m
}

// ownersOf resolves the views as Redis does: for each slot, the claim with
// the highest configuration epoch wins.
func ownersOf(views []clusterView) []string {
	owners := make([]string, ClusterSlots)
	epochs := make([]int64, ClusterSlots)
	for _, v := range views {
		for _, l := range v.lines {
			if !l.master {
				continue
			}
			for _, r := range l.slots {
				for s := r.From; s <= r.To; s++ {
					if owners[s] == "" || l.epoch > epochs[s] {
						owners[s], epochs[s] = l.id, l.epoch
					}
				}
			}
		}
	}
	return owners
}

// parseClusterLine parses "<id> <ip:port@cport> <flags> <master> <ping-sent>
// <pong-recv> <config-epoch> <link-state> <slot> <slot> …", where a slot is
// "n" or "from-to"; "[n->-id]" and "[n-<-id]" (a migration in progress) are
// skipped.
func parseClusterLine(line string) (l clusterLine, myself bool, err error) {
	f := strings.Fields(line)
	if len(f) < 8 {
		return l, false, fmt.Errorf("short line %q", line)
	}
	l.id = f[0]
	for flag := range strings.SplitSeq(f[2], ",") {
		switch flag {
		case "myself":
			myself = true
		case "master":
			l.master = true
		}
	}
	if f[3] != "-" {
		l.masterID = f[3]
	}
	if l.epoch, err = strconv.ParseInt(f[6], 10, 64); err != nil {
		return l, false, fmt.Errorf("epoch in %q: %w", line, err)
	}
	for _, s := range f[8:] {
		if strings.HasPrefix(s, "[") {
			continue
		}
		from, to, isRange := strings.Cut(s, "-")
		if !isRange {
			to = from
		}
		a, err1 := strconv.Atoi(from)
		b, err2 := strconv.Atoi(to)
		if err := errors.Join(err1, err2); err != nil || a > b || b >= ClusterSlots {
			return l, false, fmt.Errorf("slot %q in %q", s, line)
		}
		l.slots = append(l.slots, SlotRange{a, b})
	}
	return l, myself, nil
}
