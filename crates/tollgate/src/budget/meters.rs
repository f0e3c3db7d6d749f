//! A limiter's or budget's metrics, once it is given a name
//! (`metrics(name)`, feature `metrics`), through the `metrics` facade:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tollgate_decisions_total` | counter | `policy`, `outcome` | decisions: `admitted` at once, `waited` (after a wait), `refused`, `failed` (the store failed) |
//! | `tollgate_refusals_by_dimension_total` | counter | `policy`, `dimension` | refusals, by the dimension that refused |
//! | `tollgate_wait_seconds` | histogram | `policy` | how long admitted acquires waited |
//!
//! The names are the server layer's: a layer counts its own decisions, so
//! its limiter is not named.

use std::time::Duration;

use metrics::{Counter, Histogram};

use super::limits::Limits;

/// The handles of one named limiter or budget.
pub(crate) struct Meters {
    admitted: Counter,
    waited: Counter,
    refused: Counter,
    failed: Counter,
    wait: Histogram,
    by_dimension: Vec<Counter>,
}

impl Meters {
    /// The handles of `policy`, registered with the recorder installed now.
    pub(crate) fn new(policy: &str, limits: &Limits) -> Self {
        let outcome = |outcome: &'static str| metrics::counter!("tollgate_decisions_total", "policy" => policy.to_owned(), "outcome" => outcome);
        Self {
            admitted: outcome("admitted"),
            waited: outcome("waited"),
            refused: outcome("refused"),
            failed: outcome("failed"),
            wait: metrics::histogram!("tollgate_wait_seconds", "policy" => policy.to_owned()),
            by_dimension: (0..limits.len())
                .map(|d| {
                    metrics::counter!(
                        "tollgate_refusals_by_dimension_total",
                        "policy" => policy.to_owned(),
                        "dimension" => limits.name(d).to_owned()
                    )
                })
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn admitted(&self) {
        self.admitted.increment(1);
    }

    pub(crate) fn waited(&self, wait: Duration) {
        self.waited.increment(1);
        self.wait.record(wait.as_secs_f64());
    }

    pub(crate) fn refused(&self, dimension: usize) {
        self.refused.increment(1);
        if let Some(counter) = self.by_dimension.get(dimension) {
            counter.increment(1);
        }
    }

    pub(crate) fn failed(&self) {
        self.failed.increment(1);
    }
}
