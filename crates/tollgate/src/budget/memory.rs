//! The in-memory store: sharded tables of GCRA states, bounded by a cap.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::limits::MAX_DIMENSIONS;
use super::store::{Change, Decision, Store, StoreStats};
use super::table::Table;
use crate::algorithm::{Gcra, Outcome, StateMachine};
use crate::snapshot::duration_to_nanos;
use crate::{Clock, DefaultClock, Quota, Snapshot};

/// Keys a keyed limiter holds at most, unless told otherwise: about 18 MB
/// of state at the most, per dimension.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Load of a table at its largest size; smaller tables grow at 7/8.
const FULL_LOAD: (usize, usize) = (9, 10);
/// Entries per shard before another shard is worth its lock.
const ENTRIES_PER_SHARD: usize = 1024;
const MAX_SHARDS: usize = 64;
/// At the cap, one sweep frees this share of a shard, so that its cost
/// (two passes over the shard) is spread over many insertions.
const EVICT_SHARE: usize = 32;
/// TATs sampled to find the eviction threshold.
const SAMPLE: usize = 256;
/// Derives the fingerprints of a key's other dimensions from the first.
const DIMENSION_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The default [`Store`]: every key's state in this process, in sharded hash
/// tables, with memory bounded by construction.
///
/// # Memory
///
/// An entry is 16 bytes: a 64-bit keyed fingerprint of the key (SipHash
/// with a random key, so that no one can aim at a collision) and the GCRA
/// state. Keys themselves are not stored, so an entry costs the same for an
/// IP address and for a long API key. Two keys share state only if their
/// fingerprints collide: about one chance in 10<sup>7</sup> among a
/// million keys, and not something an outsider can provoke.
///
/// The store holds at most `max_keys × dimensions` entries (the cap is
/// split evenly among up to 64 shards, so eviction may begin a little
/// before the whole store is at the cap). Tables grow as keys arrive and
/// reach 90% load at the cap, about 17.8 bytes per entry. No background
/// thread is needed:
///
/// - **Lossless eviction.** An entry whose limit is full again carries
///   nothing (a missing entry reads as full) and is dropped whenever its
///   shard is swept: before a table grows, and when it is at its cap.
/// - **Lossy eviction.** A shard at its cap with no full entry evicts the
///   entries closest to full (about a thirty-second of the shard at a time,
///   chosen from an even sample of its entries), and
///   counts them in [`StoreStats::evictions`]. A key evicted while not full
///   starts again from full: it may admit up to its unpaid debt again (at
///   most its burst, plus any reservations it held). So over any interval
///   of length `t`, a key admits at most `burst + t / interval` plus that
///   for each time it was evicted. A flood of new keys therefore never
///   makes a well-behaved key wait: at worst it forgets what it spent.
pub struct MemoryStore<C: Clock = DefaultClock> {
    shards: Box<[Padded]>,
    max_per_shard: usize,
    hasher: RandomState,
    clock: C,
}

/// One shard on its own cache lines, so that threads on other shards do not
/// contend for them.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

struct Shard {
    table: Table,
    admitted: u64,
    denied: u64,
    evicted: u64,
    /// Until when each held dimension is paused (by its fingerprint), so
    /// that a pause over a pause extends it rather than adding to it.
    /// Only keys with a pause in force are here; ended ones are swept.
    paused: HashMap<u64, u64>,
}

/// One key's dimensions: the key's fingerprint is the first dimension's, and
/// derives the others'.
#[derive(Clone, Copy)]
struct Dims<'a> {
    fp: u64,
    shard_mask: u64,
    limits: &'a [Quota],
}

impl Dims<'_> {
    /// Dimension `i`'s fingerprint: the shard bits stay the key's, so all of
    /// a key's dimensions share a shard and one lock covers a decision.
    #[inline]
    fn fp(&self, i: usize) -> u64 {
        self.fp ^ ((i as u64).wrapping_mul(DIMENSION_MIX) & !self.shard_mask)
    }

    /// Each dimension's GCRA and fingerprint.
    #[inline]
    fn iter(&self) -> impl Iterator<Item = (Gcra, u64)> + '_ {
        self.limits
            .iter()
            .enumerate()
            .map(|(i, quota)| (Gcra::new(quota), self.fp(i)))
    }
}

