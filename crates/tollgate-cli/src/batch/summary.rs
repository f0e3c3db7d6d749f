//! What a run did, and the report printed at its end.

use std::fmt::Write as _;
use std::time::Duration;

use tollgate_reqwest::ProviderLimits;

use super::stop::Signal;

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Lines in the input read (blank ones not counted).
    pub lines: u64,
    /// Lines whose content already had a settled record, skipped.
    pub already_done: u64,
    /// Settled records of an earlier run that match no line of the input
    /// (the line was edited or removed since): left as they are.
    pub unmatched: u64,
    /// Lines answered successfully in this run.
    pub ok: u64,
    /// Lines that failed in this run (bad input, an error status, no answer).
    pub failed: u64,
    /// Of those, lines that were not a JSON object.
    pub bad_lines: u64,
    /// Lines with no record from this run: not sent because the run
    /// stopped, or abandoned on the wire when the grace ran out. A rerun
    /// sends them.
    pub left: u64,
    /// Of those, requests abandoned on the wire.
    pub abandoned: u64,
    /// Attempts answered 429, 503 or 529 (retried, or returned), those of
    /// lines that were not answered in the end included.
    pub refused: u64,
    /// When the run gave up after nothing but refusals for this long
    /// (`--give-up-after`): the lines it did not send are `retry_later`
    /// records.
    pub gave_up: Option<Duration>,
    /// Attempts beyond the first.
    pub retries: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// The signal that stopped the run, if one did.
    pub signal: Option<Signal>,
    /// The limits in force at the end, per endpoint and model.
    pub learnt: Vec<(String, ProviderLimits)>,
    /// Latency of each line answered in this run, queueing included, in
    /// milliseconds (4 bytes a line: a million lines take 4 MB).
    pub(crate) latencies_ms: Vec<u32>,
}

impl Summary {
    /// The process's exit code: 129, 130 or 143 when a signal stopped the
    /// run, else 1 when some lines failed, else 0.
    pub fn exit_code(&self) -> i32 {
        match self.signal {
            Some(signal) => signal.exit_code(),
            None if self.failed > 0 => 1,
            None => 0,
        }
    }

    /// The latency below which `q` (0 to 1) of the answers came.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_unstable();
        at_quantile(&sorted, q)
    }

    /// The summary printed at the end of a run.
    pub fn report(&self) -> String {
        // Sorted once for the three percentiles (a million answers: 4 MB).
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_unstable();
        let ms = |q: f64| {
            at_quantile(&sorted, q).map_or("-".into(), |d| format!("{} ms", d.as_millis()))
        };
        let secs = self.elapsed.as_secs_f64();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "lines: {} ({} answered before), ok: {}, failed: {} ({} bad lines)",
            self.lines, self.already_done, self.ok, self.failed, self.bad_lines,
        );
        if let Some(signal) = self.signal {
            let _ = writeln!(
                out,
                "stopped by {signal}: {} lines left to send ({} abandoned on the wire); run again to send them",
                self.left, self.abandoned
            );
        }
        if let Some(limit) = self.gave_up {
            let _ = writeln!(
                out,
                "gave up after {} with no answer but refusals: the lines not sent are recorded as retry_later; run again to send them",
                humantime::format_duration(limit)
            );
        }
        if self.unmatched > 0 {
            let _ = writeln!(
                out,
                "{} earlier records match no line of the input (edited or removed since); left as they are",
                self.unmatched
            );
        }
        let _ = writeln!(
            out,
            "throughput: {:.2} requests/s over {:.1} s",
            if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            secs
        );
        let _ = writeln!(
            out,
            "latency: p50 {}, p90 {}, p99 {}",
            ms(0.5),
            ms(0.9),
            ms(0.99)
        );
        let _ = writeln!(
            out,
            "refused (429/503/529): {}, retries: {}",
            self.refused, self.retries
        );
        for (endpoint, limits) in &self.learnt {
            let _ = writeln!(out, "limits for {endpoint}: {}", describe(limits));
        }
        out
    }
}

/// The value below which `q` (0 to 1) of `sorted` lies.
fn at_quantile(sorted: &[u32], q: f64) -> Option<Duration> {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
    sorted
        .get(index)
        .map(|&ms| Duration::from_millis(u64::from(ms)))
}

fn describe(limits: &ProviderLimits) -> String {
    let parts: Vec<String> = [
        ("requests", limits.requests()),
        ("tokens", limits.tokens()),
        ("input tokens", limits.input_tokens()),
        ("output tokens", limits.output_tokens()),
    ]
    .iter()
    .filter_map(|(name, n)| n.map(|n| format!("{n} {name}/min")))
    .collect();
    if parts.is_empty() {
        "none stated".into()
    } else {
        parts.join(", ")
    }
}
