//! The store contract as one suite: [`run`] (or [`Suite`]) checks any
//! [`Store`] against all of it, and panics naming the first check that
//! fails.
//!
//! A store on the process's clock runs it on Tokio's paused time, with
//! exact figures:
//!
//! ```
//! use tollgate::store::{conformance, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! conformance::run(|| async { MemoryStore::new(1_000, 2, tollgate::DefaultClock::new()) }).await;
//! # }
//! ```
//!
//! A store on another clock (a server's `TIME`) runs on the real clock,
//! with a slack that every duration may be off by:
//! `Suite::new(make).slack(Duration::from_millis(250)).run().await`. Its
//! quotas are per hour, so that the time a check takes never changes a
//! count; the checks that wait (moving waiters up, pauses holding
//! waiters) scale their waits to the slack.
//!
//! What it checks: a burst then a denial with the right `retry_after`; a
//! denial writes nothing; a cost of 0 peeks; a cost over the burst is
//! [`Denial::CostExceedsBurst`]; all or nothing across dimensions;
//! reservations and their positions; refunds and charges; `AtMost`; a
//! learnt limit, lowered and raised, and per-key limits; concurrent pauses (the longest wins,
//! release paced) and the reservations they move back; a give-back moving
//! the queue up; bounds over an interval; extreme costs, quotas and keys;
//! and, through a [`KeyedBudget`] over the store, waiters moving forward
//! when one ahead goes away or a grant is refunded, back when a grant is
//! charged more than it reserved, and a pause holding the
//! waiters already queued. A store of one dimension a key
//! (`DirectStore`) runs it with [`Suite::one_dimension`].

#![allow(clippy::panic, clippy::arithmetic_side_effects)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::keyed::KeyedBudget;
use super::limits::Limits;
use super::store::{Change, Decision, Denial, Store, View};
use crate::{Quota, Snapshot};

/// The suite, with its settings.
#[derive(Debug)]
pub struct Suite<F> {
    make: F,
    slack: Duration,
    limits_ttl: Duration,
    two_dimensions: bool,
}

