//! The client driver (tokio/tonic) against the real server over loopback
//! sockets: TLS and token, backoff on refusal, resync after a restart,
//! resume after a short disconnect, chunked snapshots.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, client_config, entity, within};
use remote_tagger::client::{self, ClientStatus, RemoteTagger, TlsMode};
use remote_tagger::core::{ConnectError, ConnectionState, GrpcStatus, LossReason, StatusCode};
use remote_tagger::domain::{Cardinality, EntityEvent, EntityId};
use remote_tagger::server::Source;
use remote_tagger::workload::{Workload, WorkloadConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

async fn wait_status(tagger: &RemoteTagger, what: &str, done: impl Fn(&ClientStatus) -> bool) {
    let mut status = tagger.status();
    within(what, status.wait_for(|s| done(s)))
        .await
        .expect("the driver stopped");
}

fn write_entities(path: &Path, ids: &[&str]) {
    let entities: Vec<serde_json::Value> = ids
        .iter()
        .map(
            |id| serde_json::json!({"id": id, "low": ["env:prod"], "high": [format!("name:{id}")]}),
        )
        .collect();
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec(&entities).unwrap()).unwrap();
    std::fs::rename(temporary, path).unwrap();
}

fn mirrored_ids(tagger: &RemoteTagger) -> Vec<String> {
    tagger
        .mirror()
        .list()
        .iter()
        .map(|e| e.id.to_string())
        .collect()
}

