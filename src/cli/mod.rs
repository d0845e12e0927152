//! Command-line interface: flags, defaults and the commands.
//!
//! Defaults make `remote-tagger serve` in one terminal and
//! `remote-tagger list` in another work with no flags: both use the same
//! token and certificate files and the Datadog port on loopback.

mod client_commands;
mod server_commands;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use remote_tagger::client::{ClientConfig, TlsMode, TlsSettings};
use remote_tagger::defaults;
use remote_tagger::domain::Cardinality;
use remote_tagger::server;

#[derive(Debug, Parser)]
#[command(
    name = "remote-tagger",
    version,
    about = "A wire-compatible Datadog Agent remote tagger: serve an entity -> tags store over gRPC, or mirror one live.",
    long_about = "A wire-compatible Datadog Agent remote tagger.\n\n\
        `serve` runs a tagger server that real Datadog remote taggers can stream from; \
        `list`, `watch` and `get` mirror or query any tagger, ours or a real Datadog Agent's \
        (point --target, --auth-token-file and --ca-file at the agent's port 5001, \
        auth_token and ipc_cert.pem). `demo` runs both in one process.\n\n\
        With no flags, `serve` and `list` in two terminals find each other: they share the \
        default token and certificate files and the address 127.0.0.1:5001."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log level or filter (e.g. `info`, `remote_tagger=debug`); RUST_LOG wins
    /// if set. Default: `info` for `serve` and `demo`, `error` for the client
    /// commands (their progress and errors are printed anyway).
    #[arg(long, global = true, env = "REMOTE_TAGGER_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a tagger server (TLS and a bearer token) on the embedded workload or an entities file.
    Serve(ServeArgs),
    /// Run a server and a client in one process on loopback: sync time, counts, live changes.
    Demo(DemoArgs),
    /// Connect, wait for the mirror to sync, and print it.
    List(ListArgs),
    /// Mirror a tagger and print every change as it happens, until Ctrl-C.
    Watch(WatchArgs),
    /// Ask the server for one entity's tags (TaggerFetchEntity).
    Get(GetArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "REMOTE_TAGGER_LISTEN", default_value = defaults::TARGET)]
    pub listen: SocketAddr,

    /// Bearer token file; created with 64 random hex characters (mode 0600) if absent.
    #[arg(long, env = "REMOTE_TAGGER_AUTH_TOKEN_FILE", default_value_os_t = defaults::auth_token_file())]
    pub auth_token_file: PathBuf,

    /// PEM file with the certificate followed by its private key (the Datadog
    /// ipc_cert.pem layout); a self-signed P-256 one for localhost, 127.0.0.1
    /// and ::1 is generated there (mode 0600) if absent.
    #[arg(long, env = "REMOTE_TAGGER_CERT_FILE", default_value_os_t = defaults::cert_file())]
    pub cert_file: PathBuf,

    /// Serve the entities of this JSON file ([{"id": "container_id://abc",
    /// "low": [...], "orchestrator": [...], "high": [...], "standard": [...]}]),
    /// re-read when it changes. Default: the embedded workload.
    #[arg(long, env = "REMOTE_TAGGER_ENTITIES")]
    pub entities: Option<PathBuf>,

    #[command(flatten)]
    pub workload: WorkloadArgs,

    /// Changes kept so reconnecting clients can resume without a snapshot.
    #[arg(long, env = "REMOTE_TAGGER_CHANGE_LOG_CAPACITY", default_value_t = server::DEFAULT_CHANGE_LOG_CAPACITY)]
    pub change_log_capacity: usize,

    /// Largest gRPC message in bytes; snapshots are chunked to half of it.
    #[arg(long, env = "REMOTE_TAGGER_MAX_MESSAGE_SIZE", default_value_t = server::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,

    /// DANGEROUS: serve without TLS; tokens and tags cross the network in
    /// clear text and Datadog clients refuse it. For tests only.
    #[arg(long, env = "REMOTE_TAGGER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
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
    /// Address of the tagger server, HOST:PORT.
    #[arg(long, env = "REMOTE_TAGGER_TARGET", default_value = defaults::TARGET)]
    pub target: String,

    /// File holding the bearer token (64 hex characters; a Datadog Agent's `auth_token`).
    #[arg(long, env = "REMOTE_TAGGER_AUTH_TOKEN_FILE", default_value_os_t = defaults::auth_token_file())]
    pub auth_token_file: PathBuf,

    /// PEM file the server's certificate is verified against (a Datadog Agent's
    /// or our server's `ipc_cert.pem` works as its own CA).
    #[arg(long, env = "REMOTE_TAGGER_CA_FILE", default_value_os_t = defaults::cert_file())]
    pub ca_file: PathBuf,

    /// Name the server's certificate must be valid for.
    #[arg(long, env = "REMOTE_TAGGER_SERVER_NAME", default_value = "localhost")]
    pub server_name: String,

    /// PEM file with a client certificate followed by its key, for servers that
    /// require mutual TLS.
    #[arg(long, env = "REMOTE_TAGGER_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,

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

