//! The queue of reservations that are not due yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::Thread;

/// Reservations in the order they were made, which is the order they fall
/// due: when one is given back, every later one moves up.
#[derive(Default)]
pub(crate) struct Waiters {
    next_id: u64,
    entries: BTreeMap<u64, Waiter>,
}

struct Waiter {
    due: u64,
    cost: u64,
    waker: Option<Waker>,
}

impl Waiters {
    pub(crate) fn insert(&mut self, due: u64, cost: u64) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.entries.insert(
            id,
            Waiter {
                due,
                cost,
                waker: None,
            },
        );
        id
    }

    /// Takes reservation `id` out of the queue if it is due by `now`
    /// (answering `None`), or else answers when it is due, registering
    /// `waker` to hear when it moves up.
    pub(crate) fn take_if_due(&mut self, id: u64, now: u64, waker: &Waker) -> Option<u64> {
        let entry = self.entries.get_mut(&id)?;
        if entry.due <= now {
            self.entries.remove(&id);
            return None;
        }
        match &entry.waker {
            Some(known) if known.will_wake(waker) => {}
            _ => entry.waker = Some(waker.clone()),
        }
        Some(entry.due)
    }

    /// Removes reservation `id`, answering its `(due, cost)`.
    pub(crate) fn remove(&mut self, id: u64) -> Option<(u64, u64)> {
        self.entries.remove(&id).map(|w| (w.due, w.cost))
    }

    /// Moves every reservation made after `id` up by `by` nanoseconds and
    /// wakes its owner.
    pub(crate) fn move_up_after(&mut self, id: u64, by: u64) {
        if by == 0 {
            return;
        }
        for waiter in self
            .entries
            .range_mut(id.saturating_add(1)..)
            .map(|(_, waiter)| waiter)
        {
            waiter.due = waiter.due.saturating_sub(by);
            if let Some(waker) = &waiter.waker {
                waker.wake_by_ref();
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Wakes a thread blocked in `acquire_blocking`.
pub(crate) struct ThreadWaker(pub(crate) Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
