//! The middleware's metrics, through the `metrics` facade (feature
//! `metrics`; without it every function here is empty).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tollgate_client_calls_total` | counter | `endpoint` | calls made through the middleware |
//! | `tollgate_client_refusals_total` | counter | `endpoint`, `reason` | answers that refused a call: `rate` (429) or `overload` (503, 529) |
//! | `tollgate_client_retries_total` | counter | `endpoint` | attempts after a call's first |
//! | `tollgate_client_paused_seconds_total` | counter | `endpoint` | pauses put on every caller of the endpoint, added up |
//! | `tollgate_client_limit` | gauge | `endpoint`, `dimension` | the per-minute limit in force (stated, learnt or given): `requests`, `tokens`, `input_tokens`, `output_tokens` |
//!
//! `endpoint` is `scheme://host:port (model)`; no key or path is a label.
//! The first 100 endpoints seen get a label of their own, any
//! later one `other` (models come from request bodies: a hostile input
//! must not make a series per line).

use std::time::Duration;

use crate::classify::Answer;
use crate::{Endpoint, ProviderLimits};

/// Endpoints with a label of their own, at most.
#[cfg(feature = "metrics")]
pub(crate) const MAX_LABELS: usize = 100;

/// `endpoint`'s label: its own among the first [`MAX_LABELS`] seen, else
/// `other`.
#[cfg(feature = "metrics")]
fn label(endpoint: &Endpoint) -> String {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let text = endpoint.to_string();
    let mut seen = SEEN
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if seen.contains(&text) {
        return text;
    }
    if seen.len() < MAX_LABELS {
        seen.insert(text.clone());
        return text;
    }
    "other".to_owned()
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn call(endpoint: &Endpoint) {
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_client_calls_total", "endpoint" => label(endpoint)).increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn refused(endpoint: &Endpoint, answer: Answer) {
    #[cfg(feature = "metrics")]
    {
        let reason = match answer {
            Answer::RateLimited => "rate",
            Answer::Overloaded => "overload",
            Answer::Done => return,
        };
        metrics::counter!(
            "tollgate_client_refusals_total",
            "endpoint" => label(endpoint),
            "reason" => reason
        )
        .increment(1);
    }
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn retry(endpoint: &Endpoint) {
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_client_retries_total", "endpoint" => label(endpoint)).increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn paused(endpoint: &Endpoint, pause: Duration) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "tollgate_client_paused_seconds_total",
        "endpoint" => label(endpoint)
    )
    .increment(pause.as_secs());
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn limits(endpoint: &Endpoint, limits: &ProviderLimits) {
    #[cfg(feature = "metrics")]
    let endpoint = label(endpoint);
    #[cfg(feature = "metrics")]
    for (dimension, per_minute) in [
        ("requests", limits.requests()),
        ("tokens", limits.tokens()),
        ("input_tokens", limits.input_tokens()),
        ("output_tokens", limits.output_tokens()),
    ] {
        if let Some(per_minute) = per_minute {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(
                "tollgate_client_limit",
                "endpoint" => endpoint.clone(),
                "dimension" => dimension
            )
            .set(per_minute as f64);
        }
    }
}
