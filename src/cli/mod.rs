//! Command-line interface: flags, defaults and the commands.
//!
//! Defaults make `remote-tagger serve` in one terminal and
//! `remote-tagger list` in another work with no flags: both use the same
//! token and certificate files and the Datadog port on loopback.

mod client_commands;
mod flare;
mod origin_command;
mod server_commands;
mod signals;
mod terminal;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use remote_tagger::client::{ClientCertificate, ClientConfig, FetchError, TlsMode, TlsSettings};
use remote_tagger::datadog_config::AgentEndpoint;
use remote_tagger::defaults;
use remote_tagger::domain::Cardinality;
use remote_tagger::metrics::{self, MetricsEndpoint};
use remote_tagger::server;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Parser)]
#[command(
    name = "remote-tagger",
    version,
    about = "A wire-compatible Datadog Agent remote tagger: serve an entity -> tags store over gRPC, or mirror one live.",
    long_about = "A wire-compatible Datadog Agent remote tagger.\n\n\
        `serve` runs a tagger server that real Datadog remote taggers can stream from; \
        `list`, `watch` and `get` mirror or query any tagger, ours or a real Datadog Agent's \
        (on an Agent's host: --datadog-config /etc/datadog-agent/datadog.yaml). \
        `demo` runs both in one process.\n\n\
        With no flags, `serve` and `list` in two terminals find each other: they share the \
        default token and certificate files and the address 127.0.0.1:5001.\n\n\
        Ctrl-C (SIGINT) ends any command at once with exit code 130, SIGTERM with 143 \
        (`demo` prints its summary first). `serve` shuts down gracefully on either (its \
        streams end at once, connections get a few seconds to close; a second signal ends \
        it at once) and exits 130 after Ctrl-C, 0 after SIGTERM (a service stopped as it \
        should be)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log level or filter (e.g. `info`, `remote_tagger=debug`); RUST_LOG wins
    /// if set. Default: `info` for `serve` and `demo`, `error` for the client
    /// commands (their progress and errors are printed anyway).
    #[arg(long, global = true, env = "REMOTE_TAGGER_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Log format: text (for people) or json (one object a line, for log
    /// pipelines).
    #[arg(long, global = true, env = "REMOTE_TAGGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Also append logs to this file (`flare` includes its tail). Logs go
    /// to stderr either way. A new file is created readable by its owner
    /// only (0600).
    #[arg(long, global = true, env = "REMOTE_TAGGER_LOG_FILE")]
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a tagger server (TLS and a bearer token) on this host's processes and containers, the embedded workload, an entities file, or relaying another tagger.
    Serve(ServeArgs),
    /// Run a server and a client in one process on loopback: sync time, counts, live changes.
    Demo(DemoArgs),
    /// Connect, wait for the mirror to sync, and print it.
    List(ListArgs),
    /// Mirror a tagger and print every change as it happens, until Ctrl-C.
    Watch(WatchArgs),
    /// Ask the server for one entity's tags (TaggerFetchEntity).
    Get(GetArgs),
    /// Ask the server which container a process, cgroup or pod container is, then its tags.
    Origin(origin_command::OriginArgs),
    /// Build a diagnostic archive for support (mirror, metrics, configuration,
    /// version, recent logs) and optionally send it to Datadog.
    Flare(FlareArgs),
}

