//! One rate limit across a fleet: tollgate's [`Store`] over Redis.
//!
//! A [`RedisStore`] keeps every key's budget in Redis and decides with one
//! Lua script per operation, atomically, on Redis' own clock (`TIME`): two
//! replicas of a server, or ten workers calling one provider, spend from
//! one limit. Everything the core's store contract holds lives there:
//! each dimension's GCRA state (reservations included), the key's own and
//! learnt limits, and its pause.
//!
//! ```no_run
//! use tollgate::{KeyedLimiter, Quota};
//! use tollgate_redis::RedisStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .prefix("api")
//!     .connect()
//!     .await?;
//! let limiter = KeyedLimiter::with_store(Quota::per_minute(100)?, store);
//! limiter.acquire(&"203.0.113.7".to_owned(), 1).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # In Redis
//!
//! - **At most one round trip per decision**: `EVALSHA`, and `EVAL` once
//!   when Redis answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).
//!   The connection is multiplexed: many callers share it, pipelined. On
//!   a single Redis, decisions that come together share one script call
//!   (up to 128, decided in turn at one instant, as if one after the
//!   other; a caller alone is sent at once, nothing waits for company):
//!   Redis runs one script at a time, and a call costs more than the
//!   decision it carries. A key the script cannot read fails alone. In a
//!   Cluster every decision is a call of its own (a call's keys must share
//!   a slot).
//! - **Redis' clock**: every instant is read by the script from `TIME`; no
//!   client clock takes part in a decision. Instants are integer
//!   microseconds (exact in Lua's numbers). A quota's replenish interval
//!   is rounded **up** to whole microseconds, so a limit faster than one
//!   unit a microsecond admits at most one a microsecond there; bursts and
//!   costs above 2^52 are taken as 2^52 (a cost over its burst stays over).
//! - **Keys**: a limiter key is hashed (SHA-256 of the prefix and of what
//!   its `Hash` writes, 128 bits kept), so a hostile key can neither pick a
//!   slot nor reach another prefix, and every Redis key is short. All of a
//!   key lives in one Redis string, `PREFIX:{HASH}`
//!   ([`redis_key`](RedisStore::redis_key)): each dimension's state, its
//!   own and learnt limits and its pause, as MessagePack (one read and one
//!   write a decision). Processes sharing a limit must hash keys the same
//!   way: the same key type, on the same platform.
//! - **TTL on every key written**: a key expires when its limit is full
//!   again and its pause is over (it carries nothing then) or, when it has
//!   own or learnt limits, [`limits_ttl`](Builder::limits_ttl) after the
//!   last was set (default a day) if that is later. A denial writes
//!   nothing.
//! - **Redis Cluster**: [`RedisStore::cluster_builder`] takes some of its
//!   nodes; the client follows `MOVED` and `ASK` when slots move.
//! - **One key, one quota**: processes that pass different limits for one
//!   key (a rolling deploy that changes a limit) decide with the strictest
//!   one passed lately: the slower rate (then the smaller burst) passed by
//!   any process in the last capacity of that limit (its burst times its
//!   interval, at least a second) applies to every process. When no process
//!   passes it any more, the next strictest applies. A process decided by a
//!   stricter limit than its own logs a warning once and counts it
//!   ([`RedisStats::stricter`]). Own and learnt limits of a key (set in the
//!   store) are shared already and apply as they are.
//! - **`FLUSHALL`** (or a Redis that lost its data) forgets what was
//!   spent: each key starts full again, so a key may admit up to one burst
//!   more than its limit across the loss. Nothing fails.
//!
//! # Connecting
//!
//! [`connect`](Builder::connect) loads the scripts, which needs
//! authentication and the right to run scripts: a missing or wrong
//! password (`NOAUTH`, `WRONGPASS`), a user without `+@scripting`
//! (`NOPERM`), a server that is not Redis and nothing listening each fail
//! there, with a [`StoreErrorKind`] of their own, never later as a fleet
//! deciding in memory. No message, log line or `Debug` output shows a
//! password ([`redact_url`]).
//!
//! `rediss://` URLs speak TLS through rustls (feature `tls`), trusting the
//! system's root certificates or a CA of your own
//! ([`tls_root_certificate`](Builder::tls_root_certificate)), with a
//! client certificate where the server asks for one
//! ([`tls_client_certificate`](Builder::tls_client_certificate)).
//!
//! Redis Sentinel (feature `sentinel`): [`RedisStore::sentinel_builder`]
//! asks the sentinels for the master, and asks again whenever it fails
//! (the circuit opens, or it answers `READONLY`), so that decisions follow
//! the master Sentinel promotes. Sentinels over TLS are not supported yet.
//!
//! # Faults
//!
//! Every call is bounded by a [`timeout`](Builder::timeout) (default
//! 50 ms). After [`breaker_failures`](Builder::breaker_failures)
//! consecutive failures (default 5) the circuit opens: calls do not go to
//! Redis for [`breaker_cool_down`](Builder::breaker_cool_down) (default 1 s),
//! then one call probes it and closes the circuit if it succeeds. While
//! Redis fails, [`Fault::FailClosed`] denies with a store failure (which
//! the tower layer answers 503 with `Retry-After`), and
//! [`Fault::FailOpen`] (the default) decides in this process with what it
//! last knew of each key, so that an outage is neither a flood nor the
//! limit times the fleet:
//!
//! - each key's own and learnt limits and its pause, as Redis last
//!   answered them, and what this process spent and reserved;
//! - at this process's share of the fleet: every store counts itself in
//!   Redis (a sorted set `PREFIX:fleet`, refreshed each second, members
//!   lapsing after 3 s) and, while Redis fails, divides each limit by the
//!   count ([`RedisStats::fleet`]): three processes on a key of 10 a
//!   second admit about 10 a second together;
//! - when Redis answers again, each key decided here during the outage
//!   (and, for two minutes, each key Redis answers empty for, as after a
//!   restart) is given back what this process knows: its own limits, and
//!   what was spent and reserved here, so that decisions go back to Redis
//!   without a burst.
//!
//! One log line per change of state: a `warn` when Redis starts failing,
//! an `info` when it is back; [`RedisStats`] counts the calls between.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;
use sha2::{Digest, Sha256};
use tollgate::store::{transition, Admit, Change, Decision, Denial, Store, StoreStats, View};
use tollgate::{Quota, Snapshot, MAX_DIMENSIONS};

use crate::breaker::Breaker;

mod batch;
mod breaker;
mod fallback;
mod meters;
mod msgpack;
#[cfg(feature = "sentinel")]
mod sentinel;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

const DECIDE: &str = concat!(
    include_str!("lua/common.lua"),
    include_str!("lua/decide.lua")
);
const ADJUST: &str = concat!(
    include_str!("lua/common.lua"),
    include_str!("lua/adjust.lua")
);
const READ: &str = concat!(include_str!("lua/common.lua"), include_str!("lua/read.lua"));
const FLEET: &str = include_str!("lua/fleet.lua");

/// How often a store tells Redis it is alive, and how long after its last
/// word it is counted in the fleet.
const HEARTBEAT: Duration = Duration::from_secs(1);
const FLEET_TTL: Duration = Duration::from_secs(3);

