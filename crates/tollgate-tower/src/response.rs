//! What a rejected request is answered with, and the headers every answer
//! carries.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tollgate::headers::{self, PolicyName};
use tollgate::{Quota, Snapshot};

use crate::Key;

/// Why a request was not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The key's rate limit has no room (or, in wait mode, not within the
    /// wait allowed). Answered 429 with `Retry-After`.
    RateLimited,
    /// The request's cost is larger than the limit's burst: it can never be
    /// admitted, so waiting would not help. Answered 413 without
    /// `Retry-After`.
    CostTooLarge,
    /// No key could be read from the request (see
    /// [`KeyError`](crate::KeyError)); answered 400, or 500 when the server
    /// gave no peer address.
    NoKey,
    /// Every concurrency permit is taken (within the wait allowed).
    /// Answered 503 for a global limit, 429 for a per-key one.
    TooManyInFlight,
    /// The limiter's store failed; answered 503.
    Unavailable,
}

/// A request the layer did not let through: why, with what the limit looked
/// like. The layer hands it to the [`Rejector`] and places a copy in the
/// response's extensions.
///
/// ```
/// use http::StatusCode;
/// use tollgate_tower::{Rejection, RejectionKind};
///
/// # fn check(response: http::Response<axum::body::Body>) {
/// if let Some(rejection) = response.extensions().get::<Rejection>() {
///     assert_eq!(rejection.kind(), RejectionKind::RateLimited);
///     assert_eq!(rejection.status(), StatusCode::TOO_MANY_REQUESTS);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Rejection {
    kind: RejectionKind,
    status: StatusCode,
    grpc: bool,
    message: Cow<'static, str>,
    key: Option<Key>,
    snapshot: Option<Snapshot>,
    retry_after: Option<Duration>,
    dimension: Option<&'static str>,
}

impl Rejection {
    pub(crate) fn new(
        kind: RejectionKind,
        status: StatusCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            kind,
            status,
            grpc: false,
            message: message.into(),
            key: None,
            snapshot: None,
            retry_after: None,
            dimension: None,
        }
    }

    /// Names the dimension of a budget that refused.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))]
    pub(crate) fn dimension(mut self, dimension: &'static str) -> Self {
        self.dimension = Some(dimension);
        self
    }

    pub(crate) fn grpc(mut self, grpc: bool) -> Self {
        self.grpc = grpc;
        self
    }

    pub(crate) fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    pub(crate) fn snapshot(mut self, snapshot: Snapshot) -> Self {
        self.retry_after = snapshot.retry_after();
        self.snapshot = Some(snapshot);
        self
    }

    /// When to try again, where the snapshot does not say.
    pub(crate) fn retry_after_or(mut self, wait: Duration) -> Self {
        self.retry_after.get_or_insert(wait);
        self
    }

    /// The dimension of a token budget that refused (`requests`,
    /// `input_tokens` or `output_tokens`; see [`llm`](crate::llm)); `None`
    /// for a limit of one dimension.
    pub const fn refused_dimension(&self) -> Option<&'static str> {
        self.dimension
    }

    /// Why the request was rejected.
    pub const fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The HTTP status of the default answer (a gRPC request is answered
    /// 200 with a `grpc-status` instead).
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// Whether the request was a gRPC call (`content-type: application/grpc…`).
    pub const fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// What went wrong, for the client and the log.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The key the request was counted against, when one was read.
    pub const fn request_key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// The limit as the decision saw it, for a rate-limit rejection.
    pub const fn limit_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// How long until the same request would be admitted, when waiting
    /// helps.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The gRPC status code of the default answer: 8 (RESOURCE_EXHAUSTED)
    /// for a limit, 3 (INVALID_ARGUMENT) or 13 (INTERNAL) for a missing
    /// key, 14 (UNAVAILABLE) for a failed store.
    pub fn grpc_code(&self) -> u8 {
        match self.kind {
            RejectionKind::RateLimited
            | RejectionKind::CostTooLarge
            | RejectionKind::TooManyInFlight => 8,
            RejectionKind::NoKey if self.status.is_server_error() => 13,
            RejectionKind::NoKey => 3,
            RejectionKind::Unavailable => 14,
        }
    }

    /// The default answer: for HTTP, the status with the message as a
    /// plain-text body; for gRPC, a trailers-only answer (HTTP 200,
    /// `grpc-status`, `grpc-message` and, when waiting helps,
    /// `grpc-retry-pushback-ms`). The layer adds `Retry-After` and the
    /// `RateLimit` fields afterwards.
    pub fn default_response(&self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        if !self.grpc {
            *response.status_mut() = self.status;
        }
        let headers = response.headers_mut();
        if self.grpc {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from(u16::from(self.grpc_code())),
            );
            if let Ok(message) = HeaderValue::try_from(percent_encode(&self.message)) {
                headers.insert(HeaderName::from_static("grpc-message"), message);
            }
            if let Some(wait) = self.retry_after {
                let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                headers.insert(
                    HeaderName::from_static("grpc-retry-pushback-ms"),
                    HeaderValue::from(millis.max(1)),
                );
            }
        } else {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            *response.body_mut() = Bytes::from(format!("{}\n", self.message));
        }
        response
    }
}

