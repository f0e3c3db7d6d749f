//! Limits on how many calls run at once: fixed, and adaptive (AIMD).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::snapshot::duration_to_nanos;
use crate::{Denied, DeniedKind, Snapshot};

/// The most permits a limit may have (Tokio's semaphore's bound).
pub const MAX_PERMITS: usize = Semaphore::MAX_PERMITS;

/// A concurrency limit that cannot be built; the message says which bound
/// or step is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConcurrencyError {
    message: String,
}

impl fmt::Display for ConcurrencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConcurrencyError {}

fn invalid(message: String) -> ConcurrencyError {
    ConcurrencyError { message }
}

fn validate(what: &str, n: usize) -> Result<usize, ConcurrencyError> {
    if n == 0 || n > MAX_PERMITS {
        Err(invalid(format!(
            "{what} must be between 1 and {MAX_PERMITS}, not {n}"
        )))
    } else {
        Ok(n)
    }
}

/// Waits at most `max_wait` for a permit, counting what happens: `None`
/// when none came in time.
async fn wait_for_permit(
    semaphore: &Arc<Semaphore>,
    counts: &Counts,
    max_wait: Duration,
) -> Option<OwnedSemaphorePermit> {
    let permit = match Arc::clone(semaphore).try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(TryAcquireError::NoPermits | TryAcquireError::Closed) if max_wait.is_zero() => None,
        Err(_) => {
            let start = Instant::now();
            let acquire = Arc::clone(semaphore).acquire_owned();
            // The semaphores here are never closed: an error is a timeout.
            let permit = match start.checked_add(max_wait) {
                Some(deadline) => tokio::time::timeout_at(deadline, acquire)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => acquire.await.ok(),
            };
            if permit.is_some() {
                counts.waited(start);
            }
            permit
        }
    };
    let counter = if permit.is_some() {
        &counts.admitted
    } else {
        &counts.denied
    };
    counter.fetch_add(1, Ordering::Relaxed);
    permit
}

/// Counts shared by both limits.
#[derive(Debug, Default)]
struct Counts {
    admitted: AtomicU64,
    denied: AtomicU64,
    waits: AtomicU64,
    waited_ns: AtomicU64,
}

impl Counts {
    fn waited(&self, since: Instant) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.waited_ns
            .fetch_add(duration_to_nanos(since.elapsed()), Ordering::Relaxed);
    }

    fn stats(&self, limit: usize, in_flight: usize) -> ConcurrencyStats {
        ConcurrencyStats {
            limit,
            in_flight,
            admitted: self.admitted.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed)),
        }
    }
}

/// What a concurrency limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConcurrencyStats {
    /// The limit now (it moves, for an [`AdaptiveLimit`]).
    pub limit: usize,
    /// Permits held now.
    pub in_flight: usize,
    /// Permits granted.
    pub admitted: u64,
    /// Acquires that gave up: a full `try_acquire`, or a wait too long.
    pub denied: u64,
    /// Acquires that had to wait.
    pub waits: u64,
    /// The time those acquires waited, in total.
    pub waited: Duration,
}

/// The denial of a concurrency limit: every permit is held.
fn busy(limit: usize) -> Denied {
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    Denied::new(DeniedKind::Busy, 1, Snapshot::from_count(limit, 0, 0))
}

/// At most `n` calls at once, served in the order they arrive (FIFO), with
/// a permit that frees its place when dropped.
///
/// Clones share one limit. The seeds' "one clone job at a time, four TTS
/// jobs in parallel":
///
/// ```
/// use std::time::Duration;
/// use tollgate::ConcurrencyLimit;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let clone_jobs = ConcurrencyLimit::new(1)?;
/// let tts_jobs = ConcurrencyLimit::new(4)?;
///
/// let permit = clone_jobs.acquire().await;
/// // A second clone job would wait; with a bound it gives up instead.
/// let busy = clone_jobs.acquire_within(Duration::from_secs(1)).await.unwrap_err();
/// assert_eq!(busy.kind(), tollgate::DeniedKind::Busy);
/// drop(permit);
///
/// let mut running = Vec::new();
/// for _ in 0..4 {
///     running.push(tts_jobs.acquire().await);
/// }
/// assert!(tts_jobs.try_acquire().is_none());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimit {
    inner: Arc<FixedInner>,
}

struct FixedInner {
    semaphore: Arc<Semaphore>,
    limit: usize,
    counts: Counts,
}