/// The longest prefix a store takes.
pub const MAX_PREFIX_LEN: usize = 64;

/// What a store does while Redis fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Decide in this process with what was last known of each key, at
    /// this process's share of the fleet (see the crate's docs, Faults).
    #[default]
    FailOpen,
    /// Deny every call (a store failure) until Redis answers again.
    FailClosed,
}

/// Builds a [`RedisStore`].
#[derive(Clone)]
#[must_use = "a builder does nothing until `connect` is called"]
pub struct Builder {
    url: String,
    /// Redis Cluster: its nodes (the first reachable one tells the rest).
    nodes: Vec<String>,
    prefix: String,
    timeout: Duration,
    fault: Fault,
    breaker_failures: u32,
    breaker_cool_down: Duration,
    limits_ttl: Duration,
    max_keys: usize,
    tls: Tls,
    /// A hash of Redis whose fields `s` and `us` the scripts read as the
    /// clock, instead of `TIME` (tests only).
    clock: Option<String>,
    /// Redis Sentinel: the master's name, and its credentials.
    master: Option<Master>,
}

/// The master a Sentinel deployment serves, by name.
#[derive(Clone, Default)]
#[cfg_attr(not(feature = "sentinel"), allow(dead_code))]
struct Master {
    name: String,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

/// TLS settings beyond the URL's `rediss://`: certificates of your own.
#[derive(Clone, Default)]
struct Tls {
    /// A CA (PEM) to trust instead of the system's roots.
    root: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for servers that ask.
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("url", &redact_url(&self.url))
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("fault", &self.fault)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("limits_ttl", &self.limits_ttl)
            .field("fallback_max_keys", &self.max_keys)
            .field("tls_root_certificate", &self.tls.root.is_some())
            .field("tls_client_certificate", &self.tls.client.is_some())
            .finish()
    }
}

/// `url` with its password hidden, for messages and logs:
/// `redis://user:secret@host:6379/0` is shown as
/// `redis://user:***@host:6379/0`, and a lone user part (which some
/// clients take as a password) as `redis://***@host:6379/0`.
///
/// ```
/// use tollgate_redis::redact_url;
///
/// assert_eq!(redact_url("redis://app:s3cret@db:6379/0"), "redis://app:***@db:6379/0");
/// assert_eq!(redact_url("rediss://:s3cret@db:6380/"), "rediss://:***@db:6380/");
/// assert_eq!(redact_url("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL: nothing tells its parts apart, so show none of it
        // but its length.
        return if url.contains('@') {
            format!("<{} characters, not a URL>", url.chars().count())
        } else {
            url.to_owned()
        };
    };
    let rest_at = scheme_end + 3;
    let rest = &url[rest_at..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The last '@' ends the user part: a password may hold '@' itself.
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let user_info = &authority[..at];
    let shown_user = match user_info.find(':') {
        Some(colon) => format!("{}:***", &user_info[..colon]),
        None => "***".to_owned(),
    };
    format!("{}{shown_user}{}", &url[..rest_at], &url[rest_at + at..])
}

impl Tls {
    /// A client for `url`, with this TLS set-up.
    fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        {
            if is_tls(url) {
                install_crypto_provider();
            }
            if self.root.is_some() || self.client.is_some() {
                return redis::Client::build_with_tls(url, self.certificates());
            }
        }
        redis::Client::open(url)
    }

    fn cluster(
        &self,
        builder: redis::cluster::ClusterClientBuilder,
    ) -> redis::cluster::ClusterClientBuilder {
        #[cfg(feature = "tls")]
        {
            install_crypto_provider();
            if self.root.is_some() || self.client.is_some() {
                return builder.certs(self.certificates());
            }
        }
        builder
    }

    #[cfg(feature = "tls")]
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root.clone(),
        }
    }
}

fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
}

/// rustls needs a process-wide crypto provider when the application
/// chose none: `ring`'s, installed once. One installed before is kept.
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first: either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A `rediss://` URL without the `tls` feature, or certificates given
/// for a plain `redis://` URL: said at once, plainly.
fn check_scheme(url: &str, shown: &str, tls: &Tls) -> Result<(), StoreError> {
    let wants_tls = is_tls(url);
    if wants_tls && !cfg!(feature = "tls") {
        return Err(StoreError::config(format!(
            "{shown}: rediss:// (TLS) needs the `tls` feature of tollgate-redis"
        )));
    }
    if !wants_tls && (tls.root.is_some() || tls.client.is_some()) {
        return Err(StoreError::config(format!(
            "{shown}: TLS certificates were given for a URL without TLS; use rediss://"
        )));
    }
    Ok(())
}

/// The passwords of some URLs, to hide them from messages that quote
/// what a library said (a URL parser may echo its input).
#[derive(Clone)]
struct Secrets(Vec<String>);

impl Secrets {
    fn of<'a>(urls: impl Iterator<Item = &'a str>) -> Self {
        let mut secrets = Vec::new();
        for url in urls {
            let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
                // Not a URL: the whole text may be a secret.
                if url.contains('@') {
                    secrets.push(url.to_owned());
                }
                continue;
            };
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            if let Some(at) = authority.rfind('@') {
                let user_info = &authority[..at];
                let secret = user_info.split_once(':').map_or(user_info, |(_, p)| p);
                if !secret.is_empty() {
                    secrets.push(secret.to_owned());
                }
            }
        }
        Self(secrets)
    }

    fn scrub(&self, mut message: String) -> String {
        for secret in &self.0 {
            if message.contains(secret.as_str()) {
                message = message.replace(secret.as_str(), "***");
            }
        }
        message
    }
}

/// A failed connection, said plainly: authentication refused, or what
/// the client reported.
fn refused(error: &RedisError, shown: &str, secrets: &Secrets) -> StoreError {
    let code = error.code().unwrap_or("");
    if error.kind() == redis::ErrorKind::AuthenticationFailed || code == "WRONGPASS" {
        return StoreError::new(
            StoreErrorKind::Auth,
            format!(
                "{shown} refused the user name or password (WRONGPASS): check the URL's \
                 credentials (redis://USER:PASSWORD@host:port/)"
            ),
        );
    }
    if code == "NOAUTH" {
        return noauth(shown);
    }
    let (kind, message) = match error.kind() {
        redis::ErrorKind::ParseError | redis::ErrorKind::TypeError => (
            StoreErrorKind::NotRedis,
            format!("{shown} did not answer as Redis does: {error}; is the port Redis'?"),
        ),
        _ if error.is_timeout() => (
            StoreErrorKind::Timeout,
            format!("{shown} accepted the connection but did not answer in time: is it Redis?"),
        ),
        _ => (
            StoreErrorKind::Redis,
            format!("cannot connect to {shown}: {error}"),
        ),
    };
    StoreError::new(kind, secrets.scrub(message))
}

fn noauth(shown: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Auth,
        format!(
            "{shown} requires a password (NOAUTH): put it in the URL, \
             redis://:PASSWORD@host:port/ or redis://USER:PASSWORD@host:port/"
        ),
    )
}

