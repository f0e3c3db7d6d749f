//! `tollgate simulate`: how a rate limit and a concurrency limit shape
//! throughput and latency, on two services fired at by 2 and then 5 users.
//!
//! - **clone**: one job at a time, 1 request a second, 0.8 to 10.2 s of work;
//! - **tts**: 4 jobs at a time, 5 requests a second, 0.2 to 0.4 s of work.
//!
//! Each user sends its jobs one after another. A job first waits for the
//! rate limit (`acquire`), then for a free worker (a concurrency permit),
//! then runs. On virtual time (the default) a run takes about a second
//! whatever the simulated durations.
//!
//! ```
//! use tollgate_cli::simulate;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // Three jobs a user, on the paused clock: each service with 2 then 5
//! // users, and the table `tollgate simulate` prints.
//! let scenarios = simulate::all(3, 1, false).await;
//! assert_eq!(scenarios.len(), 4);
//! println!("{}", simulate::table(&scenarios));
//! # }
//! ```

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tollgate::{ConcurrencyLimit, Quota, RateLimiter};

/// A simulated service.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    /// Its name.
    pub name: &'static str,
    /// Jobs at a time.
    pub concurrency: usize,
    /// Requests a second.
    pub rate: u64,
    /// Work per job, in milliseconds, drawn evenly.
    pub work_ms: (u64, u64),
}

/// The two services of the demo.
pub const SERVICES: [Service; 2] = [
    Service {
        name: "clone",
        concurrency: 1,
        rate: 1,
        work_ms: (800, 10_200),
    },
    Service {
        name: "tts",
        concurrency: 4,
        rate: 5,
        work_ms: (200, 400),
    },
];

/// The numbers of concurrent users, in order.
pub const USERS: [usize; 2] = [2, 5];

/// One job's life.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Which user sent it.
    pub user: usize,
    /// When it was sent, from the scenario's start.
    pub sent: Duration,
    /// When the rate limit let it through.
    pub admitted: Duration,
    /// When a worker took it.
    pub started: Duration,
    /// When it was done.
    pub done: Duration,
}

/// One scenario's outcome.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The service.
    pub service: Service,
    /// Concurrent users.
    pub users: usize,
    /// Every job, in the order they finished.
    pub jobs: Vec<Job>,
    /// The sum of the jobs' work.
    pub work: Duration,
}

impl Scenario {
    /// From the first job sent to the last done.
    pub fn wall(&self) -> Duration {
        self.jobs.iter().map(|j| j.done).max().unwrap_or_default()
    }

    /// Jobs a second.
    pub fn throughput(&self) -> f64 {
        let wall = self.wall().as_secs_f64();
        if wall > 0.0 {
            self.jobs.len() as f64 / wall
        } else {
            0.0
        }
    }

    /// The latency (sent to done) below which `q` of the jobs finished.
    pub fn latency(&self, q: f64) -> Duration {
        let mut latencies: Vec<Duration> = self.jobs.iter().map(|j| j.done - j.sent).collect();
        latencies.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    }

    /// What held the jobs back most: the rate, the workers, or nothing.
    pub fn bound_by(&self) -> String {
        let rate_wait: Duration = self.jobs.iter().map(|j| j.admitted - j.sent).sum();
        let worker_wait: Duration = self.jobs.iter().map(|j| j.started - j.admitted).sum();
        let waited = rate_wait + worker_wait;
        if waited < self.work / 10 {
            "the work itself (little waiting)".into()
        } else if worker_wait >= rate_wait {
            format!(
                "concurrency: {} job{} at a time ({:.0}% of the waiting)",
                self.service.concurrency,
                if self.service.concurrency == 1 {
                    ""
                } else {
                    "s"
                },
                100.0 * worker_wait.as_secs_f64() / waited.as_secs_f64()
            )
        } else {
            format!(
                "the rate: {} request{}/s ({:.0}% of the waiting)",
                self.service.rate,
                if self.service.rate == 1 { "" } else { "s" },
                100.0 * rate_wait.as_secs_f64() / waited.as_secs_f64()
            )
        }
    }
}