/// Where to expose Prometheus metrics.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9101).
    /// Off unless set.
    #[arg(long, env = "REMOTE_TAGGER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "REMOTE_TAGGER_LISTEN", default_value = defaults::TARGET)]
    pub listen: SocketAddr,

    /// Bearer token file; created with 64 random hex characters (mode 0600) if absent.
    #[arg(long, env = "REMOTE_TAGGER_AUTH_TOKEN_FILE", default_value_os_t = defaults::auth_token_file())]
    pub auth_token_file: PathBuf,

    /// PEM file with the certificate followed by its private key (SEC1,
    /// PKCS#8 or PKCS#1), e.g. a Datadog Agent's ipc_cert.pem. If absent, one
    /// is generated there (mode 0600) laid out as the Agent's: self-signed
    /// P-256 CA for localhost, 127.0.0.1 and ::1, then an EC PRIVATE KEY.
    /// Client certificates are verified against it.
    #[arg(long, env = "REMOTE_TAGGER_CERT_FILE", default_value_os_t = defaults::cert_file())]
    pub cert_file: PathBuf,

    /// Refuse clients that present no certificate of --cert-file (its own,
    /// or one it signed), as a Datadog Agent's IPC server does. Without it a
    /// certificate is still verified when presented.
    #[arg(
        long,
        env = "REMOTE_TAGGER_REQUIRE_CLIENT_CERT",
        conflicts_with = "insecure_plaintext"
    )]
    pub require_client_cert: bool,

    /// Serve the entities of this JSON file ([{"id": "container_id://abc",
    /// "low": [...], "orchestrator": [...], "high": [...], "standard": [...]}]),
    /// re-read when it changes, instead of --source.
    #[arg(long, env = "REMOTE_TAGGER_ENTITIES", conflicts_with_all = ["source", "relay"])]
    pub entities: Option<PathBuf>,

    /// The largest --entities file accepted, in bytes: a larger one is
    /// refused at start, and later keeps the last good state served. Once
    /// loaded, entities take about 3.7 times the file's size in memory.
    #[arg(long, env = "REMOTE_TAGGER_ENTITIES_MAX_BYTES", default_value_t = server::DEFAULT_ENTITIES_FILE_MAX_BYTES)]
    pub entities_max_bytes: u64,

    /// What to serve: `host` (this machine's processes, containers and pods,
    /// read from /proc) or `workload` (a generated Kubernetes node)
    /// [default: host on Linux, workload elsewhere].
    #[arg(
        long,
        env = "REMOTE_TAGGER_SOURCE",
        value_enum,
        conflicts_with = "relay"
    )]
    pub source: Option<SourceKind>,

    /// Host source: the directory holding the `proc` and `etc/passwd` to read,
    /// `var/log/containers` (the kubelet's links: container names) and
    /// `sys/fs/cgroup` (origin requests by cgroup inode); a container's view
    /// of its host's root, mounted, works too.
    #[arg(long, env = "REMOTE_TAGGER_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,

    /// Host source: milliseconds between two scans. With the root `/`, a
    /// scan reads new processes (again at the next scan) and a rotating
    /// sixteenth of the others: a process that execs or changes user under
    /// the same pid shows its new tags within 16 scans.
    #[arg(long, env = "REMOTE_TAGGER_HOST_SCAN_INTERVAL_MS", default_value_t = server::DEFAULT_HOST_SCAN_INTERVAL.as_millis() as u64)]
    pub host_scan_interval_ms: u64,

    #[command(flatten)]
    pub upstream: UpstreamArgs,

    #[command(flatten)]
    pub workload: WorkloadArgs,

    /// Changes kept so reconnecting clients can resume without a snapshot.
    #[arg(long, env = "REMOTE_TAGGER_CHANGE_LOG_CAPACITY", default_value_t = server::DEFAULT_CHANGE_LOG_CAPACITY)]
    pub change_log_capacity: usize,

    /// Largest gRPC message in bytes; snapshots are chunked to half of it.
    #[arg(long, env = "REMOTE_TAGGER_MAX_MESSAGE_SIZE", default_value_t = server::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,

    /// Tagger streams served at once over all connections; one more is
    /// refused with RESOURCE_EXHAUSTED (the client retries later).
    #[arg(long, env = "REMOTE_TAGGER_MAX_SUBSCRIPTIONS", default_value_t = server::DEFAULT_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,

    /// HTTP/2 streams one connection may have open at once (its
    /// MAX_CONCURRENT_STREAMS); HTTP/2 refuses more.
    #[arg(long, env = "REMOTE_TAGGER_MAX_STREAMS_PER_CONNECTION", default_value_t = server::DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: u32,

    /// Requests without a token (health checks and watches, reflection)
    /// served at once; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "REMOTE_TAGGER_MAX_UNAUTHENTICATED_REQUESTS", default_value_t = server::DEFAULT_MAX_UNAUTHENTICATED_REQUESTS)]
    pub max_unauthenticated_requests: usize,

    /// Milliseconds a connection has from its accept (TLS handshake
    /// included) to send a request with the token; then it is closed,
    /// unless a request without a token is still in flight on it.
    #[arg(long, env = "REMOTE_TAGGER_FIRST_REQUEST_TIMEOUT_MS", default_value_t = server::DEFAULT_FIRST_REQUEST_TIMEOUT.as_millis() as u64)]
    pub first_request_timeout_ms: u64,

    /// DANGEROUS: serve without TLS; tokens and tags cross the network in
    /// clear text and Datadog clients refuse it. For tests only.
    #[arg(long, env = "REMOTE_TAGGER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// The generated sources `serve --source` picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    Host,
    Workload,
}