/// A place in a [`ConcurrencyLimit`]; dropping it frees the place for the
/// next in line.
#[must_use = "the place is freed when the permit is dropped"]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl ConcurrencyLimit {
    /// At most `limit` at once; an error unless `1 ≤ limit ≤ MAX_PERMITS`.
    pub fn new(limit: usize) -> Result<Self, ConcurrencyError> {
        let limit = validate("a concurrency limit", limit)?;
        Ok(Self {
            inner: Arc::new(FixedInner {
                semaphore: Arc::new(Semaphore::new(limit)),
                limit,
                counts: Counts::default(),
            }),
        })
    }

    /// Waits for a place, behind everyone who asked before.
    pub async fn acquire(&self) -> Permit {
        loop {
            // An unbounded wait on a semaphore that is never closed always
            // ends with a permit; the loop only keeps this total.
            if let Ok(permit) = self.acquire_within(Duration::MAX).await {
                return permit;
            }
        }
    }

    /// Waits at most `max_wait` for a place; gives up with a
    /// [`DeniedKind::Busy`] denial, holding nothing.
    pub async fn acquire_within(&self, max_wait: Duration) -> Result<Permit, Denied> {
        let inner = &self.inner;
        match wait_for_permit(&inner.semaphore, &inner.counts, max_wait).await {
            Some(permit) => Ok(Permit { _permit: permit }),
            None => {
                tracing::debug!(limit = inner.limit, "concurrency limit: gave up waiting");
                Err(busy(inner.limit))
            }
        }
    }

    /// A place now, or `None` when all are taken (or others wait for one).
    pub fn try_acquire(&self) -> Option<Permit> {
        let inner = &self.inner;
        let permit = Arc::clone(&inner.semaphore).try_acquire_owned().ok();
        let counter = if permit.is_some() {
            &inner.counts.admitted
        } else {
            &inner.counts.denied
        };
        counter.fetch_add(1, Ordering::Relaxed);
        permit.map(|permit| Permit { _permit: permit })
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Places free now.
    pub fn available(&self) -> usize {
        self.inner.semaphore.available_permits()
    }

    /// What the limit counts.
    pub fn stats(&self) -> ConcurrencyStats {
        let in_flight = self.inner.limit.saturating_sub(self.available());
        self.inner.counts.stats(self.inner.limit, in_flight)
    }
}

impl fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("stats", &self.stats())
            .finish()
    }
}

/// How an [`AdaptiveLimit`] moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aimd {
    /// The limit at the start (default 4).
    pub initial: usize,
    /// The limit never goes below this (default 1).
    pub min: usize,
    /// The limit never goes above this (default 1,000).
    pub max: usize,
    /// Added to the limit per limit's worth of successes, about once per
    /// round trip when the limit is in use (default 1).
    pub increase: f64,
    /// The limit is multiplied by this on an overload signal, once per
    /// generation of permits (default 0.5).
    pub decrease: f64,
}

impl Default for Aimd {
    fn default() -> Self {
        Self {
            initial: 4,
            min: 1,
            max: 1_000,
            increase: 1.0,
            decrease: 0.5,
        }
    }
}

/// A concurrency limit that finds its own level, for clients of servers that
/// publish no limits: additive increase while calls succeed, multiplicative
/// decrease when one reports overload (a 429, a 503, a timeout).
///
/// Each [`AdaptivePermit`] reports how its call went
/// ([`success`](AdaptivePermit::success) or
/// [`overloaded`](AdaptivePermit::overloaded)); a permit dropped without a
/// verdict changes nothing. Calls that were already in flight when the limit
/// was cut report overload too, but only the first cut counts: the limit
/// drops once per generation of permits, not once per failed call. Waiters
/// are served FIFO.
///
/// ```
/// use tollgate::{AdaptiveLimit, Aimd};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limit = AdaptiveLimit::new(Aimd { initial: 10, ..Aimd::default() })?;
/// let permit = limit.acquire().await;
/// // ... the call answers 429 ...
/// permit.overloaded();
/// assert_eq!(limit.limit(), 5);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AdaptiveLimit {
    inner: Arc<AdaptiveInner>,
}

struct AdaptiveInner {
    semaphore: Arc<Semaphore>,
    config: Aimd,
    state: Mutex<AimdState>,
    counts: Counts,
}

struct AimdState {
    /// The limit, fractional so that additive increase can be spread over a
    /// limit's worth of successes.
    target: f64,
    /// Permits that exist: held or available.
    issued: usize,
    /// Permits to retire as they come back, after a cut.
    retire: usize,
    /// Bumped at each cut; permits of an older generation cannot cut again.
    generation: u64,
    in_flight: usize,
}

/// A place in an [`AdaptiveLimit`]: report how the call went, or drop it.
#[must_use = "the place is freed when the permit is dropped"]
pub struct AdaptivePermit {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<AdaptiveInner>,
    generation: u64,
    /// Whether at least half the limit was in use when it was granted.
    in_use: bool,
}