impl<C: Clock> MemoryStore<C> {
    /// A store holding at most `max_keys × dimensions` entries, on `clock`.
    ///
    /// Give each limiter a store of its own (the builders do): two limiters
    /// on one store would share the state of equal keys.
    pub fn new(max_keys: usize, dimensions: usize, clock: C) -> Self {
        let max_entries = max_keys
            .saturating_mul(dimensions.clamp(1, MAX_DIMENSIONS))
            .max(1);
        let shards = (max_entries / ENTRIES_PER_SHARD)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two()
            .min(MAX_SHARDS);
        let max_per_shard = max_entries
            .checked_div(shards)
            .unwrap_or(max_entries)
            .max(1);
        let shards = (0..shards)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    table: Table::default(),
                    admitted: 0,
                    denied: 0,
                    evicted: 0,
                    paused: HashMap::new(),
                }))
            })
            .collect();
        Self {
            shards,
            max_per_shard,
            hasher: RandomState::new(),
            clock,
        }
    }

    /// The clock the store reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The most entries the store holds.
    pub fn max_entries(&self) -> usize {
        self.max_per_shard.saturating_mul(self.shards.len())
    }

    #[inline]
    fn shard(&self, fp: u64) -> MutexGuard<'_, Shard> {
        let mask = (self.shards.len() as u64).wrapping_sub(1);
        let index = usize::try_from(fp & mask).unwrap_or(0);
        let shard = self.shards.get(index).unwrap_or_else(|| self.first());
        // A panic cannot leave a shard half-written: every update is a
        // single store of a TAT, or a rebuild that replaces the table whole.
        shard.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn first(&self) -> &Padded {
        // There is always at least one shard.
        #[allow(clippy::indexing_slicing)]
        &self.shards[0]
    }

    /// The key's dimensions, at most [`MAX_DIMENSIONS`] of them.
    #[inline]
    fn dims<'a, K: Hash + ?Sized>(&self, key: &K, limits: &'a [Quota]) -> Dims<'a> {
        Dims {
            fp: self.hasher.hash_one(key),
            shard_mask: (self.shards.len() as u64).wrapping_sub(1),
            limits: limits.get(..MAX_DIMENSIONS).unwrap_or(limits),
        }
    }

    /// [`Store::decide`], synchronously.
    #[inline]
    pub fn decide_now<K: Hash + ?Sized>(
        &self,
        key: &K,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Decision {
        let max_wait = duration_to_nanos(max_wait);
        if let ([quota], [cost]) = (limits, costs) {
            // A keyed limiter's path, measured at 40% cheaper than the
            // general one's loops: one hash, one lock, one GCRA step.
            let fp = self.hasher.hash_one(key);
            let mut shard = self.shard(fp);
            let now = self.clock.now();
            let decision = shard.decide_one(
                &Gcra::new(quota),
                fp,
                *cost,
                now,
                max_wait,
                self.max_per_shard,
            );
            return shard.count(decision);
        }
        let n = limits.len().min(costs.len());
        let dims = self.dims(key, limits.get(..n).unwrap_or(limits));
        let costs = costs.get(..dims.limits.len()).unwrap_or(costs);
        let mut shard = self.shard(dims.fp);
        let now = self.clock.now();
        let decision = shard.decide(dims, costs, now, max_wait, self.max_per_shard);
        shard.count(decision)
    }

    /// [`Store::adjust`], synchronously.
    pub fn adjust_now<K: Hash + ?Sized>(&self, key: &K, limits: &[Quota], changes: &[Change]) {
        let dims = self.dims(key, limits);
        let mut shard = self.shard(dims.fp);
        let now = self.clock.now();
        for ((gcra, fp), change) in dims.iter().zip(changes) {
            let index = shard.table.find(fp);
            let tat = index.map_or(0, |i| shard.table.tat_at(i));
            let next = match *change {
                Change::HoldFor(hold) => {
                    let until = now.saturating_add(duration_to_nanos(hold));
                    let extension = shard.pause(fp, now, until, self.max_per_shard);
                    hold_until(&gcra, tat, now, until, extension)
                }
                change => apply(&gcra, tat, now, change),
            };
            shard.write(index, fp, next, now, self.max_per_shard);
        }
    }

    /// [`Store::snapshot`], synchronously.
    pub fn snapshot_now<K: Hash + ?Sized>(&self, key: &K, limits: &[Quota]) -> Vec<Snapshot> {
        let dims = self.dims(key, limits);
        let shard = self.shard(dims.fp);
        let now = self.clock.now();
        dims.iter()
            .map(|(gcra, fp)| {
                let tat = shard.table.find(fp).map_or(0, |i| shard.table.tat_at(i));
                gcra.snapshot(&tat, now)
            })
            .collect()
    }

    /// What the store counts, summed over its shards.
    pub fn stats_now(&self) -> StoreStats {
        let mut stats = StoreStats::default();
        for shard in self.shards.iter() {
            let shard = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            stats.admitted = stats.admitted.saturating_add(shard.admitted);
            stats.denied = stats.denied.saturating_add(shard.denied);
            stats.evictions = stats.evictions.saturating_add(shard.evicted);
            stats.entries = stats.entries.saturating_add(shard.table.len() as u64);
        }
        stats
    }
}

