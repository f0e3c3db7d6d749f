//! Settling a call's estimate with what it really used.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tollgate::Grant;

use crate::estimate::Estimate;
use crate::middleware::{Endpoint, SettleUsage};

/// A handle, in each admitted response's extensions, to settle the call's
/// token estimate with the real usage, once the body is read.
///
/// Until it is used, the estimate stays charged: a generous guess slows
/// the callers behind it a little, a low one lets the provider's headers
/// correct it. Reporting twice changes nothing the second time.
///
/// A streamed answer (`text/event-stream`) settles itself: the usage its
/// events report (OpenAI's final chunk with `stream_options.include_usage`,
/// Anthropic's `message_start` and `message_delta`) is read as the body
/// passes, and settled when the body ends or is dropped.
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), Box<dyn std::error::Error>> {
/// use tollgate_reqwest::Usage;
///
/// let response = client
///     .post("https://api.openai.com/v1/chat/completions")
///     .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#)
///     .send()
///     .await?;
/// let usage = response.extensions().get::<Usage>().cloned();
/// let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
/// if let Some(usage) = usage {
///     usage.report_body(&body).await; // reads `usage.prompt_tokens` / `completion_tokens`
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Usage {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<dyn SettleUsage>,
    key: Endpoint,
    grant: Grant,
    estimate: Estimate,
    /// What the settlement learns from.
    lesson: crate::cost::Lesson,
    /// Its place among the calls sent on the prior, freed by the report.
    on_prior: std::sync::Mutex<Option<crate::cost::OnPrior>>,
    reported: AtomicBool,
}

impl fmt::Debug for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Usage")
            .field("endpoint", &self.inner.key)
            .field("estimate", &self.inner.estimate)
            .field("reported", &self.inner.reported.load(Ordering::Relaxed))
            .finish()
    }
}

impl Usage {
    pub(crate) fn new(
        shared: Arc<dyn SettleUsage>,
        key: Endpoint,
        grant: Grant,
        estimate: Estimate,
        (lesson, on_prior): (crate::cost::Lesson, Option<crate::cost::OnPrior>),
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                key,
                grant,
                estimate,
                lesson,
                on_prior: std::sync::Mutex::new(on_prior),
                reported: AtomicBool::new(false),
            }),
        }
    }

    /// What was guessed, and charged, before the call.
    pub fn estimate(&self) -> Estimate {
        self.inner.estimate
    }

    /// The endpoint (and model) the call was counted against.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.key
    }

    /// Settles with the real counts: what the estimate held beyond them is
    /// given back, what they exceed it by is charged. A call whose body
    /// bounds its output (`max_tokens`) stays charged that bound, as
    /// OpenAI charges it, until an answer of the endpoint shows that it
    /// charges only what was written (what remained of its tokens limit
    /// after a call was more than a charge of the bound would leave).
    /// Returns whether this was the first report.
    pub async fn report(&self, input_tokens: u64, output_tokens: u64) -> bool {
        if self.inner.reported.swap(true, Ordering::AcqRel) {
            return false;
        }
        let used = [
            1,
            input_tokens.saturating_add(output_tokens),
            input_tokens,
            output_tokens,
        ];
        let inner = &self.inner;
        inner
            .shared
            .settle_usage(&inner.key, inner.grant, used, inner.lesson)
            .await;
        // Learnt (or not): the next call may go on the prior.
        drop(
            inner
                .on_prior
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        true
    }

    /// Settles from a response body's `usage`: OpenAI's `prompt_tokens` /
    /// `completion_tokens` or Anthropic's `input_tokens` / `output_tokens`.
    /// Returns `false` (and settles nothing) when the body has no usage.
    pub async fn report_body(&self, body: &Value) -> bool {
        match tollgate::llm::usage_of(body) {
            Some(usage) => self.report(usage.input_tokens, usage.output_tokens).await,
            None => false,
        }
    }
}
