//! The response future shared by the layers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::response::{AdmissionGuard, ResponseBody};

/// A wait for admission, ending in the admitted request's guard or in the
/// answer to its rejection.
pub(crate) type Wait<H> = Pin<Box<dyn Future<Output = Result<H, Response<Bytes>>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit) and
    /// [`ConcurrencyLimit`](crate::ConcurrencyLimit): the inner service's
    /// future (after a wait, in wait mode), or a rejection's answer.
    pub struct ResponseFuture<S, B, H>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, H>,
        guard: Option<H>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, H>
    where
        S: Service<Request<B>>,
    {
        Called { #[pin] future: S::Future },
        // The rare states are boxed, so that the common one stays small,
        // and dropped out of line, so that dropping the common one is
        // small enough to be inlined.
        Waiting { waiting: ColdBox<Waiting<S, B, H>> },
        Rejected { response: ColdBox<Response<Bytes>> },
    }
}

/// A rare state's box, dropped out of line.
struct ColdBox<T>(Option<Box<T>>);

impl<T> Drop for ColdBox<T> {
    #[inline(never)]
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

struct Waiting<S, B, H> {
    wait: Wait<H>,
    service: S,
    request: Request<B>,
}

impl<S, B, H> ResponseFuture<S, B, H>
where
    S: Service<Request<B>>,
{
    pub(crate) fn called(future: S::Future, guard: Option<H>) -> Self {
        Self {
            state: State::Called { future },
            guard,
        }
    }

    pub(crate) fn waiting(wait: Wait<H>, service: S, request: Request<B>) -> Self {
        Self {
            state: State::Waiting {
                waiting: ColdBox(Some(Box::new(Waiting {
                    wait,
                    service,
                    request,
                }))),
            },
            guard: None,
        }
    }

    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: ColdBox(Some(Box::new(response))),
            },
            guard: None,
        }
    }
}

impl<S, B, H> fmt::Debug for ResponseFuture<S, B, H>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "waiting",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, H, ResB> Future for ResponseFuture<S, B, H>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    H: AdmissionGuard,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    /// The common state (the inner service called) here, small enough to
    /// be inlined where the future is polled, so that the response is
    /// written once, where the caller wants it; the rare states out of
    /// line.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let StateProj::Called { future } = this.state.as_mut().project() {
            return poll_called(future, this.guard, cx);
        }
        poll_waiting_or_rejected(this.state, this.guard, cx)
    }
}

/// The inner service's future; its response gets the guard's headers.
#[inline(always)]
fn poll_called<F, ResB, E, H: AdmissionGuard>(
    future: Pin<&mut F>,
    guard: &mut Option<H>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResponseBody<ResB>>, E>>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    // No guard (no field to write on success): the response goes on as
    // it comes.
    if guard.is_none() {
        return future
            .poll(cx)
            .map_ok(|response| response.map(ResponseBody::service));
    }
    let response = ready!(future.poll(cx))?;
    Poll::Ready(Ok(finished(response, guard)))
}

/// A wait for admission (then the inner service's future), or a
/// rejection's answer.
#[inline(never)]
fn poll_waiting_or_rejected<S, B, H, ResB>(
    mut state: Pin<&mut State<S, B, H>>,
    guard: &mut Option<H>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResponseBody<ResB>>, S::Error>>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    H: AdmissionGuard,
{
    match state.as_mut().project() {
        StateProj::Called { future } => poll_called(future, guard, cx),
        StateProj::Waiting { waiting } => {
            let waited = waiting
                .0
                .as_mut()
                .expect("a response future polled after it completed");
            let outcome = ready!(waited.wait.as_mut().poll(cx));
            let Some(waited) = waiting.0.take() else {
                unreachable!("the waiting state was just read")
            };
            let Waiting {
                mut service,
                request,
                ..
            } = *waited;
            match outcome {
                Ok(admitted) => {
                    *guard = Some(admitted);
                    // The service was made ready by `poll_ready` before
                    // the request was taken in.
                    let future = service.call(request);
                    state.set(State::Called { future });
                    match state.project() {
                        StateProj::Called { future } => poll_called(future, guard, cx),
                        _ => unreachable!("the called state was just set"),
                    }
                }
                Err(response) => Poll::Ready(Ok(rejected_body(response))),
            }
        }
        StateProj::Rejected { response } => {
            let response = response
                .0
                .take()
                .expect("a response future polled after it completed");
            Poll::Ready(Ok(rejected_body(*response)))
        }
    }
}

/// The response of an admitted request, its guard's headers written and
/// what the guard keeps attached to the body.
#[inline(always)]
fn finished<B, H: AdmissionGuard>(
    mut response: Response<B>,
    guard: &mut Option<H>,
) -> Response<ResponseBody<B>> {
    if let Some(mut guard) = guard.take() {
        let kept = guard.keep_for_body();
        guard.on_response(response.headers_mut());
        if let Some(kept) = kept {
            return response.map(|body| ResponseBody::keeping(body, kept));
        }
    }
    response.map(ResponseBody::service)
}

fn rejected_body<B>(response: Response<Bytes>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::rejection)
}
