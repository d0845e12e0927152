//! The tagger server: serves `datadog.api.v1.AgentSecure`'s
//! `TaggerStreamEntities` and `TaggerFetchEntity` to Datadog remote taggers
//! and to this project's client (see `shared/wire-spec.md`, sections 3-5),
//! and `TaggerGenerateContainerIDFromOriginInfo` from the host source's
//! data (see [`OriginResolver`]).
//!
//! Layers, from the bottom:
//! - [`Store`]: the pure, synchronous entity store (revisions, change log,
//!   snapshots).
//! - [`StoreHandle`]: the shared store that sources feed and streams
//!   subscribe to, with bounded per-subscriber buffers.
//! - `frames`: how snapshots and change batches become responses (chunk
//!   budget, encoding shared by subscribers, what each response carries).
//! - [`TaggerService`]: the gRPC service over a handle, with auth: it sends
//!   what `frames` makes.
//! - [`serve_incoming`]: runs a service over any stream of connections (a
//!   TCP listener, or a simulated network).
//! - [`Server`] / [`serve`]: the whole server from a [`ServeConfig`], as the
//!   CLI runs it: listener, token file, certificate, source.

mod auth;
mod connections;
mod entities_file;
mod frames;
mod health;
mod host_source;
mod hub;
mod origin;
mod relay_source;
pub(crate) mod secret_file;
mod service;
mod stats;
mod store;
mod tls;
mod workload_source;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpIncoming};

pub use crate::origin::OriginResult;
pub use auth::{Authenticator, GENERATED_TOKEN_LEN, MIN_TOKEN_LEN, TokenError, TokenFileError};
pub use entities_file::{
    EntitiesFileError, EntitiesFileLoadError, EntitiesFileWatcher, parse_entities_file,
    read_entities_file, write_entities_file,
};
pub use frames::{SnapshotChunk, SnapshotChunks};
pub use health::HEALTH_SERVICE_NAMES;
pub use host_source::CMDLINE_TAG_MAX_BYTES;
pub use hub::StoreHandle;
pub use origin::{OriginResolver, container_in_cgroup_file};
pub use service::{
    DEFAULT_FIRST_REQUEST_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_MAX_CONCURRENT_SNAPSHOTS,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_MAX_TLS_HANDSHAKES, DEFAULT_MAX_UNAUTHENTICATED_REQUESTS, DEFAULT_SEND_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_SNAPSHOT_STALL_GRACE, DEFAULT_SUBSCRIBER_BUFFER, ServiceConfig,
    TaggerService,
};
pub use stats::{EventsByCardinality, OriginRequests, ServerStats};
pub use store::{Change, Epoch, PrefixFilter, Snapshot, Store, StoredEntity};
pub use tls::{CertFileError, GENERATED_CERT_NAMES, PemProblem, TlsIdentity};
/// The parts that only the tests, benches and fuzzers call on their own.
#[cfg(feature = "test-kit")]
pub use {
    frames::{Chunker, Framer, SnapshotResponses},
    host_source::{HostScanner, PROCESS_REFRESH_SCANS, ScanStats, scan as scan_host},
};

use crate::error_text::error_chain;
use host_source::HostSource;
use relay_source::RelaySource;
use workload_source::WorkloadSource;

use crate::client::ClientConfig;

/// The Datadog core agent's IPC port, on loopback only.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    crate::defaults::PORT,
);
/// Changes the store keeps for resuming clients: 1000 s of the default
/// workload's churn.
pub const DEFAULT_CHANGE_LOG_CAPACITY: usize = 10_000;
/// How often an entities file is checked for changes.
pub const DEFAULT_FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Entities files larger than this are refused: 256 MiB is about 400,000
/// entities of the synthetic workload, far more than a node holds. Loaded,
/// entities take about 3.7 times their file's size in memory (a 199 MB
/// file: 702 MiB peak RSS; see `benches/entities_file.rs`).
pub const DEFAULT_ENTITIES_FILE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How often the host source re-scans `/proc`: processes come and go fast,
/// and a scan of a thousand processes costs milliseconds.
pub const DEFAULT_HOST_SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Entities of the built-in workload.
pub const DEFAULT_WORKLOAD_ENTITIES: usize = 1_000;
/// Seed of the built-in workload.
pub const DEFAULT_WORKLOAD_SEED: u64 = 1;
/// Changes per second the built-in workload makes.
pub const DEFAULT_CHURN_PER_SEC: f64 = 10.0;
/// Churn rates above this are refused: they would only measure the generator.
pub const MAX_CHURN_PER_SEC: f64 = 1_000_000.0;

