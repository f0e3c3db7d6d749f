//! The algorithms against the bounds they promise, and against each other.

use proptest::prelude::*;

use super::*;
use crate::Quota;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn quota(text: &str) -> Quota {
    text.parse().unwrap()
}

fn admit<A: StateMachine>(alg: &A, state: &mut A::State, now: u64, cost: u64) -> bool {
    match alg.decide(state, now, cost, 0) {
        Outcome::Admit { state: next, due } => {
            assert_eq!(due, now);
            *state = next;
            true
        }
        _ => false,
    }
}

/// The seed's leaky bucket: 4 requests per 2 s with a burst of 4. After
/// four requests the bucket holds 4; one second of leaking takes it to 2.
#[test]
fn seed_leaky_bucket_4_per_2s_leaks_to_2_after_1s() {
    let alg = LeakyBucket::new(&quota("4/2s burst 4"));
    let mut state = alg.full();
    for _ in 0..4 {
        assert!(admit(&alg, &mut state, 0, 1));
    }
    assert_eq!(alg.level(&state, 0), 4);
    assert!(!admit(&alg, &mut state, 0, 1));
    assert_eq!(alg.level(&state, SEC), 2);
    assert_eq!(alg.snapshot(&state, SEC).remaining(), 2);
    assert!(admit(&alg, &mut state, SEC, 1));
    assert!(admit(&alg, &mut state, SEC, 1));
    assert!(!admit(&alg, &mut state, SEC, 1));
    assert_eq!(alg.level(&state, 3 * SEC), 0);
}

/// The seed's GCRA: 3 requests per 1.5 s. Three go at once, then one every
/// half second.
#[test]
fn seed_gcra_3_per_1500ms() {
    let alg = Gcra::new(&quota("3/1.5s"));
    let mut tat = alg.full();
    for _ in 0..3 {
        assert!(admit(&alg, &mut tat, 0, 1));
    }
    assert_eq!(
        alg.decide(&tat, 0, 1, 0),
        Outcome::Deny {
            retry_after: 500 * MS
        }
    );
    assert!(!admit(&alg, &mut tat, 499 * MS, 1));
    assert!(admit(&alg, &mut tat, 500 * MS, 1));
    assert!(!admit(&alg, &mut tat, 999 * MS, 1));
    assert!(admit(&alg, &mut tat, 1000 * MS, 1));
    let snapshot = alg.snapshot(&tat, 1000 * MS);
    assert_eq!((snapshot.limit(), snapshot.remaining()), (3, 0));
    assert_eq!(snapshot.reset_after().as_millis(), 1500);
}

/// The seed's LLM token limit: 100,000 tokens per second, fed requests of
/// 5,000 to 30,000 tokens, each waiting for its slot. Every request is due
/// exactly when the tokens before it, less the burst, have been paid for.
#[test]
fn seed_llm_tokens_100k_per_second() {
    fn feed<A: StateMachine>(alg: &A, interval: u64) -> u64 {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut state = alg.full();
        let mut spent = 0u64;
        let mut due = 0;
        for _ in 0..200 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let cost = 5_000 + rng % 25_001;
            let Outcome::Admit {
                state: next,
                due: at,
            } = alg.decide(&state, 0, cost, u64::MAX)
            else {
                panic!("an unbounded wait must admit");
            };
            state = next;
            spent += cost;
            assert_eq!(at, spent.saturating_sub(100_000) * interval);
            due = at;
        }
        due
    }
    let q = quota("100000/s");
    assert_eq!(q.interval_ns(), 10_000);
    let last = feed(&Gcra::new(&q), q.interval_ns());
    assert_eq!(feed(&TokenBucket::new(&q), q.interval_ns()), last);
    assert_eq!(feed(&LeakyBucket::new(&q), q.interval_ns()), last);
    // 200 requests of 17,500 tokens on average: about 34 s of tokens.
    assert!((30 * SEC..40 * SEC).contains(&last), "{last}");
}

/// One step of a generated workload: wait `dt`, then ask for `cost`, either
/// now only or waiting up to `max_wait`; or give back the reservation made
/// `cancel` steps ago, if it is still outstanding.
#[derive(Clone, Debug)]
struct Step {
    dt: u64,
    cost: u64,
    max_wait: u64,
    cancel: Option<usize>,
}

