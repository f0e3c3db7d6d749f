//! Where the state of keyed limits and budgets lives.

use std::future::Future;
use std::time::Duration;

use super::limits::MAX_DIMENSIONS;
use crate::{Quota, Snapshot};

/// The state of every key's budget, behind one atomic, asynchronous
/// operation per call: check-and-update all of a key's dimensions at once.
///
/// [`MemoryStore`](crate::MemoryStore) is the default; a network store
/// (Redis, say) implements the same trait, so that one limit spans many
/// replicas. Everything replicas must agree on lives in the store: each
/// dimension's GCRA state (reservations included), the key's own limits
/// (set with [`Change::Limit`] or learnt with [`Change::Observe`]), and its
/// pause. The contract, which every implementation keeps and which
/// `store::conformance` (the `conformance` feature) checks:
///
/// - **Atomic, all or nothing.** [`decide`](Self::decide) admits the costs in
///   every dimension or in none; a denial writes nothing.
/// - **The transitions of [`transition`](crate::store::transition).** A
///   store computes exactly what those pure functions compute (a network
///   store may round instants to its clock's resolution, never in the
///   caller's favour).
/// - **Limits.** `limits` is the limiter's default for each dimension; a
///   key with limits of its own in the store is decided by those instead.
/// - **Own limits lapse.** A key's own limits (set with [`Change::Limit`]
///   or learnt with [`Change::Observe`]) last the store's `limits_ttl`
///   after they were last set
///   ([`DEFAULT_LIMITS_TTL`](crate::store::DEFAULT_LIMITS_TTL), a day, unless the
///   store is told otherwise); then the defaults apply again. A store may
///   forget them sooner only when it evicts the key at its cap.
/// - **Pauses are state of the key.** A pause that starts while another is
///   in force extends it to the later end; reservations already made move
///   back by that extension only, and the store counts every extension in
///   the key's [`View::held`], so that waiters anywhere can learn of it.
/// - **The store's clock.** The store reads its own clock (the process's,
///   or the server's `TIME`); every instant crosses the trait as a duration
///   from now, so clocks of different machines never meet.
/// - **One round trip.** Each method is one operation on the store.
/// - **Errors are values.** A store that fails answers `Err`; the limiter
///   turns it into a [`Denied`](crate::Denied) of kind
///   [`StoreFailed`](crate::DeniedKind::StoreFailed). A store that would
///   rather fail open decides so itself.
/// - **Any input.** No key, cost, quota or instant makes a store panic or
///   loop; costs beyond a burst are [`Denial::CostExceedsBurst`].
pub trait Store<K: ?Sized>: Send + Sync {
    /// Why an operation failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Admits `costs[i]` in dimension `i` for `key`, all at once, or
    /// reserves the earliest instant at most `max_wait` away when they all
    /// fit, or denies and writes nothing.
    ///
    /// `costs` has one entry per entry of `limits` (the limiter checks
    /// this), at most [`MAX_DIMENSIONS`].
    fn decide(
        &self,
        key: &K,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> impl Future<Output = Result<Decision, Self::Error>> + Send;

    /// Applies one change per dimension to `key`'s state, at once.
    fn adjust(
        &self,
        key: &K,
        limits: &[Quota],
        changes: &[Change],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// `key` as it stands now, spending nothing: each dimension's limit in
    /// force and snapshot, and its pause.
    fn read(
        &self,
        key: &K,
        limits: &[Quota],
    ) -> impl Future<Output = Result<View, Self::Error>> + Send;

    /// Gives back `costs` reserved by a waiter that went away before its
    /// slot was due. It must not block: a network store spawns it, and a
    /// failure to give back only leaves the limit stricter for a while.
    fn give_back(&self, key: &K, limits: &[Quota], costs: &[u64]);

    /// What the store counts, where it counts it.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// How many processes share the store's state, as it last counted
    /// them (at least 1; the default, 1, is this process alone, as in
    /// memory). What one process saw alone (a rate learnt from the
    /// answers it got, say) is about that share of what the fleet does.
    fn sharers(&self) -> u32 {
        1
    }

    /// Admits `cost` in one dimension now, or refuses, when the store can
    /// answer without waiting (an in-memory store); `None` when the
    /// decision must be awaited through [`decide`](Self::decide). A server
    /// layer asks this first, on its hot path. The default is `None`.
    #[inline]
    fn check_now(&self, key: &K, quota: &Quota, cost: u64) -> Option<Result<Snapshot, Denial>> {
        let _ = (key, quota, cost);
        None
    }
}

/// A store that decides in this process, without waiting: the in-memory
/// stores ([`MemoryStore`](crate::MemoryStore),
/// [`DirectStore`](crate::store::DirectStore)). A limiter over one also
/// has a synchronous `check` and an `acquire_blocking`. Each method is its
/// [`Store`] twin, answered at once.
pub trait SyncStore<K: ?Sized>: Store<K> {
    /// [`Store::decide`], at once.
    fn decide_now(&self, key: &K, limits: &[Quota], costs: &[u64], max_wait: Duration) -> Decision;

    /// Admits `cost` in one dimension now, or refuses: a limiter's
    /// `check`, which needs no more than the snapshot. The default asks
    /// [`decide_now`](Self::decide_now).
    fn check_one(&self, key: &K, quota: &Quota, cost: u64) -> Result<Snapshot, Denial> {
        self.decide_now(key, std::slice::from_ref(quota), &[cost], Duration::ZERO)
            .checked()
    }

    /// [`Store::adjust`], at once.
    fn adjust_now(&self, key: &K, limits: &[Quota], changes: &[Change]);

    /// [`Store::read`], at once.
    fn read_now(&self, key: &K, limits: &[Quota]) -> View;

    /// The store's clock, in nanoseconds since its origin.
    fn now(&self) -> u64;

    /// Blocks the calling thread for up to `duration` on the store's clock
    /// (see [`Clock::wait_blocking`](crate::Clock::wait_blocking)).
    fn wait_blocking(&self, duration: Duration);
}

/// Why a store did not admit: the one shape a denial keeps from the store
/// to the limiter or budget that asked, which makes it a
/// [`Denied`](crate::Denied) of the same kind. A one-dimension check
/// ([`SyncStore::check_one`]) answers it too, for dimension 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// Not within the allowed wait. Nothing was written.
    RateLimited {
        /// The dimension that blocked: the one furthest from fitting.
        dimension: usize,
        /// That dimension, with [`Snapshot::retry_after`] set: how long
        /// until the whole cost fits.
        snapshot: Snapshot,
    },
    /// The cost in `dimension` exceeds its burst: no wait admits it.
    CostExceedsBurst {
        /// The dimension whose burst is too small.
        dimension: usize,
        /// That dimension as it stands.
        snapshot: Snapshot,
    },
}

impl Denial {
    /// The dimension that refused.
    pub fn dimension(&self) -> usize {
        match *self {
            Self::RateLimited { dimension, .. } | Self::CostExceedsBurst { dimension, .. } => {
                dimension
            }
        }
    }

