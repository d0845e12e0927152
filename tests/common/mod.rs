//! Test fixtures shared by the integration tests: a real server on a
//! loopback port with its token and certificate in a temporary directory.
#![allow(dead_code)] // each test crate uses its own subset

pub mod agent_tls;
pub mod binary;
pub mod children;
pub mod datadog_client;
pub mod host_fixtures;
pub mod plain_datadog;
pub mod raw_h2;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use remote_tagger::client::{ClientConfig, TlsSettings};
use remote_tagger::domain::{Entity, EntityId};
use remote_tagger::server::{RunningServer, ServeConfig, Server, ServerStats, Source, StoreHandle};

/// Only to keep a broken test from hanging: nothing here should take long.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const MIB: usize = 1024 * 1024;

pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A running server with its files in a temporary directory.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    pub store: StoreHandle,
    running: RunningServer,
}

pub fn config_in(dir: &Path) -> ServeConfig {
    let mut config = ServeConfig::new(dir.join("auth_token"), dir.join("ipc_cert.pem"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    // An empty, static store: tests put in it exactly what they need.
    config.source = Source::Workload {
        entities: 0,
        seed: 1,
        churn_per_sec: 0.0,
    };
    config
}

impl TestServer {
    pub async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), tweak).await
    }

    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = config_in(dir.path());
        tweak(&mut config);
        let running = Server::bind(config).await.unwrap().spawn();
        Self {
            dir,
            addr: running.local_addr(),
            store: running.store().clone(),
            running,
        }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("auth_token")).unwrap()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("ipc_cert.pem")
    }

    pub async fn wait_for_stats(&self, what: &str, done: impl Fn(&ServerStats) -> bool) {
        within(what, async {
            while !done(&self.store.stats()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    pub async fn stop(self) -> tempfile::TempDir {
        within("server shutdown", self.running.stop())
            .await
            .unwrap();
        self.dir
    }
}

/// Enough data that a client which never reads blocks the server's sends
/// (well past the HTTP/2 flow-control windows).
pub fn fill_with_bulk(store: &StoreHandle, megabytes: usize) {
    let tag = "b".repeat(64 * 1024);
    store.apply((0..megabytes * 16).map(|i| {
        remote_tagger::domain::EntityEvent::Added(entity(
            &format!("process://bulk{i}"),
            &[],
            &[],
            &[&tag],
        ))
    }));
}

pub fn entity(id: &str, low: &[&str], orchestrator: &[&str], high: &[&str]) -> Entity {
    let tags = |list: &[&str]| list.iter().map(|t| t.to_string()).collect();
    Entity {
        id: EntityId::parse(id).unwrap(),
        low: tags(low),
        orchestrator: tags(orchestrator),
        high: tags(high),
        standard: vec!["service:web".into()],
    }
}

/// A client of `server` at `target` verifying its certificate, with a fixed
/// jitter seed.
pub fn client_config(server: &TestServer, target: &str) -> ClientConfig {
    let mut config = ClientConfig::new(
        target,
        server.dir.path().join("auth_token"),
        TlsSettings::verify(server.cert_path()),
    );
    config.core.seed = 7;
    config
}