/// One change to one GCRA state; answers the new TAT.
fn apply(gcra: &Gcra, tat: u64, now: u64, change: Change) -> u64 {
    let (interval, capacity) = (gcra.interval(), gcra.capacity());
    match change {
        Change::Keep => tat,
        Change::Charge(n) => tat.max(now).saturating_add(n.saturating_mul(interval)),
        Change::Refund(n) => tat.saturating_sub(n.saturating_mul(interval)),
        Change::AtMost(n) => {
            // Room now is `capacity - debt`; at most n units of it may stay.
            let floor = now
                .saturating_add(capacity)
                .saturating_sub(n.saturating_mul(interval));
            if n >= gcra.burst() {
                tat
            } else {
                tat.max(floor)
            }
        }
        // A hold needs the dimension's pause: see `hold_until`.
        Change::HoldFor(hold) => {
            let until = now.saturating_add(duration_to_nanos(hold));
            hold_until(gcra, tat, now, until, until.saturating_sub(now))
        }
    }
}

/// A pause of one GCRA state until `until`, which extends the pause in
/// force by `extension`: reservations already made move back by the
/// extension only (so pauses over pauses take the longest, never the sum),
/// and the limit is empty when the pause ends but for one unit, so that
/// callers leave one by one.
fn hold_until(gcra: &Gcra, tat: u64, now: u64, until: u64, extension: u64) -> u64 {
    let shifted = tat.max(now).saturating_add(extension);
    let empty = until
        .saturating_add(gcra.capacity())
        .saturating_sub(gcra.interval());
    shifted.max(empty)
}

/// Pauses a shard remembers before it sweeps the ended ones.
const PAUSES_BEFORE_SWEEP: usize = 64;

impl Shard {
    /// Pauses dimension `fp` until `until`; answers by how much that
    /// extends the pause in force (0 when one lasts longer already).
    fn pause(&mut self, fp: u64, now: u64, until: u64, max: usize) -> u64 {
        let in_force = self.paused.get(&fp).copied().filter(|&t| t > now);
        let extension = until.saturating_sub(in_force.unwrap_or(now).max(now));
        if extension > 0 {
            if self.paused.len() >= PAUSES_BEFORE_SWEEP {
                self.paused.retain(|_, &mut t| t > now);
            }
            // At the cap, a pause is still applied; only its end is not
            // remembered, so a later pause of that key adds to it.
            if self.paused.len() < max || self.paused.contains_key(&fp) {
                self.paused.insert(fp, until);
            }
        }
        extension
    }

    fn count(&mut self, decision: Decision) -> Decision {
        match decision {
            Decision::Admit { .. } => self.admitted = self.admitted.saturating_add(1),
            _ => self.denied = self.denied.saturating_add(1),
        }
        decision
    }

