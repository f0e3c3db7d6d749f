//! A hash table of GCRA states, 16 bytes an entry.
//!
//! Keys are not stored: an entry is a 64-bit keyed fingerprint of the key
//! (and dimension) and the dimension's theoretical arrival time. A TAT of 0
//! marks an empty slot, which costs nothing: a live TAT is always after the
//! clock's origin. Robin Hood linear probing keeps lookups short at a high
//! load, and backward-shift deletion keeps the table free of tombstones.
//!
//! Why not hashbrown's `HashTable` of the same entries (`cargo bench -p
//! tollgate --bench table`, 1,000,000 random fingerprints, two runs): at
//! the store's cap this table takes 17.8 bytes an entry (90% load) where
//! hashbrown's takes 35.7 (a power of two of buckets, a control byte
//! each); that is what keeps a keyed limiter's memory a key at a quarter
//! to a half of governor's. Grown from empty, both take about 34-36. The
//! price is speed once the table outgrows the caches: hashbrown finds a
//! present entry in 16-18 ns and an absent one in 8 ns, this table in
//! 108-111 ns and 79-82 ns (its probes branch on every slot, which stops
//! the processor from overlapping the lookups' cache misses); insertions
//! 36 ns against 75-78 ns. A keyed `check` over a million keys still
//! takes 0.64x governor's time. The choice is memory; a store that wants
//! the speed instead would hold its entries in a `HashTable`.

// Index arithmetic here stays below the slice length, which is at most
// `isize::MAX / 16`.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

/// One entry: a fingerprint and its TAT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The key's fingerprint.
    pub(crate) fp: u64,
    /// 0 when the slot is empty.
    pub(crate) tat: u64,
}

/// The table. The table bench compiles this file into itself.
#[derive(Debug, Default)]
pub(crate) struct Table {
    slots: Box<[Slot]>,
    len: usize,
}

impl Table {
    /// An empty table of `n` slots.
    pub(crate) fn with_slots(n: usize) -> Self {
        Self {
            slots: vec![Slot::default(); n].into_boxed_slice(),
            len: 0,
        }
    }

    /// Entries held.
    #[allow(clippy::len_without_is_empty)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slots, empty or not.
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The slot a fingerprint would like: its high bits scaled to the table
    /// (the low bits choose the shard).
    #[inline]
    fn home(&self, fp: u64) -> usize {
        let scaled = (u128::from(fp) * self.slots.len() as u128) >> 64;
        // Below slots.len(), so the cast loses nothing.
        scaled as usize
    }

    #[inline]
    fn distance(&self, index: usize, fp: u64) -> usize {
        let home = self.home(fp);
        if index >= home {
            index - home
        } else {
            index + self.slots.len() - home
        }
    }

    #[inline]
    fn next(&self, index: usize) -> usize {
        if index + 1 == self.slots.len() {
            0
        } else {
            index + 1
        }
    }

    /// The index of `fp`'s entry.
    #[inline]
    pub(crate) fn find(&self, fp: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut index = self.home(fp);
        let mut probed = 0;
        loop {
            let slot = self.slots[index];
            if slot.tat == 0 {
                return None;
            }
            if slot.fp == fp {
                return Some(index);
            }
            // Robin Hood order: past every entry that sits closer to its home
            // than `fp` would, `fp` cannot be.
            if self.distance(index, slot.fp) < probed || probed >= self.slots.len() {
                return None;
            }
            index = self.next(index);
            probed += 1;
        }
    }

    #[inline]
    /// The TAT of the entry at `index`.
    pub(crate) fn tat_at(&self, index: usize) -> u64 {
        self.slots[index].tat
    }

    #[inline]
    /// Sets the TAT of the entry at `index`; 0 removes it.
    pub(crate) fn set_tat(&mut self, index: usize, tat: u64) {
        if tat == 0 {
            self.remove_at(index);
        } else {
            self.slots[index].tat = tat;
        }
    }

    /// Inserts an entry known to be absent; the caller made room.
    pub(crate) fn insert_new(&mut self, fp: u64, tat: u64) {
        debug_assert!(tat != 0 && self.len < self.slots.len());
        let mut carried = Slot { fp, tat };
        let mut index = self.home(fp);
        let mut probed = 0;
        loop {
            let slot = self.slots[index];
            if slot.tat == 0 {
                self.slots[index] = carried;
                self.len += 1;
                return;
            }
            let theirs = self.distance(index, slot.fp);
            if theirs < probed {
                self.slots[index] = carried;
                carried = slot;
                probed = theirs;
            }
            index = self.next(index);
            probed += 1;
        }
    }