/// A connection to one Redis (its manager reconnects by itself), checked
/// with [`check_server`].
async fn connect_one(
    client: redis::Client,
    shown: &str,
    timeout: Duration,
    secrets: &Secrets,
    scripts: &Scripts,
) -> Result<ConnectionManager, StoreError> {
    // No response timeout of its own: every call through it is bounded by
    // the store's (one timer a call, not two).
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(timeout.max(Duration::from_millis(250)))
        .set_number_of_retries(1)
        .set_max_delay(100);
    let wait = timeout.max(Duration::from_secs(2));
    let mut manager =
        tokio::time::timeout(wait, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("connecting to {shown}: no answer within {wait:?}"),
                )
            })?
            .map_err(|e| refused(&e, shown, secrets))?;
    check_server(&mut manager, shown, timeout, secrets, scripts).await?;
    Ok(manager)
}

/// Checks at connect time that the server is a Redis this store can use:
/// loading the scripts needs authentication and scripting, so a missing
/// password, a user without the right to run scripts and a server that
/// is not Redis each fail here, before any decision, not later as a
/// fleet deciding in memory.
async fn check_server<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    shown: &str,
    timeout: Duration,
    secrets: &Secrets,
    scripts: &Scripts,
) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    let scripts = [&scripts.decide, &scripts.adjust, &scripts.read];
    for script in scripts {
        pipe.cmd("SCRIPT").arg("LOAD").arg(&*script.code);
    }
    let wait = timeout.max(Duration::from_secs(2));
    let loaded: Vec<String> = match tokio::time::timeout(wait, pipe.query_async(conn)).await {
        Err(_) => {
            return Err(StoreError::new(
                StoreErrorKind::NotRedis,
                format!(
                "{shown} accepted the connection but did not answer within {wait:?}: is it Redis?"
            ),
            ))
        }
        Ok(Err(e)) => {
            let code = e.code().unwrap_or("");
            return Err(match code {
                "NOAUTH" => noauth(shown),
                "WRONGPASS" => refused(&e, shown, secrets),
                "NOPERM" => StoreError::new(
                    StoreErrorKind::Auth,
                    format!(
                        "{shown}: the user may not load scripts (NOPERM): it needs \
                         SCRIPT LOAD, EVALSHA and EVAL (+@scripting) on the prefix's keys"
                    ),
                ),
                _ if matches!(
                    e.kind(),
                    redis::ErrorKind::ParseError
                        | redis::ErrorKind::TypeError
                        | redis::ErrorKind::IoError
                        | redis::ErrorKind::ResponseError
                ) =>
                {
                    StoreError::new(
                        StoreErrorKind::NotRedis,
                        secrets.scrub(format!(
                            "{shown} did not answer as Redis does (loading the scripts): {e}"
                        )),
                    )
                }
                _ => StoreError::new(
                    StoreErrorKind::Redis,
                    secrets.scrub(format!("{shown} failed to load the scripts: {e}")),
                ),
            });
        }
        Ok(Ok(loaded)) => loaded,
    };
    if loaded.len() != scripts.len()
        || loaded
            .iter()
            .zip(scripts)
            .any(|(sha, script)| *sha != script.sha)
    {
        return Err(StoreError::new(
            StoreErrorKind::NotRedis,
            format!("{shown} did not answer SCRIPT LOAD as Redis does (got {loaded:?})"),
        ));
    }
    Ok(())
}

impl Builder {
    /// The prefix of every Redis key this store writes (default
    /// `tollgate`): one per limiter, so that limiters sharing a Redis do
    /// not share keys. At most [`MAX_PREFIX_LEN`] bytes, without `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a call to Redis may take, connecting included (default
    /// 50 ms); past it the call counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do while Redis fails (default [`Fault::FailOpen`]).
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Consecutive failures that open the circuit (default 5).
    pub fn breaker_failures(mut self, failures: u32) -> Self {
        self.breaker_failures = failures;
        self
    }

    /// How long an open circuit keeps calls away from Redis before one
    /// probes it (default 1 s).
    pub fn breaker_cool_down(mut self, cool_down: Duration) -> Self {
        self.breaker_cool_down = cool_down;
        self
    }

    /// How long a key's own or learnt limits stay in Redis after they were
    /// last set (default 24 h).
    pub fn limits_ttl(mut self, ttl: Duration) -> Self {
        self.limits_ttl = ttl;
        self
    }

    /// The most keys the in-memory store used while failing open holds
    /// (default 100,000).
    pub fn fallback_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The scripts read their clock from the Redis hash `key` (fields `s`
    /// and `us`, as `TIME` answers) instead of `TIME`, so that a test sets
    /// the instant of every decision (a single Redis only; feature
    /// `testing`). Never for production: every process must share one
    /// clock, and `TIME` is Redis' own.
    #[cfg(feature = "testing")]
    pub fn clock_from_hash(mut self, key: impl Into<String>) -> Self {
        self.clock = Some(key.into());
        self
    }

    /// With [`RedisStore::sentinel_builder`]: the user (or none, for
    /// `default`) and password of the master and its replicas, and the
    /// database number. Feature `sentinel`.
    #[cfg(feature = "sentinel")]
    pub fn master_credentials(
        mut self,
        username: Option<&str>,
        password: Option<&str>,
        db: i64,
    ) -> Self {
        if let Some(master) = &mut self.master {
            master.username = username.map(str::to_owned);
            master.password = password.map(str::to_owned);
            master.db = db;
        }
        self
    }

    /// With `rediss://` URLs, trust this CA (PEM) instead of the system's
    /// root certificates: for a Redis whose certificate your own CA
    /// signed. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root = Some(pem.into());
        self
    }

