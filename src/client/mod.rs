//! The remote tagger an application embeds: the sans-IO [`crate::core`] run
//! by a tokio/tonic driver, with the mirror's queries, a sync signal and a
//! stream of changes.
//!
//! Against a Datadog Agent (not run here: it needs one; the crate docs'
//! example runs against a server of its own):
//!
//! ```no_run
//! # async fn demo() -> Result<(), remote_tagger::ClientError> {
//! use remote_tagger::{Cardinality, ClientConfig, RemoteTagger, TlsSettings};
//!
//! let config = ClientConfig::new(
//!     "127.0.0.1:5001",
//!     "/etc/datadog-agent/auth_token",
//!     TlsSettings::verify("/etc/datadog-agent/ipc_cert.pem"),
//! );
//! let tagger = RemoteTagger::start(config)?;
//! tagger.wait_synced().await;
//! let mirror = tagger.mirror();
//! let tags = mirror.tags("container_id://abc", Cardinality::High);
//! println!("{:?}", tags.to_vec());
//! tagger.stop().await;
//! # Ok(()) }
//! ```

mod driver;
mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// What the client is doing, refreshed after every input the core handles
/// (the core's own status: the driver adds nothing to it). Its
/// `last_message_at` is on tokio's clock in the core's `std` form:
/// `tokio::time::Instant::from_std` turns it back.
pub use crate::core::ClientStatus;
pub use crate::core::{TlsFileError, TlsFileProblem};
pub use transport::{BoxFuture, ClientCertificate, Dialer, Io, TcpDialer, TlsMode, TlsSettings};

use crate::core::{ConnectError, ConnectionState, CoreConfig, Event, GrpcStatus, StatusCode};
use crate::defaults;
use crate::domain::{Cardinality, EntityId};
use crate::mirror::MirrorReader;
use crate::origin::OriginInfo;
use crate::proto::model::FetchEntityRequest;

/// Everything the client needs to mirror one server: the core's
/// configuration (what to mirror, the watchdog, the backoff, the seed and
/// streaming id), and how the driver reaches the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// What the core runs with: cardinality, prefixes, receive timeout,
    /// backoff, jitter seed and streaming id.
    pub core: CoreConfig,
    /// `host:port` of the tagger server (a Datadog Agent listens on 5001).
    pub target: String,
    /// The file holding the bearer token; re-read for every new stream.
    pub auth_token_file: PathBuf,
    /// How the connection is protected and the server verified.
    pub tls: TlsSettings,
    /// Limit on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Limit on a one-off request ([`fetch_entity`],
    /// [`container_id_from_origin`]), connecting included.
    pub request_timeout: Duration,
    /// HTTP/2 PING interval (after this long without reading anything) and
    /// the time a PING may go unanswered. The defaults
    /// ([`defaults::HTTP2_KEEPALIVE_INTERVAL`]) keep to the ping policy every
    /// gRPC server enforces by default (see
    /// [`defaults::GRPC_SERVER_MIN_PING_INTERVAL`]); shorter intervals get
    /// the stream cut with "too_many_pings" by a Datadog Agent, and the
    /// mirror resynced, every few minutes. PINGs only shorten the time to
    /// notice a dead connection: an idle stream's liveness comes from the
    /// server's keep-alive messages (every 9 min from a Datadog Agent) and
    /// the core's receive timeout (10 min), as with Datadog's own clients.
    /// Simulations set shorter intervals against servers that allow them.
    pub http2_keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is dropped.
    pub http2_keepalive_timeout: Duration,
    /// Whether to PING a connection that has no stream open. Off by
    /// default: gRPC servers allow that once every 2 hours at most, and a
    /// connection here only lacks a stream while it opens one.
    pub http2_keepalive_while_idle: bool,
    /// The largest gRPC message accepted or sent, in bytes (Datadog's 4 MiB by
    /// default); a larger response fails the stream.
    pub max_message_size: usize,
}

impl ClientConfig {
    /// Spec defaults (see [`CoreConfig::new`] and [`crate::defaults`]), a
    /// random jitter seed and a random `remote-tagger:<uuid>` streaming id:
    /// give each client its own config (clones share both).
    pub fn new(
        target: impl Into<String>,
        auth_token_file: impl Into<PathBuf>,
        tls: TlsSettings,
    ) -> Self {
        Self {
            core: CoreConfig::new(format!("remote-tagger:{}", random_uuid()), random_u64()),
            target: target.into(),
            auth_token_file: auth_token_file.into(),
            tls,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            http2_keepalive_interval: defaults::HTTP2_KEEPALIVE_INTERVAL,
            http2_keepalive_timeout: defaults::HTTP2_KEEPALIVE_TIMEOUT,
            http2_keepalive_while_idle: false,
            max_message_size: defaults::MAX_MESSAGE_SIZE,
        }
    }
}

