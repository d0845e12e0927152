//! `serve` and `demo`: the commands that run a tagger server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use remote_tagger::client::{ClientConfig, RemoteTagger, TlsSettings};
use remote_tagger::core::Event;
use remote_tagger::domain::Cardinality;
use remote_tagger::metrics::{self, MetricsEndpoint};
use remote_tagger::mirror::ChangeKind;
use remote_tagger::server::{self, RunningServer, ServeConfig, Server, Source};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::signals::{Interruption, Signals};
use super::terminal::{escape, escape_tags};
use super::{DemoArgs, Outcome, ServeArgs, SourceKind, WorkloadArgs};

/// Serves until SIGINT or SIGTERM, then shuts down gracefully: every
/// stream ends at once, open connections get the shutdown grace to close,
/// and a second signal ends the process at once. Exits 130 after Ctrl-C
/// (as every command does) and 0 after SIGTERM: a service manager stopping
/// a service is no failure. A signal while it is still loading ends it at
/// once.
pub async fn serve(args: ServeArgs, signals: &mut Signals) -> Outcome {
    let (server, _metrics) = tokio::select! {
        biased;
        interruption = signals.recv() => return Outcome::Interrupted(interruption),
        ready = start_serving(args) => match ready {
            Ok(ready) => ready,
            Err(error) => return Outcome::Failed(error),
        },
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = server.run(async {
        let _ = stopped.await;
    });
    tokio::pin!(serving);
    let first = tokio::select! {
        biased;
        interruption = signals.recv() => interruption,
        ended = &mut serving => return served(ended),
    };
    let _ = stop.send(());
    tokio::select! {
        biased;
        second = signals.recv() => return Outcome::Interrupted(second),
        ended = &mut serving => {
            if let Outcome::Failed(error) = served(ended) {
                return Outcome::Failed(error);
            }
        }
    }
    match first {
        Interruption::Interrupt => Outcome::Interrupted(first),
        Interruption::Terminate => Outcome::Done,
    }
}

fn served(ended: Result<(), server::ServeError>) -> Outcome {
    ended.map_err(|e| e.to_string()).into()
}

/// Loads the source, binds and says where it serves: a server ready to
/// run, and its metrics endpoint (kept for as long as it serves).
async fn start_serving(args: ServeArgs) -> Result<(Server, Option<MetricsEndpoint>), String> {
    let mut config = ServeConfig::new(args.auth_token_file, args.cert_file);
    config.listen = args.listen;
    config.require_client_cert = args.require_client_cert;
    let host = || Source::Host {
        root: args.host_root.clone(),
        interval: Duration::from_millis(args.host_scan_interval_ms),
    };
    let workload = || {
        args.workload.source(
            server::DEFAULT_WORKLOAD_ENTITIES,
            server::DEFAULT_CHURN_PER_SEC,
        )
    };
    config.source = match (args.upstream.client_config()?, &args.entities, args.source) {
        (Some(upstream), _, _) => Source::Upstream(Box::new(upstream)),
        (None, Some(path), _) => Source::EntitiesFile(path.clone()),
        (None, None, Some(SourceKind::Host)) => host(),
        (None, None, Some(SourceKind::Workload)) => workload(),
        (None, None, None) => match Source::default() {
            Source::Host { .. } => host(),
            _ => workload(),
        },
    };
    if args.insecure_plaintext {
        eprintln!(
            "remote-tagger: WARNING: --insecure-plaintext: no TLS, tokens and tags cross the network in clear text"
        );
        config.tls = server::TlsMode::InsecurePlaintext;
    }
    config.change_log_capacity = args.change_log_capacity;
    config.entities_file_max_bytes = args.entities_max_bytes;
    config.service.max_message_size = args.max_message_size;
    config.service.max_subscriptions = args.max_subscriptions;
    config.service.max_streams_per_connection = args.max_streams_per_connection;
    config.service.max_unauthenticated_requests = args.max_unauthenticated_requests;
    config.service.first_request_timeout = Duration::from_millis(args.first_request_timeout_ms);
    let server = Server::bind(config.clone())
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "remote-tagger: serving {} entities on {} ({}); token file {}{}",
        server.store().stats().store_entities,
        server.local_addr(),
        match (args.insecure_plaintext, args.require_client_cert) {
            (true, _) => "plaintext",
            (false, true) => "TLS, client certificates required",
            (false, false) => "TLS",
        },
        config.auth_token_file.display(),
        if args.insecure_plaintext {
            String::new()
        } else {
            format!(", certificate {}", config.cert_file.display())
        },
    );
    let metrics = args
        .metrics
        .spawn(|| metrics::server_registry(server.store()))
        .await?;
    Ok((server, metrics))
}

/// The demo shows a realistic scale: a 100k-entity store churning 1k/s.
const DEMO_ENTITIES: usize = 100_000;
const DEMO_CHURN_PER_SEC: f64 = 1_000.0;

impl WorkloadArgs {
    /// The workload these flags describe, with the command's own defaults.
    fn source(&self, default_entities: usize, default_churn_per_sec: f64) -> Source {
        Source::Workload {
            entities: self.workload_entities.unwrap_or(default_entities),
            seed: self.workload_seed,
            churn_per_sec: self.churn_per_sec.unwrap_or(default_churn_per_sec),
        }
    }
}

