//! The store's timeout on each call, without a timer each.
//!
//! Every call to Redis is bounded by the store's timeout. A Tokio timer a
//! call costs about 1.2 µs of a round trip of about 80 µs (the
//! `redis_rate` rows with and without a timeout in the Redis benchmark).
//! All calls share one timeout, so their deadlines come in the order the
//! calls start: a queue, where one task sleeps until the first deadline,
//! wakes the calls whose deadline has passed, and sleeps again. A call
//! costs a lock to join the queue and one to leave it; the task wakes
//! about once per timeout while calls go on, and waits on nothing when
//! none is on its way.
//!
//! The task runs on the runtime that connected the store (as does the
//! connection's own). Once that runtime has ended, each call is bounded
//! by a timer of its own again.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The deadlines of the calls on their way, and the task that keeps them.
pub(crate) struct Watch {
    shared: Arc<Shared>,
}

struct Shared {
    timeout: Duration,
    queue: Mutex<Queue>,
    /// Wakes the task when a call joins an empty queue, or the watch ends.
    wake: Notify,
    /// The task is running (false once its runtime has dropped it).
    alive: AtomicBool,
    /// The watch was dropped: the task ends.
    closed: AtomicBool,
}

struct Queue {
    calls: VecDeque<Call>,
    /// The number of calls that left the front of the queue: the ticket of
    /// `calls[0]`.
    first: u64,
    /// The task sleeps until a deadline (true) or waits to be woken.
    timed: bool,
}

struct Call {
    deadline: Instant,
    state: State,
}

enum State {
    /// On its way; woken by this when its deadline passes.
    Waiting(Waker),
    /// Its deadline passed: its next poll gives up.
    Expired,
    /// Answered, given up or dropped.
    Ended,
}

/// Ends the task when the task is dropped with its runtime.
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

impl Watch {
    /// A watch bounding calls by `timeout`, and its task on the current
    /// runtime.
    pub(crate) fn new(timeout: Duration) -> Self {
        let shared = Arc::new(Shared {
            timeout,
            queue: Mutex::new(Queue {
                calls: VecDeque::new(),
                first: 0,
                timed: false,
            }),
            wake: Notify::new(),
            alive: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        });
        let alive = Alive(Arc::clone(&shared));
        tokio::spawn(async move {
            let shared = &alive.0;
            while !shared.closed.load(Ordering::Acquire) {
                match shared.sweep(Instant::now()) {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => shared.wake.notified().await,
                }
            }
        });
        Self { shared }
    }

    /// Runs `call` until it answers, or gives `None` once the timeout has
    /// passed.
    pub(crate) async fn bound<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        if !self.shared.alive.load(Ordering::Acquire) {
            return tokio::time::timeout(self.shared.timeout, call).await.ok();
        }
        let mut call = pin!(call);
        let mut ticket = Ticket {
            shared: &self.shared,
            id: None,
        };
        poll_fn(|cx| {
            if let Poll::Ready(answer) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(answer));
            }
            if ticket.expired(cx.waker()) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the calls whose deadline has passed by `now`; gives the next
    /// deadline to sleep until, or `None` when no call is on its way.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let mut queue = self.queue();
        let mut index = 0;
        while let Some(call) = queue.calls.get_mut(index) {
            if call.deadline > now {
                break;
            }
            if let State::Waiting(waker) = std::mem::replace(&mut call.state, State::Expired) {
                waker.wake();
            }
            index += 1;
        }
        queue.pop_ended();
        let next = queue
            .calls
            .iter()
            .find(|call| call.deadline > now)
            .map(|call| call.deadline);
        queue.timed = next.is_some();
        next
    }
}

impl Queue {
    /// Drops the ended calls at the front.
    fn pop_ended(&mut self) {
        while matches!(
            self.calls.front(),
            Some(Call {
                state: State::Ended,
                ..
            })
        ) {
            self.calls.pop_front();
            self.first = self.first.wrapping_add(1);
        }
    }