    /// With `rediss://` URLs, present this client certificate and key
    /// (PEM), for a Redis that authenticates clients by certificate
    /// (`tls-auth-clients yes`). Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// Checks the settings and connects. Fails when a setting is out of
    /// range or Redis cannot be reached within the timeout (so that a
    /// wrong URL shows at start-up, not as a fleet failing open).
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let Self {
            url,
            nodes,
            prefix,
            timeout,
            fault,
            breaker_failures,
            breaker_cool_down,
            limits_ttl,
            max_keys,
            tls,
            clock,
            master,
        } = self;
        check_prefix(&prefix)?;
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err(StoreError::config(format!(
                "invalid timeout {timeout:?}: more than zero, at most 60 s"
            )));
        }
        if breaker_failures == 0 {
            return Err(StoreError::config(
                "breaker_failures must be at least 1".to_owned(),
            ));
        }
        if limits_ttl < Duration::from_secs(1) {
            return Err(StoreError::config(format!(
                "invalid limits_ttl {limits_ttl:?}: at least 1 s"
            )));
        }
        let scripts = Scripts::new(clock.as_deref());
        let mut secrets =
            Secrets::of(std::iter::once(url.as_str()).chain(nodes.iter().map(String::as_str)));
        if let Some(password) = master.as_ref().and_then(|m| m.password.clone()) {
            secrets.0.push(password);
        }
        #[allow(unused_mut)]
        let mut sentinels = None;
        let conn = if nodes.is_empty() {
            let shown = redact_url(&url);
            check_scheme(&url, &shown, &tls)?;
            let client = tls.client(&url).map_err(|e| {
                StoreError::config(secrets.scrub(format!("invalid Redis URL {shown}: {e}")))
            })?;
            Conn::One(connect_one(client, &shown, timeout, &secrets, &scripts).await?)
        } else if let Some(master) = master {
            #[cfg(feature = "sentinel")]
            {
                let (manager, sentinel) =
                    sentinel::connect(&nodes, master, &tls, timeout, &secrets, &scripts).await?;
                sentinels = Some(sentinel);
                Conn::One(manager)
            }
            #[cfg(not(feature = "sentinel"))]
            {
                let _ = master;
                return Err(StoreError::config(
                    "Redis Sentinel needs the `sentinel` feature of tollgate-redis".to_owned(),
                ));
            }
        } else {
            let shown = nodes
                .iter()
                .map(|n| redact_url(n))
                .collect::<Vec<_>>()
                .join(", ");
            for (node, shown) in nodes.iter().zip(shown.split(", ")) {
                check_scheme(node, shown, &tls)?;
            }
            let client = tls
                .cluster(redis::cluster::ClusterClientBuilder::new(nodes))
                .connection_timeout(timeout.max(Duration::from_millis(250)))
                .response_timeout(timeout)
                .build()
                .map_err(|e| {
                    StoreError::config(secrets.scrub(format!("invalid Redis Cluster {shown}: {e}")))
                })?;
            let mut cluster = tokio::time::timeout(
                timeout.max(Duration::from_secs(2)),
                client.get_async_connection(),
            )
            .await
            .map_err(|_| {
                StoreError::new(StoreErrorKind::Timeout, format!("connecting to {shown}"))
            })?
            .map_err(|e| refused(&e, &shown, &secrets))?;
            check_server(&mut cluster, &shown, timeout, &secrets, &scripts).await?;
            Conn::Cluster(cluster)
        };
        let counts = Counts::default();
        let batcher = match &conn {
            Conn::One(manager) => Some(Arc::new(scripts.batcher(
                manager.clone(),
                &counts.reloads,
                timeout,
            ))),
            Conn::Cluster(_) => None,
        };
        let member = format!(
            "{}-{:x}",
            std::process::id(),
            sha2::Sha256::digest(format!(
                "{:?}{:?}",
                Instant::now(),
                std::thread::current().id()
            ))
            .iter()
            .take(8)
            .fold(0u64, |acc, b| acc << 8 | u64::from(*b))
        );
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn: RwLock::new(conn),
                batcher: RwLock::new(batcher),
                sentinels,
                timeout,
                watch: watch::Watch::new(timeout),
                fault,
                breaker: Breaker::new(breaker_failures, breaker_cool_down),
                limits_ttl_ms: u64::try_from(limits_ttl.as_millis()).unwrap_or(u64::MAX),
                local: fallback::Local::new(max_keys, limits_ttl),
                counts,
                scripts,
                fleet_key: format!("{prefix}:fleet"),
                member,
                meters: meters::Meters::new(&prefix),
            }),
            prefix: Arc::from(prefix),
        };
        // Counted in the fleet before the first decision; then kept there
        // by a heartbeat that ends with the store.
        store.inner.heartbeat().await;
        tokio::spawn(heartbeat(Arc::downgrade(&store.inner)));
        Ok(store)
    }
}

/// A [`Store`] in Redis: one limit for every process that shares it.
///
/// Cloning is cheap and shares the connection;
/// [`with_prefix`](Self::with_prefix) gives another limiter its own keys
/// over the same connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    prefix: Arc<str>,
}

/// One Redis, or a Redis Cluster (which follows `MOVED` and `ASK` by
/// itself): both multiplexed.
#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

struct Inner {
    /// The connection: swapped when Sentinel names another master.
    conn: RwLock<Conn>,
    /// Sends decisions in batches (a single Redis only).
    batcher: RwLock<Option<Arc<batch::Batcher>>>,
    /// Redis Sentinel, to ask for the master again when it fails.
    #[cfg_attr(not(feature = "sentinel"), allow(dead_code))]
    sentinels: Option<SentinelsOf>,
    timeout: Duration,
    /// Bounds each call by `timeout`.
    watch: watch::Watch,
    fault: Fault,
    breaker: Breaker,
    limits_ttl_ms: u64,
    /// What is known here of the keys, to decide with while Redis fails.
    local: fallback::Local,
    counts: Counts,
    scripts: Scripts,
    /// The sorted set of the stores sharing this Redis and prefix.
    fleet_key: String,
    /// This store's name in it.
    member: String,
    meters: meters::Meters,
}

/// The sentinels that name the master (feature `sentinel`); without the
/// feature, never present.
#[cfg(feature = "sentinel")]
type SentinelsOf = sentinel::Sentinels;
#[cfg(not(feature = "sentinel"))]
type SentinelsOf = std::convert::Infallible;

impl Inner {
    /// The connection now.
    fn conn(&self) -> Conn {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The batcher now (a single Redis only).
    fn batcher(&self) -> Option<Arc<batch::Batcher>> {
        self.batcher
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Tells Redis this store is alive, and counts the fleet. A failure
    /// keeps the last count.
    async fn heartbeat(&self) {
        let (code, sha) = (&*self.scripts.fleet.code, &self.scripts.fleet.sha);
        let ttl = FLEET_TTL.as_millis().to_string();
        let args = [self.member.as_str(), ttl.as_str()];
        let reply = tokio::time::timeout(self.timeout.max(Duration::from_millis(250)), async {
            match self.conn() {
                Conn::One(mut conn) => {
                    batch::eval_one(&mut conn, code, sha, &self.fleet_key, &args[..]).await
                }
                Conn::Cluster(mut conn) => {
                    batch::eval_one(&mut conn, code, sha, &self.fleet_key, &args[..]).await
                }
            }
        })
        .await;
        if let Ok(Ok(redis::Value::Int(count))) = reply {
            let processes = u32::try_from(count).unwrap_or(u32::MAX);
            self.local.set_fleet(processes);
            self.meters.fleet(processes);
        }
    }
}

/// Keeps a store counted in its fleet while it lives.
async fn heartbeat(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.heartbeat().await;
    }
}

impl Drop for Inner {
    /// Leaves the fleet at once, where a runtime is at hand (else the
    /// entry lapses within `FLEET_TTL`).
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (conn, key, member) = (self.conn(), self.fleet_key.clone(), self.member.clone());
        runtime.spawn(async move {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&key).arg(&member);
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                match conn {
                    Conn::One(mut c) => zrem.query_async::<redis::Value>(&mut c).await,
                    Conn::Cluster(mut c) => zrem.query_async::<redis::Value>(&mut c).await,
                }
            })
            .await;
        });
    }
}

#[derive(Default)]
struct Counts {
    admitted: AtomicU64,
    denied: AtomicU64,
    failures: AtomicU64,
    fallbacks: AtomicU64,
    failed_closed: AtomicU64,
    stricter: AtomicU64,
    reloads: Arc<AtomicU64>,
}

/// A script as this store loads it: its code and its SHA-1.
struct Loaded {
    code: Arc<str>,
    sha: String,
}

impl Loaded {
    fn new(code: impl Into<Arc<str>>) -> Self {
        let code = code.into();
        let sha = sha1_hex(&code);
        Self { code, sha }
    }
}

/// The store's scripts.
struct Scripts {
    decide: Loaded,
    adjust: Loaded,
    read: Loaded,
    /// The heartbeat's (always on Redis' clock).
    fleet: Loaded,
}

