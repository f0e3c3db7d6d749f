//! A tonic server (the standard gRPC health service) behind a per-client
//! limit: calls over it are answered RESOURCE_EXHAUSTED, with a retry hint
//! in the metadata.
//!
//! ```text
//! cargo run -p tollgate-examples --example tonic_server
//! ```

use tollgate::Quota;
use tollgate_tower::{PeerIp, RateLimitLayer};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    // 2 calls a second per client address, bursts of 2.
    let per_client = RateLimitLayer::builder(Quota::per_second(2)?)
        .key(PeerIp::new())
        .build()?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::builder()
            .layer(per_client)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    println!("gRPC health service on {addr}, 2 calls a second per client\n");

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    for call in 1..=4 {
        match client.check(HealthCheckRequest::default()).await {
            Ok(reply) => {
                let ratelimit = reply
                    .metadata()
                    .get("ratelimit")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                println!(
                    "  call {call}: {:?}  ratelimit: {ratelimit}",
                    reply.get_ref().status()
                );
            }
            Err(status) => {
                let pushback = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                println!(
                    "  call {call}: {:?} \"{}\"  retry in {pushback} ms",
                    status.code(),
                    status.message()
                );
            }
        }
    }
    Ok(())
}