/// Relay: serve the mirror of another tagger, named by `--upstream`,
/// `--upstream-datadog-config` or both (the group `relay`).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("relay").multiple(true)))]
pub struct UpstreamArgs {
    /// Relay: mirror the tagger at HOST:PORT (ours or a Datadog Agent's) and
    /// serve its entities, so many consumers share one upstream stream
    /// [default with --upstream-datadog-config: the Agent's cmd_host:cmd_port].
    #[arg(
        id = "upstream",
        long = "upstream",
        env = "REMOTE_TAGGER_UPSTREAM",
        group = "relay"
    )]
    pub target: Option<String>,

    /// Relay the Datadog Agent this datadog.yaml (or folder) configures: its
    /// address, token and certificate as for `list --datadog-config`; the
    /// --upstream* flags still win.
    #[arg(
        id = "upstream_datadog_config",
        long = "upstream-datadog-config",
        env = "REMOTE_TAGGER_UPSTREAM_DATADOG_CONFIG",
        value_name = "PATH",
        group = "relay"
    )]
    pub datadog_config: Option<PathBuf>,

    #[arg(id = "upstream_auth_token_file", long = "upstream-auth-token-file", env = "REMOTE_TAGGER_UPSTREAM_AUTH_TOKEN_FILE", requires = "relay", help = default_help(
        "Relay: the upstream's bearer token file",
        &defaults::auth_token_file(),
        "auth_token_file_path",
        "--upstream-datadog-config",
    ))]
    pub auth_token_file: Option<PathBuf>,

    #[arg(id = "upstream_ca_file", long = "upstream-ca-file", env = "REMOTE_TAGGER_UPSTREAM_CA_FILE", requires = "relay", help = default_help(
        "Relay: the PEM file the upstream's certificate is verified against \
         (see --ca-file); its pair is presented as the client certificate when it holds a key",
        &defaults::cert_file(),
        "ipc_cert_file_path",
        "--upstream-datadog-config",
    ))]
    pub ca_file: Option<PathBuf>,

    /// Relay: present this certificate and key to the upstream instead.
    #[arg(
        id = "upstream_client_cert_file",
        long = "upstream-client-cert-file",
        env = "REMOTE_TAGGER_UPSTREAM_CLIENT_CERT_FILE",
        requires = "relay"
    )]
    pub client_cert_file: Option<PathBuf>,

    /// Relay: present no client certificate to the upstream.
    #[arg(
        id = "upstream_no_client_cert",
        long = "upstream-no-client-cert",
        env = "REMOTE_TAGGER_UPSTREAM_NO_CLIENT_CERT",
        requires = "relay",
        conflicts_with = "upstream_client_cert_file"
    )]
    pub no_client_cert: bool,

    /// Relay: the name the upstream's certificate must be valid for.
    #[arg(
        long = "upstream-server-name",
        env = "REMOTE_TAGGER_UPSTREAM_SERVER_NAME",
        default_value = "localhost",
        requires = "relay"
    )]
    pub server_name: String,

    /// Relay: a prefix to ask the upstream for besides the Agent's table, as a
    /// newer Agent's (repeatable); every prefix of the table is always asked.
    #[arg(
        long = "upstream-extra-prefix",
        env = "REMOTE_TAGGER_UPSTREAM_EXTRA_PREFIXES",
        value_delimiter = ',',
        requires = "relay"
    )]
    pub extra_prefixes: Vec<String>,
}

