//! Where the state of keyed limits and budgets lives.

use std::future::Future;
use std::time::Duration;

use crate::{Quota, Snapshot};

/// The state of every key's budget, behind one atomic, asynchronous
/// operation: check-and-update all of a key's dimensions at once.
///
/// [`MemoryStore`](crate::MemoryStore) is the default; a network store
/// (Redis, say) implements the same trait, so that one limit spans many
/// replicas. The contract, which every implementation keeps:
///
/// - **Atomic, all or nothing.** [`decide`](Self::decide) admits the costs in
///   every dimension or in none; a denial changes nothing.
/// - **GCRA.** Each dimension is a GCRA limit of its [`Quota`]. An admission
///   that has to wait (a reservation) is admitted in every dimension at the
///   instant it is due, so no dimension ever exceeds `burst + t / interval`
///   in any interval of length `t`.
/// - **The store's clock.** The store reads its own clock (the process's,
///   or the server's `TIME`); every instant crosses the trait as a duration
///   from now, so clocks of different machines never meet.
/// - **One round trip.** Each method is one operation on the store.
/// - **Errors are values.** A store that fails answers `Err`; the limiter
///   turns it into a [`Denied`](crate::Denied) of kind
///   [`StoreFailed`](crate::DeniedKind::StoreFailed). A store that would
///   rather fail open decides so itself.
///
/// The limits travel with every call, so a key's quota can change from one
/// call to the next (per-key quotas, limits learnt from a server).
pub trait Store<K: ?Sized>: Send + Sync {
    /// Why an operation failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Admits `costs[i]` in dimension `i` of `limits` for `key`, all at
    /// once, or reserves the earliest instant at most `max_wait` away when
    /// they all fit, or denies and changes nothing.
    ///
    /// `costs` has one entry per dimension (the limiter checks this).
    fn decide(
        &self,
        key: &K,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> impl Future<Output = Result<Decision, Self::Error>> + Send;

    /// Applies one change per dimension to `key`'s state (settling a
    /// reservation, learning from a server, pausing).
    fn adjust(
        &self,
        key: &K,
        limits: &[Quota],
        changes: &[Change],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Every dimension of `key` as it stands now, spending nothing.
    fn snapshot(
        &self,
        key: &K,
        limits: &[Quota],
    ) -> impl Future<Output = Result<Vec<Snapshot>, Self::Error>> + Send;

    /// Gives back `costs` reserved by a waiter that went away before its
    /// slot was due. It must not block: a network store queues it or
    /// spawns it, and a failure to give back only leaves the limit stricter
    /// for a while.
    fn give_back(&self, key: &K, limits: &[Quota], costs: &[u64]);

    /// What the store counts, where it counts it.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

/// What a store decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Admitted in every dimension: at once when `wait` is zero, or else
    /// reserved for `wait` from now. `snapshot` is the dimension with the
    /// least room left, as it will be when the reservation is due.
    Admit {
        /// How long until the reservation is due.
        wait: Duration,
        /// The tightest dimension, after the admission.
        snapshot: Snapshot,
    },
    /// Not within the allowed wait. Nothing was spent.
    Deny {
        /// The dimension that blocked: the one furthest from fitting.
        dimension: usize,
        /// That dimension, with [`Snapshot::retry_after`] set: how long
        /// until the whole cost fits.
        snapshot: Snapshot,
    },
    /// The cost in `dimension` exceeds its burst: no wait admits it.
    Never {
        /// The dimension whose burst is too small.
        dimension: usize,
        /// That dimension as it stands.
        snapshot: Snapshot,
    },
}

/// A change to one dimension of a key's state, outside a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Leaves the dimension alone.
    Keep,
    /// Spends `n` more units, even beyond the burst: the real usage was
    /// higher than the reservation, and later callers wait for it.
    Charge(u64),
    /// Gives `n` units back: the reservation was higher than the real
    /// usage. A limit never fills beyond its burst.
    Refund(u64),
    /// At most `n` units remain now (what the other side reports); a limit
    /// with less room is left alone.
    AtMost(u64),
    /// Admits nothing for this long, then lets callers through one by one
    /// at the quota's rate: the limit is empty when the hold ends. A hold
    /// is state of the dimension: one that starts while another is in
    /// force extends it to the later end (concurrent holds take the
    /// longest, never the sum), and reservations already made move back by
    /// that extension only.
    HoldFor(Duration),
}

/// Counts a store keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Decisions that admitted (or reserved).
    pub admitted: u64,
    /// Decisions that denied.
    pub denied: u64,
    /// Entries held now: one per key and dimension that is not full. Full
    /// entries are dropped at the next sweep; they carry nothing.
    pub entries: u64,
    /// Entries forgotten while not full, because the store was at its cap
    /// of keys. Each such eviction can let its key admit up to that
    /// entry's unpaid debt more (see [`MemoryStore`](crate::MemoryStore)).
    pub evictions: u64,
}