/// Why the client could not start.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A TLS file named in [`TlsSettings`] cannot be used.
    #[error(transparent)]
    Tls(TlsFileError),
    /// The target is not `host:port`.
    #[error("invalid target {target:?}: {problem} (expected HOST:PORT, e.g. 127.0.0.1:5001)")]
    Target {
        /// The target given.
        target: String,
        /// What is wrong with it.
        problem: TargetProblem,
    },
    /// The TLS server name given, which is neither a DNS name nor an IP
    /// address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// What is wrong with a `host:port` target.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetProblem {
    /// There is no `:port` at the end.
    #[error("no port")]
    NoPort,
    /// Nothing before the `:port`.
    #[error("no host")]
    NoHost,
    /// The port is not a number from 0 to 65535.
    #[error("the port is not a number from 0 to 65535")]
    BadPort,
    /// It does not make a URI authority; `message` is the URI parser's.
    #[error("{message}")]
    NotAnAuthority {
        /// The URI parser's reason.
        message: String,
    },
}

/// A running remote tagger. Dropping it stops the driver too.
pub struct RemoteTagger {
    /// How [`Self::container_id_from_origin`] reaches the server: the
    /// tagger's own configuration, server name and transport.
    server: OneOff,
    mirror: MirrorReader,
    status: watch::Receiver<ClientStatus>,
    events: broadcast::Sender<Event>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Events a slow subscriber may fall behind by before it misses some.
const EVENT_BUFFER: usize = 4096;

impl RemoteTagger {
    /// Starts mirroring over TCP. Must be called within a tokio runtime.
    pub fn start(config: ClientConfig) -> Result<Self, ClientError> {
        Self::start_with_dialer(config, Arc::new(TcpDialer))
    }

    /// Starts mirroring over a custom transport (simulations, tests).
    pub fn start_with_dialer(
        config: ClientConfig,
        dialer: Arc<dyn Dialer>,
    ) -> Result<Self, ClientError> {
        let server_name = validate(&config)?;
        let server = OneOff {
            config: config.clone(),
            server_name: server_name.clone(),
            dialer: dialer.clone(),
        };
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let driver = driver::Driver::new(config, server_name, dialer, events.clone(), shutdown_rx);
        let mirror = driver.mirror();
        let status = driver.status();
        let task = tokio::spawn(driver.run());
        Ok(Self {
            server,
            mirror,
            status,
            events,
            shutdown,
            task,
        })
    }

    /// Resolves once the mirror is synced with the server (at once if it is).
    pub async fn wait_synced(&self) {
        let mut status = self.status.clone();
        // The sender lives as long as the driver; if it is gone we are stopping.
        let _ = status
            .wait_for(|s| s.state == ConnectionState::Synced)
            .await;
    }

    /// A reader of the mirror for the calling thread (clone one per thread).
    pub fn mirror(&self) -> MirrorReader {
        self.mirror.clone()
    }

    /// Changes as they happen. A receiver that falls more than a few thousand
    /// events behind gets `Lagged` and should re-read the mirror.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The latest status (see [`ClientStatus`]), and a receiver woken by
    /// every change except the progress of a snapshot being received: while
    /// the state stays
    /// `Syncing`, `staged_entities`, `telemetry` and `last_message_at` are
    /// updated without waking anyone (read them when you want them).
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// Whether the mirror reflects the server right now (a snapshot of
    /// [`status`](Self::status)).
    pub fn is_synced(&self) -> bool {
        self.status.borrow().state == ConnectionState::Synced
    }

    /// The container `origin` belongs to, asked of the tagger's server
    /// (`TaggerGenerateContainerIDFromOriginInfo`) on a connection of its
    /// own, with the tagger's token, TLS settings and transport; `None` when
    /// the server knows none. Not cached here: our server caches its
    /// answers (found: 1 min), as the Agent's client does.
    pub async fn container_id_from_origin(
        &self,
        origin: &OriginInfo,
    ) -> Result<Option<String>, FetchError> {
        self.server.container_id_from_origin(origin).await
    }

    /// Stops the driver and waits for it; the mirror stays readable.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for RemoteTagger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks the server for one entity's tags (`TaggerFetchEntity`). An unknown
/// entity is not an error: the server answers with no tags.
pub async fn fetch_entity(
    config: &ClientConfig,
    id: &EntityId,
    cardinality: Cardinality,
) -> Result<Vec<String>, FetchError> {
    OneOff::tcp(config)?.fetch_entity(id, cardinality).await
}

/// Asks the server which container `origin` belongs to
/// (`TaggerGenerateContainerIDFromOriginInfo`); `None` when it knows none.
/// The request carries every field, zero for the unknown ones, as the
/// Agent's own client sends it (see [`OriginInfo::to_proto`]). A running
/// tagger asks the same with [`RemoteTagger::container_id_from_origin`].
pub async fn container_id_from_origin(
    config: &ClientConfig,
    origin: &OriginInfo,
) -> Result<Option<String>, FetchError> {
    OneOff::tcp(config)?.container_id_from_origin(origin).await
}

/// One request on a connection of its own: what it needs to reach the
/// server.
struct OneOff {
    config: ClientConfig,
    server_name: ServerName<'static>,
    dialer: Arc<dyn Dialer>,
}

impl OneOff {
    /// Over TCP, once `config` is checked.
    fn tcp(config: &ClientConfig) -> Result<Self, ClientError> {
        Ok(Self {
            server_name: validate(config)?,
            config: config.clone(),
            dialer: Arc::new(TcpDialer),
        })
    }