/// A scratch directory for the demo's token and certificate, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("remote-tagger-demo-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create the demo directory {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo. Ctrl-C while it starts ends it at once; during the live
/// changes it stops the demo, which prints its summary and exits 130.
pub async fn demo(args: DemoArgs, signals: &mut Signals) -> Outcome {
    match run_demo(args, signals).await {
        Ok(None) => Outcome::Done,
        Ok(Some(interruption)) => Outcome::Interrupted(interruption),
        Err(error) => Outcome::Failed(error),
    }
}

/// The demo's server, and its client synced from it.
struct Demo {
    server: RunningServer,
    tagger: RemoteTagger,
    events: broadcast::Receiver<Event>,
}

/// The demo, and the signal that stopped it, if one did.
async fn run_demo(args: DemoArgs, signals: &mut Signals) -> Result<Option<Interruption>, String> {
    let scratch = ScratchDir::create()?;
    let mut demo = tokio::select! {
        biased;
        interruption = signals.recv() => return Ok(Some(interruption)),
        started = start_demo(&args, &scratch) => started?,
    };
    let interrupted = show_live_changes(&mut demo, &args, signals).await;
    let telemetry = demo.tagger.status().borrow().telemetry.clone();
    demo.tagger.stop().await;
    demo.server.stop().await.map_err(|e| e.to_string())?;
    println!(
        "demo: done: {} responses received, {} entity updates applied, {} stream errors",
        telemetry.receives, telemetry.updated_entities, telemetry.stream_errors
    );
    Ok(interrupted)
}

/// Starts the server and the client, waits for the sync and shows it.
async fn start_demo(args: &DemoArgs, scratch: &ScratchDir) -> Result<Demo, String> {
    let token_file = scratch.0.join("auth_token");
    let cert_file = scratch.0.join("ipc_cert.pem");
    let mut config = ServeConfig::new(&token_file, &cert_file);
    config.listen = "127.0.0.1:0".parse().expect("a valid address");
    config.source = args.workload.source(DEMO_ENTITIES, DEMO_CHURN_PER_SEC);
    if let Source::Workload {
        entities,
        seed,
        churn_per_sec,
    } = &config.source
    {
        println!(
            "demo: generating a {entities}-entity node workload (seed {seed}), churning {churn_per_sec} events/s"
        );
    }
    let server = Server::bind(config)
        .await
        .map_err(|e| e.to_string())?
        .spawn();
    let address = server.local_addr();
    println!("demo: server listening on {address} with TLS (self-signed P-256) and a bearer token");

    let client_config = ClientConfig::new(
        address.to_string(),
        &token_file,
        TlsSettings::verify(cert_file.clone()),
    );
    let started = Instant::now();
    let tagger = RemoteTagger::start(client_config).map_err(|e| e.to_string())?;
    let mut events = tagger.subscribe();
    tokio::time::timeout(Duration::from_secs(60), tagger.wait_synced())
        .await
        .map_err(|_| {
            format!(
                "the demo client did not sync within 60 s: {:?}",
                tagger.status().borrow().last_error
            )
        })?;
    // The snapshot's own changes were counted by the sync: show only live ones.
    while events.try_recv().is_ok() {}
    let mirror = tagger.mirror();
    println!(
        "demo: client synced {} entities in {:.1?} (snapshot over loopback TLS)",
        mirror.len(),
        started.elapsed()
    );
    for (prefix, count) in mirror.stored_by_prefix() {
        println!("        {count:>8}  {prefix}");
    }
    if let Some(entity) = mirror
        .list()
        .into_iter()
        .find(|e| e.id.prefix() == "container_id")
    {
        let id = entity.id.as_str();
        println!("demo: tags({}, high) =", escape(id));
        println!(
            "        {}",
            escape_tags(&mirror.tags(id, Cardinality::High).to_vec())
        );
    }

    Ok(Demo {
        server,
        tagger,
        events,
    })
}

/// One line of counts a second until the duration is over, or until a
/// signal (`--follow`: until Ctrl-C), which it returns.
async fn show_live_changes(
    demo: &mut Demo,
    args: &DemoArgs,
    signals: &mut Signals,
) -> Option<Interruption> {
    let mirror = demo.tagger.mirror();
    let store = demo.server.store().clone();
    let until = (!args.follow).then(|| Instant::now() + Duration::from_secs(args.duration_secs));
    println!(
        "demo: live changes, one line per second ({})",
        if args.follow {
            "Ctrl-C to stop".to_owned()
        } else {
            format!("for {} s", args.duration_secs)
        }
    );
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            interruption = signals.recv() => return Some(interruption),
            _ = tick.tick() => {
                let server_stats = store.stats();
                println!(
                    "        +{:<4} ~{:<4} -{:<4} mirror {} entities, server {} (revision {})",
                    counts.get("added").unwrap_or(&0),
                    counts.get("modified").unwrap_or(&0),
                    counts.get("deleted").unwrap_or(&0),
                    mirror.len(),
                    server_stats.store_entities,
                    server_stats.store_revision,
                );
                counts.clear();
                if until.is_some_and(|until| Instant::now() >= until) {
                    return None;
                }
            }
            event = demo.events.recv() => match event {
                Ok(Event::EntitiesChanged(changes)) => {
                    for change in changes {
                        let kind = match change.kind {
                            ChangeKind::Added => "added",
                            ChangeKind::Modified => "modified",
                            ChangeKind::Deleted => "deleted",
                        };
                        *counts.entry(kind).or_default() += 1;
                    }
                }
                Ok(Event::ConnectionLost { reason, .. }) => {
                    println!("demo: connection lost: {}", escape(&reason.to_string()));
                }
                _ => {}
            }
        }
    }
}