impl UpstreamArgs {
    /// The client configuration of the relay, if relaying.
    pub fn client_config(&self) -> Result<Option<ClientConfig>, String> {
        if self.target.is_none() && self.datadog_config.is_none() {
            return Ok(None);
        }
        let connect = ConnectArgs {
            target: self.target.clone(),
            auth_token_file: self.auth_token_file.clone(),
            ca_file: self.ca_file.clone(),
            datadog_config: self.datadog_config.clone(),
            server_name: self.server_name.clone(),
            client_cert_file: self.client_cert_file.clone(),
            no_client_cert: self.no_client_cert,
            insecure_skip_verify: false,
            insecure_plaintext: false,
        };
        let mut config = connect
            .client_config(None)
            .map_err(|e| format!("upstream: {e}"))?;
        config.core.prefixes = self.extra_prefixes.clone();
        Ok(Some(config))
    }
}

/// The embedded synthetic workload (a Kubernetes node, scaled).
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Entities in the generated workload [default: 1000 for serve, 100000 for demo].
    #[arg(long, env = "REMOTE_TAGGER_WORKLOAD_ENTITIES")]
    pub workload_entities: Option<usize>,

    /// Seed of the generated workload and its churn.
    #[arg(long, env = "REMOTE_TAGGER_WORKLOAD_SEED", default_value_t = server::DEFAULT_WORKLOAD_SEED)]
    pub workload_seed: u64,

    /// Changes per second applied to the generated workload, 0 for a static
    /// store [default: 10 for serve, 1000 for demo].
    #[arg(long, env = "REMOTE_TAGGER_CHURN_PER_SEC")]
    pub churn_per_sec: Option<f64>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,

    /// How long to show live changes before exiting.
    #[arg(long, env = "REMOTE_TAGGER_DEMO_SECS", default_value_t = 5)]
    pub duration_secs: u64,

    /// Show live changes until Ctrl-C instead.
    #[arg(long)]
    pub follow: bool,
}

/// How to reach and authenticate to a tagger server.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Address of the tagger server, HOST:PORT [default: 127.0.0.1:5001, or
    /// the Agent's cmd_host:cmd_port with --datadog-config].
    #[arg(long, env = "REMOTE_TAGGER_TARGET")]
    pub target: Option<String>,

    #[arg(long, env = "REMOTE_TAGGER_AUTH_TOKEN_FILE", help = default_help(
        "File holding the bearer token (64 hex characters; a Datadog Agent's `auth_token`)",
        &defaults::auth_token_file(),
        "auth_token_file_path",
        "--datadog-config",
    ))]
    pub auth_token_file: Option<PathBuf>,

    #[arg(long, env = "REMOTE_TAGGER_CA_FILE", help = default_help(
        "PEM file the server is verified against: a Datadog Agent's or our \
         server's `ipc_cert.pem`. A self-signed certificate of the file that the server \
         presents as is passes whatever its CA flag and names (as Datadog's clients pin \
         it); any other must chain to one of the file's and be valid for --server-name. \
         When the file also holds the private key (as ipc_cert.pem does), that pair is \
         the client certificate",
        &defaults::cert_file(),
        "ipc_cert_file_path",
        "--datadog-config",
    ))]
    pub ca_file: Option<PathBuf>,

    /// Take the three flags above from a Datadog Agent's datadog.yaml (or
    /// its folder) as the Agent does: cmd_host, cmd_port,
    /// auth_token_file_path and ipc_cert_file_path with its defaults, each
    /// overridden by its variable (DD_CMD_HOST, DD_CMD_PORT,
    /// DD_AUTH_TOKEN_FILE_PATH, DD_IPC_CERT_FILE_PATH). Flags still win;
    /// DD_* variables count only with this flag.
    #[arg(long, env = "REMOTE_TAGGER_DATADOG_CONFIG", value_name = "PATH")]
    pub datadog_config: Option<PathBuf>,

    /// Name the server's certificate must be valid for.
    #[arg(long, env = "REMOTE_TAGGER_SERVER_NAME", default_value = "localhost")]
    pub server_name: String,

    /// PEM file with the client certificate followed by its key, presented
    /// instead of the --ca-file's pair.
    #[arg(long, env = "REMOTE_TAGGER_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,

    /// Present no client certificate, even if --ca-file holds a key. A
    /// Datadog Agent then refuses the connection.
    #[arg(
        long,
        env = "REMOTE_TAGGER_NO_CLIENT_CERT",
        conflicts_with = "client_cert_file"
    )]
    pub no_client_cert: bool,

    /// DANGEROUS: accept any server certificate. Anyone on the path can then
    /// impersonate the server and steal the token. For debugging only.
    #[arg(
        long,
        env = "REMOTE_TAGGER_INSECURE_SKIP_VERIFY",
        conflicts_with = "insecure_plaintext"
    )]
    pub insecure_skip_verify: bool,

    /// DANGEROUS: no TLS at all; the token crosses the network in clear text.
    /// Only against a server started with --insecure-plaintext (tests).
    #[arg(long, env = "REMOTE_TAGGER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
}