    /// One dimension: GCRA's own transition is the whole decision, since a
    /// lone dimension is admitted when it is due by its own reckoning.
    #[inline]
    fn decide_one(
        &mut self,
        gcra: &Gcra,
        fp: u64,
        cost: u64,
        now: u64,
        max_wait: u64,
        max: usize,
    ) -> Decision {
        let index = self.table.find(fp);
        let tat = index.map_or(0, |at| self.table.tat_at(at));
        match gcra.decide(&tat, now, cost, max_wait) {
            Outcome::Admit { state, due } => {
                if state != tat {
                    self.write(index, fp, state, now, max);
                }
                Decision::Admit {
                    wait: Duration::from_nanos(due.saturating_sub(now)),
                    snapshot: gcra.snapshot(&state, due.max(now)),
                }
            }
            Outcome::Deny { retry_after } => Decision::Deny {
                dimension: 0,
                snapshot: gcra.snapshot(&tat, now).retry_after_nanos(retry_after),
            },
            Outcome::Never => Decision::Never {
                dimension: 0,
                snapshot: gcra.snapshot(&tat, now),
            },
        }
    }

    /// Admits `costs` in every dimension at the latest instant any of them
    /// allows, or denies and changes nothing.
    #[inline]
    fn decide(
        &mut self,
        dims: Dims<'_>,
        costs: &[u64],
        now: u64,
        max_wait: u64,
        max: usize,
    ) -> Decision {
        let mut found = [(None, 0u64); MAX_DIMENSIONS];
        // The instant every dimension admits: the latest of their earliest.
        let mut due = now;
        let mut blocking = None;
        for (i, ((gcra, fp), &cost)) in dims.iter().zip(costs).enumerate() {
            let index = self.table.find(fp);
            let tat = index.map_or(0, |at| self.table.tat_at(at));
            found[i] = (index, tat);
            match gcra.decide(&tat, now, cost, u64::MAX) {
                Outcome::Admit { due: at, .. } if at > due => {
                    due = at;
                    blocking = Some((i, gcra));
                }
                Outcome::Never => {
                    return Decision::Never {
                        dimension: i,
                        snapshot: gcra.snapshot(&tat, now),
                    }
                }
                // Admitted no later than `due`; never denied with an
                // unbounded wait.
                Outcome::Admit { .. } | Outcome::Deny { .. } => {}
            }
        }
        let wait = due.saturating_sub(now);
        if let Some((dimension, gcra)) = blocking.filter(|_| wait > max_wait) {
            return Decision::Deny {
                dimension,
                snapshot: gcra
                    .snapshot(&found[dimension].1, now)
                    .retry_after_nanos(wait),
            };
        }
        // Admit in every dimension at `due`, so that no dimension counts an
        // admission earlier than it happens. Entries found are updated
        // first: making room for a new one may move them.
        let mut tightest: Option<Snapshot> = None;
        for (((gcra, _), &cost), (index, tat)) in dims.iter().zip(costs).zip(found.iter_mut()) {
            if cost != 0 {
                *tat = (*tat)
                    .max(due)
                    .saturating_add(cost.saturating_mul(gcra.interval()));
                if let Some(at) = *index {
                    self.table.set_tat(at, *tat);
                }
            }
            let snapshot = gcra.snapshot(tat, due);
            tightest = Some(match tightest {
                Some(t) if !tighter(&snapshot, &t) => t,
                _ => snapshot,
            });
        }
        for (((_, fp), &cost), &(index, tat)) in dims.iter().zip(costs).zip(&found) {
            if index.is_none() && cost != 0 {
                self.write(None, fp, tat, now, max);
            }
        }
        Decision::Admit {
            wait: Duration::from_nanos(wait),
            snapshot: tightest.unwrap_or_else(|| Snapshot::from_count(0, 0, 0)),
        }
    }

    /// Stores `tat` for `fp` (at `index`, when known), dropping entries that
    /// are full.
    fn write(&mut self, index: Option<usize>, fp: u64, tat: u64, now: u64, max: usize) {
        match index {
            Some(at) if tat <= now => self.table.remove_at(at),
            Some(at) => self.table.set_tat(at, tat),
            None if tat <= now => {}
            None => {
                self.make_room(now, max);
                if self.table.len() < self.table.slots() {
                    self.table.insert_new(fp, tat);
                }
            }
        }
    }

