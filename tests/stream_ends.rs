//! Every way the server ends a tagger stream carries an error status that
//! says why, never OK (Datadog's Rust client reopens at once after an OK
//! end), and our own client backs off and resyncs after each. Real loopback
//! sockets, the real `serve_incoming` in plaintext (TLS changes nothing
//! here), the raw generated tonic client or our `RemoteTagger`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{MIB, entity, fill_with_bulk, within};
use remote_tagger::client::{ClientConfig, RemoteTagger, TlsMode, TlsSettings};
use remote_tagger::core::{ConnectionState, Event, GrpcStatus, LossReason, StatusCode, StreamEnd};
use remote_tagger::domain::EntityEvent;
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model as pb;
use remote_tagger::server::{
    Authenticator, Epoch, PrefixFilter, Security, ServeError, ServiceConfig, Store, StoreHandle,
    TaggerService, serve_incoming,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status, Streaming};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The real service over plaintext on a loopback port.
struct PlainServer {
    addr: SocketAddr,
    store: StoreHandle,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl PlainServer {
    async fn start(config: ServiceConfig) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), 1, config).await
    }

    /// A server on `addr` whose store is instance `instance` (its epoch).
    async fn start_on(addr: SocketAddr, instance: u64, config: ServiceConfig) -> Self {
        let store = StoreHandle::new(Store::new(Epoch::from_seed(instance), 10_000));
        let service =
            TaggerService::new(store.clone(), Authenticator::fixed(TOKEN).unwrap(), config);
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_incoming(
            service,
            Security::InsecurePlaintext,
            incoming,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            store,
            stop,
            task,
        }
    }

    /// A stream of the raw generated client, as a Datadog remote tagger opens it.
    async fn stream(&self) -> Streaming<pb::StreamTagsResponse> {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut request = Request::new(pb::StreamTagsRequest {
            cardinality: pb::TagCardinality::High as i32,
            streaming_id: "test:ends".into(),
            ..Default::default()
        });
        let bearer = format!("Bearer {TOKEN}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        AgentSecureClient::new(channel)
            .max_decoding_message_size(64 * MIB)
            .tagger_stream_entities(request)
            .await
            .unwrap()
            .into_inner()
    }

    async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&remote_tagger::server::ServerStats) -> bool,
    ) {
        within(what, async {
            while !done(&self.store.stats()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        within("the server to stop", self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Reads the stream to its end: the responses, then how it ended.
async fn read_to_end(stream: &mut Streaming<pb::StreamTagsResponse>) -> (usize, Option<Status>) {
    within("the stream to end", async {
        let mut responses = 0;
        loop {
            match stream.message().await {
                Ok(Some(_)) => responses += 1,
                Ok(None) => return (responses, None),
                Err(status) => return (responses, Some(status)),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_send_timeout_ends_the_stream_with_deadline_exceeded_after_what_was_queued() {
    let server = PlainServer::start(ServiceConfig {
        send_timeout: Duration::from_millis(200),
        ..ServiceConfig::default()
    })
    .await;
    fill_with_bulk(&server.store, 16);
    let mut stalled = server.stream().await;
    // The stream's task gives up on the client that does not read, and is gone.
    server
        .wait_for("the send timeout", |s| {
            s.stream_errors == 1 && s.subscribers == 0
        })
        .await;

    // Read late, the client still gets what was queued, then why it ended.
    let (responses, end) = read_to_end(&mut stalled).await;
    assert!(responses > 0);
    let end = end.expect("a send timeout ends with an error status, never OK");
    assert_eq!(end.code(), Code::DeadlineExceeded);
    assert_eq!(
        end.message(),
        "the client did not take a response within the 200ms send timeout; reconnect to resync"
    );
    assert_eq!(
        server.store.stats().snapshots_sent,
        0,
        "the snapshot never completed"
    );
    server.stop().await;
}

/// A TCP relay between our client and the server that can stop passing the
/// server's bytes on: the client then reads nothing, as a stalled client.
struct StallingRelay {
    addr: SocketAddr,
    stalled: Arc<watch::Sender<bool>>,
    acceptor: JoinHandle<()>,
}

impl StallingRelay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(watch::Sender::new(false));
        let gate = stalled.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                });
                let mut gate = gate.subscribe();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    loop {
                        if gate.wait_for(|stalled| !stalled).await.is_err() {
                            return;
                        }
                        match from_server.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if to_client.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            stalled,
            acceptor,
        }
    }
}

impl Drop for StallingRelay {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

fn write_token(dir: &std::path::Path) -> std::path::PathBuf {
    let token_file = dir.join("auth_token");
    std::fs::write(&token_file, TOKEN).unwrap();
    token_file
}

fn our_client(target: SocketAddr, token_file: &std::path::Path) -> ClientConfig {
    let tls = TlsSettings::new(TlsMode::InsecurePlaintext);
    let mut config = ClientConfig::new(target.to_string(), token_file, tls);
    config.core.seed = 7;
    config
}

/// The next `ConnectionLost`, skipping other events.
async fn next_loss(events: &mut broadcast::Receiver<Event>) -> (LossReason, Duration) {
    within("a connection loss", async {
        loop {
            if let Event::ConnectionLost {
                reason, retry_in, ..
            } = events.recv().await.unwrap()
            {
                return (reason, retry_in);
            }
        }
    })
    .await
}

/// The stream ended with a status the server sent (not a broken
/// connection), of this code.
fn assert_closed_with(reason: &LossReason, expected: StatusCode) {
    assert!(
        matches!(
            reason,
            LossReason::StreamClosed(StreamEnd::Status(GrpcStatus { code, .. })) if *code == expected
        ),
        "{reason:?}"
    );
}

/// The first delay is drawn around the 500 ms initial interval, ±50%: a
/// back-off, not an immediate reopen.
fn assert_backs_off(retry_in: Duration) {
    assert!(
        (Duration::from_millis(250)..=Duration::from_millis(750)).contains(&retry_in),
        "{retry_in:?}"
    );
}

#[tokio::test]
async fn our_client_backs_off_after_an_eviction_then_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_token(dir.path());
    let server = PlainServer::start(ServiceConfig {
        subscriber_buffer: 2,
        ..ServiceConfig::default()
    })
    .await;
    let relay = StallingRelay::start(server.addr).await;
    let tagger = RemoteTagger::start(our_client(relay.addr, &token_file)).unwrap();
    let mut events = tagger.subscribe();
    within("the first sync", tagger.wait_synced()).await;

    relay.stalled.send_replace(true);
    let tag = "s".repeat(64 * 1024);
    for i in 0.. {
        if server.store.stats().subscribers_evicted > 0 {
            break;
        }
        assert!(i < 10_000, "never evicted");
        let changed = entity(&format!("process://{i}"), &[], &[], &[&tag]);
        server.store.apply([EntityEvent::Added(changed)]);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    relay.stalled.send_replace(false);

    let (reason, retry_in) = next_loss(&mut events).await;
    assert_eq!(
        reason.to_string(),
        "stream closed: ResourceExhausted: the subscriber fell behind: more than 2 change batches were waiting for it; reconnect to resync"
    );
    assert_closed_with(&reason, StatusCode::ResourceExhausted);
    assert_backs_off(retry_in);
    let mut status = tagger.status();
    within(
        "the resume",
        status.wait_for(|s| s.state == ConnectionState::Synced && s.telemetry.resumes == 1),
    )
    .await
    .unwrap();
    let store_len = server.store.snapshot(&PrefixFilter::all()).entities.len();
    within(
        "the mirror to catch up",
        status.wait_for(|s| s.mirrored_entities == store_len),
    )
    .await
    .unwrap();
    assert_eq!(
        server.store.stats().snapshots_sent,
        1,
        "resumed, not re-snapshotted"
    );
    tagger.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn our_client_backs_off_after_a_shutdown_then_resyncs_with_the_next_server() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_token(dir.path());
    let server = PlainServer::start(ServiceConfig::default()).await;
    let addr = server.addr;
    server
        .store
        .apply([EntityEvent::Added(entity("host://a", &[], &[], &[]))]);
    let tagger = RemoteTagger::start(our_client(addr, &token_file)).unwrap();
    let mut events = tagger.subscribe();
    within("the first sync", tagger.wait_synced()).await;

    server.stop().await;
    let (reason, retry_in) = next_loss(&mut events).await;
    assert_eq!(
        reason.to_string(),
        "stream closed: Unavailable: the tagger server is shutting down; reconnect later"
    );
    assert_closed_with(&reason, StatusCode::Unavailable);
    assert_backs_off(retry_in);

    let next = PlainServer::start_on(addr, 2, ServiceConfig::default()).await;
    next.store
        .apply([EntityEvent::Added(entity("host://b", &[], &[], &[]))]);
    let mut status = tagger.status();
    within(
        "the resync",
        status.wait_for(|s| s.state == ConnectionState::Synced && s.telemetry.snapshots == 2),
    )
    .await
    .unwrap();
    let ids: Vec<String> = tagger
        .mirror()
        .list()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(ids, ["host://b"]);
    tagger.stop().await;
    next.stop().await;
}