    /// Removes the entry at `index`, shifting its followers back.
    pub(crate) fn remove_at(&mut self, mut index: usize) {
        loop {
            let next = self.next(index);
            let slot = self.slots[next];
            if slot.tat == 0 || self.distance(next, slot.fp) == 0 {
                self.slots[index] = Slot::default();
                break;
            }
            self.slots[index] = slot;
            index = next;
        }
        self.len -= 1;
    }

    /// Every entry, in no order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = Slot> + '_ {
        self.slots.iter().copied().filter(|s| s.tat != 0)
    }

    /// The same entries in a table of `n` slots (more than `len`). Tables
    /// grow at most to 90% load, where Robin Hood insertion is cheap; the
    /// only allocation is the new table.
    pub(crate) fn resized(&self, n: usize) -> Self {
        let mut table = Self::with_slots(n.max(self.len + 1));
        for entry in self.entries() {
            table.insert_new(entry.fp, entry.tat);
        }
        table
    }

    /// Keeps the entries `keep` accepts, in place and in two linear passes:
    /// clear the others, then move every entry back toward its home in
    /// probe order. Answers how many were removed.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Slot) -> bool) -> usize {
        let n = self.slots.len();
        // A slot empty before anything is cleared starts a cluster: every
        // entry after it has its home after it.
        let Some(start) = self.slots.iter().position(|s| s.tat == 0) else {
            return 0;
        };
        let mut removed = 0;
        for slot in self.slots.iter_mut() {
            if slot.tat != 0 && !keep(slot) {
                *slot = Slot::default();
                removed += 1;
            }
        }
        self.len -= removed;
        // Positions relative to `start`; entries keep their order, which is
        // their homes' order, and each goes to its home or just after the
        // one before.
        let mut write = 1;
        for offset in 1..n {
            let at = (start + offset) % n;
            let slot = self.slots[at];
            if slot.tat == 0 {
                continue;
            }
            let home = (self.home(slot.fp) + n - start) % n;
            let target = home.max(write);
            if target != offset {
                self.slots[(start + target) % n] = slot;
                self.slots[at] = Slot::default();
            }
            write = target + 1;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u64, u64),
        Remove(u64),
        /// Keeps entries whose TAT is above this.
        Retain(u64),
        /// Rebuilds at this many more slots.
        Grow(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct fingerprints, some sharing high bits, so that runs of
        // collisions and wrap-around are common.
        let fp = prop_oneof![0u64..40, (0u64..40).prop_map(|x| x << 58 | 7), any::<u64>()];
        prop_oneof![
            4 => (fp.clone(), 1u64..1000).prop_map(|(f, t)| Op::Upsert(f, t)),
            2 => fp.prop_map(Op::Remove),
            1 => (0u64..1000).prop_map(Op::Retain),
            1 => (0usize..20).prop_map(Op::Grow),
        ]
    }

    proptest! {
        /// The table behaves as a map from fingerprint to TAT.
        #[test]
        fn table_is_a_map(slots in 1usize..64, ops in proptest::collection::vec(op(), 0..200)) {
            let mut table = Table::with_slots(slots);
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Upsert(fp, tat) => match table.find(fp) {
                        Some(i) => { table.set_tat(i, tat); model.insert(fp, tat); }
                        None if table.len() < table.slots() => {
                            table.insert_new(fp, tat);
                            model.insert(fp, tat);
                        }
                        None => {}
                    },
                    Op::Remove(fp) => {
                        if let Some(i) = table.find(fp) { table.remove_at(i); }
                        model.remove(&fp);
                    }
                    Op::Retain(above) => {
                        if table.len() < table.slots() {
                            let before = table.len();
                            let removed = table.retain(|s| s.tat > above);
                            model.retain(|_, tat| *tat > above);
                            prop_assert_eq!(before - removed, model.len());
                        }
                    }
                    Op::Grow(more) => {
                        if table.len() < table.slots() {
                            table = table.resized(table.len() + 1 + more);
                        }
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (fp, tat) in &model {
                let i = table.find(*fp);
                prop_assert!(i.is_some());
                prop_assert_eq!(table.tat_at(i.unwrap()), *tat);
            }
            prop_assert_eq!(table.entries().count(), model.len());
        }
    }
}
