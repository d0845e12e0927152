//! What an application embedding the client sees when it cannot connect,
//! over real loopback sockets: the typed error tells a refused token, a
//! failed TLS handshake, a refused connection and a timeout apart, for a
//! one-off request and for the mirror's stream alike.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::agent_tls::{AgentCert, AgentLikeServer};
use common::{TestServer, client_config, within};
use remote_tagger::client::{
    self, ClientCertificate, ClientConfig, FetchError, RemoteTagger, TlsMode, TlsSettings,
};
use remote_tagger::core::{
    ConnectError, LossReason, StatusCode, TransportError, TransportErrorKind,
};
use remote_tagger::domain::{Cardinality, EntityId};
use tokio::net::TcpListener;
use tokio_rustls::rustls::{self, SupportedProtocolVersion};

const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

async fn fetch(config: &ClientConfig) -> FetchError {
    let id = EntityId::parse("container_id://abc").unwrap();
    within(
        "a refused fetch",
        client::fetch_entity(config, &id, Cardinality::High),
    )
    .await
    .expect_err("the fetch is refused")
}

/// The kind of a fetch's transport failure; panics on any other error.
fn transport_kind(error: &FetchError) -> TransportErrorKind {
    match error {
        FetchError::Connect(ConnectError::Transport(TransportError { kind, .. })) => *kind,
        other => panic!("not a transport failure: {other:?}"),
    }
}

/// The kind of the first failure of the mirror's stream (its status's
/// last error), which must be a transport failure of an attempt.
async fn first_loss_kind(config: ClientConfig) -> TransportErrorKind {
    let tagger = RemoteTagger::start(config).unwrap();
    let mut status = tagger.status();
    let status = within(
        "a failed attempt",
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .unwrap()
    .clone();
    tagger.stop().await;
    match status.last_error.unwrap() {
        LossReason::ConnectFailed(ConnectError::Transport(TransportError { kind, .. })) => kind,
        other => panic!("not a transport failure of an attempt: {other:?}"),
    }
}

fn agent_client(server: &AgentLikeServer, trusted: &Path, mine: ClientCertificate) -> ClientConfig {
    let mut config = ClientConfig::new(
        server.addr.to_string(),
        server.token_file(),
        TlsSettings::verify(trusted),
    );
    config.tls.client_certificate = mine;
    config
}

#[tokio::test]
async fn a_refused_token_is_the_servers_unauthenticated_status() {
    let server = TestServer::start(|_| {}).await;
    let mut config = client_config(&server, &server.addr.to_string());
    config.auth_token_file = server.dir.path().join("wrong_token");
    std::fs::write(&config.auth_token_file, "f".repeat(64)).unwrap();
    match fetch(&config).await {
        FetchError::Server { code, message } => {
            assert_eq!(code, StatusCode::Unauthenticated, "{message}");
        }
        other => panic!("not the server's refusal: {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("auth_token");
    std::fs::write(&token_file, common::agent_tls::token()).unwrap();
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let tls = TlsSettings::new(TlsMode::InsecurePlaintext);
    let config = ClientConfig::new(closed.to_string(), &token_file, tls);
    let error = fetch(&config).await;
    assert_eq!(
        transport_kind(&error),
        TransportErrorKind::Unreachable,
        "{error}"
    );
    assert!(error.to_string().contains(&closed.to_string()), "{error}");

    assert_eq!(
        first_loss_kind(config).await,
        TransportErrorKind::Unreachable
    );
}

/// A listener that accepts connections and never says a word.
async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, holding)
}

#[tokio::test]
async fn a_handshake_that_never_ends_times_out() {
    let (addr, holding) = silent_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = AgentCert::generate().write(&dir.path().join("ipc_cert.pem"));
    let token_file = dir.path().join("auth_token");
    std::fs::write(&token_file, common::agent_tls::token()).unwrap();
    let mut config = ClientConfig::new(addr.to_string(), &token_file, TlsSettings::verify(&cert));
    config.connect_timeout = Duration::from_millis(200);
    let error = fetch(&config).await;
    assert_eq!(
        transport_kind(&error),
        TransportErrorKind::TimedOut,
        "{error}"
    );
    holding.abort();
}

#[tokio::test]
async fn a_server_certificate_other_than_the_pinned_one_is_a_tls_failure() {
    let server = AgentLikeServer::start(&AgentCert::generate().pem, TLS13).await;
    let dir = tempfile::tempdir().unwrap();
    let other = AgentCert::generate().write(&dir.path().join("ipc_cert.pem"));
    let config = agent_client(&server, &other, ClientCertificate::None);
    let error = fetch(&config).await;
    assert_eq!(transport_kind(&error), TransportErrorKind::Tls, "{error}");
}

/// TLS 1.2 refuses during the handshake; TLS 1.3 lets the client finish
/// first and the refusal comes with its first request, as a status tonic
/// makes of the broken connection: a TLS failure either way.
#[tokio::test]
async fn a_server_refusing_our_missing_client_certificate_is_a_tls_failure() {
    for versions in [TLS12, TLS13] {
        let server = AgentLikeServer::start(&AgentCert::generate().pem, versions).await;
        let config = agent_client(&server, &server.ipc_cert(), ClientCertificate::None);
        let error = fetch(&config).await;
        assert_eq!(
            transport_kind(&error),
            TransportErrorKind::Tls,
            "{versions:?}: {error}"
        );
        assert_eq!(
            first_loss_kind(config).await,
            TransportErrorKind::Tls,
            "{versions:?}"
        );
    }
}
