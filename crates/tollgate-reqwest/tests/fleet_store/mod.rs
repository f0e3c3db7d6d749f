//! A store as a network store is to the client, in process: one
//! `MemoryStore` that several middlewares share, which says how many
//! processes share it (as a Redis store counts its fleet), and counts the
//! adjustments that teach it something. On the paused clock it runs the
//! client's path through a shared store exactly, run after run.
//!
//! Shared by the fleet tests and the efficiency bench.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate::store::{Change, Decision, StoreStats, View};
use tollgate::{DefaultClock, MemoryStore, Quota, Store};
use tollgate_reqwest::Endpoint;

/// One process's handle on the shared store.
pub(crate) struct Fleet {
    pub(crate) store: Arc<MemoryStore>,
    /// How many processes the store says share it.
    pub(crate) sharers: u32,
    /// Adjustments that teach the store something (limits, caps), apart
    /// from settlements (charges, refunds) and pauses.
    pub(crate) lessons: Arc<AtomicU64>,
}

impl Fleet {
    /// A store for `sharers` processes: one handle each.
    pub(crate) fn shared(sharers: u32) -> Vec<Self> {
        let store = Arc::new(MemoryStore::new(1_000, 4, DefaultClock::new()));
        (0..sharers)
            .map(|_| Self {
                store: Arc::clone(&store),
                sharers,
                lessons: Arc::default(),
            })
            .collect()
    }
}

impl Store<Endpoint> for Fleet {
    type Error = Infallible;

    fn decide(
        &self,
        key: &Endpoint,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> impl Future<Output = Result<Decision, Infallible>> + Send {
        self.store.decide(key, limits, costs, max_wait)
    }

    fn adjust(
        &self,
        key: &Endpoint,
        limits: &[Quota],
        changes: &[Change],
    ) -> impl Future<Output = Result<(), Infallible>> + Send {
        let teaches = changes.iter().any(|c| {
            matches!(
                c,
                Change::Limit(_) | Change::Unlimit | Change::AtMost(_) | Change::Observe { .. }
            )
        });
        if teaches {
            self.lessons.fetch_add(1, Ordering::Relaxed);
        }
        self.store.adjust(key, limits, changes)
    }

    fn read(
        &self,
        key: &Endpoint,
        limits: &[Quota],
    ) -> impl Future<Output = Result<View, Infallible>> + Send {
        self.store.read(key, limits)
    }

    fn give_back(&self, key: &Endpoint, limits: &[Quota], costs: &[u64]) {
        self.store.give_back(key, limits, costs);
    }

    fn stats(&self) -> StoreStats {
        Store::<Endpoint>::stats(&*self.store)
    }

    fn sharers(&self) -> u32 {
        self.sharers
    }
}
