//! Many callers' decisions in one script call.
//!
//! Redis runs one script at a time, and a script call costs more than the
//! decision it carries (parsing the call, setting up Lua, replying). So
//! when several callers decide at once on one connection, their decisions
//! go to Redis together: the decide script takes any number of keys and
//! decides them in turn, at one instant of Redis' clock, as if they had
//! come one after the other. A caller alone (no call on its way, no one
//! in line) is sent at once: nothing waits for company. Otherwise it goes
//! in line, and the line goes in the next call as soon as fewer than
//! [`IN_FLIGHT`] calls are on their way: Redis then always has the next
//! call in hand while it runs one, and the calls are large.
//!
//! Only for a single Redis: in a Cluster the keys of one script call must
//! share a slot, so there every decision is a call of its own.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{msgpack, StoreError, StoreErrorKind};

/// Values at the head of a decision's reply: code, blocking dimension,
/// wait, now, pause extensions, pause end, whether the key was absent,
/// whether a stricter limit passed by another process decided.
pub(crate) const HEAD: usize = 8;
/// Decisions in one script call at most.
pub(crate) const MAX_BATCH: usize = 128;
/// Script calls on their way at once.
const IN_FLIGHT: usize = 3;

/// One caller's decision: its Redis key, its arguments packed (`n`,
/// `max_wait`, then per dimension interval, burst, cost), and where its
/// share of the reply goes.
struct Job {
    key: String,
    args: Vec<u8>,
    dimensions: usize,
    reply: oneshot::Sender<Result<Vec<Value>, StoreError>>,
}

/// Sends decisions to one Redis: a caller that finds a call free and no
/// one waiting sends its own at once; the others wait in line, and a task
/// sends the line in one call as soon as a call is free.
pub(crate) struct Batcher {
    line: mpsc::UnboundedSender<Job>,
    /// Decisions in line, not yet taken by the task.
    waiting: Arc<AtomicUsize>,
    /// Script calls on their way.
    slots: Arc<Semaphore>,
    conn: ConnectionManager,
    code: Arc<str>,
    sha: Arc<str>,
    reloads: Arc<AtomicU64>,
}

impl Batcher {
    /// A batcher, and its task, which ends when the batcher is dropped.
    pub(crate) fn new(
        conn: ConnectionManager,
        code: Arc<str>,
        sha: String,
        reloads: Arc<AtomicU64>,
        timeout: Duration,
    ) -> Self {
        let (line, mut rx) = mpsc::unbounded_channel::<Job>();
        let sha: Arc<str> = Arc::from(sha);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let waiting = Arc::new(AtomicUsize::new(0));
        let task = (
            conn.clone(),
            Arc::clone(&code),
            Arc::clone(&sha),
            Arc::clone(&reloads),
            Arc::clone(&slots),
            Arc::clone(&waiting),
        );
        tokio::spawn(async move {
            let (conn, code, sha, reloads, slots, waiting) = task;
            while let Some(first) = rx.recv().await {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                // The callers woken by the reply that freed this slot
                // join the line before it goes: one call, not a call of
                // one and then the rest.
                tokio::task::yield_now().await;
                let mut jobs = Vec::with_capacity(8);
                jobs.push(first);
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                waiting.fetch_sub(jobs.len(), Ordering::Relaxed);
                let mut conn = conn.clone();
                let (code, sha) = (Arc::clone(&code), Arc::clone(&sha));
                let reloads = Arc::clone(&reloads);
                tokio::spawn(async move {
                    send(&mut conn, &code, &sha, &reloads, timeout, jobs).await;
                    drop(slot);
                });
            }
        });
        Self {
            line,
            waiting,
            slots,
            conn,
            code,
            sha,
            reloads,
        }
    }