    /// Makes room for one more entry: sweeps out full entries, grows the
    /// table, or, at the cap, evicts the entries closest to full.
    fn make_room(&mut self, now: u64, max: usize) {
        let slots = self.table.slots();
        let largest = largest_slots(max);
        let limit = if slots >= largest {
            max
        } else {
            slots.saturating_sub(slots / 8).min(max)
        };
        if self.table.len() < limit {
            return;
        }
        // Full entries carry nothing: dropping them loses nothing.
        self.table.retain(|s| s.tat > now);
        if slots >= largest {
            let keep = max.saturating_sub((max / EVICT_SHARE).max(1));
            let evict = self.table.len().saturating_sub(keep);
            if evict > 0 {
                self.evict_closest_to_full(evict);
            }
        } else if slots == 0 || self.table.len() > limit.saturating_sub(limit / 4) {
            // Grow, unless the sweep freed a quarter.
            let target = slots.saturating_mul(2).max(16).min(largest);
            self.table = if slots == 0 {
                Table::with_slots(target)
            } else {
                self.table.resized(target)
            };
        }
    }

    /// Evicts about `count` entries with the earliest TATs: those closest
    /// to full, which forget the least. The threshold is read from an even
    /// sample of the shard, so that a sweep allocates nothing.
    fn evict_closest_to_full(&mut self, count: usize) {
        let len = self.table.len();
        if count == 0 || len == 0 {
            return;
        }
        let mut sample = [0u64; SAMPLE];
        let step = (len / SAMPLE).max(1);
        let mut taken: usize = 0;
        for (slot, tat) in sample
            .iter_mut()
            .zip(self.table.entries().step_by(step).map(|s| s.tat))
        {
            *slot = tat;
            taken = taken.saturating_add(1);
        }
        let sample = sample.get_mut(..taken).unwrap_or(&mut []);
        // The sample's quantile at count / len; at least the smallest.
        let nth = (count.saturating_mul(taken).checked_div(len).unwrap_or(0))
            .min(taken.saturating_sub(1));
        let Some(&mut threshold) = sample.select_nth_unstable(nth).1.into() else {
            return;
        };
        let mut budget = count;
        let evicted = self.table.retain(|s| {
            if s.tat <= threshold && budget > 0 {
                budget = budget.saturating_sub(1);
                false
            } else {
                true
            }
        });
        self.evicted = self.evicted.saturating_add(evicted as u64);
        tracing::debug!(
            evicted,
            kept = self.table.len(),
            "keyed limiter at its cap: evicted the keys closest to full"
        );
    }
}

/// The size of a table holding `max` entries at [`FULL_LOAD`].
fn largest_slots(max: usize) -> usize {
    max.saturating_mul(FULL_LOAD.1)
        .div_ceil(FULL_LOAD.0)
        .max(max.saturating_add(1))
}

/// Whether `a` has less room than `b`, relative to their limits.
fn tighter(a: &Snapshot, b: &Snapshot) -> bool {
    let ratio = |x: &Snapshot, y: &Snapshot| {
        u128::from(x.remaining()).saturating_mul(u128::from(y.limit()))
    };
    ratio(a, b) < ratio(b, a)
}

impl<K: Hash + ?Sized, C: Clock> Store<K> for MemoryStore<C> {
    type Error = Infallible;

    fn decide(
        &self,
        key: &K,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> impl std::future::Future<Output = Result<Decision, Infallible>> + Send {
        std::future::ready(Ok(self.decide_now(key, limits, costs, max_wait)))
    }

    fn adjust(
        &self,
        key: &K,
        limits: &[Quota],
        changes: &[Change],
    ) -> impl std::future::Future<Output = Result<(), Infallible>> + Send {
        self.adjust_now(key, limits, changes);
        std::future::ready(Ok(()))
    }

    fn snapshot(
        &self,
        key: &K,
        limits: &[Quota],
    ) -> impl std::future::Future<Output = Result<Vec<Snapshot>, Infallible>> + Send {
        std::future::ready(Ok(self.snapshot_now(key, limits)))
    }

    fn give_back(&self, key: &K, limits: &[Quota], costs: &[u64]) {
        let mut changes = [Change::Keep; MAX_DIMENSIONS];
        for (change, &cost) in changes.iter_mut().zip(costs) {
            *change = Change::Refund(cost);
        }
        self.adjust_now(key, limits, changes.get(..costs.len()).unwrap_or(&[]));
    }

    fn stats(&self) -> StoreStats {
        self.stats_now()
    }
}

impl<C: Clock> fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("max_entries", &self.max_entries())
            .field("stats", &self.stats_now())
            .finish()
    }
}
