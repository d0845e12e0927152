//! How the client driver reaches a server: a [`Dialer`] for the byte stream
//! (TCP in production, turmoil in simulations), rustls on top of it, and the
//! bearer token read afresh for every stream.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig as RustlsConfig};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::ClientConfig;
use crate::core::{
    AuthTokenError, AuthTokenProblem, ConnectError, GrpcStatus, StatusCode, StreamEnd,
    TlsFileError, TlsFileProblem, TransportError, TransportErrorKind,
};
use crate::error_text::error_chain;
use crate::proto::encoded::agent_secure_client::AgentSecureClient;
use crate::trust::{PemBlocks, TrustFile};

/// A boxed future, as the dialer and connector return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A byte stream the driver can speak HTTP/2 over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens byte streams to `host:port` targets. Production dials TCP; the
/// simulations dial `turmoil::net`.
pub trait Dialer: Send + Sync + 'static {
    /// Opens a byte stream to `target` (`host:port`), unencrypted: TLS, when
    /// configured, is layered on top by the client.
    fn dial(&self, target: &str) -> BoxFuture<io::Result<Box<dyn Io>>>;
}

/// The largest HTTP/2 frame the client accepts. At the default 16 KiB a
/// server sends each TLS record in its own frame and write; allowing whole
/// 64 KiB gRPC messages per frame lets it write several records at once.
const MAX_FRAME_SIZE: u32 = 256 * 1024;

/// Dials real TCP with `TCP_NODELAY` (small gRPC frames must not wait).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, target: &str) -> BoxFuture<io::Result<Box<dyn Io>>> {
        let target = target.to_owned();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&target).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }
}

/// How the client protects and authenticates the connection.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Verify the server against the certificates of this PEM file, as
    /// Datadog's clients do: a self-signed certificate of the file that the
    /// server presents byte for byte is accepted within its validity period,
    /// whatever its CA flag and names (a Datadog Agent's `ipc_cert.pem`, or
    /// the file `serve` writes); any other certificate must chain to one of
    /// the file's and be valid for the server name.
    Verify {
        /// The PEM file of the certificates to trust (a Datadog Agent's
        /// `ipc_cert.pem`).
        ca_file: PathBuf,
    },
    /// Encrypt but accept any server certificate. Only for debugging: anyone
    /// on the path can impersonate the server and read the token.
    InsecureSkipVerify,
    /// No TLS at all: tests and simulations only.
    InsecurePlaintext,
}

/// The certificate the client presents to servers that ask for one. Every
/// Datadog Agent's IPC server has required one since 2025: the pair of its
/// `ipc_cert.pem`, which every Agent process presents.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientCertificate {
    /// The certificate and private key of the trust file ([`TlsMode::Verify`]'s
    /// `ca_file`) when it holds a key after its certificate (the
    /// `ipc_cert.pem` layout; SEC1, PKCS#8 or PKCS#1 key); none when it
    /// holds no key, or without a trust file.
    #[default]
    FromTrustFile,
    /// A PEM file holding a certificate (chain) followed by its private key.
    File(PathBuf),
    /// Never present one.
    None,
}

/// TLS settings of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Whether and how the server is verified.
    pub mode: TlsMode,
    /// The name the server's certificate must carry (Datadog: `localhost`);
    /// not checked for a pinned certificate, as Datadog's clients do not.
    pub server_name: String,
    /// What the client presents when the server asks for a certificate.
    pub client_certificate: ClientCertificate,
}

impl TlsSettings {
    /// `mode`, for a server whose certificate is valid for `localhost` (a
    /// Datadog Agent's), presenting the trust file's pair if it holds one.
    pub fn new(mode: TlsMode) -> Self {
        Self {
            mode,
            server_name: "localhost".to_owned(),
            client_certificate: ClientCertificate::default(),
        }
    }

    /// Verifies the server against the certificates of `ca_file` (see
    /// [`TlsMode::Verify`]), and presents the file's pair if it holds one:
    /// a Datadog Agent's `ipc_cert.pem`, or the file `serve` writes.
    pub fn verify(ca_file: impl Into<PathBuf>) -> Self {
        Self::new(TlsMode::Verify {
            ca_file: ca_file.into(),
        })
    }

    /// [`verify`](Self::verify) against the certificate `remote-tagger
    /// serve` writes by default. Reads the environment
    /// (`$REMOTE_TAGGER_HOME`, see [`crate::defaults::config_dir`]).
    pub fn serve_defaults() -> Self {
        Self::verify(crate::defaults::cert_file())
    }
}