    /// That dimension as the denial left it.
    pub fn snapshot(&self) -> &Snapshot {
        match self {
            Self::RateLimited { snapshot, .. } | Self::CostExceedsBurst { snapshot, .. } => {
                snapshot
            }
        }
    }

    /// The kind of [`Denied`](crate::Denied) it makes.
    pub fn kind(&self) -> crate::DeniedKind {
        match self {
            Self::RateLimited { .. } => crate::DeniedKind::RateLimited,
            Self::CostExceedsBurst { .. } => crate::DeniedKind::CostExceedsBurst,
        }
    }
}

impl Decision {
    /// A decision of one dimension as a check answers it: the admission's
    /// snapshot, or the denial.
    #[inline]
    pub(crate) fn checked(self) -> Result<Snapshot, Denial> {
        match self {
            Self::Admit(admit) => Ok(admit.snapshot),
            Self::Deny(denial) => Err(denial),
        }
    }
}

/// What a store decided.
// An admission carries each dimension's position; boxing it would
// allocate on every decision of the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted in every dimension: at once when `wait` is zero, or else
    /// reserved for `wait` from now.
    Admit(Admit),
    /// Not admitted; nothing was written.
    Deny(Denial),
}

/// An admission: when it is due, and its place in the key's queue, so
/// that a waiter can move up when a reservation ahead of it goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admit {
    /// How long until the reservation is due (the latest of its
    /// dimensions' dues).
    pub wait: Duration,
    /// The dimension with the least room left, as it will be when the
    /// reservation is due.
    pub snapshot: Snapshot,
    /// Where the reservation sits in the key's queue.
    pub place: QueuePlace,
}

impl Admit {
    /// An admission at once, with no place to keep: what a store answers
    /// when it admits without queueing.
    pub fn now(snapshot: Snapshot) -> Self {
        Self {
            wait: Duration::ZERO,
            snapshot,
            place: QueuePlace::default(),
        }
    }