impl Scripts {
    /// The scripts, reading the clock from Redis' `TIME`, or from the hash
    /// `clock` (fields `s` and `us`) for tests that set the instant.
    fn new(clock: Option<&str>) -> Self {
        let on_clock = |code: &str| -> Loaded {
            match clock {
                None => Loaded::new(code),
                Some(key) => {
                    let read = format!(
                        "{{redis.call('HGET', '{key}', 's'), redis.call('HGET', '{key}', 'us')}}"
                    );
                    Loaded::new(
                        code.replace("redis.call('TIME')", &read)
                            .replace("call('TIME')", &read),
                    )
                }
            }
        };
        Self {
            decide: on_clock(DECIDE),
            adjust: on_clock(ADJUST),
            read: on_clock(READ),
            fleet: Loaded::new(FLEET),
        }
    }

    fn get(&self, script: Script) -> &Loaded {
        match script {
            Script::Decide => &self.decide,
            Script::Adjust => &self.adjust,
            Script::Read => &self.read,
        }
    }

    /// A batcher of decisions over `conn`.
    fn batcher(
        &self,
        conn: ConnectionManager,
        reloads: &Arc<AtomicU64>,
        timeout: Duration,
    ) -> batch::Batcher {
        batch::Batcher::new(
            conn,
            Arc::clone(&self.decide.code),
            self.decide.sha.clone(),
            Arc::clone(reloads),
            timeout,
        )
    }
}

fn sha1_hex(code: &str) -> String {
    redis::Script::new(code).get_hash().to_owned()
}

/// What a [`RedisStore`] counts beyond [`StoreStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Calls to Redis that failed or timed out.
    pub failures: u64,
    /// Calls decided in this process because Redis failed (failing open).
    pub fallbacks: u64,
    /// Calls answered with a store failure because Redis failed (failing
    /// closed). The log says when Redis starts failing and when it is
    /// back, once each; this counts every call in between.
    pub failed_closed: u64,
    /// Decisions made with a stricter limit than this process passed:
    /// another process passed it for the same key within its period (a
    /// rolling deploy that changes a limit). See "One key, one quota".
    pub stricter: u64,
    /// Scripts sent again after Redis answered `NOSCRIPT`.
    pub reloads: u64,
    /// Whether the circuit is open now.
    pub open: bool,
    /// The stores sharing this Redis and prefix (this one included), as
    /// last counted while Redis answered: while it fails, each decides at
    /// its share of every limit.
    pub fleet: u32,
}