/// gRPC's percent-encoding of `grpc-message`: every byte outside printable
/// ASCII, and `%` itself.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Builds the answer to a rejected request.
///
/// The layer then adds what the rejection knows and the answer lacks:
/// `Retry-After`, the `RateLimit` fields, and the [`Rejection`] itself in
/// the extensions. A closure `Fn(&Rejection) -> http::Response<Bytes>` is a
/// rejector (set it with the builders' `reject_with`).
pub trait Rejector: Send + Sync + 'static {
    /// The answer to one rejected request.
    fn reject(&self, rejection: &Rejection) -> Response<Bytes>;
}

/// [`Rejection::default_response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultRejector;

impl Rejector for DefaultRejector {
    fn reject(&self, rejection: &Rejection) -> Response<Bytes> {
        rejection.default_response()
    }
}

/// A closure as a [`Rejector`].
#[derive(Clone)]
pub struct RejectFn<F>(pub(crate) F);

impl<F> fmt::Debug for RejectFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RejectFn")
    }
}

impl<F> Rejector for RejectFn<F>
where
    F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
{
    fn reject(&self, rejection: &Rejection) -> Response<Bytes> {
        (self.0)(rejection)
    }
}

/// Whether a request is a gRPC call: its media type (parameters aside,
/// case-insensitively, as media types are) is `application/grpc` or
/// `application/grpc+` a codec (`+proto`, `+json`).
pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| is_grpc_media_type(v.as_bytes()))
}

fn is_grpc_media_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let media_type = value.split(|&b| b == b';').next().unwrap_or_default();
    let media_type = media_type.trim_ascii();
    match media_type.get(..GRPC.len()) {
        Some(start) if start.eq_ignore_ascii_case(GRPC) => {
            let rest = &media_type[GRPC.len()..];
            rest.is_empty() || (rest.len() > 1 && rest[0] == b'+')
        }
        _ => false,
    }
}

pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Which rate-limit headers the layer writes, and their fixed parts.
#[derive(Clone, Debug)]
pub(crate) struct HeaderStyle {
    pub(crate) name: PolicyName,
    /// The `RateLimit` item of a key that was full before a request of
    /// one unit (its remaining count and reset, and the value, over
    /// static bytes): the item most responses carry, written once.
    full: Option<(u64, u64, HeaderValue)>,
    /// The `RateLimit-Policy` item, over static bytes: each response clones
    /// it for free (no allocation, and no reference count, which would be
    /// one cache line that every core writes on every request).
    policy: Option<HeaderValue>,
    pub(crate) on_success: bool,
    pub(crate) legacy: bool,
}

impl HeaderStyle {
    pub(crate) fn new(name: PolicyName, quota: &Quota, on_success: bool, legacy: bool) -> Self {
        let policy = static_value(&headers::policy(&name, quota));
        // A full key that admits one unit: one unit spent, and one
        // interval until the key is full again.
        let interval = quota.replenish_interval();
        let full = Snapshot::new(quota.burst_size(), quota.burst_size() - 1, interval);
        let full = static_value(&headers::rate_limit(&name, &full))
            .map(|value| (full.remaining(), headers::ceil_secs(interval), value));
        Self {
            name,
            full,
            policy,
            on_success,
            legacy,
        }
    }

    /// The headers of an admitted request, to add to its response.
    #[inline]
    pub(crate) fn admitted(&self, snapshot: &Snapshot) -> Admitted {
        Admitted {
            fields: if self.on_success {
                self.fields(snapshot)
            } else {
                Fields::default()
            },
        }
    }

    fn fields(&self, snapshot: &Snapshot) -> Fields {
        // A policy name is printable ASCII and the rest digits and
        // punctuation: both are always valid header values.
        let policy = self.policy.clone();
        let rate_limit = self.rate_limit(snapshot);
        // The legacy trio as figures, written out with the response: a
        // hold of plain figures needs no dropping.
        let legacy = self.legacy.then(|| {
            [
                snapshot.limit(),
                snapshot.remaining(),
                headers::ceil_secs(snapshot.reset_after()),
            ]
        });
        Fields {
            policy,
            rate_limit,
            legacy,
        }
    }