impl AdaptiveLimit {
    /// A limit that moves as `config` says; an error when its bounds are
    /// not `1 ≤ min ≤ initial ≤ max ≤ MAX_PERMITS`, or the steps are not
    /// a positive increase and a decrease in `(0, 1)`.
    pub fn new(config: Aimd) -> Result<Self, ConcurrencyError> {
        let Aimd {
            initial,
            min,
            max,
            increase,
            decrease,
        } = config;
        validate("min", min)?;
        validate("max", max)?;
        validate("initial", initial)?;
        if !(min <= initial && initial <= max) {
            return Err(invalid(format!(
                "an adaptive limit needs min ≤ initial ≤ max, not {min} ≤ {initial} ≤ {max}"
            )));
        }
        if !(increase.is_finite() && increase > 0.0) {
            return Err(invalid(format!(
                "the additive increase must be a positive number, not {increase}"
            )));
        }
        if !(decrease > 0.0 && decrease < 1.0) {
            return Err(invalid(format!(
                "the multiplicative decrease must lie strictly between 0 and 1, not {decrease}"
            )));
        }
        Ok(Self {
            inner: Arc::new(AdaptiveInner {
                semaphore: Arc::new(Semaphore::new(initial)),
                config,
                state: Mutex::new(AimdState {
                    target: initial as f64,
                    issued: initial,
                    retire: 0,
                    generation: 0,
                    in_flight: 0,
                }),
                counts: Counts::default(),
            }),
        })
    }

    /// Waits for a place, behind everyone who asked before.
    pub async fn acquire(&self) -> AdaptivePermit {
        loop {
            if let Ok(permit) = self.acquire_within(Duration::MAX).await {
                return permit;
            }
        }
    }

    /// Waits at most `max_wait` for a place.
    pub async fn acquire_within(&self, max_wait: Duration) -> Result<AdaptivePermit, Denied> {
        let inner = &self.inner;
        let Some(permit) = wait_for_permit(&inner.semaphore, &inner.counts, max_wait).await else {
            return Err(busy(self.limit()));
        };
        let mut state = inner.lock();
        state.in_flight = state.in_flight.saturating_add(1);
        let in_use = state.in_flight.saturating_mul(2) >= state.limit(&inner.config);
        Ok(AdaptivePermit {
            permit: Some(permit),
            limit: Arc::clone(inner),
            generation: state.generation,
            in_use,
        })
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.inner.lock().limit(&self.inner.config)
    }

    /// What the limit counts.
    pub fn stats(&self) -> ConcurrencyStats {
        let state = self.inner.lock();
        let (limit, in_flight) = (state.limit(&self.inner.config), state.in_flight);
        drop(state);
        self.inner.counts.stats(limit, in_flight)
    }
}

impl AimdState {
    fn limit(&self, config: &Aimd) -> usize {
        // Clamped to [min, max], both at most MAX_PERMITS: the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // The epsilon absorbs rounding: three increases of 1/3 make 1.
        let floor = (self.target + 1e-9).floor() as usize;
        floor.clamp(config.min, config.max)
    }
}

impl AdaptiveInner {
    fn lock(&self) -> MutexGuard<'_, AimdState> {
        // Every update of the state is complete before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings the number of permits to the limit: adds them, or retires
    /// available ones and marks the rest to retire as they come back.
    fn resize(&self, state: &mut AimdState) {
        let limit = state.limit(&self.config);
        let live = state.issued.saturating_sub(state.retire);
        if limit > live {
            let cancel = state.retire.min(limit.saturating_sub(live));
            state.retire = state.retire.saturating_sub(cancel);
            let add = limit.saturating_sub(live).saturating_sub(cancel);
            if add > 0 {
                self.semaphore.add_permits(add);
                state.issued = state.issued.saturating_add(add);
            }
        } else if limit < live {
            let excess = live.saturating_sub(limit);
            let forgotten = self.semaphore.forget_permits(excess);
            state.issued = state.issued.saturating_sub(forgotten);
            state.retire = state
                .retire
                .saturating_add(excess.saturating_sub(forgotten));
        }
    }
}

impl AdaptivePermit {
    /// The call succeeded: the limit grows by `increase / limit`.
    pub fn success(self) {
        let inner = Arc::clone(&self.limit);
        let mut state = inner.lock();
        // Grow only for calls made while the limit was in use: a client
        // that sends one call at a time learns nothing of the server's
        // capacity.
        let limit = state.limit(&inner.config) as f64;
        if self.in_use {
            let grown = state.target + inner.config.increase / limit.max(1.0);
            state.target = grown.min(inner.config.max as f64);
            inner.resize(&mut state);
        }
    }

    /// The other side is overloaded (a 429, a 503, a timeout): the limit is
    /// cut by `decrease`, once per generation of permits.
    pub fn overloaded(self) {
        let inner = Arc::clone(&self.limit);
        let mut state = inner.lock();
        if self.generation == state.generation {
            let before = state.limit(&inner.config);
            state.target = (state.target * inner.config.decrease).max(inner.config.min as f64);
            state.generation = state.generation.wrapping_add(1);
            inner.resize(&mut state);
            tracing::debug!(
                from = before,
                to = state.limit(&inner.config),
                "adaptive concurrency limit cut after an overload"
            );
        }
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        let mut state = self.limit.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(permit) = self.permit.take() {
            if state.retire > 0 {
                state.retire = state.retire.saturating_sub(1);
                state.issued = state.issued.saturating_sub(1);
                permit.forget();
            }
        }
    }
}

impl fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl fmt::Debug for AdaptivePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptivePermit")
            .field("generation", &self.generation)
            .finish()
    }
}
