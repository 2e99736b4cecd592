//! Deadlines by instant, in a binary heap: adding one and taking the
//! nearest are O(log n), looking at the nearest O(1), whatever the number
//! of deadlines.
//!
//! Cancellation is lazy. An entry is never removed when its deadline is
//! cancelled or moved; the owner (here `children`) keeps the deadline it
//! means in its own state, and when an entry comes due it checks the entry
//! against that state and ignores it if they differ (the entry is
//! *stale*). So a cancellation costs nothing at all, and a stale entry
//! costs one pop when its time comes. Stale entries still take memory
//! until then; [`Timers::retain`] drops them in one O(n) pass, which the
//! owner calls when the heap has grown to a multiple of its live entries,
//! so that memory stays proportional to the live deadlines and the pass
//! costs O(1) per cancelled entry, amortised.
//!
//! Entries with the same instant come out in the order they were added.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

/// One deadline: when, the order it was added in (for equal instants),
/// and what it is for.
#[derive(Debug, Clone, Copy)]
struct Entry<K> {
    at: Instant,
    seq: u64,
    key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<K> Eq for Entry<K> {}

impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A min-heap of deadlines, each with a key saying what it is for.
#[derive(Debug)]
pub struct Timers<K> {
    /// The entries, nearest on top.
    heap: BinaryHeap<Reverse<Entry<K>>>,
    /// The next entry's sequence number: ties between equal instants go to
    /// the one added first.
    seq: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<K: Copy> Timers<K> {
    /// Adds a deadline for `key` at `at`.
    pub fn push(&mut self, at: Instant, key: K) {
        let seq = self.seq;
        self.seq += 1;
        self.heap.push(Reverse(Entry { at, seq, key }));
    }

    /// The nearest entry, stale or not.
    pub fn peek(&self) -> Option<(Instant, K)> {
        self.heap.peek().map(|Reverse(e)| (e.at, e.key))
    }

    /// Removes the nearest entry.
    pub fn pop(&mut self) -> Option<(Instant, K)> {
        self.heap.pop().map(|Reverse(e)| (e.at, e.key))
    }

    /// Removes and returns the nearest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.at <= now => self.pop(),
            _ => None,
        }
    }

    /// Entries, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps only the entries for which `live` holds, in one pass.
    pub fn retain(&mut self, mut live: impl FnMut(Instant, K) -> bool) {
        self.heap.retain(|Reverse(e)| live(e.at, e.key));
    }

    /// Entries the heap has room for without growing.
    pub fn capacity(&self) -> usize {
        self.heap.capacity()
    }

    /// Gives back the room beyond `n` entries (or beyond the entries
    /// there are, if more).
    pub fn shrink_to(&mut self, n: usize) {
        self.heap.shrink_to(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn deadlines_come_out_in_order_of_their_instant() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for (i, d) in [50u64, 10, 40, 20, 30, 0].into_iter().enumerate() {
            t.push(t0 + ms(d), i);
        }
        assert_eq!(t.peek(), Some((t0, 5)));
        let order: Vec<usize> = std::iter::from_fn(|| t.pop().map(|(_, k)| k)).collect();
        assert_eq!(order, [5, 1, 3, 4, 2, 0]);
        assert!(t.is_empty());
    }

    #[test]
    fn only_due_entries_are_popped() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.push(t0 + ms(10), 'a');
        t.push(t0 + ms(20), 'b');
        assert_eq!(t.pop_due(t0), None, "nothing is due yet");
        assert_eq!(
            t.pop_due(t0 + ms(10)),
            Some((t0 + ms(10), 'a')),
            "due at its instant"
        );
        assert_eq!(t.pop_due(t0 + ms(15)), None);
        assert_eq!(t.pop_due(t0 + ms(99)), Some((t0 + ms(20), 'b')));
        assert_eq!(t.pop_due(t0 + ms(99)), None);
    }

    #[test]
    fn many_equal_deadlines_all_come_out_in_the_order_added() {
        let at = Instant::now();
        let mut t = Timers::default();
        for k in 0..10_000u32 {
            t.push(at, k);
        }
        t.push(at - ms(1), u32::MAX);
        assert_eq!(t.pop_due(at), Some((at - ms(1), u32::MAX)));
        let mut next = 0;
        while let Some((when, k)) = t.pop_due(at) {
            assert_eq!((when, k), (at, next));
            next += 1;
        }
        assert_eq!(next, 10_000);
    }

    /// The owner's view: a deadline per key, cancelled or moved by
    /// changing that view only; entries that disagree are stale.
    #[test]
    fn cancelled_and_moved_deadlines_are_stale_and_retain_drops_them() {
        let t0 = Instant::now();
        let mut live: std::collections::HashMap<u32, Instant> = Default::default();
        let mut t = Timers::default();
        for k in 0..100u32 {
            let at = t0 + ms(u64::from(k));
            live.insert(k, at);
            t.push(at, k);
        }
        // Cancel the even ones, move 1 and 3 later.
        for k in (0..100).step_by(2) {
            live.remove(&k);
        }
        for k in [1, 3] {
            let at = t0 + ms(500);
            live.insert(k, at);
            t.push(at, k);
        }
        let fired = |t: &mut Timers<u32>, live: &HashMapView, now| {
            let mut out = Vec::new();
            while let Some((at, k)) = t.pop_due(now) {
                if live.get(&k) == Some(&at) {
                    out.push(k);
                }
            }
            out
        };
        type HashMapView = std::collections::HashMap<u32, Instant>;
        let early = fired(&mut t, &live, t0 + ms(10));
        assert_eq!(early, [5, 7, 9], "cancelled and moved entries are ignored");
        t.retain(|at, k| live.get(&k) == Some(&at));
        assert_eq!(t.len(), 45 + 2, "only live entries are left");
        let late = fired(&mut t, &live, t0 + ms(1000));
        assert_eq!(late.len(), 45 + 2);
        assert_eq!(&late[late.len() - 2..], [1, 3]);
        assert!(t.is_empty());
    }
}