/// A flag's help with its two defaults: the file `serve` shares, or the
/// Agent's `key` with `config_flag`. clap prints a default only for
/// values it fills in itself, and these stay unset to tell a given flag from
/// a default.
fn default_help(text: &str, default: &Path, key: &str, config_flag: &str) -> String {
    format!(
        "{text} [default: {}, or the Agent's {key} with {config_flag}]",
        default.display()
    )
}

/// What to mirror.
#[derive(Debug, Args)]
pub struct SubscriptionArgs {
    /// Tag cardinality to request: low, orchestrator or high.
    #[arg(long, env = "REMOTE_TAGGER_CARDINALITY", default_value = "high", value_parser = parse_cardinality)]
    pub cardinality: Cardinality,

    /// Entity-ID prefix to mirror (repeatable, e.g. --prefix container_id, known or not); default: all known prefixes.
    #[arg(long = "prefix", env = "REMOTE_TAGGER_PREFIXES", value_delimiter = ',')]
    pub prefixes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub subscription: SubscriptionArgs,

    #[command(flatten)]
    pub sync: SyncWaitArgs,

    /// Print the Datadog `tagger-list` JSON instead of a table.
    #[arg(long, env = "REMOTE_TAGGER_JSON")]
    pub json: bool,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// A one-off request (`get`, `origin`): where it goes, how long it may
/// take, and the cardinality of the tags it shows.
#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Give up after this many seconds without an answer, connecting
    /// included (a server that takes the request and never answers).
    #[arg(long, env = "REMOTE_TAGGER_TIMEOUT_SECS", default_value_t = defaults::REQUEST_TIMEOUT.as_secs())]
    pub timeout_secs: u64,
    /// Cardinality of the tags shown: low, orchestrator or high.
    #[arg(long, env = "REMOTE_TAGGER_CARDINALITY", default_value = "high", value_parser = parse_cardinality)]
    pub cardinality: Cardinality,
}

impl RequestArgs {
    /// The one-off client config of the connection flags, with this limit.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let mut config = self.connect.client_config(None)?;
        config.request_timeout = std::time::Duration::from_secs(self.timeout_secs);
        Ok(config)
    }
}

/// A one-off request's error as one line, naming the flag that bounds it
/// when it timed out.
pub fn request_error(error: FetchError) -> String {
    match error {
        FetchError::TimedOut { .. } => format!("{error} (see --timeout-secs)"),
        other => other.to_string(),
    }
}

/// How long a one-shot command waits for a whole store.
#[derive(Debug, Args, serde::Serialize)]
pub struct SyncWaitArgs {
    /// Wait at most this many seconds for the whole store, whatever the
    /// server does. Not synced by then: `list` fails with one line, `flare`
    /// warns and writes what the mirror has. Synced from a plain Datadog
    /// server whose stream never went quiet for --settle-ms by then (a busy
    /// node): both warn and take the mirror as it is.
    #[arg(long, env = "REMOTE_TAGGER_WAIT_SECS", default_value_t = 30)]
    pub wait_secs: u64,

    /// Against a plain Datadog server (no end-of-snapshot marker), take the
    /// store once the stream has been quiet this many milliseconds (within
    /// --wait-secs).
    #[arg(long, env = "REMOTE_TAGGER_SETTLE_MS", default_value_t = 500)]
    pub settle_ms: u64,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub subscription: SubscriptionArgs,

    /// Print one JSON object per change instead of text lines.
    #[arg(long, env = "REMOTE_TAGGER_JSON")]
    pub json: bool,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The entity, as prefix://uid (e.g. container_id://3f2a...).
    pub entity: String,
    #[command(flatten)]
    pub request: RequestArgs,
    /// Print the tags as a JSON array.
    #[arg(long, env = "REMOTE_TAGGER_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FlareArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub subscription: SubscriptionArgs,
    #[command(flatten)]
    pub sync: SyncWaitArgs,

