//! Deciding in this process while Redis fails (failing open), with what
//! was last known of each key and at this process's share of the fleet.
//!
//! Failing open with only the configured limits floods whatever the limit
//! protects: limits learnt from a provider, and its pauses, live in Redis,
//! and every process would admit the whole limit on its own. So while
//! Redis answers, [`Local`] keeps a copy of what matters:
//!
//! - each key's own and learnt limits, from the decide script's replies
//!   and from every change this process sends;
//! - each key's pause, from the same replies;
//! - what this process spent, charged to a local bucket when it fits (a
//!   bucket is never put in debt by the copy, so a process that spent
//!   more than its share starts the outage with an empty bucket, not a
//!   long wait);
//! - the number of processes sharing the store (the fleet), counted in
//!   Redis by a heartbeat.
//!
//! While Redis fails, each limit in force is divided by the fleet: three
//! processes on a key of 10 a second admit about 10 a second together,
//! not 30. When Redis answers again after an outage, a key that Redis
//! lost (restarted empty) is given back what this process knew: its own
//! limits, and no more room than the local buckets had, so that the fleet
//! does not burst.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tollgate::store::{transition, Change, Decision, SyncStore, View};
use tollgate::{DefaultClock, MemoryStore, Quota, MAX_DIMENSIONS};

/// A key's limits in force: its own where it has them, else the default.
type Quotas = [Quota; MAX_DIMENSIONS];

/// Fills the slots of a [`Quotas`] past a key's dimensions; never decided
/// on.
fn placeholder() -> Quota {
    Quota::per_second(1).expect("one a second is a valid quota")
}

/// What a decision in Redis told of its key, beyond the decision.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Seen {
    /// The key's own limits, per dimension (`None`: the default applies).
    pub(crate) own: [Option<Quota>; MAX_DIMENSIONS],
    /// How long the key stays paused from the decision's instant.
    pub(crate) paused_for: Duration,
    /// Whether Redis had nothing for the key before this decision.
    pub(crate) fresh: bool,
    /// Whether a stricter limit than this process passed decided: another
    /// process passed it for the same key lately.
    pub(crate) stricter: bool,
}

/// A key's own limits as last known, and when they lapse (as they do in
/// Redis, `limits_ttl` after they were last set).
#[derive(Clone, Copy)]
struct Own {
    limits: [Option<Quota>; MAX_DIMENSIONS],
    lapses: Instant,
}

/// How much further ahead than Redis the copy of an admission may be
/// reserved here.
const COPY_DRIFT: Duration = Duration::from_secs(1);

/// How long after an outage a key found empty in Redis is given back
/// what this process knew of it.
const RECOVERY: Duration = Duration::from_secs(120);

/// What this process knows of the keys it uses, and the local store it
/// decides with while Redis fails.
pub(crate) struct Local {
    /// Each key's buckets at this process's share, and its pause.
    memory: MemoryStore,
    /// Keys with own limits (few: only those limits are kept here).
    own: Mutex<HashMap<String, Own>>,
    /// Keys decided or changed here while Redis failed: Redis does not
    /// know what they spent, and is told when it answers again.
    outage: Mutex<HashSet<String>>,
    /// How many keys `own` and `outage` hold: read without their locks, so
    /// that the common case (neither holds any) takes no lock.
    own_len: AtomicUsize,
    outage_len: AtomicUsize,
    /// Fills the slots of a [`Quotas`] past a key's dimensions.
    filler: Quota,
    max_keys: usize,
    limits_ttl: Duration,
    /// Processes sharing the store, this one included (at least 1).
    fleet: AtomicU32,
    /// When Redis last answered after failing, in milliseconds since
    /// `origin` (0: never).
    recovered_ms: AtomicU64,
    origin: Instant,
}

