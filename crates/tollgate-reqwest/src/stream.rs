//! A streamed answer settles itself: its server-sent events are read for
//! the usage they report as the body passes (nothing held back or copied
//! beyond the event being read), and the call is settled when the body
//! ends or is dropped, with no call from the user.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tollgate::llm::SseUsage;

use crate::Usage;

pin_project_lite::pin_project! {
    /// An answer's body, watched for the usage its events report.
    pub(crate) struct Watched<B> {
        #[pin]
        inner: B,
        sse: SseUsage,
        usage: Option<Usage>,
    }

    impl<B> PinnedDrop for Watched<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its end: what it saw is settled.
            let this = this.project();
            settle(this.sse, this.usage.take());
        }
    }
}

impl<B> Watched<B> {
    pub(crate) fn new(inner: B, usage: Usage) -> Self {
        Self {
            inner,
            sse: SseUsage::default(),
            usage: Some(usage),
        }
    }
}

/// Settles `usage` with what the stream reported, when it reported both
/// counts (else the estimate stays charged, as for any unreported call).
fn settle(sse: &SseUsage, usage: Option<Usage>) {
    let (Some(usage), Some(seen)) = (usage, sse.usage()) else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        usage.report(seen.input_tokens, seen.output_tokens).await;
    });
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sse.feed(data);
                }
            }
            Poll::Ready(None) => settle(this.sse, this.usage.take()),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an answer is a stream of server-sent events.
pub(crate) fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The answer with its body watched, everything else as it was (its URL
/// and extensions included).
pub(crate) fn watch(response: reqwest::Response, usage: Usage) -> reqwest::Response {
    use reqwest::ResponseBuilderExt;
    let url = response.url().clone();
    let (mut parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
    // reqwest keeps a response's URL in an extension that only its
    // builder sets.
    if let Ok(marker) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(marker.into_parts().0.extensions);
    }
    let body = reqwest::Body::wrap(Watched::new(body, usage));
    reqwest::Response::from(http::Response::from_parts(parts, body))
}