    /// Write the archive (tar.gz) here; nothing may be there yet (a flare
    /// never overwrites a file nor writes through a link). It is created
    /// readable by its owner only (0600). Default: a timestamped file in
    /// the system's temporary folder.
    #[arg(long, env = "REMOTE_TAGGER_FLARE_OUTPUT")]
    pub output: Option<PathBuf>,

    /// Send the archive to this Datadog flare host, as the Datadog Agent does
    /// (e.g. https://flare.datadoghq.com; /support/flare[/CASE_ID] is added).
    #[arg(long, env = "REMOTE_TAGGER_FLARE_URL")]
    pub send: Option<String>,

    /// Support case the flare belongs to.
    #[arg(long, env = "REMOTE_TAGGER_FLARE_CASE_ID")]
    pub case_id: Option<String>,

    /// Your email, for support to reach you.
    #[arg(long, env = "REMOTE_TAGGER_FLARE_EMAIL")]
    pub email: Option<String>,

    /// Datadog API key for --send. Shown nowhere but its last 5 characters.
    #[arg(long, env = "DD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

fn parse_cardinality(value: &str) -> Result<Cardinality, String> {
    value
        .parse()
        .map_err(|e: remote_tagger::domain::DomainError| e.to_string())
}

impl MetricsArgs {
    /// Starts the endpoint when `--metrics-listen` is set and says where on
    /// stderr; it serves until the returned handle is dropped.
    pub async fn spawn(
        &self,
        registry: impl FnOnce() -> prometheus_client::registry::Registry,
    ) -> Result<Option<MetricsEndpoint>, String> {
        let Some(addr) = self.metrics_listen else {
            return Ok(None);
        };
        let endpoint = MetricsEndpoint::spawn(addr, registry())
            .await
            .map_err(|e| e.to_string())?;
        eprintln!(
            "remote-tagger: metrics on http://{}{}",
            endpoint.local_addr(),
            metrics::METRICS_PATH
        );
        Ok(Some(endpoint))
    }
}

impl ConnectArgs {
    /// Target, token file and CA file: each flag (or its REMOTE_TAGGER_*
    /// variable) if given, else the Agent's with --datadog-config, else the
    /// defaults `serve` shares.
    pub fn endpoint(&self) -> Result<AgentEndpoint, String> {
        let fallback = match &self.datadog_config {
            Some(path) => AgentEndpoint::from_datadog_config(path).map_err(|e| e.to_string())?,
            None => AgentEndpoint {
                target: defaults::TARGET.to_owned(),
                auth_token_file: defaults::auth_token_file(),
                ipc_cert_file: defaults::cert_file(),
            },
        };
        Ok(AgentEndpoint {
            target: self.target.clone().unwrap_or(fallback.target),
            auth_token_file: self
                .auth_token_file
                .clone()
                .unwrap_or(fallback.auth_token_file),
            ipc_cert_file: self.ca_file.clone().unwrap_or(fallback.ipc_cert_file),
        })
    }