#[tokio::test]
async fn mirrors_a_chunked_snapshot_over_tls_then_follows_live_changes() {
    // 20k workload entities make a ~9 MiB snapshot: several 2 MiB chunks.
    let workload = WorkloadConfig {
        entities: 20_000,
        seed: 3,
    };
    let server = TestServer::start(|config| {
        config.source = Source::Workload {
            entities: workload.entities,
            seed: workload.seed,
            churn_per_sec: 0.0,
        }
    })
    .await;
    let tagger = RemoteTagger::start(client_config(&server, &server.addr.to_string())).unwrap();
    within("the first sync", tagger.wait_synced()).await;
    let expected = Workload::new(workload).snapshot();
    assert_eq!(
        tagger.mirror().list(),
        expected,
        "the mirror is the whole store"
    );
    let status = tagger.status().borrow().clone();
    assert!(status.extension_aware);
    assert!(
        status.telemetry.receives >= 5,
        "a 9 MiB snapshot takes several responses"
    );
    assert_eq!(server.store.stats().snapshots_sent, 1);

    let added = entity(
        "process://4242",
        &["env:test"],
        &["pod_name:p"],
        &["pid:4242"],
    );
    server.store.apply([EntityEvent::Added(added)]);
    wait_status(&tagger, "the live change", |s| {
        s.mirrored_entities == expected.len() + 1
    })
    .await;
    let mirror = tagger.mirror();
    assert_eq!(
        mirror.tags("process://4242", Cardinality::High),
        ["env:test", "pod_name:p", "pid:4242"]
    );
    assert_eq!(
        mirror.tags("process://4242", Cardinality::Low),
        ["env:test"]
    );
    tagger.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_client_backs_off_instead_of_spinning() {
    let server = TestServer::start(|_| {}).await;
    let wrong_token = server.dir.path().join("wrong_token");
    std::fs::write(&wrong_token, "f".repeat(64)).unwrap();
    let mut config = client_config(&server, &server.addr.to_string());
    config.auth_token_file = wrong_token;
    let tagger = RemoteTagger::start(config).unwrap();
    wait_status(&tagger, "three refusals", |s| {
        s.telemetry.stream_errors >= 3
    })
    .await;
    let status = tagger.status().borrow().clone();
    let reason = status.last_error.unwrap();
    assert!(
        matches!(
            &reason,
            LossReason::ConnectFailed(ConnectError::Refused(GrpcStatus {
                code: StatusCode::Unauthenticated,
                ..
            }))
        ),
        "{reason:?}"
    );
    let error = reason.to_string();
    assert!(error.contains("Unauthenticated"), "{error}");
    assert!(
        !error.contains(&"f".repeat(64)),
        "the token never appears in errors"
    );
    // 3 failures grew the interval 500 ms -> 750 -> 1125 -> 1687.5 ms: backing off, not spinning.
    assert!(
        status.backoff_interval >= Duration::from_millis(1687),
        "{:?}",
        status.backoff_interval
    );
    assert_eq!(server.store.stats().snapshots_sent, 0);
    assert!(server.store.stats().auth_failures >= 3);
    tagger.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_restart_resyncs_and_entities_deleted_meanwhile_disappear() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("entities.json");
    write_entities(&file, &["process://1", "process://2", "process://3"]);
    let file_source = Source::EntitiesFile(file.clone());
    let source = file_source.clone();
    let server = TestServer::start_in(dir, move |config| config.source = source).await;
    let address = server.addr;
    let tagger = RemoteTagger::start(client_config(&server, &address.to_string())).unwrap();
    within("the first sync", tagger.wait_synced()).await;
    assert_eq!(
        mirrored_ids(&tagger),
        ["process://1", "process://2", "process://3"]
    );

    let dir = server.stop().await;
    write_entities(&file, &["process://1", "process://3", "process://4"]);
    wait_status(&tagger, "the loss", |s| s.state != ConnectionState::Synced).await;
    assert_eq!(
        mirrored_ids(&tagger).len(),
        3,
        "stale tags keep being served meanwhile"
    );
    let server = TestServer::start_in(dir, move |config| {
        config.source = file_source;
        config.listen = address;
    })
    .await;
    wait_status(&tagger, "the resync", |s| {
        s.state == ConnectionState::Synced && s.telemetry.snapshots == 2
    })
    .await;
    assert_eq!(
        mirrored_ids(&tagger),
        ["process://1", "process://3", "process://4"]
    );
    assert_eq!(
        tagger.status().borrow().telemetry.resumes,
        0,
        "a new epoch cannot be resumed"
    );
    tagger.stop().await;
    server.stop().await;
}

/// A TCP relay the test can cut, to break streams without touching the server.
struct CuttableProxy {
    address: String,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = Arc::clone(&connections);
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap().push(relay);
            }
        });
        Self {
            address,
            connections,
            acceptor,
        }
    }

    /// Drops every relayed connection (both ends see it closed).
    fn cut(&self) {
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

#[tokio::test]
async fn a_short_disconnect_resumes_without_a_snapshot() {
    let server = TestServer::start(|config| {
        config.source = Source::Workload {
            entities: 500,
            seed: 9,
            churn_per_sec: 0.0,
        }
    })
    .await;
    let proxy = CuttableProxy::start(server.addr).await;
    let tagger = RemoteTagger::start(client_config(&server, &proxy.address)).unwrap();
    within("the first sync", tagger.wait_synced()).await;
    assert_eq!(tagger.mirror().len(), 500);

    proxy.cut();
    let added = entity("process://777", &["env:late"], &[], &[]);
    server.store.apply([EntityEvent::Added(added)]);
    wait_status(&tagger, "the resume", |s| {
        s.telemetry.resumes == 1 && s.state == ConnectionState::Synced
    })
    .await;
    wait_status(&tagger, "the missed change", |s| s.mirrored_entities == 501).await;
    let stats = server.store.stats();
    assert_eq!(
        stats.snapshots_sent, 1,
        "the reconnect was served from the change log"
    );
    assert_eq!(stats.resumes_accepted, 1);
    assert_eq!(tagger.status().borrow().telemetry.snapshots, 1);
    assert_eq!(
        tagger.mirror().tags("process://777", Cardinality::High),
        ["env:late"]
    );
    tagger.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn fetch_entity_asks_the_server_for_one_entity() {
    let server = TestServer::start(|_| {}).await;
    server.store.apply([EntityEvent::Added(entity(
        "container_id://abc",
        &["env:prod"],
        &["pod_name:web-1"],
        &["container_id:abc"],
    ))]);
    let config = client_config(&server, &server.addr.to_string());
    let id = EntityId::parse("container_id://abc").unwrap();
    let orchestrator = client::fetch_entity(&config, &id, Cardinality::Orchestrator)
        .await
        .unwrap();
    assert_eq!(orchestrator, ["env:prod", "pod_name:web-1"]);
    let unknown = EntityId::parse("container_id://nope").unwrap();
    assert!(
        client::fetch_entity(&config, &unknown, Cardinality::High)
            .await
            .unwrap()
            .is_empty()
    );
    let mut plaintext = config.clone();
    plaintext.tls.mode = TlsMode::InsecurePlaintext;
    let refused = client::fetch_entity(&plaintext, &id, Cardinality::High).await;
    assert!(
        refused.is_err(),
        "a TLS server does not speak plaintext HTTP/2"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unreadable_ca_file_fails_at_start_with_the_path() {
    let server = TestServer::start(|_| {}).await;
    let mut config = client_config(&server, &server.addr.to_string());
    config.tls.mode = TlsMode::Verify {
        ca_file: server.dir.path().join("missing.pem"),
    };
    let error = RemoteTagger::start(config).err().unwrap().to_string();
    assert!(error.contains("missing.pem"), "{error}");
    server.stop().await;
}