    /// An admission of a single dimension, due in `wait`, whose limit
    /// replenishes a unit every `step`.
    pub fn single_dimension(snapshot: Snapshot, wait: Duration, step: Duration) -> Self {
        let mut admit = Self::now(snapshot);
        admit.wait = wait;
        admit.place.set(0, wait, step);
        admit
    }
}

/// Where a reservation sits in its key's queue: per dimension, when that
/// dimension alone would admit it (given the reservations ahead of it) and
/// the width of a unit there; and the key's pause count
/// ([`View::held`]) when it was decided. A store writes it; a budget's
/// waiters read it to move up or back as the reservations around them
/// change. Dimensions past [`MAX_DIMENSIONS`] are not kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuePlace {
    held: Duration,
    dues: [Duration; MAX_DIMENSIONS],
    steps: [Duration; MAX_DIMENSIONS],
}

impl QueuePlace {
    /// A place decided while the key's pause count was `held`, no
    /// dimension set yet.
    pub fn new(held: Duration) -> Self {
        Self {
            held,
            ..Self::default()
        }
    }

    /// Sets the key's pause count at the decision.
    pub fn set_held(&mut self, held: Duration) {
        self.held = held;
    }

    /// Sets `dimension`'s due (from now) and a unit's width there (the
    /// replenish interval of the limit that decided).
    pub fn set(&mut self, dimension: usize, due: Duration, step: Duration) {
        self.set_due(dimension, due);
        self.set_step(dimension, step);
    }

    /// Sets `dimension`'s due, from now.
    pub fn set_due(&mut self, dimension: usize, due: Duration) {
        if let Some(slot) = self.dues.get_mut(dimension) {
            *slot = due;
        }
    }

    /// Sets a unit's width in `dimension`.
    pub fn set_step(&mut self, dimension: usize, step: Duration) {
        if let Some(slot) = self.steps.get_mut(dimension) {
            *slot = step;
        }
    }

    /// The key's pause count when the reservation was decided.
    pub fn held(&self) -> Duration {
        self.held
    }

    /// When `dimension` alone would admit the reservation, from its
    /// decision (zero past the last dimension).
    pub fn due(&self, dimension: usize) -> Duration {
        self.dues.get(dimension).copied().unwrap_or_default()
    }

    /// A unit's width in `dimension` (zero past the last dimension).
    pub fn step(&self, dimension: usize) -> Duration {
        self.steps.get(dimension).copied().unwrap_or_default()
    }

    /// Every dimension's due.
    pub(crate) fn dues(&self) -> &[Duration; MAX_DIMENSIONS] {
        &self.dues
    }

    /// Every dimension's unit width.
    pub(crate) fn steps(&self) -> &[Duration; MAX_DIMENSIONS] {
        &self.steps
    }
}

/// A change to one dimension of a key's state, outside a decision. A store
/// handles every variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// What the other side reports: its limit and what remains of it. A
    /// `limit` other than the burst in force becomes the key's own limit
    /// for the dimension (that count over the same period, see
    /// [`transition::learn`](crate::store::transition::learn)); then as
    /// [`AtMost`](Self::AtMost)`(remaining)`.
    Observe {
        /// The limit the other side states (0: not stated).
        limit: u64,
        /// What remains of it.
        remaining: u64,
    },
    /// The key's own limit for this dimension, in place of the default.
    Limit(Quota),
    /// The default limit again for this dimension.
    Unlimit,
    /// Admits nothing for this long, then lets callers through one by one
    /// at the quota's rate: the limit is empty when the hold ends. A hold
    /// is state of the key: one that starts while another is in force
    /// extends it to the later end (concurrent holds take the longest,
    /// never the sum), and reservations already made move back by that
    /// extension only. The key's holds are one: give every dimension the
    /// same `HoldFor`.
    HoldFor(Duration),
}

/// A key as it stands: the result of [`Store::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Per dimension, the limit in force: the key's own or the default.
    pub limits: Vec<Quota>,
    /// Per dimension, as it stands now.
    pub snapshots: Vec<Snapshot>,
    /// The key's pause, from now (zero when none is in force).
    pub paused_for: Duration,
    /// Every extension of the key's pause, added up since the key's state
    /// was last empty: a waiter that reads more here than at its decision
    /// was held back by the difference.
    pub held: Duration,
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

impl StoreStats {
    /// Counts, for a store outside this crate.
    pub fn new(admitted: u64, denied: u64, entries: u64, evictions: u64) -> Self {
        Self {
            admitted,
            denied,
            entries,
            evictions,
        }
    }
}