    /// The client configuration these flags describe; fails with a hint when
    /// the CA file is missing (the usual first-run mistake).
    pub fn client_config(
        &self,
        subscription: Option<&SubscriptionArgs>,
    ) -> Result<ClientConfig, String> {
        let endpoint = self.endpoint()?;
        let verifying = !self.insecure_plaintext && !self.insecure_skip_verify;
        if verifying && !endpoint.ipc_cert_file.exists() {
            let origin = match (&self.ca_file, &self.datadog_config) {
                (None, Some(config)) => format!(
                    " (the Agent's ipc_cert_file_path by --datadog-config {})",
                    config.display()
                ),
                _ => String::new(),
            };
            return Err(format!(
                "CA file {}{origin} does not exist: point --ca-file at the server's certificate \
                 (a Datadog Agent's ipc_cert.pem, or the --cert-file that `remote-tagger serve` creates)",
                endpoint.ipc_cert_file.display()
            ));
        }
        let mode = if self.insecure_plaintext {
            eprintln!(
                "remote-tagger: WARNING: --insecure-plaintext: no TLS, the token travels in clear text"
            );
            TlsMode::InsecurePlaintext
        } else if self.insecure_skip_verify {
            eprintln!(
                "remote-tagger: WARNING: --insecure-skip-verify: the server is NOT authenticated"
            );
            TlsMode::InsecureSkipVerify
        } else {
            TlsMode::Verify {
                ca_file: endpoint.ipc_cert_file,
            }
        };
        let client_certificate = match (&self.client_cert_file, self.no_client_cert) {
            (_, true) => ClientCertificate::None,
            (Some(path), false) => ClientCertificate::File(path.clone()),
            (None, false) => ClientCertificate::FromTrustFile,
        };
        let tls = TlsSettings {
            mode,
            server_name: self.server_name.clone(),
            client_certificate,
        };
        let mut config = ClientConfig::new(endpoint.target, endpoint.auth_token_file, tls);
        if let Some(subscription) = subscription {
            config.core.cardinality = subscription.cardinality;
            config.core.prefixes = subscription.prefixes.clone();
        }
        Ok(config)
    }
}

/// Appends to `--log-file`, creating it readable by its owner only: logs
/// hold entity ids, tags and server messages, as a flare does. A file that
/// exists keeps the mode its operator gave it.
fn log_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Logs to stderr, and to `--log-file` too when set, in `--log-format`.
/// Fails (one line) when the log file cannot be opened.
pub fn init_logging(cli: &Cli) -> CliResult {
    let default_level = match cli.command {
        Command::List(_)
        | Command::Watch(_)
        | Command::Get(_)
        | Command::Origin(_)
        | Command::Flare(_) => "error",
        Command::Demo(_) => "warn",
        Command::Serve(_) => "info",
    };
    let level = cli.log_level.as_deref().unwrap_or(default_level);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let file_layer = match &cli.log_file {
        Some(path) => {
            let file = log_file_options().open(path).map_err(|e| {
                format!(
                    "cannot open the log file {}: {e} (check --log-file)",
                    path.display()
                )
            })?;
            Some(format_layer(cli.log_format, Arc::new(file), false))
        }
        None => None,
    };
    let stderr_layer = format_layer(
        cli.log_format,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr_layer)
        .with(file_layer)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

fn format_layer<S, W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    }
}

/// The global logging flags, for the flare's configuration report.
#[derive(Debug, serde::Serialize)]
pub struct LoggingSettings {
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    pub log_file: Option<PathBuf>,
}

/// A command's failure, printed as one line.
pub type CliResult = Result<(), String>;

pub use signals::Interruption;
pub use terminal::escape;

/// How a command ended, hence the process's exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Printed as one line; exit code 1.
    Failed(String),
    /// Ended by a signal; exit code 128 + its number.
    Interrupted(Interruption),
}

impl From<CliResult> for Outcome {
    fn from(result: CliResult) -> Self {
        match result {
            Ok(()) => Self::Done,
            Err(error) => Self::Failed(error),
        }
    }
}

