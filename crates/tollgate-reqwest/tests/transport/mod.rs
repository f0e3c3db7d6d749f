//! An in-process transport for the tests: the last middleware of a test
//! client hands each request to an axum app in this process and turns its
//! answer into a `reqwest::Response`. No socket is opened, so the tests run
//! on Tokio's paused clock with exact times (paused time auto-advances
//! while a task waits on I/O, which would make them approximate).
//!
//! Each app is registered under a host name of its own; a client built with
//! [`client`] reaches every registered app by its URL.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use axum::body::Body;
use axum::Router;
use http::Extensions;
use http_body_util::BodyExt;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use tower::ServiceExt;

fn apps() -> &'static Mutex<HashMap<String, Router>> {
    static APPS: OnceLock<Mutex<HashMap<String, Router>>> = OnceLock::new();
    APPS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Registers `app`; answers its base URL (`http://provider-N.test`).
pub fn register(app: Router) -> String {
    register_in(app, "test")
}

/// Registers `app` under `domain`; answers its base URL
/// (`http://provider-N.DOMAIN`), for a provider the middleware knows by
/// its host.
pub fn register_in(app: Router, domain: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let host = format!("provider-{}.{domain}", NEXT.fetch_add(1, Ordering::Relaxed));
    apps().lock().unwrap().insert(host.clone(), app);
    format!("http://{host}")
}

/// The transport: the client's last middleware.
pub struct InProcess;

#[async_trait::async_trait]
impl Middleware for InProcess {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        _: &mut Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        // As on a network, a request is not answered within the poll that
        // sends it: calls sent together reach the provider together.
        tokio::task::yield_now().await;
        let host = request.url().host_str().unwrap_or_default().to_owned();
        let app = apps()
            .lock()
            .unwrap()
            .get(&host)
            .cloned()
            .unwrap_or_else(|| panic!("no app registered for {host}"));
        let mut builder = http::Request::builder()
            .method(request.method().clone())
            .uri(request.url().as_str());
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        let body = match request.body_mut().take() {
            Some(body) => Body::new(body),
            None => Body::empty(),
        };
        let response = app.oneshot(builder.body(body).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        // An app registered under the domain `stream` streams its body as
        // it comes; the others' is read whole first.
        let body = if host.ends_with(".stream") {
            reqwest::Body::wrap_stream(body.into_data_stream())
        } else {
            reqwest::Body::from(body.collect().await.unwrap().to_bytes())
        };
        // As reqwest's own responses do, it carries the URL it answers.
        let mut response = http::Response::from_parts(parts, body);
        let url =
            reqwest::ResponseBuilderExt::url(http::Response::builder(), request.url().clone())
                .body(())
                .unwrap();
        response
            .extensions_mut()
            .extend(url.into_parts().0.extensions);
        Ok(reqwest::Response::from(response))
    }
}

/// A client whose requests go through `middleware`, then to the
/// registered apps in process.
pub fn client(middleware: impl Middleware) -> ClientWithMiddleware {
    // In a workspace build reqwest has rustls without a provider (the
    // binary's choice): give it one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .with(InProcess)
        .build()
}
