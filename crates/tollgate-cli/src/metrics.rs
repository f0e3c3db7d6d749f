//! `--metrics-addr`: the run's metrics in Prometheus' text format at
//! `GET /metrics` (feature `metrics`, on by default).
//!
//! The recorder is installed before anything that counts is built (its
//! handles are taken then), so call [`serve`] first.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), String> {
//! // Once a process: the recorder is global.
//! let addr = tollgate_cli::metrics::serve(([127, 0, 0, 1], 9898).into()).await?;
//! println!("metrics at http://{addr}/metrics");
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;

/// Installs the Prometheus recorder for the process and serves it at
/// `addr` (port 0: any free one); answers where it listens.
#[cfg(feature = "metrics")]
pub async fn serve(addr: SocketAddr) -> Result<SocketAddr, String> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-addr {addr}: cannot listen: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("--metrics-addr {addr}: cannot install the recorder: {e}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("tollgate: the metrics endpoint stopped: {error}");
        }
    });
    Ok(bound)
}

/// Without the `metrics` feature: an error naming it.
#[cfg(not(feature = "metrics"))]
pub async fn serve(addr: SocketAddr) -> Result<SocketAddr, String> {
    Err(format!(
        "--metrics-addr {addr}: this tollgate was built without the `metrics` feature"
    ))
}

/// A finished line of `tollgate batch`, by its outcome (`ok`, or the
/// record's `kind`; `left` for a line not sent).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn line(outcome: &str) {
    #[cfg(feature = "metrics")]
    {
        // The outcomes are the record kinds: a handful.
        let outcome: &'static str = match outcome {
            "ok" => "ok",
            "bad_input" => "bad_input",
            "http" => "http",
            "transport" => "transport",
            "timeout" => "timeout",
            "retry_later" => "retry_later",
            "body_too_large" => "body_too_large",
            "too_large" => "too_large",
            "left" => "left",
            _ => "other",
        };
        metrics::counter!("tollgate_batch_lines_total", "outcome" => outcome).increment(1);
    }
}