/// Runs the command; SIGINT or SIGTERM ends it at once (dropping it, so
/// its files are cleaned up and nothing half-done is written), except
/// `serve`, which shuts down gracefully, and `demo`, which prints its
/// summary.
pub async fn run(cli: Cli) -> Outcome {
    let mut signals = match signals::Signals::listen() {
        Ok(signals) => signals,
        Err(error) => return Outcome::Failed(error),
    };
    let logging = LoggingSettings {
        log_level: cli.log_level,
        log_format: cli.log_format,
        log_file: cli.log_file,
    };
    let running: std::pin::Pin<Box<dyn Future<Output = CliResult>>> = match cli.command {
        Command::Serve(args) => return server_commands::serve(args, &mut signals).await,
        Command::Demo(args) => return server_commands::demo(args, &mut signals).await,

        Command::List(args) => Box::pin(client_commands::list(args)),
        Command::Watch(args) => Box::pin(client_commands::watch(args)),
        Command::Get(args) => Box::pin(client_commands::get(args)),
        Command::Origin(args) => Box::pin(origin_command::origin(args)),
        Command::Flare(args) => Box::pin(flare::flare(args, &logging)),
    };
    tokio::select! {
        biased;
        interruption = signals.recv() => Outcome::Interrupted(interruption),
        result = running => result.into(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// clap checks flag names, ids and references only at run time.
    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_sources_are_exclusive() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["remote-tagger", "serve"], args].concat());
        assert!(parse(&["--source", "workload"]).is_ok());
        assert!(parse(&["--upstream", "127.0.0.1:5001"]).is_ok());
        assert!(parse(&["--entities", "e.json", "--source", "host"]).is_err());
        assert!(parse(&["--upstream", "127.0.0.1:5001", "--source", "host"]).is_err());
        assert!(parse(&["--upstream-ca-file", "ca.pem"]).is_err());
        assert!(parse(&["--upstream-datadog-config", "datadog.yaml"]).is_ok());
        assert!(
            parse(&[
                "--upstream-datadog-config",
                "datadog.yaml",
                "--upstream-ca-file",
                "ca.pem"
            ])
            .is_ok()
        );
        assert!(parse(&["--upstream-datadog-config", "d.yaml", "--source", "host"]).is_err());
        assert!(
            parse(&[
                "--upstream-datadog-config",
                "d.yaml",
                "--entities",
                "e.json"
            ])
            .is_err()
        );
    }

    fn list_endpoint(args: &[&str]) -> Result<AgentEndpoint, String> {
        let cli = Cli::try_parse_from([&["remote-tagger", "list"], args].concat()).unwrap();
        let Command::List(list) = cli.command else {
            panic!("parsed as list");
        };
        list.connect.endpoint()
    }

    #[test]
    fn flags_win_over_the_datadog_config_which_wins_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("datadog.yaml");
        std::fs::write(&config, "cmd_port: 6001\n").unwrap();
        let config = config.to_str().unwrap();
        let agent = AgentEndpoint {
            target: "localhost:6001".to_owned(),
            auth_token_file: dir.path().join("auth_token"),
            ipc_cert_file: dir.path().join("ipc_cert.pem"),
        };
        assert_eq!(list_endpoint(&["--datadog-config", config]).unwrap(), agent);
        assert_eq!(
            list_endpoint(&["--datadog-config", config, "--target", "127.0.0.1:7001"]).unwrap(),
            AgentEndpoint {
                target: "127.0.0.1:7001".to_owned(),
                ..agent.clone()
            }
        );
        assert_eq!(
            list_endpoint(&["--datadog-config", config, "--auth-token-file", "/t"]).unwrap(),
            AgentEndpoint {
                auth_token_file: "/t".into(),
                ..agent.clone()
            }
        );
        assert_eq!(
            list_endpoint(&["--datadog-config", config, "--ca-file", "/c.pem"]).unwrap(),
            AgentEndpoint {
                ipc_cert_file: "/c.pem".into(),
                ..agent.clone()
            }
        );
        assert_eq!(
            list_endpoint(&[]).unwrap(),
            AgentEndpoint {
                target: defaults::TARGET.to_owned(),
                auth_token_file: defaults::auth_token_file(),
                ipc_cert_file: defaults::cert_file(),
            }
        );
        // The relay's upstream resolves the same way, under its own flags.
        std::fs::write(dir.path().join("ipc_cert.pem"), "").unwrap();
        let serve = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["remote-tagger", "serve"], args].concat()).unwrap();
            let Command::Serve(serve) = cli.command else {
                panic!("parsed as serve");
            };
            serve.upstream.client_config().unwrap().unwrap()
        };
        let relayed = serve(&["--upstream-datadog-config", config]);
        assert_eq!(relayed.target, "localhost:6001");
        assert_eq!(relayed.auth_token_file, dir.path().join("auth_token"));
        assert_eq!(
            relayed.tls.mode,
            TlsMode::Verify {
                ca_file: dir.path().join("ipc_cert.pem")
            }
        );
        let relayed = serve(&[
            "--upstream-datadog-config",
            config,
            "--upstream",
            "127.0.0.1:7001",
            "--upstream-auth-token-file",
            "/t",
        ]);
        assert_eq!(relayed.target, "127.0.0.1:7001");
        assert_eq!(relayed.auth_token_file, PathBuf::from("/t"));

        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, "cmd_port: [\n").unwrap();
        let error = list_endpoint(&["--datadog-config", broken.to_str().unwrap()]).unwrap_err();
        assert!(
            error.contains("broken.yaml is not valid YAML: line 2"),
            "{error}"
        );
    }
}
