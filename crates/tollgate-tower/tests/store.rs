//! The layer over a store of the user's: a store that answers late (as a
//! network store does) gives the same answers as the in-memory limiter,
//! decided in the response future. On Tokio's paused clock, in process.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tollgate::store::{Change, Decision, Store, StoreStats, SyncStore, View};
use tollgate::{DefaultClock, DeniedKind, MemoryStore, Quota};
use tollgate_tower::{DefaultRejector, HeaderKey, Key, One, RateLimitLayer, RejectionKind};
use tower::{service_fn, Layer, ServiceExt};

type Body = Full<Bytes>;

async fn ok(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn request(key: &str) -> Request<Body> {
    Request::builder()
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap()
}

/// Forwards to a [`MemoryStore`] after a delay; `fail` makes it fail.
#[derive(Debug)]
struct Late {
    inner: MemoryStore,
    delay: Duration,
    fail: bool,
}

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the store is down")
    }
}

impl std::error::Error for Down {}

impl Store<Key> for Late {
    type Error = Down;

    async fn decide(
        &self,
        key: &Key,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Result<Decision, Down> {
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(Down);
        }
        Ok(SyncStore::decide_now(
            &self.inner,
            key,
            limits,
            costs,
            max_wait,
        ))
    }

    async fn adjust(&self, key: &Key, limits: &[Quota], changes: &[Change]) -> Result<(), Down> {
        tokio::time::sleep(self.delay).await;
        SyncStore::adjust_now(&self.inner, key, limits, changes);
        Ok(())
    }

    async fn read(&self, key: &Key, limits: &[Quota]) -> Result<View, Down> {
        tokio::time::sleep(self.delay).await;
        Ok(SyncStore::read_now(&self.inner, key, limits))
    }

    fn give_back(&self, key: &Key, limits: &[Quota], costs: &[u64]) {
        Store::give_back(&self.inner, key, limits, costs);
    }

    fn stats(&self) -> StoreStats {
        Store::<Key>::stats(&self.inner)
    }
}

fn late(fail: bool) -> Late {
    Late {
        inner: MemoryStore::new(1_000, 1, DefaultClock::new()),
        delay: Duration::from_millis(3),
        fail,
    }
}

/// What a response says: status, and the headers a client reads.
async fn answers<S: Store<Key> + 'static>(
    layer: RateLimitLayer<HeaderKey, One, DefaultRejector, S>,
) -> Vec<(u16, String, String)> {
    let service = layer.layer(service_fn(ok));
    let mut seen = Vec::new();
    for key in ["a", "a", "a", "b", "a", "b"] {
        let response = service.clone().oneshot(request(key)).await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        seen.push((
            response.status().as_u16(),
            header("ratelimit"),
            header("retry-after"),
        ));
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn a_late_store_gives_the_same_answers_as_memory() {
    let quota: Quota = "2/min".parse().unwrap();
    let builder = || RateLimitLayer::builder(quota).key(HeaderKey::new("x-api-key").unwrap());
    let in_memory = answers(builder().build().unwrap()).await;
    let stored = answers(builder().store(late(false)).build().unwrap()).await;
    assert_eq!(stored, in_memory);
    let statuses: Vec<u16> = stored.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 429, 200, 429, 200]);
    assert_eq!(stored[2].2, "30");
}

#[tokio::test(start_paused = true)]
async fn the_layer_reaches_its_store_limiter() {
    let layer = RateLimitLayer::builder("2/min".parse().unwrap())
        .key(HeaderKey::new("x-api-key").unwrap())
        .store(late(false))
        .build()
        .unwrap();
    let limiter = layer.limiter();
    limiter
        .set_quota(&Key::from("gold"), "5/min".parse().unwrap())
        .await
        .unwrap();
    let service = layer.layer(service_fn(ok));
    for _ in 0..5 {
        let response = service.clone().oneshot(request("gold")).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = service.clone().oneshot(request("gold")).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(limiter.stats().admitted, 5);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_is_answered_503_with_retry_after() {
    let layer = RateLimitLayer::builder("2/min".parse().unwrap())
        .key(HeaderKey::new("x-api-key").unwrap())
        .store(late(true))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(ok));
    let response = service.oneshot(request("a")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let rejection = response
        .extensions()
        .get::<tollgate_tower::Rejection>()
        .unwrap();
    assert_eq!(rejection.kind(), RejectionKind::Unavailable);
    let _ = DeniedKind::StoreFailed;
}

/// Shadow mode over a store that answers late: the same fields as when
/// enforced, every answer 200, the refusals it would have made counted;
/// a store that fails refuses no one either.
#[tokio::test(start_paused = true)]
async fn shadow_mode_over_a_late_store() {
    let quota: Quota = "2/min".parse().unwrap();
    let builder = || RateLimitLayer::builder(quota).key(HeaderKey::new("x-api-key").unwrap());
    let enforced = answers(builder().store(late(false)).build().unwrap()).await;
    let layer = builder().store(late(false)).shadow(true).build().unwrap();
    let shadowed = answers(layer.clone()).await;
    for (enforced, shadowed) in enforced.iter().zip(&shadowed) {
        assert_eq!(shadowed.0, 200);
        assert_eq!(shadowed.1, enforced.1, "the same RateLimit field");
        assert_eq!(shadowed.2, "", "no Retry-After");
    }
    assert_eq!(layer.shadowed(), 2);

    let failing = builder().store(late(true)).shadow(true).build().unwrap();
    let service = failing.clone().layer(service_fn(ok));
    let response = service.oneshot(request("a")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(failing.shadowed(), 1);
}

/// Tiers over a store that answers late: each tier's quota and name, as
/// in memory.
#[tokio::test(start_paused = true)]
async fn tiers_over_a_late_store() {
    let layer = RateLimitLayer::builder("1/min".parse().unwrap())
        .key(HeaderKey::new("x-api-key").unwrap())
        .tier("pro", "3/min".parse().unwrap())
        .store(late(false))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(ok));
    let pro = || {
        let mut request = request("a");
        request
            .extensions_mut()
            .insert(tollgate_tower::Tier::new("pro"));
        request
    };
    let mut seen = Vec::new();
    for _ in 0..4 {
        let response = service.clone().oneshot(pro()).await.unwrap();
        seen.push((
            response.status().as_u16(),
            response.headers()["ratelimit"].to_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        seen,
        [
            (200, r#""pro";r=2;t=20"#.to_owned()),
            (200, r#""pro";r=1;t=40"#.to_owned()),
            (200, r#""pro";r=0;t=60"#.to_owned()),
            (429, r#""pro";r=0;t=60"#.to_owned()),
        ]
    );
    // Without the tier, the layer's quota: the key has spent it all.
    let response = service.clone().oneshot(request("b")).await.unwrap();
    assert_eq!(response.headers()["ratelimit"], r#""default";r=0;t=60"#);
}
