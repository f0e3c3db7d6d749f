//! Rate limiting for tower servers: axum, tonic and hyper.
//!
//! [`RateLimitLayer`] limits requests per key (client IP, API key, anything
//! a closure reads) or globally, and answers those over the limit with 429
//! Too Many Requests, a `Retry-After` in whole seconds and the IETF
//! `RateLimit-Policy` / `RateLimit` fields; gRPC calls get
//! `grpc-status: 8` (RESOURCE_EXHAUSTED) instead. In wait mode it shapes
//! traffic: a request whose turn comes soon enough waits for it.
//! [`ConcurrencyLimitLayer`] bounds the requests in flight, globally or per
//! key.
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{routing::{get, post}, Router};
//! use tollgate::Quota;
//! use tollgate_tower::{ClientIp, HeaderKey, RateLimitLayer};
//!
//! # fn app() -> Result<(), Box<dyn std::error::Error>> {
//! // 100 requests a minute per client, seen through our load balancers.
//! let per_client = RateLimitLayer::builder(Quota::per_minute(100)?)
//!     .key(ClientIp::trusting(["10.0.0.0/8"])?)
//!     .build()?;
//! // 10 expensive calls a minute per API key, on one route only.
//! let per_key = RateLimitLayer::builder(Quota::per_minute(10)?)
//!     .key(HeaderKey::new("x-api-key")?)
//!     .policy_name("reports")
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     .route("/reports", post(|| async { "queued" }).route_layer(per_key))
//!     .route("/", get(|| async { "hello" }))
//!     .layer(per_client);
//! // Serve with `app.into_make_service_with_connect_info::<SocketAddr>()`
//! // so that the layer sees each connection's peer.
//! # Ok(())
//! # }
//! ```
//!
//! # Headers
//!
//! ```text
//! HTTP/1.1 429 Too Many Requests
//! retry-after: 12
//! ratelimit-policy: "default";q=5;w=60
//! ratelimit: "default";r=0;t=60
//! ```
//!
//! `q` is the quota per window `w` (seconds), `r` what remains and `t` the
//! seconds until the limit is full again; see [`tollgate::headers`]. The
//! legacy `X-RateLimit-Limit` / `-Remaining` / `-Reset` trio is optional.
//!
//! # Keys
//!
//! See the [`key`] module. Behind a proxy, use [`ClientIp`] with the
//! proxies' addresses: the forwarding headers are believed only through
//! them, so a client cannot pick its own key by sending a forged
//! `X-Forwarded-For`.
//!
//! # Features
//!
//! - `axum`: read the peer address from axum's `ConnectInfo<SocketAddr>`.
//! - `tonic`: read the peer address from tonic's `TcpConnectInfo`.
//! - `llm`: token budgets for LLM gateways ([`llm::TokenLimitLayer`]):
//!   requests, input and output tokens a minute per key, charged from the
//!   usage the answers report, streamed or not.
//!
//! Without them, a peer address is read from a [`SocketAddr`](std::net::SocketAddr)
//! in the request's extensions.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

use std::fmt;

pub mod concurrency;
mod future;
pub mod key;
#[cfg(feature = "llm")]
pub mod llm;
mod meters;
pub mod rate_limit;
mod response;

pub use concurrency::{ConcurrencyBuilder, ConcurrencyLimit, ConcurrencyLimitLayer, InFlight};
pub use future::ResponseFuture;
pub use key::{
    ClientIp, Duplicates, ForwardedHeader, Global, HeaderKey, IpGrouping, Key, KeyError,
    KeyErrorKind, KeyExtractor, KeyFn, MissingKey, PeerIp, DEFAULT_MAX_KEY_LEN,
};
pub use rate_limit::{
    CostFn, LayerClock, LayerStore, One, RateLimit, RateLimitBuilder, RateLimitLayer, RequestCost,
    Tier,
};
pub use response::{
    AdmissionGuard, Admitted, DefaultRejector, Kept, RejectFn, Rejection, RejectionKind, Rejector,
    ResponseBody,
};

/// A layer configured with values it cannot work with, returned by the
/// builders' `build` (never a silent clamp) and by the key extractors'
/// constructors. The message names the value and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    message: String,
}

/// The kinds of [`ConfigError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A limit out of range: a concurrency limit of 0, `max_keys(0)`,
    /// `max_key_len(0)`.
    Limit,
    /// A policy name that is not 1 to 64 printable ASCII characters.
    PolicyName,
    /// A header name that is not a valid HTTP header name.
    HeaderName,
    /// A trusted proxy that is neither an IP address nor a CIDR block.
    Proxy,
    /// An IP prefix length beyond the address's bits.
    Prefix,
}

impl ConfigError {
    pub(crate) fn with_kind(kind: ConfigErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of value was wrong.
    pub const fn kind(&self) -> ConfigErrorKind {
        self.kind
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The README's examples, compiled and run as doctests here, where the
/// core, the server layer and (as a dev-dependency) the client middleware
/// are all at hand.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
