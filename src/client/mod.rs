//! The remote tagger an application embeds: the sans-IO [`crate::core`] run
//! by a tokio/tonic driver, with the mirror's queries, a sync signal and a
//! stream of changes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), remote_tagger::client::ClientError> {
//! use remote_tagger::client::{ClientConfig, RemoteTagger, TlsMode};
//! use remote_tagger::domain::Cardinality;
//!
//! let mut config = ClientConfig::new("127.0.0.1:5001", "/etc/datadog-agent/auth_token");
//! config.tls.mode = TlsMode::Verify { ca_file: "/etc/datadog-agent/ipc_cert.pem".into() };
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

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use transport::{BoxFuture, ClientCertificate, Dialer, Io, TcpDialer, TlsMode, TlsSettings};

use crate::core::{BackoffConfig, ClientTelemetry, ConnectionState, CoreConfig, Event};
use crate::domain::{Cardinality, EntityId};
use crate::mirror::MirrorReader;
use crate::origin::OriginInfo;
use crate::proto::model::FetchEntityRequest;

/// Default largest message the client accepts (the Datadog default).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// The least time gRPC servers let pass between two PINGs of a client by
/// default: grpc-go's `keepalive.EnforcementPolicy.MinTime` (the Agent is
/// a grpc-go server), C-core's `grpc.http2.min_ping_interval_without_data_ms`.
/// A server that gets PINGs closer together, with no data or headers sent in
/// between, counts strikes, and on the third answers GOAWAY
/// `ENHANCE_YOUR_CALM` "too_many_pings" and closes the connection.
pub const GRPC_SERVER_MIN_PING_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The default HTTP/2 PING interval. hyper sends a PING once this long has
/// passed without reading anything (a frame of the stream, or the last
/// PING's ACK), so two PINGs are always this long plus a round trip apart,
/// on the server's clock too: the second leaves after the first's ACK came
/// back. 5 minutes would do against grpc-go's strict check; the 10 s more
/// cover a server whose clock runs a little faster or whose check is not
/// strict.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: Duration =
    GRPC_SERVER_MIN_PING_INTERVAL.saturating_add(Duration::from_secs(10));

/// How long a PING may go unanswered before the connection is dropped.
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the client needs to mirror one server.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// `host:port` of the tagger server (a Datadog Agent listens on 5001).
    pub target: String,
    /// The file holding the bearer token; re-read for every new stream.
    pub auth_token_file: PathBuf,
    pub tls: TlsSettings,
    pub cardinality: Cardinality,
    /// Prefixes to mirror; empty means every known prefix (sent explicitly).
    pub prefixes: Vec<String>,
    /// Limit on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval (after this long without reading anything) and
    /// the time a PING may go unanswered. The defaults
    /// ([`DEFAULT_HTTP2_KEEPALIVE_INTERVAL`]) keep to the ping policy every
    /// gRPC server enforces by default (see
    /// [`GRPC_SERVER_MIN_PING_INTERVAL`]); shorter intervals get the stream
    /// cut with "too_many_pings" by a Datadog Agent, and the mirror resynced,
    /// every few minutes. PINGs only shorten the time to notice a dead
    /// connection: an idle stream's liveness comes from the server's
    /// keep-alive messages (every 9 min from a Datadog Agent) and the
    /// [`receive_timeout`](Self::receive_timeout) watchdog (10 min), as with
    /// Datadog's own clients. Simulations set shorter intervals against
    /// servers that allow them.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Whether to PING a connection that has no stream open. Off by
    /// default: gRPC servers allow that once every 2 hours at most, and a
    /// connection here only lacks a stream while it opens one.
    pub http2_keepalive_while_idle: bool,
    pub max_message_size: usize,
    pub receive_timeout: Duration,
    pub backoff: BackoffConfig,
    /// Seed of the backoff jitter; random when `None`.
    pub seed: Option<u64>,
    /// `<flavor>:<uuid>`; a random `remote-tagger:<uuid>` when `None`.
    pub streaming_id: Option<String>,
}

impl ClientConfig {
    /// Spec defaults; TLS verifying against the default certificate file.
    pub fn new(target: impl Into<String>, auth_token_file: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            auth_token_file: auth_token_file.into(),
            tls: TlsSettings::default(),
            cardinality: Cardinality::High,
            prefixes: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            http2_keepalive_interval: DEFAULT_HTTP2_KEEPALIVE_INTERVAL,
            http2_keepalive_timeout: DEFAULT_HTTP2_KEEPALIVE_TIMEOUT,
            http2_keepalive_while_idle: false,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            receive_timeout: crate::core::DEFAULT_RECEIVE_TIMEOUT,
            backoff: BackoffConfig::default(),
            seed: None,
            streaming_id: None,
        }
    }
}

