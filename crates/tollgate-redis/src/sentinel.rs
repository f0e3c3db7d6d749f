//! Redis Sentinel (feature `sentinel`): the master found by asking the
//! sentinels, and asked for again whenever it fails, so that decisions
//! follow the master Sentinel promotes after a failover.
//!
//! The store keeps one connection, to the master it was told of. When
//! calls to it fail until the circuit opens, or it answers `READONLY` (a
//! master demoted to a replica), the store asks the sentinels again in
//! the background, one question at a time; when they name another master,
//! it connects there (checking it as at start-up) and swaps the
//! connection. Meanwhile the store fails open or closed as configured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::RedisConnectionInfo;

use crate::{
    check_scheme, connect_one, redact_url, Conn, Inner, Master, Scripts, Secrets, StoreError,
    StoreErrorKind, Tls,
};

/// The sentinels that name the master, and the master they named last.
pub(crate) struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The master's address now.
    address: Mutex<String>,
    /// Whether a question to the sentinels is on its way.
    asking: AtomicBool,
    name: String,
    secrets: Secrets,
}

/// Asks the sentinels for `master` and connects to it.
pub(crate) async fn connect(
    sentinels: &[String],
    master: Master,
    tls: &Tls,
    timeout: Duration,
    secrets: &Secrets,
    scripts: &Scripts,
) -> Result<(ConnectionManager, Sentinels), StoreError> {
    let shown: Vec<String> = sentinels.iter().map(|s| redact_url(s)).collect();
    for (sentinel, shown) in sentinels.iter().zip(&shown) {
        check_scheme(sentinel, shown, tls)?;
    }
    let shown = shown.join(", ");
    if master.name.is_empty() {
        return Err(StoreError::config(
            "a Sentinel master's name must not be empty".to_owned(),
        ));
    }
    let info = SentinelNodeConnectionInfo {
        tls_mode: None,
        redis_connection_info: Some(RedisConnectionInfo {
            db: master.db,
            username: master.username.clone(),
            password: master.password.clone(),
            ..RedisConnectionInfo::default()
        }),
    };
    let mut client = SentinelClient::build(
        sentinels.to_vec(),
        master.name.clone(),
        Some(info),
        SentinelServerType::Master,
    )
    .map_err(|e| StoreError::config(secrets.scrub(format!("invalid sentinels {shown}: {e}"))))?;
    let master_client = ask(&mut client, &master.name, &shown, timeout, secrets).await?;
    let address = master_client.get_connection_info().addr.to_string();
    let manager = connect_one(
        master_client,
        &format!("the master {:?} at {address}", master.name),
        timeout,
        secrets,
        scripts,
    )
    .await?;
    Ok((
        manager,
        Sentinels {
            client: tokio::sync::Mutex::new(client),
            address: Mutex::new(address),
            asking: AtomicBool::new(false),
            name: master.name,
            secrets: secrets.clone(),
        },
    ))
}

/// The master the sentinels name now.
async fn ask(
    client: &mut SentinelClient,
    name: &str,
    shown: &str,
    timeout: Duration,
    secrets: &Secrets,
) -> Result<redis::Client, StoreError> {
    let wait = timeout.max(Duration::from_secs(2));
    tokio::time::timeout(wait, client.async_get_client())
        .await
        .map_err(|_| {
            StoreError::new(
                StoreErrorKind::Timeout,
                format!("no sentinel of {shown} answered within {wait:?}"),
            )
        })?
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Redis,
                secrets.scrub(format!(
                    "no sentinel of {shown} names a master {name:?}: {e}"
                )),
            )
        })
}

/// Asks the sentinels for the master again, in the background, unless a
/// question is already on its way.
pub(crate) fn ask_for_master(inner: &Arc<Inner>) {
    let Some(sentinels) = &inner.sentinels else {
        return;
    };
    if sentinels.asking.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        sentinels.asking.store(false, Ordering::Release);
        return;
    };
    let inner = Arc::clone(inner);
    runtime.spawn(async move {
        if let Err(error) = move_to_master(&inner).await {
            tracing::debug!(%error, "asking Redis Sentinel for the master failed");
        }
        if let Some(sentinels) = &inner.sentinels {
            sentinels.asking.store(false, Ordering::Release);
        }
    });
}

/// Connects to the master the sentinels name, when it is another.
async fn move_to_master(inner: &Inner) -> Result<(), StoreError> {
    let Some(sentinels) = &inner.sentinels else {
        return Ok(());
    };
    let client = {
        let mut sentinel = sentinels.client.lock().await;
        ask(
            &mut sentinel,
            &sentinels.name,
            "the sentinels",
            inner.timeout,
            &sentinels.secrets,
        )
        .await?
    };
    let address = client.get_connection_info().addr.to_string();
    if *sentinels
        .address
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        == address
    {
        return Ok(());
    }
    let manager = connect_one(
        client,
        &format!("the master {:?} at {address}", sentinels.name),
        inner.timeout,
        &sentinels.secrets,
        &inner.scripts,
    )
    .await?;
    let batcher = inner
        .scripts
        .batcher(manager.clone(), &inner.counts.reloads, inner.timeout);
    *inner.conn.write().unwrap_or_else(PoisonError::into_inner) = Conn::One(manager);
    *inner
        .batcher
        .write()
        .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(batcher));
    *sentinels
        .address
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = address.clone();
    tracing::info!(master = %address, name = %sentinels.name, "Redis Sentinel names another master: decisions go there");
    Ok(())
}
