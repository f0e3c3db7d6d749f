use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use super::{RateLimiter, Reservation, Ticket};
use crate::{Clock, DefaultClock, Denied, DeniedKind, Snapshot};

/// Tokio timers are re-armed at least this often for very long waits; the
/// waiter re-checks its slot when one fires.
const LONGEST_SLEEP: Duration = Duration::from_secs(24 * 3600);

/// The future of [`RateLimiter::acquire`] and
/// [`RateLimiter::acquire_within`].
///
/// It reserves its slot when first polled and gives it back when dropped
/// before completing.
#[must_use = "futures do nothing unless awaited"]
pub struct Acquire<'a, C: Clock = DefaultClock> {
    limiter: &'a RateLimiter<C>,
    cost: u64,
    max_wait: u64,
    state: State<'a, C>,
}

enum State<'a, C: Clock> {
    Start,
    Waiting {
        reservation: Reservation<'a, C>,
        timer: Option<Pin<Box<Sleep>>>,
        /// The due instant the timer was armed for; `None` forces a re-arm.
        armed_for: Option<u64>,
    },
    Done(Result<Snapshot, Denied>),
}

impl<'a, C: Clock> Acquire<'a, C> {
    pub(super) fn new(limiter: &'a RateLimiter<C>, cost: u64, max_wait: u64) -> Self {
        Self {
            limiter,
            cost,
            max_wait,
            state: State::Start,
        }
    }

    fn finish(&mut self, result: Result<Snapshot, Denied>) -> Poll<Result<Snapshot, Denied>> {
        // Dropping the old state here releases or completes any reservation.
        self.state = State::Done(result.clone());
        Poll::Ready(result)
    }
}

impl<C: Clock> Future for Acquire<'_, C> {
    type Output = Result<Snapshot, Denied>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let limiter = this.limiter;
        loop {
            match &mut this.state {
                // Most acquires find room at once: `reserve` inlines that
                // path, the same as `check`'s.
                State::Start => match limiter.reserve(this.cost, this.max_wait) {
                    Ok(Ticket::Ready(snapshot)) => return this.finish(Ok(snapshot)),
                    Ok(Ticket::Wait(reservation)) => {
                        this.state = State::Waiting {
                            reservation,
                            timer: None,
                            armed_for: None,
                        };
                    }
                    Err(denied) => return this.finish(Err(denied)),
                },
                State::Waiting {
                    reservation,
                    timer,
                    armed_for,
                } => {
                    let now = limiter.clock.now();
                    let Some(due) = limiter.take_if_due(reservation.id, now, cx.waker()) else {
                        let snapshot = reservation.taken(now);
                        return this.finish(Ok(snapshot));
                    };
                    if *armed_for != Some(due) {
                        if tokio::runtime::Handle::try_current().is_err() {
                            let snapshot = limiter.snapshot();
                            let denied = Denied::new(DeniedKind::NoRuntime, this.cost, snapshot);
                            return this.finish(Err(denied));
                        }
                        let wait = Duration::from_nanos(due.saturating_sub(now)).min(LONGEST_SLEEP);
                        let now = tokio::time::Instant::now();
                        let deadline = now.checked_add(wait).unwrap_or(now);
                        match timer {
                            Some(timer) => timer.as_mut().reset(deadline),
                            None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                        *armed_for = Some(due);
                    }
                    match timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
                        Some(Poll::Pending) => return Poll::Pending,
                        // Fired: check the slot again, and re-arm if the
                        // clock says it is not due yet.
                        Some(Poll::Ready(())) | None => *armed_for = None,
                    }
                }
                State::Done(result) => return Poll::Ready(result.clone()),
            }
        }
    }
}

impl<C: Clock> std::fmt::Debug for Acquire<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Start => "start",
            State::Waiting { .. } => "waiting",
            State::Done(_) => "done",
        };
        f.debug_struct("Acquire")
            .field("cost", &self.cost)
            .field("state", &state)
            .finish()
    }
}