impl Local {
    pub(crate) fn new(max_keys: usize, limits_ttl: Duration) -> Self {
        let max_keys = max_keys.max(1);
        Self {
            memory: MemoryStore::new(max_keys, MAX_DIMENSIONS, DefaultClock::new()),
            own: Mutex::new(HashMap::new()),
            outage: Mutex::new(HashSet::new()),
            own_len: AtomicUsize::new(0),
            outage_len: AtomicUsize::new(0),
            filler: placeholder(),
            max_keys,
            limits_ttl,
            fleet: AtomicU32::new(1),
            recovered_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// The processes sharing the store, as last counted.
    pub(crate) fn fleet(&self) -> u32 {
        self.fleet.load(Ordering::Relaxed).max(1)
    }

    pub(crate) fn set_fleet(&self, processes: u32) {
        self.fleet.store(processes.max(1), Ordering::Relaxed);
    }

    /// Redis answers again after failing.
    pub(crate) fn recovered(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.recovered_ms.store(ms.max(1), Ordering::Relaxed);
    }

    fn recovering(&self) -> bool {
        let at = self.recovered_ms.load(Ordering::Relaxed);
        at != 0 && self.origin.elapsed() < Duration::from_millis(at).saturating_add(RECOVERY)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Own>> {
        self.own.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limits in force for `key`: its own where known, else `defaults`.
    fn in_force(&self, key: &str, defaults: &[Quota]) -> Quotas {
        let mut quotas = [self.filler; MAX_DIMENSIONS];
        for (slot, quota) in quotas.iter_mut().zip(defaults) {
            *slot = *quota;
        }
        if self.own_len.load(Ordering::Relaxed) == 0 {
            return quotas;
        }
        let own = self.lock();
        if let Some(own) = own.get(key) {
            if own.lapses > Instant::now() {
                for (slot, limit) in quotas.iter_mut().zip(&own.limits) {
                    if let Some(limit) = limit {
                        *slot = *limit;
                    }
                }
            }
        }
        quotas
    }

    /// Whether `key` has own limits known here that have not lapsed.
    fn knows_own(&self, key: &str) -> bool {
        if self.own_len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.lock().get(key).is_some_and(|own| {
            own.lapses > Instant::now() && own.limits.iter().any(Option::is_some)
        })
    }

    /// `quotas` at this process's share of the fleet.
    fn shared(&self, mut quotas: Quotas, n: usize) -> Quotas {
        let fleet = u64::from(self.fleet());
        if fleet > 1 {
            for quota in quotas.iter_mut().take(n) {
                *quota = share(quota, fleet);
            }
        }
        quotas
    }

    /// Records `key`'s own limits as Redis holds them (`None` each where
    /// the default applies).
    fn remember(&self, key: &str, limits: [Option<Quota>; MAX_DIMENSIONS], n: usize) {
        let any = limits.iter().take(n).any(Option::is_some);
        if !any && self.own_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut own = self.lock();
        if !any {
            own.remove(key);
            self.own_len.store(own.len(), Ordering::Relaxed);
            return;
        }
        let lapses = Instant::now() + self.limits_ttl;
        if let Some(known) = own.get_mut(key) {
            if known.limits != limits {
                known.limits = limits;
                known.lapses = lapses;
            }
            return;
        }
        if own.len() >= self.max_keys {
            let now = Instant::now();
            own.retain(|_, known| known.lapses > now);
            if own.len() >= self.max_keys {
                // Full of live keys: what is forgotten is only learnt again.
                own.clear();
            }
            self.own_len.store(own.len(), Ordering::Relaxed);
        }
        own.insert(key.to_owned(), Own { limits, lapses });
        self.own_len.store(own.len(), Ordering::Relaxed);
    }

    /// Notes that `key` was decided or changed here while Redis failed.
    fn during_outage(&self, key: &str) {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        if outage.len() < self.max_keys && !outage.contains(key) {
            outage.insert(key.to_owned());
        }
        self.outage_len.store(outage.len(), Ordering::Relaxed);
    }

    /// A key's restore failed: it is given back at the next answer.
    pub(crate) fn not_restored(&self, key: &str) {
        self.during_outage(key);
    }

    /// Decides in this process: Redis failed.
    pub(crate) fn decide(
        &self,
        key: &str,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Decision {
        self.during_outage(key);
        self.decide_restoring(key, limits, costs, max_wait)
    }

    /// Decides in this process while Redis is given back a key it lost:
    /// Redis answers again, so the key is not counted as decided in an
    /// outage (its restore, under way, gives Redis what this process knows).
    pub(crate) fn decide_restoring(
        &self,
        key: &str,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Decision {
        let n = limits.len().min(costs.len()).min(MAX_DIMENSIONS);
        let quotas = self.shared(self.in_force(key, limits), n);
        self.memory
            .decide_now(key, quotas.get(..n).unwrap_or(&[]), costs, max_wait)
    }

    /// Applies `changes` here: Redis failed, or they were made there and
    /// this is the copy. Own and learnt limits are kept whole; what is
    /// spent and what remains count against this process's share.
    pub(crate) fn adjust(&self, key: &str, limits: &[Quota], changes: &[Change]) {
        self.copy_changes(key, limits, changes);
    }

    /// [`adjust`](Self::adjust) while Redis fails.
    pub(crate) fn adjust_alone(&self, key: &str, limits: &[Quota], changes: &[Change]) {
        self.during_outage(key);
        self.copy_changes(key, limits, changes);
    }

    fn copy_changes(&self, key: &str, limits: &[Quota], changes: &[Change]) {
        let n = limits.len().min(changes.len()).min(MAX_DIMENSIONS);
        let before = self.in_force(key, limits);
        let mut own = [None; MAX_DIMENSIONS];
        {
            let known = self.lock();
            if let Some(known) = known.get(key).filter(|k| k.lapses > Instant::now()) {
                own = known.limits;
            }
        }
        let fleet = u64::from(self.fleet());
        let mut local = [Change::Keep; MAX_DIMENSIONS];
        let mut limits_changed = false;
        for (i, &change) in changes.iter().enumerate().take(n) {
            let (Some(slot), Some(quota), Some(mine)) =
                (local.get_mut(i), before.get(i), own.get_mut(i))
            else {
                break;
            };
            *slot = match change {
                Change::Limit(quota) => {
                    *mine = Some(quota);
                    limits_changed = true;
                    Change::Keep
                }
                Change::Unlimit => {
                    limits_changed |= mine.take().is_some();
                    Change::Keep
                }
                Change::Observe { limit, remaining } => {
                    if let Some(learnt) = transition::learn(quota, limit) {
                        *mine = Some(learnt);
                        limits_changed = true;
                    }
                    Change::AtMost(remaining / fleet)
                }
                Change::AtMost(remaining) => Change::AtMost(remaining / fleet),
                other => other,
            };
        }
        if limits_changed {
            self.remember(key, own, n);
        }
        let quotas = self.shared(self.in_force(key, limits), n);
        self.memory.adjust_now(
            key,
            quotas.get(..n).unwrap_or(&[]),
            local.get(..n).unwrap_or(&[]),
        );
    }

    /// `key` as known here: Redis failed. The limits are the whole
    /// fleet's; the snapshots are this process's share.
    pub(crate) fn read(&self, key: &str, limits: &[Quota]) -> View {
        let n = limits.len().min(MAX_DIMENSIONS);
        let whole = self.in_force(key, limits);
        let quotas = self.shared(whole, n);
        let mut view = self.memory.read_now(key, quotas.get(..n).unwrap_or(&[]));
        view.limits = whole.get(..n).unwrap_or(&[]).to_vec();
        view
    }

    /// Copies what a decision made in Redis told of `key`. Returns what
    /// gives Redis back what it does not know of the key (see
    /// [`lost`](Self::lost)), when there is any.
    pub(crate) fn copy(
        &self,
        key: &str,
        limits: &[Quota],
        costs: &[u64],
        decision: &Decision,
        seen: &Seen,
    ) -> Option<Restore> {
        let n = limits.len().min(costs.len()).min(MAX_DIMENSIONS);
        // Soon after an outage, Redis may answer for a key it lost (it
        // restarted empty) at the default limits, though this process knows
        // the key's own: given back, the call is decided here (the caller
        // does), and the own limits are not forgotten.
        let restore = self.lost(key, limits, seen.fresh).or_else(|| {
            let lost_own = self.recovering()
                && seen.own.iter().take(n).all(Option::is_none)
                && self.knows_own(key);
            if lost_own {
                self.restore(key, limits, n)
            } else {
                None
            }
        });
        if restore.is_some() {
            return restore;
        }
        self.remember(key, seen.own, n);
        let quotas = self.shared(self.in_force(key, limits), n);
        if !seen.paused_for.is_zero() {
            let view = self.memory.read_now(key, &[]);
            if view.paused_for < seen.paused_for {
                let mut hold = [Change::Keep; MAX_DIMENSIONS];
                for change in hold.iter_mut().take(n) {
                    *change = Change::HoldFor(seen.paused_for);
                }
                self.memory.adjust_now(
                    key,
                    quotas.get(..n).unwrap_or(&[]),
                    hold.get(..n).unwrap_or(&[]),
                );
            }
        }
        if let Decision::Admit(admit) = decision {
            // Charged here too, reserved no further ahead than Redis
            // reserved it (and a little more, for the clocks' drift): the
            // copy knows the reservations waiting in Redis, but a process
            // that spends more than its share never runs its bucket much
            // further into debt than Redis did.
            let _ = self.memory.decide_now(
                key,
                quotas.get(..n).unwrap_or(&[]),
                costs.get(..n).unwrap_or(&[]),
                admit.wait.saturating_add(COPY_DRIFT),
            );
        }
        restore
    }

    /// Redis answered for `key` again: when it was decided here during
    /// an outage (Redis does not know what it spent then), or Redis had
    /// nothing for it (`fresh`) soon after an outage (it restarted empty),
    /// the changes that give Redis what this process knows.
    pub(crate) fn lost(&self, key: &str, limits: &[Quota], fresh: bool) -> Option<Restore> {
        let decided_here = self.outage_len.load(Ordering::Relaxed) != 0 && {
            let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
            let removed = outage.remove(key);
            self.outage_len.store(outage.len(), Ordering::Relaxed);
            removed
        };
        if !(decided_here || fresh && self.recovering()) {
            return None;
        }
        self.restore(key, limits, limits.len().min(MAX_DIMENSIONS))
    }

    /// What Redis lost of `key`: its own limits, and for each dimension
    /// how long until it is full at the soonest, as here.
    fn restore(&self, key: &str, limits: &[Quota], n: usize) -> Option<Restore> {
        let whole = self.in_force(key, limits);
        let mut own = [None; MAX_DIMENSIONS];
        if let Some(known) = self.lock().get(key).filter(|k| k.lapses > Instant::now()) {
            own = known.limits;
        }
        let shared = self.shared(whole, n);
        let view = self.memory.read_now(key, shared.get(..n).unwrap_or(&[]));
        let mut restore = Restore {
            limits: [Change::Keep; MAX_DIMENSIONS],
            full_in: [None; MAX_DIMENSIONS],
            quotas: [self.filler; MAX_DIMENSIONS],
            n,
        };
        let mut any = false;
        for (i, own) in own.iter().enumerate().take(n) {
            restore.quotas[i] = limits.get(i).copied().unwrap_or(self.filler);
            if let Some(quota) = own {
                restore.limits[i] = Change::Limit(*quota);
                any = true;
            }
            // Full locally no sooner than this: at this process's share,
            // the same time as the fleet's whole limit.
            if let Some(snapshot) = view.snapshots.get(i) {
                if !snapshot.reset_after().is_zero() {
                    restore.full_in[i] = Some(snapshot.reset_after());
                    any = true;
                }
            }
        }
        any.then_some(restore)
    }
}

/// What gives Redis back a key it lost or did not see during an outage:
/// its own limits first, then, per dimension, how long until it is full
/// at the soonest (what was spent and reserved here).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Restore {
    pub(crate) limits: [Change; MAX_DIMENSIONS],
    pub(crate) full_in: [Option<Duration>; MAX_DIMENSIONS],
    pub(crate) quotas: [Quota; MAX_DIMENSIONS],
    pub(crate) n: usize,
}

/// `quota` divided among `fleet` processes: its count and burst, each at
/// least 1.
pub(crate) fn share(quota: &Quota, fleet: u64) -> Quota {
    if fleet <= 1 {
        return *quota;
    }
    let count = (quota.count() / fleet).max(1);
    let burst = (quota.burst_size() / fleet).max(1);
    Quota::new(count, quota.period())
        .and_then(|q| q.burst(burst))
        .unwrap_or(*quota)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::store::Denial;

    #[test]
    fn a_share_divides_count_and_burst_and_keeps_at_least_one() {
        let quota = Quota::per_second(10).unwrap().burst(30).unwrap();
        let third = share(&quota, 3);
        assert_eq!((third.count(), third.burst_size()), (3, 10));
        assert_eq!(third.period(), Duration::from_secs(1));
        let tiny = share(&Quota::per_second(2).unwrap(), 5);
        assert_eq!((tiny.count(), tiny.burst_size()), (1, 1));
        assert_eq!(share(&quota, 1), quota);
    }

    /// Of 50 calls of cost 1 at once, how many `local` admits.
    fn admitted_of_50(local: &Local, key: &str, limits: &[Quota]) -> usize {
        (0..50)
            .filter(|_| {
                matches!(
                    local.decide(key, limits, &[1], Duration::ZERO),
                    Decision::Admit(_)
                )
            })
            .count()
    }

    #[test]
    fn learnt_limits_and_the_fleet_shape_local_decisions() {
        let local = Local::new(100, Duration::from_secs(3600));
        let open = [Quota::per_second(1_000_000).unwrap()];
        // A limit learnt from the provider, through a change this process
        // made: decisions here follow it, not the open default.
        local.adjust(
            "k",
            &open,
            &[Change::Observe {
                limit: 10,
                remaining: 10,
            }],
        );
        assert_eq!(admitted_of_50(&local, "k", &open), 10);
        assert_eq!(local.read("k", &open).limits[0].burst_size(), 10);
        // Five processes share it: a fresh key admits a fifth.
        local.set_fleet(5);
        local.adjust("j", &open, &[Change::Limit(Quota::per_second(10).unwrap())]);
        assert_eq!(admitted_of_50(&local, "j", &open), 2);
    }

    #[test]
    fn a_pause_seen_in_redis_holds_local_decisions() {
        let local = Local::new(100, Duration::from_secs(3600));
        let quota = [Quota::per_second(100).unwrap()];
        let seen = Seen {
            paused_for: Duration::from_secs(30),
            ..Seen::default()
        };
        let admitted = Decision::Admit(tollgate::store::Admit::now(tollgate::Snapshot::new(
            100,
            99,
            Duration::ZERO,
        )));
        assert!(local.copy("k", &quota, &[1], &admitted, &seen).is_none());
        match local.decide("k", &quota, &[1], Duration::ZERO) {
            Decision::Deny(Denial::RateLimited { snapshot, .. }) => {
                let retry = snapshot.retry_after().unwrap();
                assert!(retry > Duration::from_secs(29), "{retry:?}");
            }
            other => panic!("not held: {other:?}"),
        }
    }
}