/// Builds the rustls config for one connection (files are read each time, so
/// rotated certificates are picked up on the next attempt). `None` means
/// plaintext.
pub(crate) fn rustls_config(tls: &TlsSettings) -> Result<Option<Arc<RustlsConfig>>, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = RustlsConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring's provider supports rustls's default protocol versions");
    // `dangerous()` is only rustls's door to custom verifiers: the trust
    // file's verifier verifies (pinned or chained), only the explicit
    // `InsecureSkipVerify` accepts anything.
    let (builder, trust_file_pair) = match &tls.mode {
        TlsMode::InsecurePlaintext => return Ok(None),
        TlsMode::Verify { ca_file } => {
            let blocks = read_pem(ca_file)?;
            if blocks.certificates.is_empty() {
                return Err(file_error(ca_file, TlsFileProblem::NoCertificate));
            }
            let verifier = TrustFile::new(&blocks.certificates, provider)
                .and_then(|trust| trust.server_verifier())
                .map_err(|message| {
                    file_error(ca_file, TlsFileProblem::UnusableTrust { message })
                })?;
            let pair = blocks
                .key
                .map(|key| (blocks.certificates, key, ca_file.as_path()));
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier),
                pair,
            )
        }
        TlsMode::InsecureSkipVerify => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServer { provider })),
            None,
        ),
    };
    let pair = match &tls.client_certificate {
        ClientCertificate::None => None,
        ClientCertificate::FromTrustFile => trust_file_pair,
        ClientCertificate::File(path) => {
            let blocks = read_pem(path)?;
            if blocks.certificates.is_empty() {
                return Err(file_error(path, TlsFileProblem::NoCertificate));
            }
            let key = blocks
                .key
                .ok_or_else(|| file_error(path, TlsFileProblem::NoPrivateKey))?;
            Some((blocks.certificates, key, path.as_path()))
        }
    };
    let mut config = match pair {
        None => builder.with_no_client_auth(),
        Some((chain, key, path)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            file_error(
                path,
                TlsFileProblem::UnusableClientCertificate {
                    message: e.to_string(),
                },
            )
        })?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn file_error(path: &Path, problem: TlsFileProblem) -> TlsFileError {
    TlsFileError {
        path: path.to_owned(),
        problem,
    }
}

fn read_pem(path: &Path) -> Result<PemBlocks, TlsFileError> {
    let text = std::fs::read(path).map_err(|e| {
        file_error(
            path,
            TlsFileProblem::Unreadable {
                kind: e.kind(),
                message: e.to_string(),
            },
        )
    })?;
    PemBlocks::parse(&text).map_err(|e| {
        file_error(
            path,
            TlsFileProblem::MalformedPem {
                message: e.to_string(),
            },
        )
    })
}

/// Reads the bearer token: trimmed, and never echoed in errors.
///
/// A blocking read, on purpose: the file is a few dozen bytes on a local
/// disk, read once per stream, which costs less than `tokio::fs`'s hop to the
/// blocking pool, and that hop completes on a real thread at a real-time
/// moment, which made the turmoil simulations non-deterministic.
pub(crate) fn read_token(path: &Path) -> Result<String, AuthTokenError> {
    let error = |problem| AuthTokenError {
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        error(AuthTokenProblem::Unreadable {
            kind: e.kind(),
            message: e.to_string(),
        })
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(error(AuthTokenProblem::Empty));
    }
    Ok(token.to_owned())
}

/// The `authorization` header of the token in `path`, read afresh.
fn bearer(path: &Path) -> Result<MetadataValue<Ascii>, AuthTokenError> {
    let token = read_token(path)?;
    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| AuthTokenError {
        path: path.to_owned(),
        problem: AuthTokenProblem::NotAHeaderValue,
    })
}

/// A client on a fresh connection to the configured target (a new endpoint
/// per attempt), and the bearer header of the token read afresh for it.
/// `server_name` is the configured one, checked at start.
pub(crate) async fn connect(
    config: &ClientConfig,
    server_name: &ServerName<'static>,
    dialer: Arc<dyn Dialer>,
) -> Result<(AgentSecureClient<Channel>, MetadataValue<Ascii>), ConnectError> {
    let bearer = bearer(&config.auth_token_file).map_err(ConnectError::AuthToken)?;
    let tls = rustls_config(&config.tls)
        .map_err(ConnectError::TlsFile)?
        .map(|rustls| (rustls, server_name.clone()));
    let connector = Connector {
        dialer,
        target: config.target.clone(),
        tls,
    };
    // `validate` checked at start that the target makes this URI.
    let endpoint = Endpoint::from_shared(format!("http://{}", config.target))
        .map_err(|e| {
            ConnectError::Transport(transport_error(
                &e,
                format!("invalid target {}: {e}", config.target),
            ))
        })?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.http2_keepalive_interval)
        .keep_alive_timeout(config.http2_keepalive_timeout)
        .keep_alive_while_idle(config.http2_keepalive_while_idle)
        .max_frame_size(MAX_FRAME_SIZE);
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let detail = format!("cannot connect to {}: {}", config.target, error_chain(&e));
            ConnectError::Transport(transport_error(&e, detail))
        })?;
    let client = AgentSecureClient::new(channel)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    Ok((client, bearer))
}