/// Runs one scenario on the current runtime (paused or not).
pub async fn scenario(
    service: Service,
    users: usize,
    jobs_per_user: usize,
    seed: u64,
    live: bool,
) -> Scenario {
    let quota = Quota::per_second(service.rate)
        .and_then(|q| q.burst(1))
        .unwrap_or_else(|_| unreachable!("the demo's rates are valid"));
    let limiter = Arc::new(RateLimiter::new(quota));
    let workers = Arc::new(
        ConcurrencyLimit::new(service.concurrency)
            .unwrap_or_else(|_| unreachable!("the demo's concurrency is valid")),
    );
    // The work of every job is drawn up front, so that a seed gives the
    // same jobs whatever the order the users run in.
    let mut rng = fastrand::Rng::with_seed(seed ^ (service.rate << 8) ^ users as u64);
    let works: Vec<Vec<Duration>> = (0..users)
        .map(|_| {
            (0..jobs_per_user)
                .map(|_| Duration::from_millis(rng.u64(service.work_ms.0..=service.work_ms.1)))
                .collect()
        })
        .collect();
    let work = works.iter().flatten().sum();
    let jobs = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (user, works) in works.into_iter().enumerate() {
        let (limiter, workers, jobs) = (
            Arc::clone(&limiter),
            Arc::clone(&workers),
            Arc::clone(&jobs),
        );
        tasks.push(tokio::spawn(async move {
            for work in works {
                let sent = start.elapsed();
                let _ = limiter.acquire(1).await;
                let admitted = start.elapsed();
                let permit = workers.acquire().await;
                let started = start.elapsed();
                tokio::time::sleep(work).await;
                drop(permit);
                let done = start.elapsed();
                if live {
                    println!(
                        "  {:>6.2} s  user {user}: waited {:.2} s, worked {:.2} s",
                        done.as_secs_f64(),
                        (started - sent).as_secs_f64(),
                        work.as_secs_f64()
                    );
                }
                let job = Job {
                    user,
                    sent,
                    admitted,
                    started,
                    done,
                };
                jobs.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(job);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let jobs = std::mem::take(
        &mut *jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Scenario {
        service,
        users,
        jobs,
        work,
    }
}

/// Every scenario, in order: each service with 2, then 5 users.
pub async fn all(jobs_per_user: usize, seed: u64, live: bool) -> Vec<Scenario> {
    let mut out = Vec::new();
    for service in SERVICES {
        for users in USERS {
            if live {
                println!("{} with {users} users:", service.name);
            }
            out.push(scenario(service, users, jobs_per_user, seed, live).await);
        }
    }
    out
}

/// The table printed at the end.
pub fn table(scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>5} {:>5} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8}  bound by",
        "", "users", "jobs", "work", "wall", "jobs/s", "p50", "p90", "p99"
    );
    for s in scenarios {
        let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        let _ = writeln!(
            out,
            "{:<6} {:>5} {:>5} {:>9} {:>9} {:>10.2} {:>8} {:>8} {:>8}  {}",
            s.service.name,
            s.users,
            s.jobs.len(),
            secs(s.work),
            secs(s.wall()),
            s.throughput(),
            secs(s.latency(0.5)),
            secs(s.latency(0.9)),
            secs(s.latency(0.99)),
            s.bound_by()
        );
    }
    out
}

/// An SVG chart: one panel per scenario, one row per job, waiting in grey
/// (light: for the rate; dark: for a worker) and running in colour.
pub fn svg(scenarios: &[Scenario]) -> String {
    const WIDTH: f64 = 960.0;
    const LEFT: f64 = 170.0;
    const ROW: f64 = 8.0;
    const GAP: f64 = 36.0;
    let height: f64 = scenarios
        .iter()
        .map(|s| s.jobs.len() as f64 * ROW + GAP)
        .sum::<f64>()
        + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r##"<text x="10" y="18">Each row a job: waiting for the rate <tspan fill="#bbb">■</tspan>, for a worker <tspan fill="#777">■</tspan>, running <tspan fill="#2a7">■</tspan></text>"##
    );
    let mut y = 40.0;
    for s in scenarios {
        let wall = s.wall().as_secs_f64().max(0.001);
        let scale = (WIDTH - LEFT - 20.0) / wall;
        let _ = writeln!(
            out,
            r##"<text x="10" y="{:.1}">{} × {} users</text><text x="10" y="{:.1}" fill="#555">{:.1} s, {:.2} jobs/s</text>"##,
            y + 12.0,
            s.service.name,
            s.users,
            y + 26.0,
            wall,
            s.throughput()
        );
        let mut jobs = s.jobs.clone();
        jobs.sort_by_key(|j| (j.sent, j.user));
        for (row, job) in jobs.iter().enumerate() {
            let top = y + row as f64 * ROW;
            let x = |d: Duration| LEFT + d.as_secs_f64() * scale;
            for (from, to, colour) in [
                (job.sent, job.admitted, "#bbb"),
                (job.admitted, job.started, "#777"),
                (job.started, job.done, "#2a7"),
            ] {
                let w = x(to) - x(from);
                if w > 0.0 {
                    let _ = writeln!(
                        out,
                        r#"<rect x="{:.1}" y="{top:.1}" width="{w:.1}" height="{:.1}" fill="{colour}"/>"#,
                        x(from),
                        ROW - 2.0
                    );
                }
            }
        }
        y += s.jobs.len() as f64 * ROW + GAP;
    }
    out.push_str("</svg>\n");
    out
}
