//! A `reqwest-middleware` middleware that keeps a client of LLM APIs under
//! the provider's limits.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use tollgate_reqwest::{ProviderLimits, RateLimitMiddleware};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     // Limits are learnt from the response headers; those you know can
//!     // be given, and apply where they are stricter.
//!     .with(
//!         RateLimitMiddleware::builder()
//!             .limits(ProviderLimits::new().requests_per_minute(500))
//!             .build(),
//!     )
//!     .build();
//! let response = client
//!     .post("https://api.openai.com/v1/chat/completions")
//!     .bearer_auth(std::env::var("OPENAI_API_KEY")?)
//!     .header("content-type", "application/json")
//!     .body(r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"Hi"}]}"#)
//!     .send()
//!     .await?;
//! # drop(response);
//! # Ok(())
//! # }
//! ```
//!
//! See [`RateLimitMiddleware`] for what it does with each call.
//!
//! # With `reqwest-retry`
//!
//! This middleware owns 429 (and 503 / 529): it pauses every caller of the
//! endpoint for the wait the provider asks and retries the call itself.
//! Put it *inside* (after) `reqwest-retry`'s `RetryTransientMiddleware` in
//! the chain, and let `reqwest-retry` handle what this one does not:
//! connection errors and other 5xx. A 429 is retried here until the call
//! succeeds (it spends neither attempts nor the retry budget, which bound
//! 503 / 529 only); one that this middleware returns (`max_refusals` in a
//! row, a wait over `max_wait`, or `x-should-retry: false`) would
//! otherwise be retried again by `reqwest-retry` without the shared pause;
//! give `reqwest-retry` a strategy that does not retry 429 if that matters.
//!
//! ```text
//! ClientBuilder::new(client)
//!     .with(RetryTransientMiddleware::new_with_policy(policy)) // transport errors, 5xx
//!     .with(RateLimitMiddleware::new())                         // pacing, 429s
//!     .build()
//! ```
//!
//! # With `tracing`
//!
//! Events are emitted under this crate's target (`tollgate_reqwest`) and
//! the core's (`tollgate`): `info` when limits are learnt and when an
//! endpoint is paused after a refusal, `warn` when the retry budget is
//! spent or a call was refused `max_refusals` times in a row. `RUST_LOG=tollgate_reqwest=info,tollgate=info` with
//! `tracing-subscriber` shows them; a span around the call (from
//! `reqwest-tracing`, say) gives them their context.

mod adaptive;
mod classify;
mod cost;
mod error;
mod estimate;
mod hint;
mod infer;
mod limits;
mod meters;
mod middleware;
mod model;
mod quirks;
mod share;
mod stream;
mod usage;

pub use classify::{Answer, Classify, DefaultClassify};
pub use cost::OutputCharge;
pub use error::{RetryLater, TooLarge};
pub use estimate::{DefaultEstimator, Estimate, TokenEstimator, DEFAULT_OUTPUT_TOKENS};
pub use limits::ProviderLimits;
pub use middleware::{Attempts, Builder, Endpoint, RateLimitMiddleware};
/// The back-off policies [`Builder::backoff_policy`] takes.
pub use retry_policies;
pub use usage::Usage;
