//! A real `redis-server` for tests: on a free loopback port, in a
//! temporary directory, stopped when dropped. With the `testing` feature.
//!
//! ```no_run
//! use tollgate_redis::testing::RedisServer;
//!
//! let server = RedisServer::start();
//! let url = server.url(); // redis://127.0.0.1:PORT/
//! # drop(url);
//! ```
//!
//! It panics (failing the test) when `redis-server` is not installed:
//! a test that needs Redis never passes without it.

#![allow(clippy::panic, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process of the test's own.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    extra: Vec<String>,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl RedisServer {
    /// Starts `redis-server` and waits until it answers. Panics when
    /// `redis-server` is missing or does not start.
    pub fn start() -> Self {
        Self::start_with(free_port(), &[])
    }

    /// Starts `redis-server` with more arguments (`--requirepass PW`,
    /// say), on a free port.
    pub fn start_with_args(args: &[&str]) -> Self {
        Self::start_with(free_port(), args)
    }

    /// Starts `redis-server` speaking TLS only, on a free port, with the
    /// server's certificate and key and the CA that signs the clients it
    /// trusts (all PEM files). With `require_client_certificate`, a
    /// client without a certificate the CA signed is refused.
    pub fn start_tls(
        certificate: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        require_client_certificate: bool,
    ) -> Self {
        let port = free_port();
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let args = [
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path(certificate),
            "--tls-key-file".to_owned(),
            path(key),
            "--tls-ca-cert-file".to_owned(),
            path(ca),
            "--tls-auth-clients".to_owned(),
            if require_client_certificate {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with(port, &args)
    }

    /// Starts `redis-server` on `port` with more arguments.
    fn start_with(port: u16, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tollgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let mut server = Self {
            child: None,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            port,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
            ])
            .args(&self.extra)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it (apt-get install -y redis-server), \
                     or run the tests with .ci/run, which does"
                )
            });
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:PORT/` (`rediss://` when it was
    /// started with [`start_tls`](Self::start_tls)).
    pub fn url(&self) -> String {
        let scheme = if self.extra.iter().any(|a| a == "--tls-port") {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (its data is gone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli` against the server.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port for a cluster node: its bus (the port + 10000) must be free too.
fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if port < 50_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// A Redis Cluster of the test's own: masters on loopback ports, made
/// with `redis-cli --cluster create`, stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3) and joins them into a cluster,
    /// waiting until every node says the cluster is ok.
    pub fn start(masters: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters.max(3))
            .map(|_| {
                RedisServer::start_with(
                    free_cluster_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Moves `slots` slots, with their keys, from node `from` to node `to`
    /// (`redis-cli --cluster reshard`): clients that knew the old owner
    /// get `MOVED`.
    pub fn reshard(&self, from: usize, to: usize, slots: usize) {
        let id = |i: usize| self.nodes[i].cli(&["CLUSTER", "MYID"]);
        let output = Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &format!("127.0.0.1:{}", self.nodes[from].port),
            ])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster reshard");
        assert!(
            output.status.success(),
            "redis-cli --cluster reshard failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        self.wait_ok();
    }
}

/// A Redis Sentinel of the test's own (`redis-server --sentinel`), on a
/// free loopback port, watching one master as `name`, quick to fail over
/// (a master is down after 1 s without an answer). Stopped when dropped.
#[derive(Debug)]
pub struct RedisSentinel {
    server: RedisServer,
}

impl RedisSentinel {
    /// Starts a sentinel watching the master at `master_port` as `name`.
    pub fn start(name: &str, master_port: u16) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("tollgate-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let mut server = RedisServer {
            child: None,
            extra: Vec::new(),
            port,
            dir,
        };
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .current_dir(&server.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel ({e})"));
        server.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the sentinel did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { server }
    }

    /// Its URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Runs `redis-cli` against the sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        self.server.cli(args)
    }
}
