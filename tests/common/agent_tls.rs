//! TLS fixtures shaped like a Datadog Agent's IPC (wire spec section 6),
//! made independently of the code under test: certificates from the Agent's
//! template (its pkg/api/security/cert generator) by rcgen, openssl-made
//! files committed under tests/fixtures/tls (see make-fixtures.sh there),
//! and a server set up as the Agent's Go IPC server: its `ipc_cert.pem` as
//! its own certificate, TLS versions of the test's choice, and a client
//! certificate required and checked against that same file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use remote_tagger::server::{
    Authenticator, Epoch, ServiceConfig, Store, StoreHandle, TaggerService,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig, SupportedProtocolVersion};

use super::datadog_client::ExactCertificate;

/// An openssl-made `ipc_cert.pem` of the Agent's layout: SEC1 key.
pub fn openssl_agent_ipc_cert() -> PathBuf {
    fixture("agent_ipc_cert.pem")
}

/// `openssl req -x509` with its defaults (CA:TRUE), RSA, PKCS#1 key.
pub fn openssl_rsa_pkcs1() -> PathBuf {
    fixture("openssl_rsa_pkcs1.pem")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// A certificate from the Agent's template, its key as PKCS#8.
pub struct AgentCert {
    pub der: CertificateDer<'static>,
    /// `CERTIFICATE` then `PRIVATE KEY`.
    pub pem: String,
}

impl AgentCert {
    /// Valid from now for the Agent's 50 years.
    pub fn generate() -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self::valid_between(now, now + Duration::from_secs(50 * 365 * 24 * 3600))
    }

    pub fn valid_between(
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Self {
        let mut params = agent_template();
        params.not_before = not_before;
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            pem: format!("{}{}", cert.pem(), key.serialize_pem()),
        }
    }

    /// The certificate alone, as a trust file without a key.
    pub fn certificate_pem(&self) -> String {
        let end = self.pem.find("-----BEGIN PRIVATE KEY").unwrap();
        self.pem[..end].to_owned()
    }

    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_owned()
    }
}

/// The Agent's certificate template (cert_generator.go's `certTemplate`).
fn agent_template() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Datadog, Inc.");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

/// A private CA and a server certificate it signed (not a CA, valid for
/// localhost only): the ordinary PKI case, which webpki verifies.
pub struct CaSignedLeaf {
    /// The CA's certificate alone: the client's trust file.
    pub ca_pem: String,
    /// The leaf's certificate then its key: the server's cert file.
    pub leaf_pem: String,
}

impl CaSignedLeaf {
    pub fn generate() -> Self {
        let ca = rcgen::CertifiedIssuer::self_signed(
            agent_template(),
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &ca).unwrap();
        Self {
            ca_pem: ca.pem(),
            leaf_pem: format!("{}{}", leaf.pem(), key.serialize_pem()),
        }
    }
}

/// The token every fixture server accepts.
pub fn token() -> String {
    "0123456789abcdef".repeat(4)
}

/// TLS connections accepted as a Datadog Agent's IPC server accepts them:
/// it serves the certificate of `identity_pem` (certificate then key) and
/// requires clients to present exactly that certificate (its own pool),
/// with only the TLS versions given. Serve them with tonic's
/// `serve_with_incoming(incoming.connections)`.
pub struct AgentIpcIncoming {
    pub addr: SocketAddr,
    pub connections: tokio_stream::wrappers::ReceiverStream<
        std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    >,
    /// Handshakes refused so far.
    pub refused: Arc<AtomicUsize>,
    pub accepting: tokio::task::JoinHandle<()>,
}

impl AgentIpcIncoming {
    /// Listens on a loopback port; must be called within a runtime.
    pub async fn listen(
        identity_pem: &str,
        versions: &'static [&'static SupportedProtocolVersion],
    ) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(identity_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(identity_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_verifier = Arc::new(ExactCertificate::new(chain[0].clone(), provider.clone()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicUsize::new(0));
        let (handshaken, connections) = tokio::sync::mpsc::channel(16);
        let counter = refused.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, handshaken, counter) =
                    (acceptor.clone(), handshaken.clone(), counter.clone());
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = handshaken.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                        Err(_) => {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections: tokio_stream::wrappers::ReceiverStream::new(connections),
            refused,
            accepting,
        }
    }
}

/// A tagger server set up as a Datadog Agent's IPC server (see
/// [`AgentIpcIncoming`]).
pub struct AgentLikeServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub store: StoreHandle,
    refused: Arc<AtomicUsize>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl AgentLikeServer {
    /// Serves with `identity_pem` (certificate then key), which is also the
    /// only client certificate accepted.
    pub async fn start(
        identity_pem: &str,
        versions: &'static [&'static SupportedProtocolVersion],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipc_cert.pem"), identity_pem).unwrap();
        std::fs::write(dir.path().join("auth_token"), token()).unwrap();
        let store = StoreHandle::new(Store::new(Epoch::from_seed(16), 100));
        let service = TaggerService::new(
            store.clone(),
            Authenticator::fixed(&token()).unwrap(),
            ServiceConfig::default(),
        );
        let incoming = AgentIpcIncoming::listen(identity_pem, versions).await;
        let serving = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming(incoming.connections)
                .await
                .unwrap();
        });
        Self {
            addr: incoming.addr,
            dir,
            store,
            refused: incoming.refused,
            tasks: [incoming.accepting, serving],
        }
    }

    pub fn ipc_cert(&self) -> PathBuf {
        self.dir.path().join("ipc_cert.pem")
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("auth_token")
    }

    /// Handshakes refused so far (a missing or wrong client certificate).
    pub fn refused_handshakes(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Waits until a handshake has been refused: the client may see the
    /// connection fail before the server's task counts it.
    pub async fn wait_for_a_refusal(&self) {
        super::within("the server to refuse a handshake", async {
            while self.refused_handshakes() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

impl Drop for AgentLikeServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
