//! The workspace's scripted provider (`tollgate-mock`), reached in process
//! through the tests' transport: an axum app called as a tower service, no
//! socket. Time is Tokio's, so it runs on paused time.
//!
//! Shared by several test files, each using part of it.
#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

pub(crate) use tollgate_mock::{
    Charge, Config, Counting, Dialect as Style, Enforce, Provider, Report, Rounding,
};

/// How the provider enforces its tokens a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tokens {
    /// A bucket of a second's worth, refilled continuously.
    Bucket,
    /// A second's worth in each second of the clock: calls that do not
    /// divide it leave the rest unused (8 calls of 72 in 600 tokens).
    Slices,
}

/// Where the provider answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// At a host of the provider its dialect imitates, where the middleware
    /// knows what the provider's headers count (Groq's, Azure's); any
    /// other dialect at a host of no known provider.
    Provider,
    /// At a host of no known provider, whatever its dialect.
    Unknown,
}

/// Serves `config` at a host as `host` says; answers its base URL.
pub(crate) fn serve(config: Config, host: Host) -> (String, Arc<Provider>) {
    let domain = config.dialect.domain();
    let provider = Provider::new(config);
    let app = provider.router();
    let base = match (domain, host) {
        (Some(domain), Host::Provider) => super::transport::register_in(app, domain),
        _ => super::transport::register(app),
    };
    (base, provider)
}

pub(crate) async fn start(
    rpm: u64,
    tpm: u64,
    style: Style,
    latency: Duration,
) -> (String, Arc<Provider>) {
    start_with(rpm, tpm, style, (Tokens::Bucket, Host::Provider), latency).await
}

/// As [`start`], with the tokens enforced as `tokens` says, at `host`.
pub(crate) async fn start_with(
    rpm: u64,
    tpm: u64,
    style: Style,
    (tokens, host): (Tokens, Host),
    latency: Duration,
) -> (String, Arc<Provider>) {
    let mut config = Config::new(rpm, tpm).dialect(style).latency(latency);
    if tokens == Tokens::Slices {
        config = config.tokens(Counting {
            enforce: Enforce::Slices,
            slice: Duration::from_secs(1),
            report: Report::Sliding,
        });
    }
    serve(config, host)
}