    /// One decision's share of the reply.
    pub(crate) async fn decide(
        &self,
        key: String,
        args: Vec<u8>,
        dimensions: usize,
    ) -> Result<Vec<Value>, StoreError> {
        // Alone: nothing on its way, no one in line. A caller that finds a
        // call on its way waits for the line even when a slot is free, so
        // that the slots carry large calls, not one decision each.
        if self.waiting.load(Ordering::Relaxed) == 0 && self.slots.available_permits() == IN_FLIGHT
        {
            if let Ok(_slot) = Arc::clone(&self.slots).try_acquire_owned() {
                let mut conn = self.conn.clone();
                let reply = eval_script(
                    &mut conn,
                    &self.code,
                    &self.sha,
                    &[key][..],
                    &[args][..],
                    &self.reloads,
                )
                .await
                .map_err(|e| StoreError::redis(&e))?;
                return split_one(reply, dimensions);
            }
        }
        let stopped = || {
            StoreError::new(
                StoreErrorKind::Redis,
                "the store's connection task has stopped (its runtime ended)".to_owned(),
            )
        };
        let (reply, answer) = oneshot::channel();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if self
            .line
            .send(Job {
                key,
                args,
                dimensions,
                reply,
            })
            .is_err()
        {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

/// Sends one batch and hands each caller its share of the reply (or the
/// error, when the call failed as a whole).
async fn send(
    conn: &mut ConnectionManager,
    code: &str,
    sha: &str,
    reloads: &AtomicU64,
    timeout: Duration,
    mut jobs: Vec<Job>,
) {
    // A caller that gave up (its timeout passed while it waited in line)
    // decided without Redis: its decision is not sent after it.
    jobs.retain(|job| !job.reply.is_closed());
    if jobs.is_empty() {
        return;
    }
    let mut keys = Vec::with_capacity(jobs.len());
    let mut args = Vec::with_capacity(jobs.len());
    for job in &mut jobs {
        keys.push(std::mem::take(&mut job.key));
        args.push(std::mem::take(&mut job.args));
    }
    let reply = tokio::time::timeout(
        timeout,
        eval_script(conn, code, sha, &keys[..], &args[..], reloads),
    )
    .await;
    match reply {
        Ok(Ok(values)) => {
            let dimensions: Vec<usize> = jobs.iter().map(|j| j.dimensions).collect();
            let shares = split(values, &dimensions);
            for (job, share) in jobs.into_iter().zip(shares) {
                let _ = job.reply.send(share);
            }
        }
        Ok(Err(e)) => {
            let error = StoreError::redis(&e);
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
        Err(_) => {
            let error = StoreError::new(
                StoreErrorKind::Timeout,
                format!("no answer within {timeout:?}"),
            );
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Runs a script by its SHA-1, and sends it whole once when Redis answers
/// `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).
pub(crate) async fn eval_script<C, K, A>(
    conn: &mut C,
    code: &str,
    sha: &str,
    keys: K,
    args: A,
    reloads: &AtomicU64,
) -> Result<Vec<Value>, RedisError>
where
    C: redis::aio::ConnectionLike,
    K: redis::ToRedisArgs,
    A: redis::ToRedisArgs,
{
    let count = keys.num_of_args();
    let reply = redis::cmd("EVALSHA")
        .arg(sha)
        .arg(count)
        .arg(&keys)
        .arg(&args)
        .query_async(conn)
        .await;
    match reply {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            reloads.fetch_add(1, Ordering::Relaxed);
            redis::cmd("EVAL")
                .arg(code)
                .arg(count)
                .arg(&keys)
                .arg(&args)
                .query_async(conn)
                .await
        }
        other => other,
    }
}

/// The one decision of a call that carried only it.
pub(crate) fn split_one(reply: Vec<Value>, dimensions: usize) -> Result<Vec<Value>, StoreError> {
    split(reply, &[dimensions]).pop().unwrap_or_else(|| {
        Err(StoreError::new(
            StoreErrorKind::Reply,
            "no reply".to_owned(),
        ))
    })
}

/// Unpacks the decide script's reply, one packed string: per decision
/// its code (3 and a message when the script could not read that key),
/// then [`HEAD`] values in all and four a dimension.
pub(crate) fn split(
    reply: Vec<Value>,
    dimensions: &[usize],
) -> Vec<Result<Vec<Value>, StoreError>> {
    let values = match reply.as_slice() {
        [Value::BulkString(packed)] => msgpack::values(packed),
        _ => None,
    };
    let Some(values) = values else {
        let mut shown = format!("{reply:?}");
        shown.truncate(200);
        let error = StoreError::new(StoreErrorKind::Reply, format!("unexpected reply {shown}"));
        return dimensions.iter().map(|_| Err(error.clone())).collect();
    };
    let mut values = values.into_iter();
    dimensions
        .iter()
        .map(|&n| match values.next() {
            Some(Value::Int(3)) => Err(StoreError::new(
                StoreErrorKind::Redis,
                match values.next() {
                    Some(Value::BulkString(m)) => String::from_utf8_lossy(&m).into_owned(),
                    _ => "the script failed".to_owned(),
                },
            )),
            Some(code) => {
                let mut share = Vec::with_capacity(HEAD + 4 * n);
                share.push(code);
                share.extend(values.by_ref().take(HEAD - 1 + 4 * n));
                Ok(share)
            }
            None => Err(StoreError::new(
                StoreErrorKind::Reply,
                "a decision is missing from the reply".to_owned(),
            )),
        })
        .collect()
}

/// Runs a script over one key, by its SHA-1 (sending it whole on
/// `NOSCRIPT`), answering its one value.
pub(crate) async fn eval_one<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    code: &str,
    sha: &str,
    key: &str,
    args: &[&str],
) -> Result<Value, RedisError> {
    let reply = redis::cmd("EVALSHA")
        .arg(sha)
        .arg(1)
        .arg(key)
        .arg(args)
        .query_async(conn)
        .await;
    match reply {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            redis::cmd("EVAL")
                .arg(code)
                .arg(1)
                .arg(key)
                .arg(args)
                .query_async(conn)
                .await
        }
        other => other,
    }
}
