//! Traffic shaping with the core limiter, on real time: a burst, then a
//! steady pace; tasks served in the order they asked; a bounded wait that
//! fails at once; a non-blocking check that says when to retry.
//!
//! ```text
//! cargo run --release -p tollgate-examples --example shaping
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::{Quota, RateLimiter};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quota: Quota = "4/s burst 3".parse()?;
    println!("Ten tasks share one limiter of {quota}: three go at once, then one every 250 ms.\n");

    let limiter = Arc::new(RateLimiter::new(quota));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 1..=10 {
        let limiter = Arc::clone(&limiter);
        tasks.push(tokio::spawn(async move {
            limiter.acquire(1).await?;
            let at = start.elapsed();
            println!(
                "  task {task:>2} admitted at {:>5} ms  {}",
                at.as_millis(),
                bar(at)
            );
            Ok::<_, tollgate::Denied>(())
        }));
        // Spawned in order, so they queue in order.
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await??;
    }

    println!("\nA caller that waits at most 100 ms is told at once that it would wait longer:");
    match limiter.acquire_within(1, Duration::from_millis(100)).await {
        Ok(_) => println!("  admitted"),
        Err(denied) => println!("  {denied}"),
    }

    println!("\nA non-blocking check, and what it reports:");
    match limiter.check(1) {
        Ok(snapshot) => println!("  admitted; {} remaining", snapshot.remaining()),
        Err(denied) => println!("  {denied}"),
    }
    let snapshot = limiter.snapshot();
    println!(
        "  limit {}, remaining {}, full again in {:?}",
        snapshot.limit(),
        snapshot.remaining(),
        snapshot.reset_after()
    );
    Ok(())
}

/// One mark per 50 ms.
fn bar(at: Duration) -> String {
    "#".repeat(1 + usize::try_from(at.as_millis() / 50).unwrap_or(0))
}