fn steps(burst: u64, interval: u64) -> impl Strategy<Value = Vec<Step>> {
    let horizon = burst.saturating_mul(interval).max(1);
    let step = (
        prop_oneof![Just(0u64), 0..interval.max(1), 0..horizon.saturating_mul(2)],
        0..=burst + 1,
        prop_oneof![3 => Just(0u64), 1 => 0..horizon.saturating_mul(3), 1 => Just(u64::MAX)],
        prop::option::weighted(0.1, 0usize..8),
    )
        .prop_map(|(dt, cost, max_wait, cancel)| Step {
            dt,
            cost,
            max_wait,
            cancel,
        });
    prop::collection::vec(step, 1..120)
}

fn quotas() -> impl Strategy<Value = Quota> {
    (1u64..50, 1u64..5_000, 0u64..20).prop_filter_map("valid quota", |(count, period_ms, extra)| {
        Quota::new(count, std::time::Duration::from_millis(period_ms))
            .ok()?
            .burst(count.saturating_sub(extra).max(1))
            .ok()
    })
}

/// Admissions as (instant, cost), from running `steps` through `alg`.
/// Reservations count at their due instant; those given back do not count.
fn admissions<A: StateMachine>(alg: &A, steps: &[Step]) -> Vec<(u64, u64)> {
    let mut state = alg.full();
    let mut now = 0u64;
    let mut admitted: Vec<Option<(u64, u64)>> = Vec::new();
    for step in steps {
        now = now.saturating_add(step.dt);
        if let Some(back) = step.cancel {
            // Only a reservation still in the future can be given back.
            if let Some(index) = admitted.len().checked_sub(back + 1) {
                if let Some((due, cost)) = admitted[index] {
                    if due > now {
                        let (next, shift) = alg.cancel(&state, now, cost, due);
                        state = next;
                        admitted[index] = None;
                        // As the limiter's queue does: every later
                        // reservation still waiting moves up.
                        for (later, _) in admitted[index..].iter_mut().flatten() {
                            if *later > now {
                                *later = later.saturating_sub(shift).max(now);
                            }
                        }
                    }
                }
            }
        }
        match alg.decide(&state, now, step.cost, step.max_wait) {
            Outcome::Admit { state: next, due } => {
                assert!(due >= now && due - now <= step.max_wait);
                state = next;
                admitted.push(Some((due, step.cost)));
            }
            Outcome::Deny { retry_after } => {
                assert!(retry_after > step.max_wait);
                admitted.push(None);
            }
            Outcome::Never => admitted.push(None),
        }
    }
    let mut admitted: Vec<_> = admitted.into_iter().flatten().collect();
    admitted.sort_unstable();
    admitted
}

