//! The store contract, checked against the in-memory store and against a
//! store that answers late (a stand-in for a network store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate::store::{
    conformance, Change, Decision, MemoryStore, Store, StoreStats, SyncStore, View,
};
use tollgate::store::{DirectStore, DirectStoreError};
use tollgate::{Algorithm, DefaultClock, Quota};

#[tokio::test(start_paused = true)]
async fn memory_store_keeps_the_contract() {
    conformance::run(|| async { MemoryStore::new(10_000, 2, DefaultClock::new()) }).await;
}

#[tokio::test(start_paused = true)]
async fn a_small_memory_store_keeps_the_contract() {
    // Each check uses a handful of keys: no eviction at 64 keys.
    conformance::run(|| async { MemoryStore::new(64, 2, DefaultClock::new()) }).await;
}

/// Forwards to a [`MemoryStore`] after a delay, as a store across a
/// network would.
struct Late {
    inner: MemoryStore,
    delay: Duration,
}

impl Store<String> for Late {
    type Error = std::convert::Infallible;

    async fn decide(
        &self,
        key: &String,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Result<Decision, Self::Error> {
        tokio::time::sleep(self.delay).await;
        Ok(SyncStore::decide_now(
            &self.inner,
            key,
            limits,
            costs,
            max_wait,
        ))
    }

    async fn adjust(
        &self,
        key: &String,
        limits: &[Quota],
        changes: &[Change],
    ) -> Result<(), Self::Error> {
        tokio::time::sleep(self.delay).await;
        SyncStore::adjust_now(&self.inner, key, limits, changes);
        Ok(())
    }

    async fn read(&self, key: &String, limits: &[Quota]) -> Result<View, Self::Error> {
        tokio::time::sleep(self.delay).await;
        Ok(SyncStore::read_now(&self.inner, key, limits))
    }

    fn give_back(&self, key: &String, limits: &[Quota], costs: &[u64]) {
        Store::give_back(&self.inner, key, limits, costs);
    }

    fn stats(&self) -> StoreStats {
        Store::<String>::stats(&self.inner)
    }
}

#[tokio::test(start_paused = true)]
async fn a_late_store_keeps_the_contract_within_its_delay() {
    let delay = Duration::from_millis(1);
    conformance::Suite::new(|| async move {
        Late {
            inner: MemoryStore::new(10_000, 2, DefaultClock::new()),
            delay,
        }
    })
    .slack(Duration::from_millis(100))
    .run()
    .await;
}

/// A [`DirectStore`] for each key, made at its first use with the limit
/// it is asked about: the single-key store behind `RateLimiter`, through
/// the suite's keys.
#[derive(Default)]
struct DirectPerKey {
    stores: Mutex<HashMap<String, Arc<DirectStore>>>,
}

impl DirectPerKey {
    fn store(&self, key: &str, limits: &[Quota]) -> Arc<DirectStore> {
        let mut stores = self.stores.lock().unwrap();
        let store = stores.entry(key.to_owned()).or_insert_with(|| {
            let quota = limits
                .first()
                .copied()
                .unwrap_or_else(|| Quota::per_second(1).unwrap());
            Arc::new(DirectStore::new(
                quota,
                Algorithm::Gcra,
                DefaultClock::new(),
            ))
        });
        Arc::clone(store)
    }
}

impl Store<String> for DirectPerKey {
    type Error = DirectStoreError;

    async fn decide(
        &self,
        key: &String,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Result<Decision, Self::Error> {
        Store::decide(&*self.store(key, limits), key, limits, costs, max_wait).await
    }

    async fn adjust(
        &self,
        key: &String,
        limits: &[Quota],
        changes: &[Change],
    ) -> Result<(), Self::Error> {
        Store::adjust(&*self.store(key, limits), key, limits, changes).await
    }

    async fn read(&self, key: &String, limits: &[Quota]) -> Result<View, Self::Error> {
        Store::read(&*self.store(key, limits), key, limits).await
    }

    fn give_back(&self, key: &String, limits: &[Quota], costs: &[u64]) {
        Store::give_back(&*self.store(key, limits), key, limits, costs);
    }
}

#[tokio::test(start_paused = true)]
async fn the_direct_store_keeps_the_contract_in_one_dimension() {
    conformance::Suite::new(|| async { DirectPerKey::default() })
        .one_dimension()
        .run()
        .await;
}