    /// The `RateLimit` item of `snapshot`: the one written when the layer
    /// was built, when the figures are a full key's after one unit (most
    /// responses of a per-client limit: a clone of static bytes), or else
    /// written now.
    fn rate_limit(&self, snapshot: &Snapshot) -> Option<HeaderValue> {
        if let Some((remaining, reset, value)) = &self.full {
            if snapshot.remaining() == *remaining
                && headers::ceil_secs(snapshot.reset_after()) == *reset
            {
                return Some(value.clone());
            }
        }
        HeaderValue::try_from(headers::rate_limit(&self.name, snapshot)).ok()
    }

    /// Adds the headers a rejection carries, leaving those the rejector set.
    pub(crate) fn write_rejection(&self, rejection: &Rejection, headers: &mut HeaderMap) {
        if let Some(wait) = rejection.retry_after {
            headers
                .entry(RETRY_AFTER)
                .or_insert_with(|| HeaderValue::from(headers::retry_after_secs(wait)));
        }
        if let Some(snapshot) = &rejection.snapshot {
            let fields = self.fields(snapshot);
            if let Some(policy) = fields.policy {
                headers.entry(RATELIMIT_POLICY).or_insert(policy);
            }
            if let Some(value) = fields.rate_limit {
                headers.entry(RATELIMIT).or_insert(value);
            }
            if let Some(legacy) = fields.legacy {
                write_legacy(legacy, headers);
            }
        }
    }
}

/// Policy values interned: one per distinct policy, made when a layer is
/// built and kept for the life of the process (a program builds few
/// layers). Past this many distinct values, each layer owns its own.
const MAX_INTERNED: usize = 1024;

/// A header value over static bytes, so that cloning it costs nothing.
fn static_value(text: &str) -> Option<HeaderValue> {
    static INTERNED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    let bytes = match interned.get(text) {
        Some(&known) => Bytes::from_static(known.as_bytes()),
        None if interned.len() < MAX_INTERNED => {
            let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
            interned.insert(leaked);
            Bytes::from_static(leaked.as_bytes())
        }
        None => Bytes::copy_from_slice(text.as_bytes()),
    };
    HeaderValue::from_maybe_shared(bytes).ok()
}

fn write_legacy([limit, remaining, reset]: [u64; 3], headers: &mut HeaderMap) {
    headers.entry(X_LIMIT).or_insert_with(|| limit.into());
    headers
        .entry(X_REMAINING)
        .or_insert_with(|| remaining.into());
    headers.entry(X_RESET).or_insert_with(|| reset.into());
}

#[derive(Default)]
struct Fields {
    policy: Option<HeaderValue>,
    rate_limit: Option<HeaderValue>,
    /// The legacy trio's figures: limit, remaining, reset in seconds.
    legacy: Option<[u64; 3]>,
}

/// What an admitted request carries to its response: the `RateLimit`
/// fields of its decision, when the layer writes them on success.
///
/// They are *appended*: behind two layers (a per-route limit inside a
/// global one, say) a response lists both policies, as the fields' list
/// syntax allows. The legacy `X-RateLimit-*` headers, which hold one value,
/// keep the innermost layer's.
pub struct Admitted {
    /// Inline, not boxed: an allocation per request costs more than moving
    /// the two values with the response future (all `None` with the fields
    /// off; the legacy trio, rarely on, is boxed).
    fields: Fields,
}

impl fmt::Debug for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted")
            .field("headers", &self.fields.rate_limit.is_some())
            .finish()
    }
}

/// What an admitted request carries until its response is ready: it
/// writes the response's rate-limit headers ([`Admitted`]) or releases a
/// concurrency permit ([`ConcurrencyLimit`](crate::ConcurrencyLimit)'s).
pub trait AdmissionGuard: Send + 'static {
    /// Called with the inner service's response headers; the guard is
    /// dropped after.
    fn on_response(self, headers: &mut HeaderMap);

    /// What to keep until the response's body ends or is dropped, taken
    /// before [`on_response`](Self::on_response) (default: nothing): a
    /// concurrency permit held for the whole body, say.
    fn keep_for_body(&mut self) -> Option<Kept> {
        None
    }
}

/// Something a response's body keeps until it ends or is dropped.
pub struct Kept {
    /// Held for its drop alone.
    _value: Box<dyn Send + Sync>,
}

impl Kept {
    /// Keeps `value` with the body.
    pub fn new(value: impl Send + Sync + 'static) -> Self {
        Self {
            _value: Box::new(value),
        }
    }
}