/// `message` as a request carrying `authorization: Bearer <token>`.
pub(crate) fn authorized<T>(message: T, bearer: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// Why the open of a stream (or a one-off request) failed, from its status.
pub(crate) fn open_error(status: &tonic::Status) -> ConnectError {
    match server_status(status) {
        Ok(status) => ConnectError::Refused(status),
        Err(broken) => ConnectError::Transport(broken),
    }
}

/// How an open stream ended, from the status it ended with.
pub(crate) fn stream_end(status: &tonic::Status) -> StreamEnd {
    match server_status(status) {
        Ok(status) => StreamEnd::Status(status),
        Err(broken) => StreamEnd::Transport(broken),
    }
}

/// The status the server sent, or, for a status tonic made of a transport
/// failure (it has a cause: hyper's, h2's, the socket's), what broke.
fn server_status(status: &tonic::Status) -> Result<GrpcStatus, TransportError> {
    match std::error::Error::source(status) {
        None => Ok(GrpcStatus {
            code: StatusCode::from_i32(status.code() as i32),
            message: status.message().to_owned(),
        }),
        Some(cause) => Err(TransportError {
            kind: transport_kind(cause),
            detail: describe(status),
        }),
    }
}

/// A transport failure of `error`, with `detail` as its line.
fn transport_error(error: &(dyn std::error::Error + 'static), detail: String) -> TransportError {
    TransportError {
        kind: transport_kind(error),
        detail,
    }
}

/// What kind of failure `error` is, from the first of its causes that tells.
fn transport_kind(error: &(dyn std::error::Error + 'static)) -> TransportErrorKind {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(kind) = kind_of(error) {
            return kind;
        }
        cause = error.source();
    }
    TransportErrorKind::Other
}

/// What kind of failure this one error (not its causes) says it is.
fn kind_of(error: &(dyn std::error::Error + 'static)) -> Option<TransportErrorKind> {
    if error.is::<rustls::Error>() {
        return Some(TransportErrorKind::Tls);
    }
    if error.is::<tokio::time::error::Elapsed>()
        || error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
    {
        return Some(TransportErrorKind::TimedOut);
    }
    let io = error.downcast_ref::<io::Error>()?;
    // An io error shows the error it wraps but does not give it as its
    // source: tokio-rustls wraps a failed handshake's rustls error so.
    if let Some(kind) = io.get_ref().and_then(|inner| kind_of(inner)) {
        return Some(kind);
    }
    match io.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => Some(TransportErrorKind::Unreachable),
        io::ErrorKind::TimedOut => Some(TransportErrorKind::TimedOut),
        // What tokio-rustls reports a TLS failure as, and the only trace of
        // one that h2 passed on: it keeps an io error's kind and text only
        // (a TLS 1.3 server's refusal of our certificate arrives so, with
        // the first request). Sockets do not fail with it.
        io::ErrorKind::InvalidData => Some(TransportErrorKind::Tls),
        _ => None,
    }
}

/// A gRPC status as one line: code, message and the transport's causes
/// (where a refused client certificate shows, as the server's TLS alert).
fn describe(status: &tonic::Status) -> String {
    let (code, message) = (status.code(), status.message());
    match std::error::Error::source(status).map(error_chain) {
        // tonic's message is its source's first line ("transport error").
        Some(causes) if causes.starts_with(message) => format!("{code:?}: {causes}"),
        Some(causes) => format!("{code:?}: {message}: {causes}"),
        None => format!("{code:?}: {message}"),
    }
}

/// The tower connector tonic uses for one attempt: dial, then TLS if set.
#[derive(Clone)]
pub(crate) struct Connector {
    pub dialer: Arc<dyn Dialer>,
    pub target: String,
    pub tls: Option<(Arc<RustlsConfig>, ServerName<'static>)>,
}

impl tower_service::Service<tonic::codegen::http::Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = this.dialer.dial(&this.target).await?;
            let Some((config, server_name)) = this.tls else {
                return Ok(TokioIo::new(stream));
            };
            let tls = TlsConnector::from(config)
                .connect(server_name, stream)
                .await?;
            Ok(TokioIo::new(Box::new(tls) as Box<dyn Io>))
        })
    }
}

/// Accepts any server certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAnyServer {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datadog's Rust client sends the file's raw contents; we send the
    /// token without the whitespace around it, which servers compare.
    #[test]
    fn the_token_is_read_without_surrounding_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth_token");
        std::fs::write(&path, " \tabc123\r\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "abc123");
        std::fs::write(&path, "\r\n").unwrap();
        let error = read_token(&path).unwrap_err().to_string();
        assert!(
            error.contains("auth_token") && error.contains("empty"),
            "{error}"
        );
    }
}