/// What to mirror.
#[derive(Debug, Args)]
pub struct SubscriptionArgs {
    /// Tag cardinality to request: low, orchestrator or high.
    #[arg(long, env = "REMOTE_TAGGER_CARDINALITY", default_value = "high", value_parser = parse_cardinality)]
    pub cardinality: Cardinality,

    /// Entity-ID prefix to mirror (repeatable, e.g. --prefix container_id); default: all known prefixes.
    #[arg(long = "prefix", env = "REMOTE_TAGGER_PREFIXES", value_delimiter = ',')]
    pub prefixes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub subscription: SubscriptionArgs,

    /// Print the Datadog `tagger-list` JSON instead of a table.
    #[arg(long, env = "REMOTE_TAGGER_JSON")]
    pub json: bool,

    /// Give up if the mirror is not synced within this many seconds.
    #[arg(long, env = "REMOTE_TAGGER_WAIT_SECS", default_value_t = 30)]
    pub wait_secs: u64,

    /// Against a plain Datadog server (no end-of-snapshot marker), print once
    /// the stream has been quiet this many milliseconds.
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
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The entity, as prefix://uid (e.g. container_id://3f2a...).
    pub entity: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Tag cardinality: low, orchestrator or high.
    #[arg(long, env = "REMOTE_TAGGER_CARDINALITY", default_value = "high", value_parser = parse_cardinality)]
    pub cardinality: Cardinality,
    /// Print the tags as a JSON array.
    #[arg(long, env = "REMOTE_TAGGER_JSON")]
    pub json: bool,
}

fn parse_cardinality(value: &str) -> Result<Cardinality, String> {
    value
        .parse()
        .map_err(|e: remote_tagger::domain::DomainError| e.to_string())
}

impl ConnectArgs {
    /// The client configuration these flags describe; fails with a hint when
    /// the CA file is missing (the usual first-run mistake).
    pub fn client_config(
        &self,
        subscription: Option<&SubscriptionArgs>,
    ) -> Result<ClientConfig, String> {
        let verifying = !self.insecure_plaintext && !self.insecure_skip_verify;
        if verifying && !self.ca_file.exists() {
            return Err(format!(
                "CA file {} does not exist: point --ca-file at the server's certificate \
                 (a Datadog Agent's ipc_cert.pem, or the --cert-file that `remote-tagger serve` creates)",
                self.ca_file.display()
            ));
        }
        let mut config = ClientConfig::new(self.target.clone(), self.auth_token_file.clone());
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
                ca_file: self.ca_file.clone(),
            }
        };
        config.tls = TlsSettings {
            mode,
            server_name: self.server_name.clone(),
            client_cert_file: self.client_cert_file.clone(),
        };
        if let Some(subscription) = subscription {
            config.cardinality = subscription.cardinality;
            config.prefixes = subscription.prefixes.clone();
        }
        Ok(config)
    }
}

pub fn init_logging(cli: &Cli) {
    let default_level = match cli.command {
        Command::List(_) | Command::Watch(_) | Command::Get(_) => "error",
        Command::Demo(_) => "warn",
        Command::Serve(_) => "info",
    };
    let level = cli.log_level.as_deref().unwrap_or(default_level);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A command's failure, printed as one line.
pub type CliResult = Result<(), String>;

pub async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve(args) => server_commands::serve(args).await,
        Command::Demo(args) => server_commands::demo(args).await,
        Command::List(args) => client_commands::list(args).await,
        Command::Watch(args) => client_commands::watch(args).await,
        Command::Get(args) => client_commands::get(args).await,
    }
}