impl fmt::Debug for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kept")
    }
}

impl AdmissionGuard for Admitted {
    #[inline]
    fn on_response(self, headers: &mut HeaderMap) {
        let fields = self.fields;
        if let Some(policy) = fields.policy {
            headers.append(RATELIMIT_POLICY, policy);
        }
        if let Some(value) = fields.rate_limit {
            headers.append(RATELIMIT, value);
        }
        if let Some(legacy) = fields.legacy {
            write_legacy(legacy, headers);
        }
    }
}

pin_project! {
    /// The body of a response through the layers: the inner service's body,
    /// or the rejection's.
    ///
    /// Behind axum's `Router::layer`, any body but axum's own is boxed on
    /// every response, one allocation each. With the `axum` feature,
    /// `axum::body::Body::from` turns this body back into the inner one
    /// without allocating (and a rejection's bytes into a body of them):
    /// map the layer's responses with it, as below, and add the pair to
    /// the router with `.layer(...)`. It saves about 200 instructions a
    /// request, about one percent of a hello-world app's throughput.
    ///
    /// ```
    /// use std::net::SocketAddr;
    ///
    /// use axum::body::Body;
    /// use axum::extract::ConnectInfo;
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::BodyExt;
    /// use tollgate::Quota;
    /// use tollgate_tower::{PeerIp, RateLimitLayer, ResponseBody};
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limit = RateLimitLayer::builder(Quota::per_minute(1)?)
    ///     .key(PeerIp::new())
    ///     .build()?;
    /// let service = ServiceBuilder::new()
    ///     .map_response(|response: Response<ResponseBody<Body>>| response.map(Body::from))
    ///     .layer(limit)
    ///     .service(service_fn(|_: Request<Body>| async {
    ///         Ok::<_, std::convert::Infallible>(Response::new(Body::from("hello")))
    ///     }));
    ///
    /// let request = || {
    ///     let mut request = Request::new(Body::empty());
    ///     let peer = SocketAddr::from(([127, 0, 0, 1], 4000));
    ///     request.extensions_mut().insert(ConnectInfo(peer));
    ///     request
    /// };
    /// let admitted: Response<Body> = service.clone().oneshot(request()).await?;
    /// assert_eq!(admitted.into_body().collect().await?.to_bytes(), "hello");
    ///
    /// let refused = service.oneshot(request()).await?;
    /// assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    /// let text = refused.into_body().collect().await?.to_bytes();
    /// assert!(text.starts_with(b"too many requests"));
    /// # Ok(())
    /// # }
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Service { #[pin] body: B },
        // A rejection's bytes (none when empty), or a body that keeps
        // something until it ends: boxed, so that a response through the
        // layer is no larger than the service's own by more than a word or
        // two, and moving it stays a few register moves.
        Boxed { boxed: Option<Pin<Box<BoxedBody<B>>>> },
    }
}

