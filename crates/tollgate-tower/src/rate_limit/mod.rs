//! Rate limiting: a quota per key (client IP, API key, anything a closure
//! reads) or for everyone.
//!
//! [`RateLimitLayer`] wraps a service in a [`RateLimit`]. Each request is
//! counted against its key when the service is *called*; within the quota
//! it goes through and its response carries the IETF `RateLimit-Policy`
//! and `RateLimit` fields. Over the quota it is answered at once, without
//! reaching the service:
//!
//! | case | HTTP | gRPC (`content-type: application/grpc…`) |
//! |---|---|---|
//! | over the quota | 429, `Retry-After` in whole seconds (rounded up, never 0) | `grpc-status: 8`, `grpc-retry-pushback-ms` |
//! | a cost larger than the burst | 413 | 8 |
//! | no key, a key too long or sent twice | 400 | 3 |
//! | no peer address (served without connect info) | 500 | 13 |
//!
//! In wait mode ([`RateLimitBuilder::wait_up_to`]) a request whose turn
//! comes within the bound waits for it, first come first served, instead
//! of being rejected. The answer to a rejection is pluggable
//! ([`RateLimitBuilder::reject_with`]); the layer adds the headers the
//! rejector left out and puts the [`Rejection`](crate::Rejection) in the
//! response's extensions.
//!
//! Bad configuration is an error at [`build`](RateLimitBuilder::build),
//! never a silent clamp.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tollgate::{ManualClock, Quota};
//! use tollgate_tower::rate_limit::RateLimitLayer;
//! use tollgate_tower::key::HeaderKey;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two requests a minute per API key (a manual clock, so nothing moves).
//! let layer = RateLimitLayer::builder(Quota::per_minute(2)?)
//!     .key(HeaderKey::new("x-api-key")?)
//!     .clock(ManualClock::new())
//!     .build()?;
//! let service = layer.layer(service_fn(|_: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//! }));
//! let call = |key: &str| {
//!     let request = Request::builder().header("x-api-key", key).body(String::new());
//!     service.clone().oneshot(request.unwrap())
//! };
//!
//! let first = call("alice").await?;
//! assert_eq!(first.status(), StatusCode::OK);
//! assert_eq!(first.headers()["ratelimit-policy"], r#""default";q=2;w=60"#);
//! assert_eq!(first.headers()["ratelimit"], r#""default";r=1;t=30"#);
//! assert_eq!(call("alice").await?.status(), StatusCode::OK);
//!
//! let third = call("alice").await?;
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["retry-after"], "30");
//! // Another key has a quota of its own.
//! assert_eq!(call("bob").await?.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

mod layer;
mod service;
mod tier;

pub use crate::future::ResponseFuture;
pub use layer::{
    CostFn, LayerClock, LayerStore, One, RateLimitBuilder, RateLimitLayer, RequestCost,
};
pub use service::RateLimit;
pub use tier::Tier;
