//! Units: a partition of a graph's nodes into groups that run as one (the
//! fused kernels of `fuse`), kept acyclic under merges.
//!
//! A unit reads the operands of all its members, so two units can depend
//! on each other even when no single node does; merging two units is
//! allowed only when no path of two or more steps joins them through other
//! units (otherwise the merged unit would have to run both before and after
//! a unit on that path). The check needs reachability between units, and
//! the units' dependence graph changes with every merge.
//!
//! A topological order of the units (`ord`) is kept under merges by Pearce
//! and Kelly's dynamic topological sort ("A dynamic topological sort
//! algorithm for directed acyclic graphs", JEA 2007): merging `lo` and
//! `hi` (`ord[lo] < ord[hi]`) is inserting the edge `hi → lo`; a path
//! between them can only run from `lo` to `hi` and only through units
//! ordered between them, so both searches are bounded by the order (the
//! earlier fusion pass bounded them by node index instead, which is not an
//! order of the units once a unit spans several nodes: that let cycles
//! through). Every search also has a budget of edges; a merge whose search
//! runs out of budget is refused, which costs a fusion, never soundness,
//! and keeps the pass linear in the graph's size.

use wengert_ir::{Graph, NodeId};

/// Largest number of edges one merge may look at before it is refused.
pub(crate) const SEARCH_BUDGET: usize = 4096;

/// The partition of a graph's nodes into units (see the module doc).
pub(crate) struct Units {
    args: Vec<Vec<NodeId>>,
    users: Vec<Vec<NodeId>>,
    unit_of: Vec<usize>,
    /// Members of each unit, sorted by node index; empty once merged away.
    members: Vec<Vec<NodeId>>,
    /// A topological order of the live units: distinct, and every unit
    /// reads only units of smaller order.
    ord: Vec<usize>,
    /// Search marks: `mark[u] == epoch` (backward) or `epoch + 1`
    /// (forward) during one merge.
    mark: Vec<u64>,
    epoch: u64,
}

