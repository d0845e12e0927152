//! A raw tonic channel set up as Datadog's Rust client sets up its IPC
//! connection (wire spec section 6): TLS 1.3 only, the server accepted only
//! if it presents byte for byte the certificate of `ipc_cert.pem` (name and
//! CA flag ignored), and that file's pair presented as the client
//! certificate. Shared by the tests and the end-to-end benchmark (through
//! `#[path]`), so nothing here depends on the code under test.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, SignatureScheme,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to `addr` trusting exactly the certificate of `ipc_cert` and
/// presenting its pair.
pub async fn pinned_channel(addr: std::net::SocketAddr, ipc_cert: &Path) -> Channel {
    let connector = PinnedConnector {
        addr,
        config: pinned_tls_config(ipc_cert),
    };
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid uri")
        .connect_with_connector(connector)
        .await
        .expect("the server accepts the pinned connection")
}

/// The TLS client configuration of Datadog's Rust client for the server of
/// `ipc_cert`: TLS 1.3, that certificate pinned, its pair presented, `h2`.
pub fn pinned_tls_config(ipc_cert: &Path) -> Arc<ClientConfig> {
    let pem = std::fs::read(ipc_cert).expect("the certificate file is readable");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_slice(&pem).expect("a PEM private key");
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExactCertificate::new(
            chain[0].clone(),
            provider,
        )))
        .with_client_auth_cert(chain, key)
        .expect("a usable client certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` with `config` (see [`pinned_tls_config`]).
pub async fn pinned_tls(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // As tonic's own connector (and so Datadog's client): no Nagle delay on
    // small requests.
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("a valid name");
    TlsConnector::from(config).connect(name, tcp).await
}

#[derive(Clone)]
struct PinnedConnector {
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
}

impl tower_service::Service<Uri> for PinnedConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(TokioIo::new(pinned_tls(this.addr, this.config).await?)) })
    }
}

/// Accepts the peer only when it presents exactly this certificate (and
/// proves it holds its key): Datadog's Rust client's check of servers, and
/// what Go's `RequireAndVerifyClientCert` amounts to for an Agent whose
/// client pool holds only its own certificate.
#[derive(Debug)]
pub struct ExactCertificate {
    der: CertificateDer<'static>,
    subjects: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl ExactCertificate {
    pub fn new(der: CertificateDer<'static>, provider: Arc<CryptoProvider>) -> Self {
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("a valid certificate");
        let subjects = vec![DistinguishedName::from(parsed.subject().as_raw().to_vec())];
        Self {
            der,
            subjects,
            provider,
        }
    }

    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match presented.as_ref() == self.der.as_ref() {
            true => Ok(()),
            false => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for ExactCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for ExactCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}