    async fn fetch_entity(
        &self,
        id: &EntityId,
        cardinality: Cardinality,
    ) -> Result<Vec<String>, FetchError> {
        self.within_timeout(self.fetch_entity_unbounded(id, cardinality))
            .await
    }

    async fn container_id_from_origin(
        &self,
        origin: &OriginInfo,
    ) -> Result<Option<String>, FetchError> {
        self.within_timeout(self.container_id_from_origin_unbounded(origin))
            .await
    }

    /// `request`, or [`FetchError::TimedOut`] once the config's
    /// `request_timeout` has passed.
    async fn within_timeout<T>(
        &self,
        request: impl Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        let after = self.config.request_timeout;
        tokio::time::timeout(after, request)
            .await
            .unwrap_or(Err(FetchError::TimedOut { after }))
    }

    async fn fetch_entity_unbounded(
        &self,
        id: &EntityId,
        cardinality: Cardinality,
    ) -> Result<Vec<String>, FetchError> {
        let (mut client, token) =
            transport::connect(&self.config, &self.server_name, self.dialer.clone()).await?;
        let request = FetchEntityRequest {
            id: Some(id.to_proto()),
            cardinality: cardinality.to_proto() as i32,
        };
        let request = transport::authorized(request, &token);
        let response = client
            .tagger_fetch_entity(request)
            .await
            .map_err(request_error)?;
        Ok(response.into_inner().tags)
    }

    async fn container_id_from_origin_unbounded(
        &self,
        origin: &OriginInfo,
    ) -> Result<Option<String>, FetchError> {
        let (mut client, token) =
            transport::connect(&self.config, &self.server_name, self.dialer.clone()).await?;
        let request = transport::authorized(origin.to_proto(), &token);
        let response = client
            .tagger_generate_container_id_from_origin_info(request)
            .await
            .map_err(request_error)?;
        let container_id = response.into_inner().container_id;
        Ok((!container_id.is_empty()).then_some(container_id))
    }
}

/// A one-off request's error status: the server's refusal, or a broken
/// connection.
fn request_error(status: tonic::Status) -> FetchError {
    match transport::open_error(&status) {
        ConnectError::Refused(GrpcStatus { code, message }) => FetchError::Server { code, message },
        other => FetchError::Connect(other),
    }
}

/// Why a one-off request failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The config is invalid (see [`ClientError`]).
    #[error(transparent)]
    Config(#[from] ClientError),
    /// No connection, or it broke before the answer (see
    /// [`ConnectError`]).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server answered with an error status (`Unauthenticated`: the
    /// token was refused).
    #[error("server answered {code}: {message}")]
    Server {
        /// The status code (`Unauthenticated`, `Unavailable`...).
        code: StatusCode,
        /// The server's message.
        message: String,
    },
    /// No answer within the config's `request_timeout`, connecting
    /// included.
    #[error("no answer within {}s", after.as_secs_f64())]
    TimedOut {
        /// The limit that passed.
        after: Duration,
    },
}

/// Checks what can be checked before connecting, for errors at start, and
/// gives the server name every attempt's TLS handshake checks.
fn validate(config: &ClientConfig) -> Result<ServerName<'static>, ClientError> {
    validate_target(&config.target)?;
    let server_name = ServerName::try_from(config.tls.server_name.clone())
        .map_err(|_| ClientError::ServerName(config.tls.server_name.clone()))?;
    // Unreadable TLS files fail here; each attempt reads them again.
    transport::rustls_config(&config.tls).map_err(ClientError::Tls)?;
    Ok(server_name)
}

fn validate_target(target: &str) -> Result<(), ClientError> {
    let invalid = |problem| ClientError::Target {
        target: target.to_owned(),
        problem,
    };
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| invalid(TargetProblem::NoPort))?;
    if host.is_empty() {
        return Err(invalid(TargetProblem::NoHost));
    }
    port.parse::<u16>()
        .map_err(|_| invalid(TargetProblem::BadPort))?;
    format!("http://{target}")
        .parse::<tonic::codegen::http::Uri>()
        .map_err(|e| {
            invalid(TargetProblem::NotAnAuthority {
                message: e.to_string(),
            })
        })?;
    Ok(())
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // No entropy source at all leaves jitter deterministic, nothing worse.
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A random (version 4) UUID in its text form.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::getrandom(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_validated_with_a_clear_reason() {
        assert!(validate_target("127.0.0.1:5001").is_ok());
        assert!(validate_target("localhost:5001").is_ok());
        assert!(validate_target("[::1]:5001").is_ok());
        for bad in ["localhost", ":5001", "host:port", "host:70000"] {
            let error = validate_target(bad).unwrap_err().to_string();
            assert!(
                error.contains(bad) && error.contains("HOST:PORT"),
                "{error}"
            );
        }
    }

    #[test]
    fn uuids_are_version_4() {
        let uuid = random_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_ne!(uuid, random_uuid());
    }
}
