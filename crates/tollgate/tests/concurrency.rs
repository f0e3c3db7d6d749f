//! Concurrency limits on virtual time: FIFO, release on drop, bounded
//! waits, and AIMD converging on a server's hidden limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tollgate::{AdaptiveLimit, Aimd, ConcurrencyLimit, DeniedKind};

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order_and_permits_free_on_drop() {
    let limit = ConcurrencyLimit::new(2).unwrap();
    let held = [limit.acquire().await, limit.acquire().await];
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (limit, order) = (limit.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire().await;
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(permit);
        }));
        // Let each waiter queue before the next arrives.
        tokio::task::yield_now().await;
    }
    assert_eq!(limit.available(), 0);
    drop(held);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(limit.available(), 2);
    let stats = limit.stats();
    assert_eq!((stats.admitted, stats.waits, stats.in_flight), (8, 6, 0));
}

#[tokio::test(start_paused = true)]
async fn a_bounded_wait_gives_up_on_time_and_holds_nothing() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let permit = limit.acquire().await;
    let start = Instant::now();
    let busy = limit
        .acquire_within(Duration::from_millis(250))
        .await
        .unwrap_err();
    assert_eq!(busy.kind(), DeniedKind::Busy);
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(busy.retry_after(), None);
    assert!(limit.try_acquire().is_none());
    drop(permit);
    assert!(limit.try_acquire().is_some());
    assert_eq!(limit.stats().denied, 2);
    assert!(ConcurrencyLimit::new(0).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_cut_counts_once_per_generation_and_keeps_its_bounds() {
    let limit = AdaptiveLimit::new(Aimd {
        initial: 8,
        min: 2,
        max: 10,
        ..Aimd::default()
    })
    .unwrap();
    let mut permits = Vec::new();
    for _ in 0..8 {
        permits.push(limit.acquire().await);
    }
    // Every call in flight fails; the limit halves once, not eight times.
    for permit in permits.drain(..) {
        permit.overloaded();
    }
    assert_eq!(limit.limit(), 4);
    // The permits held during the cut were retired: 4 places, not 8.
    for _ in 0..4 {
        permits.push(limit.acquire().await);
    }
    assert!(limit
        .acquire_within(Duration::from_millis(1))
        .await
        .is_err());
    // Cuts stop at the minimum.
    for _ in 0..5 {
        permits.pop().unwrap().overloaded();
        if let Ok(p) = limit.acquire_within(Duration::ZERO).await {
            permits.push(p);
        }
    }
    assert_eq!(limit.limit(), 2);
    drop(permits);
    // Successes grow it by one per limit's worth, up to the maximum...
    let mut seen = vec![limit.limit()];
    for _ in 0..30 {
        let mut batch = Vec::new();
        for _ in 0..limit.limit() {
            batch.push(limit.acquire().await);
        }
        batch
            .into_iter()
            .for_each(tollgate::AdaptivePermit::success);
        seen.push(limit.limit());
    }
    assert!(
        seen.windows(2).all(|w| w[1] >= w[0] && w[1] <= w[0] + 1),
        "{seen:?}"
    );
    assert_eq!(limit.limit(), 10);
    // ...but only while it is in use: one call at a time teaches nothing.
    limit.acquire().await.overloaded();
    for _ in 0..100 {
        limit.acquire().await.success();
    }
    assert_eq!(limit.limit(), 5);
    assert!(AdaptiveLimit::new(Aimd {
        initial: 20,
        max: 10,
        ..Aimd::default()
    })
    .is_err());
    assert!(AdaptiveLimit::new(Aimd {
        decrease: 1.5,
        ..Aimd::default()
    })
    .is_err());
}

/// A server that serves at most `capacity` calls at once and rejects the
/// rest at once; each call it serves takes 100 ms.
#[tokio::test(start_paused = true)]
async fn aimd_converges_on_a_hidden_limit() {
    const HIDDEN: usize = 20;
    let limit = AdaptiveLimit::new(Aimd {
        initial: 2,
        max: 200,
        ..Aimd::default()
    })
    .unwrap();
    let in_server = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let end = start + Duration::from_secs(120);
    let mut workers = Vec::new();
    for _ in 0..100 {
        let (limit, in_server, served, rejected) = (
            limit.clone(),
            Arc::clone(&in_server),
            Arc::clone(&served),
            Arc::clone(&rejected),
        );
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let permit = limit.acquire().await;
                if in_server.fetch_add(1, Ordering::SeqCst) >= HIDDEN {
                    in_server.fetch_sub(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    rejected.fetch_add(1, Ordering::SeqCst);
                    permit.overloaded();
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    in_server.fetch_sub(1, Ordering::SeqCst);
                    served.fetch_add(1, Ordering::SeqCst);
                    permit.success();
                }
            }
        }));
    }
    {
        let (limit, samples) = (limit.clone(), Arc::clone(&samples));
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(250)).await;
                samples.lock().unwrap().push(limit.limit());
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let samples = samples.lock().unwrap();
    // After a warm-up, AIMD's sawtooth stays between half the hidden limit
    // and a little above it.
    let settled = &samples[samples.len() / 4..];
    let (low, high) = (
        *settled.iter().min().unwrap(),
        *settled.iter().max().unwrap(),
    );
    assert!(
        low >= HIDDEN / 2 - 1 && high <= HIDDEN + 2,
        "{low}..{high}: {settled:?}"
    );
    let mean = settled.iter().sum::<usize>() as f64 / settled.len() as f64;
    assert!(mean >= HIDDEN as f64 * 0.6, "mean {mean}");
    // Throughput: at least 60% of what the server could do (20 per 100 ms),
    // with few rejections.
    let (served, rejected) = (
        served.load(Ordering::SeqCst),
        rejected.load(Ordering::SeqCst),
    );
    assert!(served >= 120 * 200 * 6 / 10, "served {served}");
    assert!(rejected * 20 <= served, "rejected {rejected} of {served}");
}
