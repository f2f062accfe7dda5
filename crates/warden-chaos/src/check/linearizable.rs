//! A linearizability checker for one object's history: the Wing–Gong search
//! as improved by Lowe (a doubly linked list of call and return events, a
//! stack of linearized calls to backtrack over, and a cache of
//! (set of linearized operations, model state) pairs already explored — the
//! algorithm Porcupine and Knossos use).
//!
//! An operation whose outcome is unknown (`ret == None`) may take effect at
//! any time after its call, or never: it has no return event, so the search
//! may linearize it anywhere after its call and is done once every operation
//! with a known outcome is linearized. The model must accept any step of
//! such an operation (its result is unknown).
//!
//! Pure: no IO, no clocks.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Op;
    /// The state after `op` from `state`, or `None` if `op`'s recorded result
    /// is impossible there.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct Entry<O> {
    pub op: O,
    /// Invocation time.
    pub call: u64,
    /// Completion time; `None` if the outcome is unknown.
    pub ret: Option<u64>,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `stuck` is the index (into the entries) of
    /// the operation the deepest search could not linearize before it
    /// returned.
    NotLinearizable {
        stuck: usize,
    },
    /// The search budget ran out before a verdict.
    Unknown,
}

/// A set of entry indices, kept as a 128-bit Zobrist hash (the XOR of a
/// random key per member) so a cache entry costs 16 bytes however long the
/// history is. Two different sets collide with probability 2^-128 per pair:
/// far below any chance of mattering, and a collision could only make the
/// search skip a branch, never accept a wrong order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SetHash(u128);

/// The Zobrist key of entry `i` (splitmix64, deterministic).
fn zobrist(i: usize) -> u128 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let a = mix(2 * i as u64);
    let b = mix(2 * i as u64 + 1);
    (u128::from(a) << 64) | u128::from(b)
}

impl SetHash {
    fn toggle(self, key: u128) -> SetHash {
        SetHash(self.0 ^ key)
    }
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Node {
    /// Entry index.
    entry: usize,
    is_call: bool,
    /// For a call: its return node (or NIL).
    matched: usize,
    prev: usize,
    next: usize,
}

/// Checks `entries` against `model` from `init`, giving up after `budget`
/// search steps.
pub fn check<M: Model>(
    model: &M,
    init: M::State,
    entries: &[Entry<M::Op>],
    budget: u64,
) -> Verdict {
    let n = entries.len();
    // Events: (time, is_return, entry). Calls sort before returns at equal
    // times, so operations touching in time count as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in entries.iter().enumerate() {
        events.push((e.call, false, i));
        if let Some(r) = e.ret {
            events.push((r.max(e.call), true, i));
        }
    }
    events.sort();
    // Node 0 is the head sentinel.
    let mut nodes: Vec<Node> = Vec::with_capacity(events.len() + 1);
    nodes.push(Node {
        entry: NIL,
        is_call: false,
        matched: NIL,
        prev: NIL,
        next: NIL,
    });
    let mut call_node = vec![NIL; n];
    for (k, &(_, is_ret, i)) in events.iter().enumerate() {
        let idx = k + 1;
        nodes.push(Node {
            entry: i,
            is_call: !is_ret,
            matched: NIL,
            prev: idx - 1,
            next: if k + 1 < events.len() { idx + 1 } else { NIL },
        });
        if is_ret {
            let c = call_node[i];
            if let Some(cn) = nodes.get_mut(c) {
                cn.matched = idx;
            }
        } else {
            call_node[i] = idx;
        }
    }
    if nodes.len() > 1 {
        nodes[0].next = 1;
    }