/// Why the client could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Tls(String),
    #[error("invalid target {target:?}: {reason} (expected HOST:PORT, e.g. 127.0.0.1:5001)")]
    Target { target: String, reason: String },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// What the client is doing, refreshed after every input the core handles.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientStatus {
    pub state: ConnectionState,
    pub telemetry: ClientTelemetry,
    /// Entities received for a snapshot not yet complete (progress; updated
    /// without waking status receivers, see [`RemoteTagger::status`]).
    pub staged_entities: usize,
    /// Entities in the mirror.
    pub mirrored_entities: usize,
    /// The server speaks this project's extensions (atomic snapshots, resume).
    pub extension_aware: bool,
    /// The interval the next backoff delay is drawn around.
    pub backoff_interval: Duration,
    /// While backing off: the delay drawn for this wait (the
    /// `retry_in` of the last [`Event::ConnectionLost`]).
    pub retry_delay: Option<Duration>,
    /// When the last message (keep-alives included) arrived, on tokio's
    /// clock; `None` before the first. Operators alert on its age.
    pub last_message_at: Option<tokio::time::Instant>,
    /// The last error, if the connection is not healthy.
    pub last_error: Option<String>,
}

/// A running remote tagger. Dropping it stops the driver too.
pub struct RemoteTagger {
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
        validate(&config)?;
        let seed = config.seed.unwrap_or_else(random_u64);
        let streaming_id = config
            .streaming_id
            .clone()
            .unwrap_or_else(|| format!("remote-tagger:{}", random_uuid()));
        let core_config = CoreConfig {
            cardinality: config.cardinality,
            prefixes: config.prefixes.clone(),
            streaming_id,
            receive_timeout: config.receive_timeout,
            backoff: config.backoff.clone(),
            seed,
        };
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let driver = driver::Driver::new(config, core_config, dialer, events.clone(), shutdown_rx);
        let mirror = driver.mirror();
        let status = driver.status();
        let task = tokio::spawn(driver.run());
        Ok(Self {
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

    /// The latest status, and a receiver woken by every change except the
    /// progress of a snapshot being received: while the state stays
    /// `Syncing`, `staged_entities`, `telemetry` and `last_message_at` are
    /// updated without waking anyone (read them when you want them).
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    pub fn is_synced(&self) -> bool {
        self.status.borrow().state == ConnectionState::Synced
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
    validate(config)?;
    let (mut client, token) = transport::connect(config, Arc::new(TcpDialer))
        .await
        .map_err(FetchError::Connect)?;
    let request = FetchEntityRequest {
        id: Some(id.to_proto()),
        cardinality: cardinality.to_proto() as i32,
    };
    let request = transport::authorized(request, &token).map_err(FetchError::Connect)?;
    let response = client
        .tagger_fetch_entity(request)
        .await
        .map_err(|status| FetchError::Server(transport::describe(&status)))?;
    Ok(response.into_inner().tags)
}

/// Asks the server which container `origin` belongs to
/// (`TaggerGenerateContainerIDFromOriginInfo`); `None` when it knows none.
/// The request carries every field, zero for the unknown ones, as the
/// Agent's own client sends it (see [`OriginInfo::to_proto`]).
pub async fn container_id_from_origin(
    config: &ClientConfig,
    origin: &OriginInfo,
) -> Result<Option<String>, FetchError> {
    validate(config)?;
    let (mut client, token) = transport::connect(config, Arc::new(TcpDialer))
        .await
        .map_err(FetchError::Connect)?;
    let request = transport::authorized(origin.to_proto(), &token).map_err(FetchError::Connect)?;
    let response = client
        .tagger_generate_container_id_from_origin_info(request)
        .await
        .map_err(|status| FetchError::Server(transport::describe(&status)))?;
    let container_id = response.into_inner().container_id;
    Ok((!container_id.is_empty()).then_some(container_id))
}

/// Why a one-off request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Config(#[from] ClientError),
    #[error("{0}")]
    Connect(String),
    #[error("server answered {0}")]
    Server(String),
}

/// Checks what can be checked before connecting, for errors at start.
fn validate(config: &ClientConfig) -> Result<(), ClientError> {
    validate_target(&config.target)?;
    rustls_pki_types::ServerName::try_from(config.tls.server_name.clone())
        .map_err(|_| ClientError::ServerName(config.tls.server_name.clone()))?;
    // Unreadable TLS files fail here; each attempt reads them again.
    transport::rustls_config(&config.tls)?;
    Ok(())
}

fn validate_target(target: &str) -> Result<(), ClientError> {
    let invalid = |reason: &str| ClientError::Target {
        target: target.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = target.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    port.parse::<u16>()
        .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
    format!("http://{target}")
        .parse::<tonic::codegen::http::Uri>()
        .map_err(|e| invalid(&e.to_string()))?;
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