    fn get(&mut self, id: u64) -> Option<&mut Call> {
        let index = usize::try_from(id.wrapping_sub(self.first)).ok()?;
        self.calls.get_mut(index)
    }
}

/// A call's place in the queue, from its first wait to its end.
struct Ticket<'a> {
    shared: &'a Shared,
    id: Option<u64>,
}

impl Ticket<'_> {
    /// Whether the call's deadline has passed; otherwise it waits, to be
    /// woken by `waker` when it passes.
    fn expired(&mut self, waker: &Waker) -> bool {
        let mut queue = self.shared.queue();
        match self.id {
            None => {
                let deadline = Instant::now() + self.shared.timeout;
                let id = queue.first.wrapping_add(queue.calls.len() as u64);
                queue.calls.push_back(Call {
                    deadline,
                    state: State::Waiting(waker.clone()),
                });
                self.id = Some(id);
                if !queue.timed {
                    queue.timed = true;
                    drop(queue);
                    self.shared.wake.notify_one();
                }
                false
            }
            Some(id) => {
                let Some(call) = queue.get(id) else {
                    return true;
                };
                match &mut call.state {
                    State::Waiting(known) => {
                        if !known.will_wake(waker) {
                            known.clone_from(waker);
                        }
                        false
                    }
                    State::Expired | State::Ended => {
                        call.state = State::Ended;
                        queue.pop_ended();
                        self.id = None;
                        true
                    }
                }
            }
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut queue = self.shared.queue();
            if let Some(call) = queue.get(id) {
                call.state = State::Ended;
            }
            queue.pop_ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_that_answers_in_time_is_not_bounded() {
        let watch = Watch::new(Duration::from_millis(50));
        let answer = watch
            .bound(async {
                tokio::time::sleep(Duration::from_millis(49)).await;
                7
            })
            .await;
        assert_eq!(answer, Some(7));
        assert!(watch.shared.queue().calls.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_call_gives_up_at_its_deadline() {
        let watch = Watch::new(Duration::from_millis(50));
        let start = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            watch.bound(std::future::pending::<()>()),
        )
        .await;
        assert_eq!(answer, Ok(None), "given up by the watch, not the test");
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert!(watch.shared.queue().calls.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_end_in_any_order_each_at_its_own_deadline() {
        let watch = Arc::new(Watch::new(Duration::from_millis(50)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        // Calls starting 10 ms apart; the even ones never answer, the odd
        // ones answer after 30 ms.
        for i in 0..6u64 {
            let watch = Arc::clone(&watch);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                let answer = watch
                    .bound(async {
                        if i % 2 == 0 {
                            std::future::pending::<()>().await;
                        }
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    })
                    .await;
                (answer, start.elapsed())
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let (answer, at) = task.await.unwrap();
            let i = i as u64;
            if i % 2 == 0 {
                assert_eq!(answer, None, "call {i}");
                assert_eq!(at, Duration::from_millis(10 * i + 50), "call {i}");
            } else {
                assert_eq!(answer, Some(()), "call {i}");
                assert_eq!(at, Duration::from_millis(10 * i + 30), "call {i}");
            }
        }
        assert!(watch.shared.queue().calls.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_leaves_the_queue() {
        let watch = Watch::new(Duration::from_millis(50));
        let late = tokio::time::timeout(
            Duration::from_millis(10),
            watch.bound(std::future::pending::<()>()),
        )
        .await;
        assert!(late.is_err());
        assert!(watch.shared.queue().calls.is_empty());
        // The watch still bounds calls after an idle stretch.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let start = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            watch.bound(std::future::pending::<()>()),
        )
        .await;
        assert_eq!(answer, Ok(None), "given up by the watch, not the test");
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }

    #[test]
    fn once_its_runtime_ends_a_call_has_a_timer_of_its_own() {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let watch = first.block_on(async { Watch::new(Duration::from_millis(20)) });
        drop(first);
        assert!(!watch.shared.alive.load(Ordering::Acquire));
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let answer = second.block_on(watch.bound(std::future::pending::<()>()));
        assert_eq!(answer, None);
    }
}
