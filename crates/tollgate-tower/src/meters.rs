//! The server layer's metrics, through the `metrics` facade (feature
//! `metrics`; without it every method here is empty and costs nothing).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tollgate_decisions_total` | counter | `policy`, `outcome` | requests decided: `admitted` at once, `waited` (admitted after a wait), `refused` (429 or RESOURCE_EXHAUSTED), `failed` (the store failed: 503), `shadowed` (shadow mode let through one it would have refused) |
//! | `tollgate_wait_seconds` | histogram | `policy` | how long admitted requests waited for their turn (wait mode) |
//!
//! The handles are registered when the layer is built, with the recorder
//! installed then: install it first. `policy` is the layer's policy name
//! or a tier's; no key is ever a label.

#[cfg(feature = "metrics")]
use metrics::{Counter, Histogram};

/// One policy's handles.
#[derive(Clone)]
pub(crate) struct Meters {
    #[cfg(feature = "metrics")]
    admitted: Counter,
    #[cfg(feature = "metrics")]
    waited: Counter,
    #[cfg(feature = "metrics")]
    refused: Counter,
    #[cfg(feature = "metrics")]
    failed: Counter,
    #[cfg(feature = "metrics")]
    shadowed: Counter,
    #[cfg(feature = "metrics")]
    wait: Histogram,
}

impl Meters {
    /// The handles of `policy`, registered with the recorder installed now.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(policy: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let policy = policy.to_owned();
            let outcome = |outcome: &'static str| metrics::counter!("tollgate_decisions_total", "policy" => policy.clone(), "outcome" => outcome);
            Self {
                admitted: outcome("admitted"),
                waited: outcome("waited"),
                refused: outcome("refused"),
                failed: outcome("failed"),
                shadowed: outcome("shadowed"),
                wait: metrics::histogram!("tollgate_wait_seconds", "policy" => policy.clone()),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    #[inline(always)]
    pub(crate) fn admitted(&self) {
        #[cfg(feature = "metrics")]
        self.admitted.increment(1);
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn waited(&self, wait: std::time::Duration) {
        #[cfg(feature = "metrics")]
        {
            self.waited.increment(1);
            self.wait.record(wait.as_secs_f64());
        }
    }

    pub(crate) fn refused(&self) {
        #[cfg(feature = "metrics")]
        self.refused.increment(1);
    }

    pub(crate) fn failed(&self) {
        #[cfg(feature = "metrics")]
        self.failed.increment(1);
    }

    pub(crate) fn shadowed(&self) {
        #[cfg(feature = "metrics")]
        self.shadowed.increment(1);
    }
}
