//! Concurrency limiting: at most N requests in flight, globally or per key.
//!
//! A request takes a permit when the service is called, and its response
//! future holds it until the inner service has answered: an idle
//! keep-alive connection holds none. Over the limit, a request is rejected
//! at once (503 Service Unavailable for a global limit, 429 Too Many
//! Requests for a per-key one; RESOURCE_EXHAUSTED for gRPC) or, in wait
//! mode, waits in line for a permit up to a bound. Permits are handed out
//! first come, first served.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tollgate_tower::{ConcurrencyLimitLayer, PeerIp};
//!
//! # fn app() -> Result<Router, tollgate_tower::ConfigError> {
//! let app = Router::new()
//!     .route("/render", get(|| async { "done" }))
//!     // At most 64 renders at once; a request waits up to 2 s for its turn.
//!     .layer(ConcurrencyLimitLayer::builder(64).wait_up_to(Duration::from_secs(2)).build()?)
//!     // At most 4 of them from any one client.
//!     .layer(ConcurrencyLimitLayer::builder(4).key(PeerIp::new()).build()?);
//! # Ok(app)
//! # }
//! ```
//!
//! The limits are the core's [`tollgate::ConcurrencyLimit`] (a fair,
//! first-come first-served semaphore), one for the layer or one per key.
//! Bad configuration is an error at
//! [`build`](ConcurrencyBuilder::build), never a silent clamp.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tollgate_tower::concurrency::ConcurrencyLimitLayer;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One request at a time: each takes a second.
//! let layer = ConcurrencyLimitLayer::new(1)?;
//! let service = layer.layer(service_fn(|_: Request<String>| async {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("done")))
//! }));
//! let slow = tokio::spawn(service.clone().oneshot(Request::new(String::new())));
//! tokio::task::yield_now().await;
//! assert_eq!(layer.in_flight(), 1);
//!
//! // A second one while the first runs: 503, at once.
//! let busy = service.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
//!
//! assert_eq!(slow.await??.status(), StatusCode::OK);
//! assert_eq!(layer.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

mod layer;
mod service;

pub use crate::future::ResponseFuture;
pub use layer::{ConcurrencyBuilder, ConcurrencyLimitLayer};
pub use service::{ConcurrencyLimit, InFlight};