pin_project! {
    #[project = BoxedBodyProj]
    enum BoxedBody<B> {
        Rejection { data: Option<Bytes> },
        // The inner service's body, and what it keeps (a concurrency
        // permit) until it ends.
        Keeping { #[pin] body: B, kept: Option<Kept> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn service(body: B) -> Self {
        Self {
            inner: Inner::Service { body },
        }
    }

    /// The inner service's body, keeping `kept` until it ends or is
    /// dropped.
    pub(crate) fn keeping(body: B, kept: Kept) -> Self {
        Self {
            inner: Inner::Boxed {
                boxed: Some(Box::pin(BoxedBody::Keeping {
                    body,
                    kept: Some(kept),
                })),
            },
        }
    }

    pub(crate) fn rejection(data: Bytes) -> Self {
        Self {
            inner: Inner::Boxed {
                boxed: (!data.is_empty())
                    .then(|| Box::pin(BoxedBody::Rejection { data: Some(data) })),
            },
        }
    }
}

/// Unwraps the inner service's body, or makes one of the rejection's
/// bytes, without allocating: see [`ResponseBody`].
#[cfg(feature = "axum")]
impl From<ResponseBody<axum::body::Body>> for axum::body::Body {
    fn from(body: ResponseBody<axum::body::Body>) -> Self {
        match body.inner {
            Inner::Service { body } => body,
            Inner::Boxed { boxed: None } => Self::empty(),
            Inner::Boxed { boxed: Some(boxed) } => match *Pin::into_inner(boxed) {
                BoxedBody::Rejection { data } => data.map_or_else(Self::empty, Self::from),
                // What it keeps must live as long as the body: boxed with it.
                keeping @ BoxedBody::Keeping { .. } => Self::new(ResponseBody {
                    inner: Inner::Boxed {
                        boxed: Some(Box::pin(keeping)),
                    },
                }),
            },
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tuple = f.debug_tuple("ResponseBody");
        match &self.inner {
            Inner::Service { body } => tuple.field(body),
            Inner::Boxed { boxed: None } => tuple.field(&"empty"),
            Inner::Boxed { boxed: Some(boxed) } => match &**boxed {
                BoxedBody::Rejection { data } => tuple.field(data),
                BoxedBody::Keeping { body, .. } => tuple.field(body),
            },
        };
        tuple.finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Service { body } => body.poll_frame(cx),
            InnerProj::Boxed { boxed } => match boxed {
                None => Poll::Ready(None),
                Some(boxed) => match boxed.as_mut().project() {
                    BoxedBodyProj::Rejection { data } => {
                        Poll::Ready(data.take().map(|d| Ok(Frame::data(B::Data::from(d)))))
                    }
                    BoxedBodyProj::Keeping { body, kept } => {
                        let frame = body.poll_frame(cx);
                        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                            // The body ended: what it kept goes now, not
                            // when the connection lets the body go.
                            *kept = None;
                        }
                        frame
                    }
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Service { body } => body.is_end_stream(),
            Inner::Boxed { boxed: None } => true,
            Inner::Boxed { boxed: Some(boxed) } => match &**boxed {
                BoxedBody::Rejection { data } => data.is_none(),
                BoxedBody::Keeping { body, .. } => body.is_end_stream(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Service { body } => body.size_hint(),
            Inner::Boxed { boxed: None } => SizeHint::with_exact(0),
            Inner::Boxed { boxed: Some(boxed) } => match &**boxed {
                BoxedBody::Rejection { data } => {
                    SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
                }
                BoxedBody::Keeping { body, .. } => body.size_hint(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The item written when the layer is built is the one a full key
    /// answers after one unit, and it is the one sent then; other figures
    /// are written as they come.
    #[test]
    fn the_full_keys_item_is_written_once_and_right() {
        for quota in [
            "5/min",
            "1/s",
            "3/s burst 7",
            "1000000000/s",
            "1/h",
            "10/min burst 1",
        ] {
            let quota: Quota = quota.parse().unwrap();
            let style = HeaderStyle::new(PolicyName::default(), &quota, true, false);
            let (_, _, full) = style.full.as_ref().expect("written at build");
            let limiter = tollgate::KeyedLimiter::<u64, _>::builder(quota)
                .clock(tollgate::ManualClock::new())
                .build();
            for used in 1..=3u64.min(quota.burst_size()) {
                let snapshot = limiter.check(&1, 1).unwrap();
                let expected = headers::rate_limit(&PolicyName::default(), &snapshot);
                let sent = style.rate_limit(&snapshot).unwrap();
                assert_eq!(sent, expected.as_str(), "{quota:?}, {used} used");
                // Over static bytes exactly when the key was full.
                assert_eq!(sent == *full, used == 1, "{quota:?}, {used} used");
            }
        }
    }

    #[test]
    fn grpc_is_told_by_the_media_type_alone() {
        for grpc in [
            "application/grpc",
            "APPLICATION/GRPC",
            "Application/gRPC+proto",
            "application/grpc+json",
            "application/grpc; charset=utf-8",
            " application/grpc ;x=1",
        ] {
            assert!(is_grpc_media_type(grpc.as_bytes()), "{grpc}");
        }
        for other in [
            "application/grpcx",
            "application/grpc+",
            "application/grpc-web",
            "application/json",
            "text/application/grpc",
            "",
        ] {
            assert!(!is_grpc_media_type(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(
            percent_encode("rate limited: 50% used"),
            "rate limited: 50%25 used"
        );
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn default_answers() {
        let rejection = Rejection::new(
            RejectionKind::RateLimited,
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
        )
        .snapshot(
            Snapshot::new(5, 0, Duration::from_secs(60))
                .with_retry_after(Duration::from_millis(11_500)),
        );
        let http = rejection.default_response();
        assert_eq!(http.status(), 429);
        assert_eq!(http.body(), "too many requests\n");

        let grpc = rejection.clone().grpc(true).default_response();
        assert_eq!(grpc.status(), 200);
        assert_eq!(grpc.headers()["grpc-status"], "8");
        assert_eq!(grpc.headers()["grpc-message"], "too many requests");
        assert_eq!(grpc.headers()["grpc-retry-pushback-ms"], "11500");
        assert!(grpc.body().is_empty());
    }
}