    let mut remaining = entries.iter().filter(|e| e.ret.is_some()).count();
    let mut state = init;
    let keys: Vec<u128> = (0..n).map(zobrist).collect();
    let mut linearized = SetHash(0);
    let mut cache: HashSet<(SetHash, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut cursor = nodes[0].next;
    let mut steps: u64 = 0;
    // The return that stopped the deepest search, for the report.
    let mut stuck = NIL;
    let mut stuck_depth = 0usize;

    while remaining > 0 {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        let Some(node) = nodes.get(cursor).copied() else {
            // Only unknown-outcome calls are left after the cursor, but a
            // return is still pending before them: cannot happen, as the
            // cursor restarts at the head after every linearization.
            return Verdict::Unknown;
        };
        if node.is_call {
            let next_state = model.step(&state, &entries[node.entry].op);
            let mut advanced = false;
            if let Some(s) = next_state {
                let lin = linearized.toggle(keys[node.entry]);
                if cache.insert((lin, s.clone())) {
                    stack.push((cursor, state));
                    state = s;
                    linearized = lin;
                    lift(&mut nodes, cursor);
                    if entries[node.entry].ret.is_some() {
                        remaining -= 1;
                    }
                    cursor = nodes[0].next;
                    advanced = true;
                }
            }
            if !advanced {
                cursor = node.next;
            }
        } else {
            // A return whose call is not linearized yet: backtrack.
            if stuck == NIL || stack.len() > stuck_depth {
                stuck = node.entry;
                stuck_depth = stack.len();
            }
            let Some((top, prev_state)) = stack.pop() else {
                return Verdict::NotLinearizable { stuck };
            };
            let e = nodes[top].entry;
            state = prev_state;
            linearized = linearized.toggle(keys[e]);
            unlift(&mut nodes, top);
            if entries[e].ret.is_some() {
                remaining += 1;
            }
            cursor = nodes[top].next;
        }
    }
    Verdict::Linearizable
}

/// Unlinks a call and its return.
fn lift(nodes: &mut [Node], call: usize) {
    unlink(nodes, call);
    let m = nodes[call].matched;
    if m != NIL {
        unlink(nodes, m);
    }
}

/// Relinks what [`lift`] unlinked, in reverse order.
fn unlift(nodes: &mut [Node], call: usize) {
    let m = nodes[call].matched;
    if m != NIL {
        relink(nodes, m);
    }
    relink(nodes, call);
}

fn unlink(nodes: &mut [Node], i: usize) {
    let Node { prev, next, .. } = nodes[i];
    if prev != NIL {
        nodes[prev].next = next;
    }
    if next != NIL {
        nodes[next].prev = prev;
    }
}

fn relink(nodes: &mut [Node], i: usize) {
    let Node { prev, next, .. } = nodes[i];
    if prev != NIL {
        nodes[prev].next = i;
    }
    if next != NIL {
        nodes[next].prev = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register of small integers; reads carry the value seen.
    struct Reg;
    #[derive(Clone, Debug)]
    enum R {
        W(u8),
        Rd(u8),
        /// A write whose outcome is unknown is modelled the same way.
        Cas(u8, u8, bool),
    }
    impl Model for Reg {
        type State = u8;
        type Op = R;
        fn step(&self, s: &u8, op: &R) -> Option<u8> {
            match op {
                R::W(v) => Some(*v),
                R::Rd(v) => (*v == *s).then_some(*s),
                R::Cas(f, t, ok) => match (*s == *f, ok) {
                    (true, true) => Some(*t),
                    (false, false) => Some(*s),
                    _ => None,
                },
            }
        }
    }

    fn e(op: R, call: u64, ret: u64) -> Entry<R> {
        Entry {
            op,
            call,
            ret: Some(ret),
        }
    }

    #[test]
    fn sequential_history() {
        let h = vec![
            e(R::W(1), 0, 1),
            e(R::Rd(1), 2, 3),
            e(R::Cas(1, 2, true), 4, 5),
            e(R::Rd(2), 6, 7),
        ];
        assert_eq!(check(&Reg, 0, &h, 1000), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_ops_may_reorder() {
        // The read overlaps the write and may see either value.
        let h = vec![e(R::W(1), 0, 10), e(R::Rd(1), 1, 2), e(R::Rd(0), 0, 1)];
        assert_eq!(check(&Reg, 0, &h, 1000), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_is_caught() {
        let h = vec![e(R::W(1), 0, 1), e(R::Rd(0), 2, 3)];
        assert_eq!(
            check(&Reg, 0, &h, 1000),
            Verdict::NotLinearizable { stuck: 1 }
        );
    }

    #[test]
    fn read_flapping_back_is_caught() {
        // 1 then 0 then 1 again with one write: impossible.
        let h = vec![
            e(R::W(1), 0, 10),
            e(R::Rd(1), 1, 2),
            e(R::Rd(0), 3, 4),
            e(R::Rd(1), 5, 6),
        ];
        assert!(matches!(
            check(&Reg, 0, &h, 1000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn unknown_outcome_may_or_may_not_apply() {
        let info = |op| Entry {
            op,
            call: 0,
            ret: None,
        };
        // Seen: it took effect.
        let h = vec![info(R::W(5)), e(R::Rd(5), 10, 11)];
        assert_eq!(check(&Reg, 0, &h, 1000), Verdict::Linearizable);
        // Never seen: it did not (yet).
        let h = vec![info(R::W(5)), e(R::Rd(0), 10, 11)];
        assert_eq!(check(&Reg, 0, &h, 1000), Verdict::Linearizable);
        // But it cannot take effect before it was invoked.
        let h = vec![
            e(R::Rd(5), 0, 1),
            Entry {
                op: R::W(5),
                call: 2,
                ret: None,
            },
        ];
        assert!(matches!(
            check(&Reg, 0, &h, 1000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn budget_gives_unknown() {
        let h: Vec<Entry<R>> = (0..50).map(|i| e(R::W(i as u8), 0, 100)).collect();
        let mut h = h;
        h.push(e(R::Rd(200), 101, 102));
        assert_eq!(check(&Reg, 0, &h, 10), Verdict::Unknown);
    }

    #[test]
    fn many_concurrent_writers_stay_fast_with_the_cache() {
        let mut h: Vec<Entry<R>> = (0..12).map(|i| e(R::W(i), 0, 100)).collect();
        h.push(e(R::Rd(7), 101, 102));
        assert_eq!(check(&Reg, 0, &h, 1_000_000), Verdict::Linearizable);
        h.push(e(R::Rd(8), 103, 104));
        assert!(matches!(
            check(&Reg, 0, &h, 10_000_000),
            Verdict::NotLinearizable { .. }
        ));
    }
}