impl RedisStore {
    /// A builder for a store at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> Builder {
        Builder {
            url: url.into(),
            nodes: Vec::new(),
            prefix: "tollgate".to_owned(),
            timeout: Duration::from_millis(50),
            fault: Fault::FailOpen,
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(1),
            limits_ttl: Duration::from_secs(24 * 3600),
            max_keys: 100_000,
            tls: Tls::default(),
            clock: None,
            master: None,
        }
    }

    /// A builder for a store in a Redis Cluster, given some of its nodes
    /// (`redis://host:port/`): every key of a limiter key shares one hash
    /// tag, so a budget's dimensions stay in one slot, and the client
    /// follows `MOVED` and `ASK` when slots move.
    pub fn cluster_builder<I, S>(nodes: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut builder = Self::builder(String::new());
        builder.nodes = nodes.into_iter().map(Into::into).collect();
        builder
    }

    /// A builder for a store in the master a Redis Sentinel deployment
    /// serves as `master_name`, given some of its sentinels
    /// (`redis://host:26379/`; their own credentials in their URLs). The
    /// store asks the sentinels for the master when connecting, and again
    /// whenever the master fails (its circuit opens, or it answers
    /// `READONLY` after a failover): decisions follow the master that
    /// Sentinel promotes. The master's credentials:
    /// [`master_credentials`](Builder::master_credentials). Feature
    /// `sentinel`.
    #[cfg(feature = "sentinel")]
    pub fn sentinel_builder<I, S>(sentinels: I, master_name: impl Into<String>) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut builder = Self::builder(String::new());
        builder.nodes = sentinels.into_iter().map(Into::into).collect();
        builder.master = Some(Master {
            name: master_name.into(),
            ..Master::default()
        });
        builder
    }

    /// A store at `url` with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// The same connection and settings, with keys under another prefix
    /// (checked as [`Builder::prefix`]).
    pub fn with_prefix(&self, prefix: &str) -> Result<Self, StoreError> {
        check_prefix(prefix)?;
        Ok(Self {
            inner: Arc::clone(&self.inner),
            prefix: Arc::from(prefix),
        })
    }

    /// The prefix of this store's keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What the store counts of Redis.
    pub fn redis_stats(&self) -> RedisStats {
        let c = &self.inner.counts;
        RedisStats {
            failures: c.failures.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
            failed_closed: c.failed_closed.load(Ordering::Relaxed),
            stricter: c.stricter.load(Ordering::Relaxed),
            reloads: c.reloads.load(Ordering::Relaxed),
            open: self.inner.breaker.is_open(),
            fleet: self.inner.local.fleet(),
        }
    }

    /// The Redis key of a limiter key: `PREFIX:{HASH}`, which holds its
    /// state, its own and learnt limits and its pause.
    pub fn redis_key<K: Hash + ?Sized>(&self, key: &K) -> String {
        use sha2::digest::generic_array::sequence::Split;
        type HalfDigest = sha2::digest::generic_array::GenericArray<u8, sha2::digest::consts::U16>;
        let mut hasher = Sha(Sha256::new());
        hasher.0.update((self.prefix.len() as u64).to_le_bytes());
        hasher.0.update(self.prefix.as_bytes());
        key.hash(&mut hasher);
        let digest = hasher.0.finalize();
        // The first 128 bits, in the digest type's own lowercase hex.
        let (half, _): (HalfDigest, HalfDigest) = digest.split();
        format!("{}:{{{half:x}}}", self.prefix)
    }

    /// Runs one script: `EVALSHA`, then `EVAL` on `NOSCRIPT`; bounded by
    /// the timeout, and kept from Redis while the circuit is open.
    async fn call(
        &self,
        script: Script,
        key: &str,
        args: &[String],
    ) -> Result<Vec<redis::Value>, StoreError> {
        let op = match script {
            Script::Decide => meters::Op::Decide,
            Script::Adjust => meters::Op::Adjust,
            Script::Read => meters::Op::Read,
        };
        self.guard(op, async {
            self.eval(script, key, args)
                .await
                .map_err(|e| StoreError::redis(&e))
        })
        .await
    }

    /// Runs a call to Redis unless the circuit is open, bounded by the
    /// timeout; counts its failure or success.
    async fn guard<T>(
        &self,
        op: meters::Op,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        if !inner.breaker.allow() {
            inner.meters.failure(StoreErrorKind::Open);
            return Err(StoreError::new(
                StoreErrorKind::Open,
                "the circuit is open after repeated failures".to_owned(),
            ));
        }
        #[cfg(feature = "metrics")]
        let start = tokio::time::Instant::now();
        let result = match inner.watch.bound(call).await {
            Some(result) => result,
            None => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("no answer within {:?}", inner.timeout),
            )),
        };
        #[cfg(feature = "metrics")]
        inner.meters.call(op, start.elapsed());
        #[cfg(not(feature = "metrics"))]
        let _ = op;
        match &result {
            Ok(_) => {
                if inner.breaker.success() {
                    inner.meters.circuit_open(false);
                    inner.local.recovered();
                }
            }
            Err(e) => {
                inner.counts.failures.fetch_add(1, Ordering::Relaxed);
                inner.meters.failure(e.kind());
                let opened = inner.breaker.failure(e);
                if opened {
                    inner.meters.circuit_open(true);
                }
                #[cfg(feature = "sentinel")]
                if opened || e.is_read_only() {
                    sentinel::ask_for_master(&self.inner);
                }
                #[cfg(not(feature = "sentinel"))]
                let _ = opened;
            }
        }
        result
    }

    async fn eval<A: redis::ToRedisArgs + Sync>(
        &self,
        script: Script,
        key: &str,
        args: A,
    ) -> Result<Vec<redis::Value>, RedisError> {
        let loaded = self.inner.scripts.get(script);
        let (code, sha) = (&*loaded.code, &loaded.sha);
        let reloads = &self.inner.counts.reloads;
        match self.inner.conn() {
            Conn::One(mut conn) => {
                batch::eval_script(&mut conn, code, sha, key, args, reloads).await
            }
            Conn::Cluster(mut conn) => {
                batch::eval_script(&mut conn, code, sha, key, args, reloads).await
            }
        }
    }

    /// One decision's share of the decide script's reply: in a batch on a
    /// single Redis, in a call of its own in a Cluster.
    async fn decide_remote(
        &self,
        key: String,
        args: Vec<u8>,
        dimensions: usize,
    ) -> Result<Vec<redis::Value>, StoreError> {
        if let Some(batcher) = self.inner.batcher() {
            return batcher.decide(key, args, dimensions).await;
        }
        let values = self
            .eval(Script::Decide, &key, &args[..])
            .await
            .map_err(|e| StoreError::redis(&e))?;
        batch::split_one(values, dimensions)
    }

    fn count(&self, decision: &Decision) {
        let counts = &self.inner.counts;
        match decision {
            Decision::Admit(_) => counts.admitted.fetch_add(1, Ordering::Relaxed),
            _ => counts.denied.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// A decision was made with a stricter limit than this process passed
    /// (another process passed it for the key lately): counted, and logged
    /// once.
    fn stricter_quota(&self) {
        let counts = &self.inner.counts;
        self.inner.meters.stricter();
        if counts.stricter.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                prefix = %self.prefix,
                "processes pass different limits for one key: the strictest passed lately \
                 applies to all (logged once; RedisStats::stricter counts them)"
            );
        }
    }

    /// Whether to decide locally after `error`, or answer it.
    fn fall_back(&self, error: StoreError) -> Result<(), StoreError> {
        match self.inner.fault {
            Fault::FailOpen => {
                self.inner.counts.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.inner.meters.fallback();
                Ok(())
            }
            Fault::FailClosed => {
                self.inner.meters.failed_closed();
                self.inner
                    .counts
                    .failed_closed
                    .fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Script {
    Decide,
    Adjust,
    Read,
}

/// Feeds what a key's `Hash` writes into SHA-256.
struct Sha(Sha256);

impl Hasher for Sha {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The largest burst or cost the decide script takes (larger ones are
/// cut down to it; see [`Store::decide`] for [`RedisStore`]).
const MAX_SCRIPT_COUNT: u64 = 1 << 52;

/// The longest interval the scripts take, in microseconds (142 years):
/// sums of instants stay exact in Lua's numbers.
const MAX_INTERVAL_US: u128 = 1 << 52;

/// A key prefix: 1 to [`MAX_PREFIX_LEN`] bytes, without the braces of a
/// Cluster hash tag.
fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || prefix.contains(['{', '}']) {
        return Err(StoreError::config(format!(
            "invalid key prefix {prefix:?}: 1 to {MAX_PREFIX_LEN} bytes, without braces"
        )));
    }
    Ok(())
}

/// A quota as the scripts take it: interval in microseconds (rounded up),
/// burst, period in microseconds (rounded up) and in nanoseconds.
fn script_quota(quota: &Quota) -> [String; 4] {
    let period_ns = quota.period().as_nanos();
    [
        interval_us(quota).to_string(),
        quota.burst_size().to_string(),
        period_ns.div_ceil(1000).max(1).to_string(),
        period_ns.to_string(),
    ]
}

/// A quota's text in Redis: `count period_ns burst`.
fn quota_text(quota: &Quota) -> String {
    format!(
        "{} {} {}",
        quota.count(),
        quota.period().as_nanos(),
        quota.burst_size()
    )
}

fn parse_quota(text: &str) -> Option<Quota> {
    let mut parts = text.split(' ').map(str::parse::<u64>);
    let (Some(Ok(count)), Some(Ok(period)), Some(Ok(burst)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Quota::new(count, Duration::from_nanos(period))
        .and_then(|q| q.burst(burst))
        .ok()
}

/// A quota's replenish interval in whole microseconds, rounded up.
fn interval_us(quota: &Quota) -> u64 {
    let us = quota
        .replenish_interval()
        .as_nanos()
        .div_ceil(1000)
        .clamp(1, MAX_INTERVAL_US);
    u64::try_from(us).unwrap_or(1 << 52)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros().min(1 << 52)).unwrap_or(1 << 52)
}

/// A reply's field as a number.
fn number(reply: &[String], at: usize) -> Result<u64, StoreError> {
    reply
        .get(at)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| StoreError::reply(reply))
}

fn us_to_ns(us: u64) -> u64 {
    us.saturating_mul(1000)
}

impl<K: Hash + ?Sized + Sync> Store<K> for RedisStore {
    type Error = StoreError;

    async fn decide(
        &self,
        key: &K,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Result<Decision, StoreError> {
        let n = limits.len().min(costs.len()).min(MAX_DIMENSIONS);
        let mut args = Vec::with_capacity(8 + 20 * n);
        msgpack::put_uint(&mut args, n as u64);
        msgpack::put_uint(&mut args, micros(max_wait));
        for (quota, &cost) in limits.iter().zip(costs).take(n) {
            // Exact in Lua's numbers: a burst of more than 2^52 is taken
            // as 2^52, and a cost stays above it when it was above it.
            let burst = quota.burst_size();
            let cost = if cost <= burst {
                cost.min(MAX_SCRIPT_COUNT)
            } else {
                cost.min(2 * MAX_SCRIPT_COUNT)
            };
            msgpack::put_uint(&mut args, interval_us(quota));
            msgpack::put_uint(&mut args, burst.min(MAX_SCRIPT_COUNT));
            msgpack::put_uint(&mut args, cost);
        }
        let key = self.redis_key(key);
        let reply = self
            .guard(meters::Op::Decide, self.decide_remote(key.clone(), args, n))
            .await
            .and_then(|reply| parse_decision(&reply, limits, n));
        match reply {
            Ok((decision, seen)) => {
                self.count(&decision);
                if seen.stricter {
                    self.stricter_quota();
                }
                if let Some(restore) = self.inner.local.copy(&key, limits, costs, &decision, &seen)
                {
                    // Redis decided without what it lost of the key: this
                    // call is decided by what this process knows, as in an
                    // outage, while Redis is given it back.
                    self.restore(key.clone(), restore);
                    let local = self
                        .inner
                        .local
                        .decide_restoring(&key, limits, costs, max_wait);
                    return Ok(local);
                }
                Ok(decision)
            }
            Err(e) => {
                self.fall_back(e)?;
                let decision = self.inner.local.decide(&key, limits, costs, max_wait);
                self.count(&decision);
                Ok(decision)
            }
        }
    }

    async fn adjust(
        &self,
        key: &K,
        limits: &[Quota],
        changes: &[Change],
    ) -> Result<(), StoreError> {
        self.adjust_at(&self.redis_key(key), limits, changes).await
    }

    async fn read(&self, key: &K, limits: &[Quota]) -> Result<View, StoreError> {
        let n = limits.len().min(MAX_DIMENSIONS);
        let key = self.redis_key(key);
        match self.call(Script::Read, &key, &[n.to_string()]).await {
            Ok(reply) => parse_view(&texts(reply), limits, n),
            Err(e) => {
                self.fall_back(e)?;
                Ok(self.inner.local.read(&key, limits))
            }
        }
    }

    fn give_back(&self, key: &K, limits: &[Quota], costs: &[u64]) {
        let mut changes = [Change::Keep; MAX_DIMENSIONS];
        for (change, &cost) in changes.iter_mut().zip(costs) {
            *change = Change::Refund(cost);
        }
        let n = costs.len().min(MAX_DIMENSIONS);
        let changes = changes.get(..n).unwrap_or(&[]).to_vec();
        let limits = limits.to_vec();
        let store = self.clone();
        let redis_key = self.redis_key(key);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Given back in the background: a failure only leaves the limit
        // stricter until the reservation would have been due.
        runtime.spawn(async move {
            let _ = store.adjust_at(&redis_key, &limits, &changes).await;
        });
    }

    /// The processes counted in the store's fleet (see the crate's docs,
    /// Faults), each second.
    fn sharers(&self) -> u32 {
        self.inner.local.fleet()
    }

    fn stats(&self) -> StoreStats {
        let c = &self.inner.counts;
        StoreStats::new(
            c.admitted.load(Ordering::Relaxed),
            c.denied.load(Ordering::Relaxed),
            0,
            0,
        )
    }
}

impl RedisStore {
    /// Gives Redis back what it lost of a key (after a restart), in the
    /// background: its own limits, then no more room than this process
    /// knew it had.
    fn restore(&self, key: String, restore: fallback::Restore) {
        tracing::debug!(?restore, "giving Redis back a key it lost");
        let store = self.clone();
        tokio::spawn(async move {
            let n = restore.n;
            let quotas = restore.quotas.get(..n).unwrap_or(&[]);
            let limits = restore.limits.get(..n).unwrap_or(&[]);
            let mut calls = Vec::with_capacity(2);
            if limits.iter().any(|c| !matches!(c, Change::Keep)) {
                calls.push(store.adjust_args(quotas, limits.iter().map(|c| encode(*c))));
            }
            // Each dimension full no sooner than here: what was spent and
            // reserved during the outage stays spent in Redis.
            if restore.full_in.iter().take(n).any(Option::is_some) {
                let encoded = restore.full_in.iter().take(n).map(|full_in| match full_in {
                    Some(d) => (
                        "t",
                        [micros(*d).to_string(), "0".into(), "0".into(), "0".into()],
                    ),
                    None => ("k", ["0".into(), "0".into(), "0".into(), "0".into()]),
                });
                calls.push(store.adjust_args(quotas, encoded));
            }
            for args in calls {
                if store.call(Script::Adjust, &key, &args).await.is_err() {
                    // Not given back: the next answer for the key tries
                    // again.
                    store.inner.local.not_restored(&key);
                    return;
                }
            }
        });
    }

    /// The adjust script's arguments: per dimension its quota, a kind and
    /// four values.
    fn adjust_args<'a>(
        &self,
        limits: &[Quota],
        encoded: impl Iterator<Item = (&'a str, [String; 4])>,
    ) -> Vec<String> {
        let mut args = Vec::with_capacity(2 + 9 * limits.len());
        args.push(limits.len().to_string());
        args.push(self.inner.limits_ttl_ms.to_string());
        for (quota, (kind, values)) in limits.iter().zip(encoded) {
            args.extend(script_quota(quota));
            args.push(kind.to_owned());
            args.extend(
                values
                    .into_iter()
                    .map(|v| if v.is_empty() { "0".to_owned() } else { v }),
            );
        }
        args
    }

    /// [`Store::adjust`] at a key's Redis keys.
    async fn adjust_at(
        &self,
        key: &str,
        limits: &[Quota],
        changes: &[Change],
    ) -> Result<(), StoreError> {
        let n = limits.len().min(changes.len()).min(MAX_DIMENSIONS);
        let args = self.adjust_args(
            limits.get(..n).unwrap_or(&[]),
            changes.iter().take(n).map(|change| encode(*change)),
        );
        match self.call(Script::Adjust, key, &args).await {
            Ok(reply) => {
                // Redis had nothing for the key: after an outage, it may
                // have lost what this process knows.
                let fresh = matches!(reply.first(), Some(redis::Value::Int(1)));
                if let Some(restore) = self.inner.local.lost(key, limits, fresh) {
                    self.restore(key.to_owned(), restore);
                }
                // The copy kept for an outage.
                self.inner.local.adjust(key, limits, changes);
                Ok(())
            }
            Err(e) => {
                self.fall_back(e)?;
                self.inner.local.adjust_alone(key, limits, changes);
                Ok(())
            }
        }
    }
}

/// A change as the adjust script takes it: a kind and four values.
fn encode(change: Change) -> (&'static str, [String; 4]) {
    let one = |v: u64| [v.to_string(), String::new(), String::new(), String::new()];
    match change {
        Change::Keep => ("k", Default::default()),
        Change::Charge(c) => ("c", one(c)),
        Change::Refund(c) => ("r", one(c)),
        Change::AtMost(c) => ("a", one(c)),
        Change::Observe { limit, remaining } => (
            "o",
            [
                limit.to_string(),
                remaining.to_string(),
                String::new(),
                String::new(),
            ],
        ),
        Change::Limit(own) => {
            let [interval, burst, period_us, _] = script_quota(&own);
            ("l", [interval, burst, quota_text(&own), period_us])
        }
        Change::Unlimit => ("u", Default::default()),
        Change::HoldFor(hold) => ("h", one(micros(hold))),
    }
}

/// A script's reply as text: integers and strings alike.
fn texts(reply: Vec<redis::Value>) -> Vec<String> {
    reply
        .into_iter()
        .map(|value| match value {
            redis::Value::Int(n) => n.to_string(),
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            redis::Value::SimpleString(text) => text,
            redis::Value::Okay => "OK".to_owned(),
            _ => String::new(),
        })
        .collect()
}

fn quotas_in_force(reply_text: &str, default: &Quota) -> Quota {
    if reply_text.is_empty() {
        *default
    } else {
        parse_quota(reply_text).unwrap_or(*default)
    }
}

/// A reply's integer field.
fn int(reply: &[redis::Value], at: usize) -> Result<u64, StoreError> {
    match reply.get(at) {
        Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
        Some(redis::Value::BulkString(b)) => {
            std::str::from_utf8(b).ok().and_then(|t| t.parse().ok())
        }
        _ => None,
    }
    .ok_or_else(|| StoreError::values(reply))
}

/// A reply's text field ('' for anything else).
fn text(reply: &[redis::Value], at: usize) -> &str {
    match reply.get(at) {
        Some(redis::Value::BulkString(b)) => std::str::from_utf8(b).unwrap_or(""),
        Some(redis::Value::SimpleString(t)) => t,
        _ => "",
    }
}

/// The decide script's codes (3, a key it could not read, is taken
/// apart by `batch::split`).
const ADMIT: u64 = 0;
const DENY: u64 = 1;
const NEVER: u64 = 2;

fn parse_decision(
    reply: &[redis::Value],
    limits: &[Quota],
    n: usize,
) -> Result<(Decision, fallback::Seen), StoreError> {
    if reply.len() < batch::HEAD + 4 * n {
        return Err(StoreError::values(reply));
    }
    let code = int(reply, 0)?;
    let dimension = usize::try_from(int(reply, 1)?).unwrap_or(0);
    let wait = us_to_ns(int(reply, 2)?);
    let now = us_to_ns(int(reply, 3)?);
    let held = us_to_ns(int(reply, 4)?);
    let until = us_to_ns(int(reply, 5)?);
    let mut seen = fallback::Seen {
        paused_for: Duration::from_nanos(until.saturating_sub(now)),
        fresh: int(reply, 6)? == 1,
        stricter: int(reply, 7)? == 1,
        ..fallback::Seen::default()
    };
    let mut tats = [0u64; MAX_DIMENSIONS];
    let mut quotas = [None; MAX_DIMENSIONS];
    let mut admit = Admit::now(Snapshot::new(0, 0, Duration::ZERO));
    admit.place.set_held(Duration::from_nanos(held));
    admit.wait = Duration::from_nanos(wait);
    for i in 0..n {
        let base = batch::HEAD + 4 * i;
        tats[i] = us_to_ns(int(reply, base)?);
        admit.place.set(
            i,
            Duration::from_nanos(us_to_ns(int(reply, base + 1)?)),
            Duration::from_nanos(us_to_ns(int(reply, base + 2)?)),
        );
        let default = limits.get(i).ok_or_else(|| StoreError::values(reply))?;
        let own = text(reply, base + 3);
        seen.own[i] = if own.is_empty() {
            None
        } else {
            parse_quota(own)
        };
        quotas[i] = Some(seen.own[i].unwrap_or(*default));
    }
    let snapshot_of = |i: usize, at: u64| -> Snapshot {
        match quotas.get(i).copied().flatten() {
            Some(quota) => transition::snapshot(tats.get(i).copied().unwrap_or(0), &quota, at),
            None => Snapshot::new(0, 0, Duration::ZERO),
        }
    };
    let decision = match code {
        NEVER => Ok(Decision::Deny(Denial::CostExceedsBurst {
            dimension,
            snapshot: snapshot_of(dimension, now),
        })),
        DENY => Ok(Decision::Deny(Denial::RateLimited {
            dimension,
            snapshot: snapshot_of(dimension, now).with_retry_after(Duration::from_nanos(wait)),
        })),
        ADMIT => {
            let due = now.saturating_add(wait);
            let mut tightest: Option<Snapshot> = None;
            for i in 0..n {
                let snapshot = snapshot_of(i, due);
                tightest = Some(match tightest {
                    Some(t) if !transition::tighter(&snapshot, &t) => t,
                    _ => snapshot,
                });
            }
            admit.snapshot = tightest.unwrap_or(admit.snapshot);
            Ok(Decision::Admit(admit))
        }
        _ => Err(StoreError::values(reply)),
    }?;
    Ok((decision, seen))
}

fn parse_view(reply: &[String], limits: &[Quota], n: usize) -> Result<View, StoreError> {
    if reply.len() < 3 + 2 * n {
        return Err(StoreError::reply(reply));
    }
    let now = us_to_ns(number(reply, 0)?);
    let until = us_to_ns(number(reply, 1)?);
    let held = us_to_ns(number(reply, 2)?);
    let mut view = View {
        limits: Vec::with_capacity(n),
        snapshots: Vec::with_capacity(n),
        paused_for: Duration::from_nanos(until.saturating_sub(now)),
        held: Duration::from_nanos(held),
    };
    for (i, default) in limits.iter().enumerate().take(n) {
        let tat = us_to_ns(number(reply, 3 + 2 * i)?);
        let quota = quotas_in_force(reply.get(4 + 2 * i).map_or("", String::as_str), default);
        view.snapshots.push(transition::snapshot(tat, &quota, now));
        view.limits.push(quota);
    }
    Ok(view)
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.inner.timeout)
            .field("fault", &self.inner.fault)
            .field("stats", &self.redis_stats())
            .finish()
    }
}

/// Why a call to Redis failed.
#[derive(Clone, Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

/// The kinds of [`StoreError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A setting or URL is invalid.
    Config,
    /// Redis did not answer within the timeout.
    Timeout,
    /// The circuit is open: Redis failed repeatedly, and is not asked
    /// until the cool-down ends.
    Open,
    /// Redis answered with an error, or the connection failed.
    Redis,
    /// Redis answered something the scripts never reply.
    Reply,
    /// Redis refused the credentials, asked for some, or denied the
    /// commands the store needs: found when connecting.
    Auth,
    /// The server at the URL does not speak Redis' protocol, or does not
    /// answer it: found when connecting.
    NotRedis,
}

impl StoreError {
    fn new(kind: StoreErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    fn config(message: String) -> Self {
        Self::new(StoreErrorKind::Config, message)
    }

    fn redis(error: &RedisError) -> Self {
        Self::new(StoreErrorKind::Redis, error.to_string())
    }

    /// Redis refused a write because it is a replica now (`READONLY`):
    /// after a failover, the old master.
    #[cfg(feature = "sentinel")]
    fn is_read_only(&self) -> bool {
        self.kind == StoreErrorKind::Redis && self.message.contains("READONLY")
    }

    fn values(reply: &[redis::Value]) -> Self {
        let mut shown = format!("{reply:?}");
        shown.truncate(200);
        Self::new(StoreErrorKind::Reply, format!("unexpected reply {shown}"))
    }

    fn reply(reply: &[String]) -> Self {
        let mut shown = format!("{reply:?}");
        shown.truncate(200);
        Self::new(StoreErrorKind::Reply, format!("unexpected reply {shown}"))
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StoreErrorKind::Config => "invalid Redis store settings",
            StoreErrorKind::Timeout => "Redis timed out",
            StoreErrorKind::Open => "Redis is failing",
            StoreErrorKind::Redis => "Redis failed",
            StoreErrorKind::Reply => "Redis answered unexpectedly",
            StoreErrorKind::Auth => "Redis refused the credentials",
            StoreErrorKind::NotRedis => "not a usable Redis",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for StoreError {}