/// Runs the whole suite with exact figures (for a store on Tokio's clock,
/// in a test with paused time). `make` makes a fresh, empty store.
pub async fn run<F, Fut, S>(make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: Store<String> + 'static,
{
    Suite::new(make).run().await;
}

const HOUR: Duration = Duration::from_secs(3600);

fn per_hour(count: u64) -> Quota {
    Quota::new(count, HOUR).unwrap_or_else(|e| panic!("{e}"))
}

/// `count` an hour, evenly spaced (a burst of one), as a client paces.
fn one_at_a_time(count: u64) -> Quota {
    per_hour(count).burst(1).unwrap_or_else(|e| panic!("{e}"))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl<F, Fut, S> Suite<F>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: Store<String> + 'static,
{
    /// The suite over the stores that `make` makes (each fresh and empty).
    pub fn new(make: F) -> Self {
        Self {
            make,
            slack: Duration::ZERO,
            limits_ttl: crate::store::DEFAULT_LIMITS_TTL,
            two_dimensions: true,
        }
    }

    /// For a store that keeps one dimension a key (a
    /// [`DirectStore`](crate::store::DirectStore), which answers an error
    /// for more): the checks of two dimensions are left out, every other
    /// one runs.
    pub fn one_dimension(mut self) -> Self {
        self.two_dimensions = false;
        self
    }

    /// How long the stores `make` makes keep a key's own limits after they
    /// were last set (default a day, [`DEFAULT_LIMITS_TTL`]): the suite
    /// waits that long to see them lapse, so a store on a real clock is
    /// given a short one.
    ///
    /// [`DEFAULT_LIMITS_TTL`]: crate::store::DEFAULT_LIMITS_TTL
    pub fn limits_ttl(mut self, ttl: Duration) -> Self {
        self.limits_ttl = ttl;
        self
    }

    /// How far any duration the store answers may be off (default zero):
    /// the time a round trip takes, and the store's clock resolution.
    pub fn slack(mut self, slack: Duration) -> Self {
        self.slack = slack;
        self
    }

    /// Runs every check, each on a fresh store.
    pub async fn run(mut self) {
        let slack = self.slack;
        let how = (slack, self.two_dimensions);
        Check::new("burst then deny", (self.make)().await, how)
            .burst_then_deny()
            .await;
        Check::new("a denial writes nothing", (self.make)().await, how)
            .denial_writes_nothing()
            .await;
        Check::new("zero cost peeks", (self.make)().await, how)
            .zero_cost_peeks()
            .await;
        Check::new("cost over burst is never", (self.make)().await, how)
            .never()
            .await;
        if self.two_dimensions {
            Check::new("all or nothing", (self.make)().await, how)
                .all_or_nothing()
                .await;
        }
        Check::new("reservations", (self.make)().await, how)
            .reservations()
            .await;
        Check::new("refund and charge", (self.make)().await, how)
            .refund_and_charge()
            .await;
        Check::new("at most", (self.make)().await, how)
            .at_most()
            .await;
        Check::new("observe", (self.make)().await, how)
            .observe()
            .await;
        Check::new("per-key limits", (self.make)().await, how)
            .per_key_limits()
            .await;
        Check::new(
            "a changed limit keeps what is spent",
            (self.make)().await,
            how,
        )
        .changed_limit()
        .await;
        if self.two_dimensions {
            Check::new("concurrent pauses", (self.make)().await, how)
                .concurrent_pauses()
                .await;
        }
        Check::new("a pause moves reservations", (self.make)().await, how)
            .pause_moves_reservations()
            .await;
        if self.two_dimensions {
            Check::new(
                "an open dimension paused, then limited",
                (self.make)().await,
                how,
            )
            .open_then_limited()
            .await;
        }
        Check::new(
            "a refund does not reach into a pause",
            (self.make)().await,
            how,
        )
        .refund_in_pause()
        .await;
        Check::new("own limits lapse", (self.make)().await, how)
            .limits_lapse(self.limits_ttl)
            .await;
        Check::new("give back", (self.make)().await, how)
            .give_back()
            .await;
        Check::new("bounds over an interval", (self.make)().await, how)
            .bounds()
            .await;
        Check::new("extremes", (self.make)().await, how)
            .extremes()
            .await;
        let unit = (slack * 8).max(secs(1));
        engine_cancel_moves_up((self.make)().await, unit, slack).await;
        engine_refund_moves_up((self.make)().await, unit, slack).await;
        engine_charge_moves_back((self.make)().await, unit, slack).await;
        engine_pause_holds_waiters((self.make)().await, unit, slack).await;
    }
}

struct Check<S> {
    name: &'static str,
    store: Arc<S>,
    slack: Duration,
    /// Whether the checks of two dimensions run.
    two: bool,
}

impl<S: Store<String> + 'static> Check<S> {
    fn new(name: &'static str, store: S, (slack, two): (Duration, bool)) -> Self {
        Self {
            name,
            store: Arc::new(store),
            slack,
            two,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!("store conformance, {}: {what}", self.name)
    }

    fn near(&self, what: &str, got: Duration, want: Duration) {
        let off = got.abs_diff(want);
        if off > self.slack {
            self.fail(&format!(
                "{what}: got {got:?}, want {want:?} (± {:?})",
                self.slack
            ));
        }
    }

    fn equal<T: PartialEq + std::fmt::Debug>(&self, what: &str, got: T, want: T) {
        if got != want {
            self.fail(&format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    async fn decide(&self, key: &str, limits: &[Quota], costs: &[u64], wait: Duration) -> Decision {
        match self
            .store
            .decide(&key.to_owned(), limits, costs, wait)
            .await
        {
            Ok(decision) => decision,
            Err(e) => self.fail(&format!("decide failed: {e}")),
        }
    }

    async fn adjust(&self, key: &str, limits: &[Quota], changes: &[Change]) {
        if let Err(e) = self.store.adjust(&key.to_owned(), limits, changes).await {
            self.fail(&format!("adjust {changes:?} failed: {e}"));
        }
    }

    async fn read(&self, key: &str, limits: &[Quota]) -> View {
        match self.store.read(&key.to_owned(), limits).await {
            Ok(view) => view,
            Err(e) => self.fail(&format!("read failed: {e}")),
        }
    }

    async fn remaining(&self, key: &str, limits: &[Quota]) -> Vec<u64> {
        let view = self.read(key, limits).await;
        view.snapshots.iter().map(Snapshot::remaining).collect()
    }

    /// Admits at once, or fails the check.
    async fn admit(&self, key: &str, limits: &[Quota], costs: &[u64]) -> Snapshot {
        match self.decide(key, limits, costs, Duration::ZERO).await {
            Decision::Admit(admit) => {
                self.near("an admission's wait", admit.wait, Duration::ZERO);
                admit.snapshot
            }
            other => self.fail(&format!("{costs:?} for {key:?} not admitted: {other:?}")),
        }
    }

    /// Reserves, or fails the check; answers the admission.
    async fn reserve(&self, key: &str, limits: &[Quota], costs: &[u64]) -> super::store::Admit {
        match self.decide(key, limits, costs, HOUR).await {
            Decision::Admit(admit) => admit,
            other => self.fail(&format!("{costs:?} for {key:?} not reserved: {other:?}")),
        }
    }

    /// Denied (within `wait`), or fails the check; answers the dimension
    /// and snapshot.
    async fn deny(
        &self,
        key: &str,
        limits: &[Quota],
        costs: &[u64],
        wait: Duration,
    ) -> (usize, Snapshot) {
        match self.decide(key, limits, costs, wait).await {
            Decision::Deny(Denial::RateLimited {
                dimension,
                snapshot,
            }) => (dimension, snapshot),
            other => self.fail(&format!("{costs:?} for {key:?} not denied: {other:?}")),
        }
    }

    async fn burst_then_deny(&self) {
        let q = [per_hour(10)];
        for i in 0..10u64 {
            let snapshot = self.admit("b", &q, &[1]).await;
            self.equal("remaining after an admission", snapshot.remaining(), 9 - i);
            self.equal("limit", snapshot.limit(), 10);
        }
        let (dimension, snapshot) = self.deny("b", &q, &[1], Duration::ZERO).await;
        self.equal("blocking dimension", dimension, 0);
        self.equal("remaining when denied", snapshot.remaining(), 0);
        let retry = snapshot.retry_after().unwrap_or_default();
        self.near("retry_after of the 11th", retry, secs(360));
        // Another key is untouched.
        self.admit("b2", &q, &[10]).await;
    }

    async fn denial_writes_nothing(&self) {
        let q = [per_hour(10)];
        self.admit("d", &q, &[7]).await;
        let (_, snapshot) = self.deny("d", &q, &[5], Duration::ZERO).await;
        self.near(
            "retry_after of 5 with 3 left",
            snapshot.retry_after().unwrap_or_default(),
            secs(720),
        );
        self.deny("d", &q, &[5], secs(700)).await;
        self.equal(
            "remaining after denials",
            self.remaining("d", &q).await,
            vec![3],
        );
        self.admit("d", &q, &[3]).await;
    }

    async fn zero_cost_peeks(&self) {
        let q = [per_hour(10)];
        self.admit("z", &q, &[2]).await;
        let snapshot = self.admit("z", &q, &[0]).await;
        self.equal("remaining seen by a cost of 0", snapshot.remaining(), 8);
        self.equal(
            "remaining after a cost of 0",
            self.remaining("z", &q).await,
            vec![8],
        );
        // A cost of 0 is admitted even when nothing remains.
        self.admit("z", &q, &[8]).await;
        self.admit("z", &q, &[0]).await;
    }

    async fn never(&self) {
        let q = [per_hour(10)];
        for cost in [11, u64::MAX] {
            match self.decide("n", &q, &[cost], HOUR).await {
                Decision::Deny(Denial::CostExceedsBurst {
                    dimension: 0,
                    snapshot,
                }) => {
                    self.equal("limit of a Never", snapshot.limit(), 10);
                }
                other => self.fail(&format!("a cost of {cost} over a burst of 10: {other:?}")),
            }
        }
        self.equal(
            "remaining after Never",
            self.remaining("n", &q).await,
            vec![10],
        );
    }

    async fn all_or_nothing(&self) {
        let q = [per_hour(10), per_hour(100)];
        self.admit("a", &q, &[1, 95]).await;
        let (dimension, _) = self.deny("a", &q, &[1, 10], Duration::ZERO).await;
        self.equal("blocking dimension", dimension, 1);
        self.equal(
            "remaining after a denial",
            self.remaining("a", &q).await,
            vec![9, 5],
        );
        self.admit("a", &q, &[1, 5]).await;
        self.admit("a", &q, &[0, 0]).await;
        match self.decide("a", &q, &[1, 101], HOUR).await {
            Decision::Deny(Denial::CostExceedsBurst { dimension: 1, .. }) => {}
            other => self.fail(&format!(
                "101 over a burst of 100 in dimension 1: {other:?}"
            )),
        }
        self.equal(
            "remaining at the end",
            self.remaining("a", &q).await,
            vec![8, 0],
        );
    }

    async fn reservations(&self) {
        let q = [per_hour(10)];
        self.admit("r", &q, &[10]).await;
        let first = self.reserve("r", &q, &[1]).await;
        self.near("first reservation's wait", first.wait, secs(360));
        self.near("first reservation's due", first.place.due(0), secs(360));
        self.near("a unit's step", first.place.step(0), secs(360));
        let second = self.reserve("r", &q, &[1]).await;
        self.near("second reservation's wait", second.wait, secs(720));
        let (_, snapshot) = self.deny("r", &q, &[1], secs(500)).await;
        self.near(
            "retry_after beyond the wait allowed",
            snapshot.retry_after().unwrap_or_default(),
            secs(1080),
        );
        let third = self.reserve("r", &q, &[1]).await;
        self.near("third reservation's wait", third.wait, secs(1080));
        if !self.two {
            return;
        }
        // Each dimension's position.
        let q2 = [per_hour(10), per_hour(100)];
        self.admit("r2", &q2, &[10, 0]).await;
        let admit = self.reserve("r2", &q2, &[1, 1]).await;
        self.near("wait of two dimensions", admit.wait, secs(360));
        self.near("due in the full dimension", admit.place.due(0), secs(360));
        self.near(
            "due in the dimension with room",
            admit.place.due(1),
            Duration::ZERO,
        );
        self.near("step of 100/h", admit.place.step(1), secs(36));
    }

    async fn refund_and_charge(&self) {
        let q = [per_hour(10)];
        self.admit("s", &q, &[10]).await;
        self.adjust("s", &q, &[Change::Refund(4)]).await;
        self.equal(
            "remaining after a refund",
            self.remaining("s", &q).await,
            vec![4],
        );
        self.adjust("s", &q, &[Change::Charge(6)]).await;
        self.equal(
            "remaining after a charge",
            self.remaining("s", &q).await,
            vec![0],
        );
        let (_, snapshot) = self.deny("s", &q, &[1], Duration::ZERO).await;
        self.near(
            "retry_after with 2 owed beyond the burst",
            snapshot.retry_after().unwrap_or_default(),
            secs(1080),
        );
        self.adjust("s", &q, &[Change::Refund(u64::MAX)]).await;
        self.equal(
            "remaining after a huge refund",
            self.remaining("s", &q).await,
            vec![10],
        );
        self.adjust("s", &q, &[Change::Keep]).await;
        self.equal(
            "remaining after Keep",
            self.remaining("s", &q).await,
            vec![10],
        );
    }

    async fn at_most(&self) {
        let q = [per_hour(10)];
        self.adjust("m", &q, &[Change::AtMost(3)]).await;
        self.equal(
            "remaining after AtMost(3)",
            self.remaining("m", &q).await,
            vec![3],
        );
        self.adjust("m", &q, &[Change::AtMost(5)]).await;
        self.equal(
            "remaining after AtMost(5)",
            self.remaining("m", &q).await,
            vec![3],
        );
        self.adjust("m", &q, &[Change::AtMost(u64::MAX)]).await;
        self.equal(
            "remaining after AtMost(max)",
            self.remaining("m", &q).await,
            vec![3],
        );
        self.admit("m", &q, &[3]).await;
        self.deny("m", &q, &[1], Duration::ZERO).await;
    }

    async fn observe(&self) {
        let q = [per_hour(10)];
        let observe = |limit, remaining| [Change::Observe { limit, remaining }];
        self.adjust("o", &q, &observe(20, 15)).await;
        let view = self.read("o", &q).await;
        self.equal("learnt limit", view.limits.clone(), vec![per_hour(20)]);
        self.equal("learnt snapshot's limit", view.snapshots[0].limit(), 20);
        self.equal(
            "remaining after observing 15",
            view.snapshots[0].remaining(),
            15,
        );
        self.adjust("o", &q, &observe(0, 12)).await;
        let view = self.read("o", &q).await;
        self.equal(
            "limit after an unstated one",
            view.limits.clone(),
            vec![per_hour(20)],
        );
        self.equal(
            "remaining after observing 12",
            view.snapshots[0].remaining(),
            12,
        );
        // Lowered: the 8 spent stay spent, 3 beyond the new limit of 5.
        self.adjust("o", &q, &observe(5, 5)).await;
        let view = self.read("o", &q).await;
        self.equal("lowered limit", view.limits.clone(), vec![per_hour(5)]);
        self.equal(
            "remaining under the lowered limit",
            view.snapshots[0].remaining(),
            0,
        );
        let (_, snapshot) = self.deny("o", &q, &[1], Duration::ZERO).await;
        self.equal("limit of a denial", snapshot.limit(), 5);
        self.near(
            "retry_after with 8 spent of 5",
            snapshot.retry_after().unwrap_or_default(),
            secs(2880),
        );
        self.adjust("o", &q, &[Change::Unlimit]).await;
        self.equal(
            "limit after Unlimit",
            self.read("o", &q).await.limits,
            q.to_vec(),
        );
    }

    async fn per_key_limits(&self) {
        let q = [per_hour(10)];
        self.adjust("k1", &q, &[Change::Limit(per_hour(2))]).await;
        self.equal(
            "own limit",
            self.read("k1", &q).await.limits,
            vec![per_hour(2)],
        );
        self.admit("k1", &q, &[2]).await;
        self.deny("k1", &q, &[1], Duration::ZERO).await;
        self.admit("k2", &q, &[10]).await;
        self.adjust("k1", &q, &[Change::Unlimit]).await;
        self.equal(
            "default again",
            self.read("k1", &q).await.limits,
            q.to_vec(),
        );
        // A limit kept while the key is full: it outlives the TATs.
        self.adjust("k3", &q, &[Change::Limit(per_hour(1))]).await;
        self.admit("k3", &q, &[1]).await;
        self.deny("k3", &q, &[1], Duration::ZERO).await;
    }

    async fn changed_limit(&self) {
        let q = [per_hour(10)];
        self.admit("c", &q, &[10]).await;
        // 10 spent of 20: 10 remain.
        self.adjust("c", &q, &[Change::Limit(per_hour(20))]).await;
        self.equal(
            "remaining once raised",
            self.remaining("c", &q).await,
            vec![10],
        );
        // 10 spent of 5: none remain, and 5 more must refill first.
        self.adjust("c", &q, &[Change::Limit(per_hour(5))]).await;
        let (_, snapshot) = self.deny("c", &q, &[1], Duration::ZERO).await;
        self.near(
            "retry_after once lowered",
            snapshot.retry_after().unwrap_or_default(),
            secs(4320),
        );
        // Back to 10 an hour: 10 spent of 10.
        self.adjust("c", &q, &[Change::Unlimit]).await;
        let (_, snapshot) = self.deny("c", &q, &[1], Duration::ZERO).await;
        self.near(
            "retry_after at the default again",
            snapshot.retry_after().unwrap_or_default(),
            secs(360),
        );
        // Reservations are re-spaced too.
        self.admit("c2", &q, &[10]).await;
        let queued = self.reserve("c2", &q, &[1]).await;
        self.near("a reservation at 10 an hour", queued.wait, secs(360));
        self.adjust("c2", &q, &[Change::Limit(per_hour(20))]).await;
        let next = self.reserve("c2", &q, &[1]).await;
        // 11 spent of 20 at 180 s each: the next is due at once.
        self.near("the next once raised", next.wait, Duration::ZERO);
        self.equal(
            "remaining once raised",
            self.remaining("c2", &q).await,
            vec![8],
        );
        if !self.two {
            return;
        }
        // Beside a dimension too fast to bind, which follows the other
        // back: five calls at 360 s each (admitted at 0, then due at 360
        // to 1,440 s), the first limit doubled: what is reserved ends at
        // 900 s, and so the next is due then, not near 1,440 s, where the
        // old spacing put the fast dimension's admissions.
        let fast = Quota::per_second(1_000_000).unwrap_or_else(|e| panic!("{e}"));
        let q = [unit_quota(secs(360), 1), fast];
        self.admit("c3", &q, &[1, 1]).await;
        for n in 1..5 {
            let queued = self.reserve("c3", &q, &[1, 1]).await;
            self.near("a reservation of the five", queued.wait, secs(360 * n));
        }
        let raised = [Change::Limit(unit_quota(secs(180), 1)), Change::Keep];
        self.adjust("c3", &q, &raised).await;
        let next = self.reserve("c3", &q, &[1, 1]).await;
        self.near("the next beside a fast dimension", next.wait, secs(900));
        // Beside a bounded dimension that had room at every admission (10
        // units of a 100 s capacity, one a second): its debt is where the
        // first put its admissions, so it follows them back too. Without,
        // its TAT at 1,450 s would put the next at 1,360 s.
        let q = [unit_quota(secs(360), 1), unit_quota(secs(1), 100)];
        self.admit("c4", &q, &[1, 10]).await;
        for n in 1..5 {
            let queued = self.reserve("c4", &q, &[1, 10]).await;
            self.near("a reservation of the five", queued.wait, secs(360 * n));
        }
        let raised = [Change::Limit(unit_quota(secs(180), 1)), Change::Keep];
        self.adjust("c4", &q, &raised).await;
        let next = self.reserve("c4", &q, &[1, 10]).await;
        self.near("the next beside a roomy dimension", next.wait, secs(900));
        // A refund moves a queue too: two reservations queued behind a
        // first grant (at 360 and 720 s, where a token dimension of 10
        // units at 36 s each put them), beside a dimension too fast to
        // bind, charged at those instants. The first grant refunded whole,
        // twice, the tokens put the next at 360 s, and the fast dimension,
        // refunded too, follows them back: left at 720 s, it would hold
        // the next there.
        let fast = Quota::per_second(1_000_000).unwrap_or_else(|e| panic!("{e}"));
        let q2 = [unit_quota(secs(36), 10), fast];
        self.admit("c8", &q2, &[10, 1]).await;
        for n in 1..3 {
            let queued = self.reserve("c8", &q2, &[10, 1]).await;
            self.near("a reservation of the two", queued.wait, secs(360 * n));
        }
        let refund = [Change::Refund(10), Change::Refund(1)];
        self.adjust("c8", &q2, &refund).await;
        self.adjust("c8", &q2, &refund).await;
        let next = self.reserve("c8", &q2, &[10, 1]).await;
        self.near("the next once refunded twice", next.wait, secs(360));
        // A bounded dimension charged at those instants (one request every
        // 100 s) stays where it is: from its state alone, it may have
        // spaced the queue itself.
        let q = [unit_quota(secs(100), 1), unit_quota(secs(36), 10)];
        self.admit("c7", &q, &[1, 10]).await;
        for n in 1..3 {
            let queued = self.reserve("c7", &q, &[1, 10]).await;
            self.near("a reservation of the two", queued.wait, secs(360 * n));
        }
        self.adjust("c7", &q, &[Change::Keep, Change::Refund(10)])
            .await;
        let next = self.reserve("c7", &q, &[1, 10]).await;
        self.near("the next beside a kept dimension", next.wait, secs(820));
        // Beside a dimension that spaced the queue itself (one every 720 s
        // against 360): it stays where it is, and so does the next.
        let q = [unit_quota(secs(360), 1), unit_quota(secs(720), 1)];
        self.admit("c5", &q, &[1, 1]).await;
        for n in 1..4 {
            let queued = self.reserve("c5", &q, &[1, 1]).await;
            self.near("a reservation of the four", queued.wait, secs(720 * n));
        }
        self.adjust("c5", &q, &raised).await;
        let next = self.reserve("c5", &q, &[1, 1]).await;
        self.near("the next beside a binding dimension", next.wait, secs(2880));
    }

    async fn concurrent_pauses(&self) {
        let q = [per_hour(10), per_hour(100)];
        let hold = [Change::HoldFor(secs(60)), Change::HoldFor(secs(60))];
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let store = Arc::clone(&self.store);
            tasks.push(tokio::spawn(async move {
                store.adjust(&"p".to_owned(), &q, &hold).await.is_ok()
            }));
        }
        for task in tasks {
            if !task.await.unwrap_or(false) {
                self.fail("a concurrent pause failed");
            }
        }
        let view = self.read("p", &q).await;
        self.near(
            "paused for, after 64 pauses of 60 s",
            view.paused_for,
            secs(60),
        );
        self.near("held, after 64 pauses of 60 s", view.held, secs(60));
        self.adjust(
            "p",
            &q,
            &[Change::HoldFor(secs(30)), Change::HoldFor(secs(30))],
        )
        .await;
        let view = self.read("p", &q).await;
        self.near(
            "paused for, after a shorter pause",
            view.paused_for,
            secs(60),
        );
        self.near("held, after a shorter pause", view.held, secs(60));
        self.adjust(
            "p",
            &q,
            &[Change::HoldFor(secs(120)), Change::HoldFor(secs(120))],
        )
        .await;
        let view = self.read("p", &q).await;
        self.near(
            "paused for, after a longer pause",
            view.paused_for,
            secs(120),
        );
        self.near("held, after a longer pause", view.held, secs(120));
        // Released one by one, at the rate.
        let first = self.reserve("p", &q, &[1, 1]).await;
        self.near("first after the pause", first.wait, secs(120));
        self.near("its held", first.place.held(), secs(120));
        let second = self.reserve("p", &q, &[1, 1]).await;
        self.near("second after the pause", second.wait, secs(480));
    }

    async fn pause_moves_reservations(&self) {
        let q = [per_hour(10)];
        self.admit("pr", &q, &[10]).await;
        let before = self.reserve("pr", &q, &[1]).await;
        self.near("reservation before the pause", before.wait, secs(360));
        self.adjust("pr", &q, &[Change::HoldFor(secs(60))]).await;
        let view = self.read("pr", &q).await;
        self.near("held, seen by the earlier waiter", view.held, secs(60));
        let after = self.reserve("pr", &q, &[1]).await;
        self.near("reservation after the pause", after.wait, secs(780));
        self.near("its held", after.place.held(), secs(60));
    }

    /// A provider that states no limits: the request dimension is open (a
    /// billion a second, which never binds) until a rate is learnt. A
    /// refusal pauses the key, what remains is read as none, then the
    /// learnt rate arrives: the debt of the open dimension is at most its
    /// real capacity (a second), never a thousand times it (a store that
    /// rounds the open interval up to a microsecond and counts its burst
    /// at that interval would hold the next call for a thousand seconds).
    async fn open_then_limited(&self) {
        let open = Quota::per_second(1_000_000_000).unwrap_or_else(|e| panic!("{e}"));
        let q = [open, open];
        self.adjust("o", &q, &[Change::HoldFor(secs(60)), Change::Keep])
            .await;
        self.adjust("o", &q, &[Change::Keep, Change::AtMost(0)])
            .await;
        self.adjust(
            "o",
            &q,
            &[
                Change::Limit(one_at_a_time(600)),
                Change::Limit(one_at_a_time(6_000)),
            ],
        )
        .await;
        let admit = self.reserve("o", &q, &[1, 1]).await;
        if admit.wait > secs(66) + self.slack {
            self.fail(&format!(
                "a learnt limit after a pause of 60 s holds the next call for {:?}",
                admit.wait
            ));
        }
        let view = self.read("o", &q).await;
        self.near("paused for", view.paused_for, secs(60));
    }

    /// Refusals that come together: each call is refunded and pauses
    /// the key. The refunds move the TAT back, but the next admission is
    /// still no sooner than the pause's end.
    async fn refund_in_pause(&self) {
        let q = [one_at_a_time(60)];
        self.admit("rp", &q, &[1]).await;
        let second = self.reserve("rp", &q, &[1]).await;
        self.near("the second reservation", second.wait, secs(60));
        // Four calls refused at once, admitted before: each is refunded.
        self.adjust("rp", &q, &[Change::HoldFor(secs(30))]).await;
        for _ in 0..4 {
            self.adjust("rp", &q, &[Change::Refund(1)]).await;
        }
        let next = self.reserve("rp", &q, &[1]).await;
        if next.wait + self.slack < secs(30) {
            self.fail(&format!(
                "refunds moved an admission into a pause of 30 s: due in {:?}",
                next.wait
            ));
        }
        self.near("the next, when the pause ends", next.wait, secs(30));
    }

    /// A key's own limit, set then learnt, lasts `ttl` after it was last
    /// set; then the default applies again.
    async fn limits_lapse(&self, ttl: Duration) {
        let q = [per_hour(10)];
        self.adjust("lapse", &q, &[Change::Limit(per_hour(5))])
            .await;
        let half = ttl / 2;
        tokio::time::sleep(half).await;
        // Set again (learnt): it lasts `ttl` from now.
        self.adjust(
            "lapse",
            &q,
            &[Change::Observe {
                limit: 7,
                remaining: 7,
            }],
        )
        .await;
        tokio::time::sleep(half + self.slack).await;
        self.equal(
            "the learnt limit, a full ttl after the first was set",
            self.read("lapse", &q).await.limits,
            vec![per_hour(7)],
        );
        tokio::time::sleep(ttl - half + self.slack).await;
        self.equal(
            "the default, once the learnt limit lapsed",
            self.read("lapse", &q).await.limits,
            vec![per_hour(10)],
        );
    }

    async fn give_back(&self) {
        let q = [per_hour(10)];
        self.admit("g", &q, &[10]).await;
        self.reserve("g", &q, &[1]).await;
        self.reserve("g", &q, &[1]).await;
        self.store.give_back(&"g".to_owned(), &q, &[1]);
        // A network store may give back in the background: wait for it.
        let deadline = Instant::now() + secs(5);
        loop {
            let view = self.read("g", &q).await;
            if view.snapshots[0].reset_after() <= secs(3600 + 360) + self.slack {
                break;
            }
            if Instant::now() >= deadline {
                self.fail("the give-back never reached the store");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let next = self.reserve("g", &q, &[1]).await;
        self.near("a reservation after a give-back", next.wait, secs(720));
    }

    async fn bounds(&self) {
        let q = [per_hour(100)];
        let start = Instant::now();
        let mut admitted = 0u64;
        for i in 0..300u64 {
            let cost = 1 + i % 3;
            if let Decision::Admit(_) = self.decide("i", &q, &[cost], Duration::ZERO).await {
                admitted += cost;
            }
        }
        let elapsed = start.elapsed() + self.slack;
        let bound = 100 + elapsed.as_secs() / 36 + 1;
        if admitted > bound {
            self.fail(&format!("admitted {admitted} where at most {bound} fit"));
        }
        if admitted < 98 {
            self.fail(&format!("admitted {admitted} of a burst of 100"));
        }
    }

    async fn extremes(&self) {
        // One unit a nanosecond, the smallest interval.
        let fast = [Quota::new(1_000_000_000, secs(1)).unwrap_or_else(|e| panic!("{e}"))];
        self.admit("x", &fast, &[1]).await;
        let _ = self.decide("x", &fast, &[1_000_000_000], HOUR).await;
        self.adjust("x", &fast, &[Change::Charge(u64::MAX)]).await;
        self.deny("x", &fast, &[1], Duration::ZERO).await;
        self.adjust("x", &fast, &[Change::HoldFor(Duration::MAX)])
            .await;
        let _ = self.decide("x", &fast, &[1], Duration::MAX).await;
        self.adjust("x", &fast, &[Change::AtMost(0)]).await;
        let _ = self.read("x", &fast).await;
        // The longest period a quota takes.
        let slow = [Quota::new(1, Duration::from_secs(290 * 365 * 86_400))
            .unwrap_or_else(|e| panic!("{e}"))];
        self.admit("y", &slow, &[1]).await;
        let (_, snapshot) = self.deny("y", &slow, &[1], Duration::ZERO).await;
        if snapshot.retry_after().is_none() {
            self.fail("a denial under the longest quota has no retry_after");
        }
        let _ = self.decide("y", &slow, &[1], Duration::MAX).await;
        // More changes than limits, where a store takes more than one.
        let charge = [Change::Charge(u64::MAX), Change::Keep];
        let changes = if self.two { &charge[..] } else { &charge[..1] };
        self.adjust("y", &slow, changes).await;
        // Keys of any size and content, each its own.
        let q = [per_hour(1)];
        let long = "k".repeat(100_000);
        for key in ["", "\0", "{tag}", long.as_str(), "é\u{1F600}"] {
            self.admit(key, &q, &[1]).await;
            self.deny(key, &q, &[1], Duration::ZERO).await;
        }
        self.admit("kk", &q, &[1]).await;
    }
}

fn budget<S: Store<String>>(store: S, quota: Quota) -> Arc<KeyedBudget<String, S>> {
    Arc::new(KeyedBudget::with_store(Limits::single(quota), store))
}

fn unit_quota(unit: Duration, burst: u64) -> Quota {
    Quota::with_period(unit)
        .and_then(|q| q.burst(burst))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn near(check: &str, what: &str, got: Duration, want: Duration, slack: Duration) {
    if got.abs_diff(want) > slack {
        panic!("store conformance, {check}: {what}: got {got:?}, want {want:?} (± {slack:?})");
    }
}

/// Spawns an acquire of `cost` and answers how long it took.
fn spawn_acquire<S: Store<String> + 'static>(
    budget: &Arc<KeyedBudget<String, S>>,
    cost: u64,
) -> tokio::task::JoinHandle<Option<Duration>> {
    let budget = Arc::clone(budget);
    tokio::spawn(async move {
        let start = Instant::now();
        budget.acquire(&"w".to_owned(), &[cost]).await.ok()?;
        Some(start.elapsed())
    })
}

/// Lets spawned acquires reach their store and queue.
async fn settle_in(budget: &KeyedBudget<String, impl Store<String>>, waiting: usize) {
    // Yields first, so that on paused time no instant passes.
    for _ in 0..10_000 {
        if budget.waiting() >= waiting {
            return;
        }
        tokio::task::yield_now().await;
    }
    let deadline = Instant::now() + secs(5);
    while budget.waiting() < waiting && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn engine_cancel_moves_up<S: Store<String> + 'static>(
    store: S,
    unit: Duration,
    slack: Duration,
) {
    const CHECK: &str = "a cancelled waiter moves those behind it up";
    let budget = budget(store, unit_quota(unit, 1));
    let key = "w".to_owned();
    if budget.try_acquire(&key, &[1]).await.is_err() {
        panic!("store conformance, {CHECK}: the first unit was not admitted");
    }
    let first = spawn_acquire(&budget, 1);
    settle_in(&budget, 1).await;
    let second = spawn_acquire(&budget, 1);
    settle_in(&budget, 2).await;
    let third = spawn_acquire(&budget, 1);
    settle_in(&budget, 3).await;
    first.abort();
    let second = second.await.ok().flatten();
    let third = third.await.ok().flatten();
    let (Some(second), Some(third)) = (second, third) else {
        panic!("store conformance, {CHECK}: a waiter failed");
    };
    near(CHECK, "the second waiter", second, unit, slack * 2);
    near(CHECK, "the third waiter", third, unit * 2, slack * 2);
}

async fn engine_refund_moves_up<S: Store<String> + 'static>(
    store: S,
    unit: Duration,
    slack: Duration,
) {
    // Refunded whole: the waiter goes at once.
    engine_settle_moves(
        "a refund moves the waiters up",
        store,
        unit,
        0,
        Duration::ZERO,
        slack,
    )
    .await;
}

async fn engine_charge_moves_back<S: Store<String> + 'static>(
    store: S,
    unit: Duration,
    slack: Duration,
) {
    // The burst used 4, not 2: the waiter goes where it would have, had
    // the grant reserved 4.
    engine_settle_moves(
        "a charge moves the waiters back",
        store,
        unit,
        4,
        unit * 3,
        slack,
    )
    .await;
}

/// A burst of 2 (one a `unit`) admitted, one waiter queued behind it (due at
/// one unit), the burst settled at `used`: the waiter goes at `want`.
async fn engine_settle_moves<S: Store<String> + 'static>(
    check: &str,
    store: S,
    unit: Duration,
    used: u64,
    want: Duration,
    slack: Duration,
) {
    let budget = budget(store, unit_quota(unit, 2));
    let key = "w".to_owned();
    let Ok(grant) = budget.try_acquire(&key, &[2]).await else {
        panic!("store conformance, {check}: the burst was not admitted");
    };
    let waiter = spawn_acquire(&budget, 1);
    settle_in(&budget, 1).await;
    if budget.settle(&key, grant, &[used]).await.is_err() {
        panic!("store conformance, {check}: settle failed");
    }
    let Some(waited) = waiter.await.ok().flatten() else {
        panic!("store conformance, {check}: the waiter failed");
    };
    near(
        check,
        &format!("the waiter after settling at {used}"),
        waited,
        want,
        slack * 2,
    );
}

async fn engine_pause_holds_waiters<S: Store<String> + 'static>(
    store: S,
    unit: Duration,
    slack: Duration,
) {
    const CHECK: &str = "a pause holds the waiters already queued";
    let budget = budget(store, unit_quota(unit, 1));
    let key = "w".to_owned();
    if budget.try_acquire(&key, &[1]).await.is_err() {
        panic!("store conformance, {CHECK}: the first unit was not admitted");
    }
    let waiter = spawn_acquire(&budget, 1);
    settle_in(&budget, 1).await;
    if budget.pause_for(&key, unit * 3).await.is_err() {
        panic!("store conformance, {CHECK}: pause failed");
    }
    let Some(waited) = waiter.await.ok().flatten() else {
        panic!("store conformance, {CHECK}: the waiter failed");
    };
    // Due at one unit, moved back by the pause's three.
    near(CHECK, "the waiter", waited, unit * 4, slack * 2);
}