/// The most admitted within `[admitted[i].0, admitted[j].0]`, for every
/// `i ≤ j` that `within` accepts, against `bound(length)`.
fn assert_bound(
    admitted: &[(u64, u64)],
    within: impl Fn(u64) -> bool,
    bound: impl Fn(u64) -> u64,
) -> Result<(), TestCaseError> {
    for i in 0..admitted.len() {
        let mut sum = 0u64;
        for j in i..admitted.len() {
            let length = admitted[j].0 - admitted[i].0;
            if !within(length) {
                break;
            }
            sum += admitted[j].1;
            prop_assert!(
                sum <= bound(length),
                "{sum} admitted in {length} ns from {}; bound {}",
                admitted[i].0,
                bound(length)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// GCRA, token bucket, leaky bucket: never more than
    /// `burst + t / interval` in any interval of length `t`.
    #[test]
    fn bucket_family_never_exceeds_burst_plus_rate(quota in quotas(), steps in steps(20, 10_000_000)) {
        let (burst, interval) = (quota.burst_size(), quota.interval_ns());
        let bound = |length: u64| burst + length / interval;
        assert_bound(&admissions(&Gcra::new(&quota), &steps), |_| true, bound)?;
        assert_bound(&admissions(&TokenBucket::new(&quota), &steps), |_| true, bound)?;
        assert_bound(&admissions(&LeakyBucket::new(&quota), &steps), |_| true, bound)?;
    }

    /// The sliding window: never more than `burst` in any window-long interval.
    #[test]
    fn sliding_window_never_exceeds_burst_per_window(quota in quotas(), steps in steps(20, 10_000_000)) {
        let window = quota.capacity_ns();
        let burst = quota.burst_size();
        let admitted = admissions(&Window::sliding(&quota), &steps);
        assert_bound(&admitted, |length| length < window, |_| burst)?;
    }

    /// The fixed window: never more than `burst` in one window, and never
    /// more than twice that in any window-long interval.
    #[test]
    fn fixed_window_never_exceeds_its_bounds(quota in quotas(), steps in steps(20, 10_000_000)) {
        let window = quota.capacity_ns();
        let burst = quota.burst_size();
        let admitted = admissions(&Window::fixed(&quota), &steps);
        assert_bound(&admitted, |length| length < window, |_| 2 * burst)?;
        let mut per_window = std::collections::BTreeMap::new();
        for (at, cost) in admitted {
            *per_window.entry(at / window).or_insert(0) += cost;
        }
        for (index, sum) in per_window {
            prop_assert!(sum <= burst, "{sum} admitted in window {index}");
        }
    }

    /// GCRA, the token bucket and the leaky bucket make the same decisions,
    /// with the same snapshots, for the same input.
    #[test]
    fn bucket_family_decides_alike(quota in quotas(), steps in steps(20, 10_000_000)) {
        let gcra = Gcra::new(&quota);
        let token = TokenBucket::new(&quota);
        let leaky = LeakyBucket::new(&quota);
        let (mut g, mut t, mut l) = (gcra.full(), token.full(), leaky.full());
        let mut now = 0u64;
        let mut reserved = Vec::new();
        for step in &steps {
            now = now.saturating_add(step.dt);
            if let Some((due, cost)) = step.cancel.and_then(|_| reserved.pop()) {
                let (g2, gs) = gcra.cancel(&g, now, cost, due);
                let (t2, ts) = token.cancel(&t, now, cost, due);
                let (l2, ls) = leaky.cancel(&l, now, cost, due);
                prop_assert_eq!(gs, ts);
                prop_assert_eq!(gs, ls);
                (g, t, l) = (g2, t2, l2);
            }
            let (og, ot, ol) = (
                gcra.decide(&g, now, step.cost, step.max_wait),
                token.decide(&t, now, step.cost, step.max_wait),
                leaky.decide(&l, now, step.cost, step.max_wait),
            );
            prop_assert_eq!(og.without_state(), ot.without_state(), "at {} cost {}", now, step.cost);
            prop_assert_eq!(og.without_state(), ol.without_state(), "at {} cost {}", now, step.cost);
            if let (Outcome::Admit { state: g2, due }, Outcome::Admit { state: t2, .. }, Outcome::Admit { state: l2, .. }) = (og, ot, ol) {
                (g, t, l) = (g2, t2, l2);
                if due > now && step.cost > 0 {
                    reserved.push((due, step.cost));
                }
            }
            prop_assert_eq!(gcra.snapshot(&g, now), token.snapshot(&t, now));
            prop_assert_eq!(gcra.snapshot(&g, now), leaky.snapshot(&l, now));
        }
    }

    /// No input makes any algorithm panic: extreme instants, costs and waits.
    #[test]
    fn extreme_input_never_panics(
        quota in quotas(),
        inputs in prop::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 1..40),
    ) {
        drive_all(&quota, &inputs);
    }

    /// Near the end of time (instants close to `u64::MAX` ns) with quotas
    /// of a few nanoseconds, every algorithm still answers, and a window
    /// that can never move on denies rather than loops.
    #[test]
    fn instants_near_the_end_of_time_terminate(
        count in 1u64..4,
        period_ns in 1u64..8,
        inputs in prop::collection::vec((0u64..64, 0u64..6, any::<u64>()), 1..40),
    ) {
        let Ok(quota) = Quota::new(count, std::time::Duration::from_nanos(period_ns)) else {
            return Ok(());
        };
        let inputs: Vec<_> = inputs.into_iter().map(|(back, cost, max_wait)| (u64::MAX - back, cost, max_wait)).collect();
        drive_all(&quota, &inputs);
    }
}

/// Runs `(now, cost, max_wait)` inputs through every algorithm: snapshot,
/// decide, give back what was admitted and decide again.
fn drive_all(quota: &Quota, inputs: &[(u64, u64, u64)]) {
    fn drive<A: StateMachine>(alg: &A, inputs: &[(u64, u64, u64)]) {
        let mut state = alg.full();
        for &(now, cost, max_wait) in inputs {
            let _ = alg.snapshot(&state, now).remaining();
            if let Outcome::Admit { state: next, due } = alg.decide(&state, now, cost, max_wait) {
                state = alg.cancel(&next, now, cost, due).0;
                state = alg
                    .decide(&state, now, cost, max_wait)
                    .admitted_state()
                    .unwrap_or(state);
            }
        }
    }
    drive(&Gcra::new(quota), inputs);
    drive(&TokenBucket::new(quota), inputs);
    drive(&LeakyBucket::new(quota), inputs);
    drive(&Window::fixed(quota), inputs);
    drive(&Window::sliding(quota), inputs);
}

#[test]
fn a_full_window_at_the_end_of_time_denies() {
    let quota = Quota::new(1, std::time::Duration::from_nanos(1)).unwrap();
    for window in [Window::fixed(&quota), Window::sliding(&quota)] {
        let now = u64::MAX - 1;
        let Outcome::Admit { state, .. } = window.decide(&window.full(), now, 1, u64::MAX) else {
            panic!("the first unit fits");
        };
        let later = window.decide(&state, u64::MAX, 1, u64::MAX);
        let state = later.admitted_state().unwrap_or(state);
        assert_eq!(
            window.decide(&state, u64::MAX, 1, u64::MAX).without_state(),
            Outcome::Deny {
                retry_after: u64::MAX
            }
        );
    }
}

impl<S: Copy> Outcome<S> {
    fn without_state(self) -> Outcome<()> {
        match self {
            Outcome::Admit { due, .. } => Outcome::Admit { state: (), due },
            Outcome::Deny { retry_after } => Outcome::Deny { retry_after },
            Outcome::Never => Outcome::Never,
        }
    }

    fn admitted_state(self) -> Option<S> {
        match self {
            Outcome::Admit { state, .. } => Some(state),
            _ => None,
        }
    }
}

#[test]
fn windows_count_and_reset() {
    let fixed = Window::fixed(&quota("10/s"));
    let mut state = fixed.full();
    assert!(admit(&fixed, &mut state, 300 * MS, 10));
    assert_eq!(
        fixed.decide(&state, 400 * MS, 1, 0),
        Outcome::Deny {
            retry_after: 600 * MS
        }
    );
    let snapshot = fixed.snapshot(&state, 400 * MS);
    assert_eq!(
        (snapshot.remaining(), snapshot.reset_after().as_millis()),
        (0, 600)
    );
    // A new window starts afresh.
    assert!(admit(&fixed, &mut state, SEC, 10));

    let sliding = Window::sliding(&quota("10/s"));
    let mut state = sliding.full();
    assert!(admit(&sliding, &mut state, 950 * MS, 10));
    // At 1.5 s the admissions of 0.9-1.0 s still count: the window is unsure.
    assert!(!admit(&sliding, &mut state, 1500 * MS, 1));
    // From 2.0 s their sub-window has fully left the window.
    assert_eq!(
        sliding.decide(&state, 1500 * MS, 1, 0),
        Outcome::Deny {
            retry_after: 500 * MS
        }
    );
    assert_eq!(
        sliding
            .snapshot(&state, 1500 * MS)
            .reset_after()
            .as_millis(),
        500
    );
    assert!(admit(&sliding, &mut state, 2 * SEC, 10));
}

#[test]
fn windows_queue_reservations_in_order() {
    let fixed = Window::fixed(&quota("2/s"));
    let mut state = fixed.full();
    let mut dues = Vec::new();
    for _ in 0..5 {
        let Outcome::Admit { state: next, due } = fixed.decide(&state, 0, 1, u64::MAX) else {
            panic!("unbounded wait");
        };
        state = next;
        dues.push(due);
    }
    assert_eq!(dues, [0, 0, SEC, SEC, 2 * SEC]);
    // A check cannot jump the queue, even where the current window has room.
    let (next, shift) = fixed.cancel(&state, 0, 1, 0);
    assert_eq!(shift, 0);
    assert!(matches!(fixed.decide(&next, 0, 1, 0), Outcome::Deny { .. }));
}

#[test]
fn a_cost_above_the_burst_never_fits() {
    let q = quota("10/s burst 5");
    assert_eq!(Gcra::new(&q).decide(&0, 0, 6, u64::MAX), Outcome::Never);
    let t = TokenBucket::new(&q);
    assert_eq!(t.decide(&t.full(), 0, 6, u64::MAX), Outcome::Never);
    let w = Window::sliding(&q);
    assert_eq!(w.decide(&w.full(), 0, 6, u64::MAX), Outcome::Never);
}

#[test]
fn a_cost_of_zero_peeks() {
    let g = Gcra::new(&quota("10/s"));
    let tat = 5 * SEC;
    assert_eq!(
        g.decide(&tat, 0, 0, 0),
        Outcome::Admit { state: tat, due: 0 }
    );
}