impl Units {
    /// Every node its own unit, ordered by node index (a topological order,
    /// as node indices are).
    pub(crate) fn new(g: &Graph) -> Units {
        let n = g.len();
        let args: Vec<Vec<NodeId>> = g.node_ids().map(|id| g.args(id)).collect();
        let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); n];
        for id in g.node_ids() {
            for &a in &args[id.index()] {
                users[a.index()].push(id);
            }
        }
        Units {
            args,
            users,
            unit_of: (0..n).collect(),
            members: g.node_ids().map(|id| vec![id]).collect(),
            ord: (0..n).collect(),
            mark: vec![0; n],
            epoch: 0,
        }
    }

    /// The unit holding node `n`.
    pub(crate) fn unit(&self, n: NodeId) -> usize {
        self.unit_of[n.index()]
    }

    /// The members of unit `u`, sorted by node index.
    pub(crate) fn members(&self, u: usize) -> &[NodeId] {
        &self.members[u]
    }

    /// The operands of node `n`, in operand order.
    pub(crate) fn args(&self, n: NodeId) -> &[NodeId] {
        &self.args[n.index()]
    }

    /// The users of node `n` (one entry per use).
    pub(crate) fn users(&self, n: NodeId) -> &[NodeId] {
        &self.users[n.index()]
    }

    /// Merges unit `b` into unit `a` (which keeps its id) if the merged
    /// unit leaves the units acyclic and the searches stay within
    /// [`SEARCH_BUDGET`]; returns whether it did.
    pub(crate) fn try_merge(&mut self, a: usize, b: usize) -> bool {
        if a == b {
            return true;
        }
        let (lo, hi) = if self.ord[a] < self.ord[b] { (a, b) } else { (b, a) };
        let (olo, ohi) = (self.ord[lo], self.ord[hi]);
        let mut budget = SEARCH_BUDGET;
        self.epoch += 2;
        let (back, fwd) = (self.epoch, self.epoch + 1);
        // Backward from hi: the units ordered after lo that reach hi. One of
        // them read by lo means a path lo → u → … → hi: a cycle once merged.
        self.mark[hi] = back;
        let mut delta_b = vec![hi];
        let mut i = 0;
        while i < delta_b.len() {
            let u = delta_b[i];
            i += 1;
            for &m in &self.members[u] {
                for &p in &self.args[m.index()] {
                    budget = match budget.checked_sub(1) {
                        Some(b) => b,
                        None => return false,
                    };
                    let pu = self.unit_of[p.index()];
                    if pu == u {
                        continue;
                    }
                    if pu == lo {
                        if u != hi {
                            return false;
                        }
                        continue;
                    }
                    if self.ord[pu] > olo && self.mark[pu] != back {
                        self.mark[pu] = back;
                        delta_b.push(pu);
                    }
                }
            }
        }
        let at = if delta_b.len() == 1 {
            // Nothing between them leads to hi: the merged unit can take
            // lo's place (hi's other operands all come before lo).
            olo
        } else {
            // Forward from lo: the units ordered before hi that lo reaches.
            self.mark[lo] = fwd;
            let mut delta_f = vec![lo];
            let mut i = 0;
            while i < delta_f.len() {
                let u = delta_f[i];
                i += 1;
                for &m in &self.members[u] {
                    for &s in &self.users[m.index()] {
                        budget = match budget.checked_sub(1) {
                            Some(b) => b,
                            None => return false,
                        };
                        let su = self.unit_of[s.index()];
                        if su == u || su == hi {
                            continue;
                        }
                        // A unit lo reaches that reaches hi would have been
                        // found by the backward search (it is ordered
                        // between them and reaches hi), which refused the
                        // merge.
                        debug_assert!(self.mark[su] != back, "a cycle the backward search missed");
                        if self.ord[su] < ohi && self.mark[su] != fwd {
                            self.mark[su] = fwd;
                            delta_f.push(su);
                        }
                    }
                }
            }
            if delta_f.len() == 1 {
                // lo reaches nothing before hi: the merged unit can take
                // hi's place.
                ohi
            } else {
                // Pearce–Kelly: the units reaching hi move before the units
                // lo reaches, into the same set of positions, each set
                // keeping its relative order. hi ends up last of the first
                // set and lo first of the second, next to each other.
                delta_b.sort_unstable_by_key(|&u| self.ord[u]);
                delta_f.sort_unstable_by_key(|&u| self.ord[u]);
                let mut slots: Vec<usize> = delta_b.iter().chain(&delta_f).map(|&u| self.ord[u]).collect();
                slots.sort_unstable();
                for (&u, &slot) in delta_b.iter().chain(&delta_f).zip(&slots) {
                    self.ord[u] = slot;
                }
                self.ord[hi]
            }
        };
        let moved = std::mem::take(&mut self.members[b]);
        for &m in &moved {
            self.unit_of[m.index()] = a;
        }
        self.members[a].extend(moved);
        self.members[a].sort_unstable();
        self.ord[a] = at;
        true
    }

    /// Moves `nodes`, members of unit `from`, into unit `to`. The caller
    /// guarantees that this keeps the order topological: `from` is ordered
    /// before `to`, every user of `nodes` is in `to`, and everything
    /// `nodes` read is in `from` or ordered before it (`fuse`'s cheap
    /// tails). `fuse` checks the whole order once in debug builds.
    pub(crate) fn move_members(&mut self, nodes: &[NodeId], from: usize, to: usize) {
        debug_assert!(self.ord[from] < self.ord[to]);
        self.members[from].retain(|m| !nodes.contains(m));
        for &n in nodes {
            debug_assert!(self.users[n.index()].iter().all(|u| self.unit_of[u.index()] == to));
            self.unit_of[n.index()] = to;
        }
        self.members[to].extend_from_slice(nodes);
        self.members[to].sort_unstable();
    }

    /// Whether every unit reads only units ordered before it (for tests
    /// and debug assertions).
    pub(crate) fn is_topological(&self) -> bool {
        self.args.iter().enumerate().all(|(n, args)| {
            let u = self.unit_of[n];
            args.iter().all(|a| {
                let au = self.unit_of[a.index()];
                au == u || self.ord[au] < self.ord[u]
            })
        })
    }
}