/// TCP keep-alive on accepted connections, so the kernel notices peers that
/// vanished without a FIN.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Connections the kernel completes before the server accepts them (what
/// `TcpListener::bind` asks for).
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr`, not listening yet, set up as
/// `TcpListener::bind` sets it up.
fn bound_socket(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted server can bind while its old connections linger in
    // TIME_WAIT; on Windows the option would let others steal the port.
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Where the served entities come from.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The seeded synthetic workload of [`crate::workload`], changed at
    /// `churn_per_sec` events per second (0: a static store).
    Workload {
        /// Store size to start with; churn keeps it around this.
        entities: usize,
        /// The same seed gives the same entities and changes.
        seed: u64,
        /// Events per second.
        churn_per_sec: f64,
    },
    /// A JSON entities file (see [`parse_entities_file`]), re-read when it changes.
    EntitiesFile(PathBuf),
    /// The processes, containers and pods of the host whose `/proc` is under
    /// `root` (`/` for this machine), re-scanned every `interval` (see
    /// `HostScanner` in `src/server/host_source/`).
    Host {
        /// Where `/proc` is.
        root: PathBuf,
        /// Time between scans.
        interval: Duration,
    },
    /// Relay: mirror another tagger and serve its entities. It asks for
    /// every prefix of the table and the config's `prefixes` besides (a
    /// newer Agent's), whatever cardinality the config names (HIGH).
    Upstream(Box<ClientConfig>),
}

impl Source {
    /// The host source on this machine, scanned at the default interval.
    pub fn this_host() -> Self {
        Self::Host {
            root: PathBuf::from("/"),
            interval: DEFAULT_HOST_SCAN_INTERVAL,
        }
    }

    /// The built-in synthetic workload with the default size and churn.
    pub fn default_workload() -> Self {
        Self::Workload {
            entities: DEFAULT_WORKLOAD_ENTITIES,
            seed: DEFAULT_WORKLOAD_SEED,
            churn_per_sec: DEFAULT_CHURN_PER_SEC,
        }
    }
}

/// The host where there is a `/proc` to read (Linux), else the workload.
impl Default for Source {
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            Self::this_host()
        } else {
            Self::default_workload()
        }
    }
}

/// Whether connections are encrypted.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// TLS with the certificate of `cert_file`, generated if absent.
    #[default]
    Tls,
    /// No encryption: the token crosses the wire in clear. For tests and
    /// simulations only; Datadog clients refuse it.
    InsecurePlaintext,
}

/// Everything `serve` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Where to accept connections (loopback port 5001 by default, the
    /// Agent's).
    pub listen: SocketAddr,
    /// Bearer token file; created with a random token when absent.
    pub auth_token_file: PathBuf,
    /// PEM certificate followed by its key; generated when absent (TLS only).
    /// Client certificates, when presented, are verified against it.
    pub cert_file: PathBuf,
    /// Whether connections are encrypted.
    pub tls: TlsMode,
    /// Refuse clients that present no certificate (the Datadog Agent's
    /// `RequireAndVerifyClientCert`); TLS only.
    pub require_client_cert: bool,
    /// Where the served entities come from.
    pub source: Source,
    /// How often an entities file is checked for changes.
    pub file_poll_interval: Duration,
    /// The largest entities file accepted, in bytes.
    pub entities_file_max_bytes: u64,
    /// Changes kept for resuming clients.
    pub change_log_capacity: usize,
    /// Limits and timeouts of the gRPC service.
    pub service: ServiceConfig,
}

impl ServeConfig {
    /// The defaults of the spec (Datadog's constants, TLS on, the host source
    /// on Linux) with the two secret files, which have no safe default.
    pub fn new(auth_token_file: impl Into<PathBuf>, cert_file: impl Into<PathBuf>) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            auth_token_file: auth_token_file.into(),
            cert_file: cert_file.into(),
            tls: TlsMode::default(),
            require_client_cert: false,
            source: Source::default(),
            file_poll_interval: DEFAULT_FILE_POLL_INTERVAL,
            entities_file_max_bytes: DEFAULT_ENTITIES_FILE_MAX_BYTES,
            change_log_capacity: DEFAULT_CHANGE_LOG_CAPACITY,
            service: ServiceConfig::default(),
        }
    }

    fn validate(&self) -> Result<(), ServeError> {
        let invalid = |what: String| Err(ServeError::Config(what));
        if self.require_client_cert && self.tls == TlsMode::InsecurePlaintext {
            return invalid(
                "client certificates need TLS: drop plaintext or the requirement".to_owned(),
            );
        }
        if let Source::Workload { churn_per_sec, .. } = self.source
            && !(0.0..=MAX_CHURN_PER_SEC).contains(&churn_per_sec)
        {
            return invalid(format!(
                "churn rate {churn_per_sec} events/s is out of range (0 to {MAX_CHURN_PER_SEC})"
            ));
        }
        if let Source::Host { interval, .. } = self.source
            && interval.is_zero()
        {
            return invalid("the host scan interval must be longer than zero".to_owned());
        }
        let service = &self.service;
        for (name, duration) in [
            ("file poll interval", self.file_poll_interval),
            ("keep-alive interval", service.keepalive_interval),
            ("send timeout", service.send_timeout),
            ("first-request timeout", service.first_request_timeout),
        ] {
            if duration.is_zero() {
                return invalid(format!("the {name} must be longer than zero"));
            }
        }
        for (name, limit) in [
            (
                "subscription limit (--max-subscriptions)",
                service.max_subscriptions,
            ),
            (
                "per-connection stream limit (--max-streams-per-connection)",
                service.max_streams_per_connection as usize,
            ),
            (
                "limit of requests without a token (--max-unauthenticated-requests)",
                service.max_unauthenticated_requests,
            ),
            ("TLS handshake limit", service.max_tls_handshakes),
        ] {
            if limit == 0 {
                return invalid(format!("the {name} must be at least 1"));
            }
        }
        if service.max_message_size < 2 {
            return invalid(format!(
                "max message size {} is too small to hold anything",
                service.max_message_size
            ));
        }
        Ok(())
    }
}

/// Why the server could not start or stopped on an error. Each message is
/// one line naming the culprit and what to do.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why, with what to do about it.
        reason: String,
    },
    /// The token file cannot be used or created.
    #[error(transparent)]
    AuthToken(#[from] TokenFileError),
    /// The certificate file cannot be used or created.
    #[error(transparent)]
    Certificate(#[from] CertFileError),
    /// The entities file cannot be loaded.
    #[error(transparent)]
    EntitiesFile(#[from] EntitiesFileLoadError),
    /// The upstream of a relay is misconfigured.
    #[error("upstream tagger: {0}")]
    Upstream(#[from] crate::client::ClientError),
    /// The configuration is inconsistent (what is wrong, naming the option).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No randomness for the store's epoch.
    #[error("cannot get random bytes from the operating system: {0}")]
    Randomness(getrandom::Error),
    /// The gRPC server stopped on an error (its causes, in one line).
    #[error("gRPC server failed: {0}")]
    Transport(String),
}

impl ServeError {
    fn listen(addr: SocketAddr, error: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        let reason = match error.kind() {
            ErrorKind::AddrInUse => "address in use (is another remote-tagger or Datadog Agent running? pick another --listen)".to_owned(),
            ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges; pick another --listen)".to_owned(),
            ErrorKind::AddrNotAvailable => "address not available on this machine (check --listen)".to_owned(),
            _ => format!("{error} (check --listen)"),
        };
        Self::Listen { addr, reason }
    }
}

/// How `serve_incoming` secures connections.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS with this identity; client certificates, when presented, must be
    /// the identity's own or chain to it, and are mandatory when
    /// `require_client_cert`.
    Tls {
        /// The certificate and key served.
        identity: TlsIdentity,
        /// Refuse clients that present no certificate.
        require_client_cert: bool,
    },
    /// No encryption (tests, simulations): the token crosses the wire in clear.
    InsecurePlaintext,
}

/// Serves `service` over `incoming` connections until `shutdown` resolves,
/// with the standard gRPC health service (SERVING until the shutdown starts,
/// then NOT_SERVING) and server reflection beside it; see the `health`
/// module for why those need no token. Then the service's store handle is closed for good (every stream ends,
/// clients see UNAVAILABLE and reconnect later; a restarted server needs a
/// new store, hence a new epoch), no new connection is accepted, and open
/// connections get the service's `shutdown_grace` to close before they are
/// abandoned.
///
/// `incoming` is any stream of connections: a [`TcpIncoming`], or a
/// simulated network's listener wrapped to implement [`Connected`]. TLS is
/// terminated here, one task per handshake, at most `max_tls_handshakes` at
/// once; an accept error pauses accepting (5 ms doubling to 1 s) rather than
/// spinning. A connection that has sent no authenticated request within the
/// `first_request_timeout` of its accept is closed (see `connections`).
///
/// The service's limits: `max_streams_per_connection` is each connection's
/// HTTP/2 `MAX_CONCURRENT_STREAMS`, the tagger service refuses streams past
/// `max_subscriptions`, and health and reflection together serve at most
/// `max_unauthenticated_requests` at once.
pub async fn serve_incoming<I, IO, IE>(
    service: TaggerService,
    security: Security,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = match &security {
        Security::Tls {
            identity,
            require_client_cert,
        } => {
            let config = identity
                .rustls_config(*require_client_cert)
                .map_err(|e| ServeError::Transport(e.to_string()))?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        }
        Security::InsecurePlaintext => {
            tracing::warn!(
                "serving the tagger WITHOUT TLS: auth tokens and tags cross the network in clear"
            );
            None
        }
    };
    let config = service.config().clone();
    let limits = connections::ConnectionLimits {
        first_request_timeout: config.first_request_timeout,
        max_tls_handshakes: config.max_tls_handshakes,
    };
    let incoming = connections::Connections::new(incoming, acceptor, limits);
    let store = service.store().clone();
    let (health, health_service) = health::Health::serving().await;
    let (reflection_v1, reflection_v1alpha) = health::reflection_services()?;
    let unauthenticated =
        health::Unauthenticated::new(config.max_unauthenticated_requests, store.clone());
    let (stop_accepting, stop_accepting_signal) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection)
        .add_service(unauthenticated.limit(health_service))
        .add_service(unauthenticated.limit(reflection_v1))
        .add_service(unauthenticated.limit(reflection_v1alpha))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, async move {
            // A dropped sender (serve_incoming itself dropped) stops too.
            let _ = stop_accepting_signal.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(|e| ServeError::Transport(error_chain(&e))),
        () = shutdown => {}
    }
    tracing::info!("tagger server shutting down: ending streams");
    // First, so health watchers (load balancers, probes) move traffic away
    // while the streams end.
    health.not_serving().await;
    store.close();
    // The receiver lives inside `server`, which is still alive here.
    let _ = stop_accepting.send(());
    let grace = config.shutdown_grace;
    match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => result.map_err(|e| ServeError::Transport(error_chain(&e))),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "tagger server: connections still open after the shutdown grace period; abandoning them"
            );
            Ok(())
        }
    }
}

/// A source ready to run: its initial state is already in the store.
enum RunningSource {
    Workload(WorkloadSource),
    EntitiesFile(EntitiesFileWatcher, Duration),
    Host(HostSource),
    Relay(RelaySource),
}

impl RunningSource {
    async fn run(self, store: StoreHandle) -> Infallible {
        match self {
            Self::Workload(source) => source.run(store).await,
            Self::EntitiesFile(watcher, interval) => watcher.run(store, interval).await,
            Self::Host(source) => source.run(store).await,
            Self::Relay(source) => source.run(store).await,
        }
    }
}

/// A server that is listening and loaded, not yet serving: lets the caller
/// learn the bound address (port 0) and reach the store before it runs.
pub struct Server {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    service: TaggerService,
    security: Security,
    source: RunningSource,
}

impl Server {
    /// Binds the address, loads (or creates) the token file and the
    /// certificate, loads the source's initial entities into a new store,
    /// and only then listens: a client that connects can be served at once
    /// (before, it would wait for the load in the backlog, and Datadog's
    /// Rust client gives up after 2 s), and one that connects earlier is
    /// refused and retries. Binding first reports a taken address at once
    /// and makes port 0's number known.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        config.validate()?;
        let listen_error = |e: std::io::Error| ServeError::listen(config.listen, &e);
        let socket = bound_socket(config.listen).map_err(listen_error)?;
        let local_addr = socket.local_addr().map_err(listen_error)?;
        let auth = Authenticator::from_token_file(&config.auth_token_file)?;
        let security = match config.tls {
            TlsMode::Tls => Security::Tls {
                identity: TlsIdentity::load_or_generate(&config.cert_file)?,
                require_client_cert: config.require_client_cert,
            },
            TlsMode::InsecurePlaintext => Security::InsecurePlaintext,
        };
        let epoch = Epoch::random().map_err(ServeError::Randomness)?;
        let store = StoreHandle::new(Store::new(epoch, config.change_log_capacity));
        let origins = match &config.source {
            Source::Workload { .. } => OriginResolver::unsupported("workload"),
            Source::EntitiesFile(_) => OriginResolver::unsupported("entities file"),
            Source::Host { root, .. } => OriginResolver::host(root.clone()),
            Source::Upstream(_) => OriginResolver::unsupported("relay"),
        };
        let (source, initial) = match config.source {
            Source::Workload {
                entities,
                seed,
                churn_per_sec,
            } => {
                let (source, initial) = WorkloadSource::new(entities, seed, churn_per_sec);
                (RunningSource::Workload(source), initial)
            }
            Source::EntitiesFile(path) => {
                // Parsing a large file takes seconds: not on the reactor.
                let (max_bytes, loading) = (config.entities_file_max_bytes, store.clone());
                let watcher = tokio::task::spawn_blocking(move || {
                    EntitiesFileWatcher::open(path, max_bytes, &loading)
                })
                .await
                .map_err(|e| {
                    ServeError::Config(format!("loading the entities file failed: {e}"))
                })??;
                (
                    RunningSource::EntitiesFile(watcher, config.file_poll_interval),
                    Vec::new(),
                )
            }
            Source::Host { root, interval } => {
                // The first scan reads thousands of small files: not on the reactor.
                let (source, initial) =
                    tokio::task::spawn_blocking(move || HostSource::new(root, interval))
                        .await
                        .map_err(|e| ServeError::Config(format!("host scan failed: {e}")))?;
                (RunningSource::Host(source), initial)
            }
            Source::Upstream(client) => (
                RunningSource::Relay(RelaySource::start(*client)?),
                Vec::new(),
            ),
        };
        store.apply(initial);
        tracing::info!(
            %local_addr,
            epoch = %store.epoch(),
            entities = store.stats().store_entities,
            tls = matches!(security, Security::Tls { .. }),
            require_client_cert = config.require_client_cert,
            "tagger server ready"
        );
        let listener = socket.listen(LISTEN_BACKLOG).map_err(listen_error)?;
        Ok(Self {
            listener,
            local_addr,
            service: TaggerService::with_origins(store, auth, config.service, origins),
            security,
            source,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store: for stats, or to inject events in tests.
    pub fn store(&self) -> &StoreHandle {
        self.service.store()
    }

    /// Serves until `shutdown` resolves (see [`serve_incoming`]), running the
    /// source alongside.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let incoming = TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(TCP_KEEPALIVE));
        let store = self.service.store().clone();
        let serving = serve_incoming(self.service, self.security, incoming, shutdown);
        tokio::select! {
            result = serving => result,
            never = self.source.run(store) => match never {},
        }
    }
}

impl Server {
    /// Runs the server on its own task until [`RunningServer::stop`]: for
    /// programs that serve and do something else (tests, benchmarks, `demo`).
    pub fn spawn(self) -> RunningServer {
        let local_addr = self.local_addr;
        let store = self.store().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        }));
        RunningServer {
            local_addr,
            store,
            stop,
            task,
        }
    }
}

/// A server spawned by [`Server::spawn`].
pub struct RunningServer {
    local_addr: SocketAddr,
    store: StoreHandle,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// The address it listens on (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store it serves: apply changes to it and subscribers get them.
    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| ServeError::Transport(format!("the server task failed: {e}")))?
    }
}

/// Runs the whole server from `config` until `shutdown` resolves (the CLI
/// passes SIGINT/SIGTERM).
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::bind(config).await?.run(shutdown).await
}
