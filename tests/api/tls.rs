//! TLS to PostgreSQL and Redis, as managed services require: a server with a certificate
//! from a private authority is refused until that authority is given, and then serves as
//! the plain one does. The certificates are made here, with `openssl`; the servers are the
//! test's own, on free ports.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::faults::postgres::OwnPostgres;
use crate::helpers::{
    Backend, TestApp, fresh_database, fresh_prefix, refused_at_start, two_nodes_carry,
};
use crate::process::{
    OwnCluster, OwnSentinel, Process, SENTINEL_MASTER, TlsFiles, free_port, redis_server,
};

/// A private certificate authority and a certificate it signed for 127.0.0.1/localhost,
/// in a directory of the test's own.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make() -> Certificates {
        let dir = std::env::temp_dir()
            .join("wirechat-tests")
            .join(format!("tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("certificates dir");
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl runs");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=wirechat test authority",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        // Client use too: a cluster's servers show it to each other on the cluster bus.
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("extensions file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ]);
        Certificates { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The server's certificate and key and the authority, as the test servers take them.
    fn files(&self) -> TlsFiles {
        let file = |name: &str| self.path(name).display().to_string();
        TlsFiles {
            cert: file("server.pem"),
            key: file("server.key"),
            ca: file("ca.pem"),
        }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("a certificate file")
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server that takes TLS only (its plain port off).
async fn redis_over_tls(certificates: &Certificates) -> (Process, u16) {
    let port = free_port();
    let file = |name: &str| certificates.path(name).display().to_string();
    let process = redis_server(&[
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &file("server.pem"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
        "--tls-auth-clients",
        "no",
    ])
    .await;
    (process, port)
}

/// Checks that a node given `redis` (its Redis settings, without an authority) refuses to
/// start, naming the server at `addr` whose certificate it does not trust and the setting
/// that gives authorities.
async fn refused_untrusted(redis: &[&str], addr: &str) {
    let database_url = fresh_database(Backend::Sqlite).await;
    let refused = refused_at_start(&database_url, redis);
    assert!(
        refused.contains(&format!(
            "{addr} showed a certificate this node does not trust"
        )),
        "{refused}"
    );
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    assert!(refused.contains("WIRECHAT_REDIS_CA_FILE"), "{refused}");
}

/// A node's arguments: the Redis settings `redis`, the test's authority to trust, and a
/// key prefix of the test's own.
fn trusting_the_authority(redis: &[&str], certificates: &Certificates) -> Vec<String> {
    let ca = certificates.path("ca.pem").display().to_string();
    let prefix = fresh_prefix();
    let rest = ["--redis-ca-file", &ca, "--redis-prefix", &prefix];
    redis
        .iter()
        .chain(&rest)
        .map(|arg| arg.to_string())
        .collect()
}

/// Whether a node's Redis client gets an answer to PING from `url`.
async fn pings(url: &str, ca_file: Option<&Path>) -> Result<(), String> {
    wirechat::app::install_tls_provider();
    let servers =
        wirechat::layer::redis::Servers::single(url, ca_file).map_err(|e| e.to_string())?;
    servers.commands().map_err(|e| e.to_string())?.ping().await
}

/// Whether a node's Redis client gets an answer to PING from every master of the cluster
/// reached through `nodes`.
async fn cluster_pings(nodes: &str, ca_file: Option<&Path>) -> Result<(), String> {
    wirechat::app::install_tls_provider();
    let servers =
        wirechat::layer::redis::Servers::cluster(nodes, ca_file).map_err(|e| e.to_string())?;
    servers.commands().map_err(|e| e.to_string())?.ping().await
}

/// A Redis Cluster whose servers take TLS clients (and speak TLS to each other) with a
/// certificate from a private authority: refused without the authority, and two nodes
/// chat over it with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_over_tls_is_trusted_with_its_authority_only() {
    let certificates = Certificates::make();
    let cluster = OwnCluster::start_with("1000", Some(&certificates.files())).await;
    let nodes = cluster
        .tls_ports
        .iter()
        .map(|port| format!("rediss://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let refused = cluster_pings(&nodes, None)
        .await
        .expect_err("an unknown authority is refused");
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"),
        "{refused}"
    );
    refused_untrusted(
        &["--redis-cluster", &nodes],
        &format!("127.0.0.1:{}", cluster.tls_ports[0]),
    )
    .await;
    let ca = certificates.path("ca.pem");
    cluster_pings(&nodes, Some(&ca))
        .await
        .expect("trusted with its authority");

    let args = trusting_the_authority(&["--redis-cluster", &nodes], &certificates);
    two_nodes_carry(args, "sent over a TLS cluster").await;
    drop(cluster);
}

/// Redis Sentinel whose master, replica and sentinels take TLS clients only (the replica
/// syncs, and the sentinels watch and talk to each other, over TLS too), with certificates
/// from a private authority: a node without the authority refuses to start, saying whose
/// certificate it does not trust and where authorities are given; with it, two nodes chat
/// through the master the sentinels name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_over_tls_is_trusted_with_its_authority_only() {
    let certificates = Certificates::make();
    let redis = OwnSentinel::start_with(Some(&certificates.files())).await;
    assert_eq!(redis.master().await, Some(redis.servers[0].1));
    let sentinels = redis.nodes();
    let master = format!("rediss://{SENTINEL_MASTER}");

    refused_untrusted(
        &[
            "--redis-sentinel",
            &sentinels,
            "--redis-sentinel-master",
            &master,
        ],
        &format!("127.0.0.1:{}", redis.sentinels[0].1),
    )
    .await;

    let args = trusting_the_authority(
        &[
            "--redis-sentinel",
            &sentinels,
            "--redis-sentinel-master",
            &master,
        ],
        &certificates,
    );
    two_nodes_carry(args, "sent through TLS sentinels").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_is_trusted_with_its_authority_only() {
    let certificates = Certificates::make();
    let (_redis, port) = redis_over_tls(&certificates).await;
    let url = format!("rediss://127.0.0.1:{port}");
    // The system does not know the private authority.
    let refused = pings(&url, None)
        .await
        .expect_err("an unknown authority is refused");
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"),
        "{refused}"
    );
    refused_untrusted(&["--redis-url", &url], &format!("127.0.0.1:{port}")).await;
    pings(&url, Some(&certificates.path("ca.pem")))
        .await
        .expect("trusted with its authority");
    // Plain Redis does not speak to a TLS port.
    assert!(
        pings(&format!("redis://127.0.0.1:{port}"), None)
            .await
            .is_err()
    );
    // An authority with a plain URL is a mistake, said so.
    let mistaken = pings(
        &format!("redis://127.0.0.1:{port}"),
        Some(&certificates.path("ca.pem")),
    )
    .await
    .expect_err("a CA file needs rediss://");
    assert!(mistaken.contains("rediss://"), "{mistaken}");

    // Two nodes chat over it.
    let args = trusting_the_authority(&["--redis-url", &url], &certificates);
    two_nodes_carry(args, "sent over TLS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_is_verified_with_its_authority() {
    let certificates = Certificates::make();
    let pg = OwnPostgres::start_tls(
        &certificates.read("server.pem"),
        &certificates.read("server.key"),
    )
    .await;
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    // The server takes TLS only.
    let plain = wirechat::store::Store::connect(&format!("{base}?sslmode=disable")).await;
    assert!(plain.is_err(), "a plain connection was taken");
    // Verified against the system's authorities, the private one is unknown.
    let unknown = wirechat::store::Store::connect(&format!("{base}?sslmode=verify-full")).await;
    let error = format!(
        "{:#}",
        anyhow::Error::from(unknown.err().expect("an unknown authority is refused"))
    );
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    // With its authority, verified (name and chain), a node serves as on a plain server.
    let ca = certificates.path("ca.pem").display().to_string();
    let url = format!("{base}?sslmode=verify-full&sslrootcert={ca}");
    let app = TestApp::start(url, Vec::new()).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    a.say("stored over TLS").await;
    a.wait_for_message("stored over TLS").await;
}
