//! Giving back the memory of a burst. A table grown for thousands of
//! running handlers (or pending headers, or exits reaped in one turn)
//! keeps its capacity when they are gone: Rust's collections never shrink
//! by themselves. So the daemon's owners of such tables call
//! [`Shrink::shrink_after_burst`] after removing entries: when the
//! capacity is more than four times what is in use (and more than
//! [`FLOOR`]), it is cut to twice what is in use. Growing again doubles as
//! usual, and a cut needs the contents to have fallen to a quarter of the
//! capacity, so the copies a cut makes cost O(1) per removed entry,
//! amortised, and a table that hovers at one size is never cut.
//!
//! A cut frees the old block. The allocator gives it back to the kernel
//! only if it was mapped on its own, which `spawn::fix_malloc_thresholds`
//! makes sure of for every block of 128 KiB or more.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Capacity below which nothing is cut: small tables cost little and are
/// reused at once.
pub const FLOOR: usize = 64;

/// The capacity to cut to, if `capacity` is worth cutting for `len`
/// entries.
pub fn target(len: usize, capacity: usize) -> Option<usize> {
    let keep = len.max(FLOOR / 2) * 2;
    (capacity > FLOOR && capacity > len.saturating_mul(4) && capacity > keep).then_some(keep)
}

/// A collection whose capacity can be cut after a burst.
pub trait Shrink {
    /// Cuts the capacity to twice the contents if it is more than four
    /// times them (see the module documentation).
    fn shrink_after_burst(&mut self);
}

impl<T> Shrink for Vec<T> {
    fn shrink_after_burst(&mut self) {
        if let Some(keep) = target(self.len(), self.capacity()) {
            self.shrink_to(keep);
        }
    }
}

impl<T> Shrink for VecDeque<T> {
    fn shrink_after_burst(&mut self) {
        if let Some(keep) = target(self.len(), self.capacity()) {
            self.shrink_to(keep);
        }
    }
}

impl<T: Ord> Shrink for BinaryHeap<T> {
    fn shrink_after_burst(&mut self) {
        if let Some(keep) = target(self.len(), self.capacity()) {
            self.shrink_to(keep);
        }
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> Shrink for HashMap<K, V, S> {
    fn shrink_after_burst(&mut self) {
        if let Some(keep) = target(self.len(), self.capacity()) {
            self.shrink_to(keep);
        }
    }
}

impl<T: Eq + Hash, S: BuildHasher> Shrink for HashSet<T, S> {
    fn shrink_after_burst(&mut self) {
        if let Some(keep) = target(self.len(), self.capacity()) {
            self.shrink_to(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_well_used_tables_are_left_alone() {
        assert_eq!(target(0, 0), None);
        assert_eq!(target(0, FLOOR), None);
        assert_eq!(target(1000, 4000), None);
        assert_eq!(target(1000, 2048), None);
    }

    #[test]
    fn a_table_a_quarter_used_is_cut_to_twice_its_contents() {
        assert_eq!(target(999, 4000), Some(1998));
        assert_eq!(target(0, 16384), Some(FLOOR));
        assert_eq!(target(10, 16384), Some(FLOOR));
    }

    #[test]
    fn the_capacity_follows_the_contents_down_and_a_regrown_table_is_not_cut() {
        let mut m: HashMap<u32, [u8; 64]> = HashMap::new();
        for i in 0..10_000 {
            m.insert(i, [0; 64]);
        }
        let grown = m.capacity();
        assert!(grown >= 10_000);
        // Removing entries one at a time, cutting after each as the owners do.
        let mut cuts = 0;
        for i in 0..10_000 {
            m.remove(&i);
            let before = m.capacity();
            m.shrink_after_burst();
            if m.capacity() < before {
                cuts += 1;
            }
            if m.len() * 8 < grown {
                assert!(
                    m.capacity() <= (m.len() * 8).max(FLOOR * 2),
                    "{} for {}",
                    m.capacity(),
                    m.len()
                );
            }
        }
        assert!(m.capacity() <= FLOOR * 2, "{} left", m.capacity());
        // Geometric: a handful of cuts, not one per removal.
        assert!((1..=12).contains(&cuts), "{cuts} cuts");
        // Growing again is not undone while the table is in use.
        for i in 0..5_000 {
            m.insert(i, [0; 64]);
            let before = m.capacity();
            m.shrink_after_burst();
            assert_eq!(m.capacity(), before);
        }
        let mut v: Vec<u64> = (0..5_000).collect();
        v.truncate(10);
        v.shrink_after_burst();
        assert!(v.capacity() <= FLOOR, "{}", v.capacity());
    }
}
