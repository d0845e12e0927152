//! `serve` and `demo`: the commands that run a tagger server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use remote_tagger::client::{ClientConfig, RemoteTagger, TlsMode, TlsSettings};
use remote_tagger::core::Event;
use remote_tagger::domain::Cardinality;
use remote_tagger::metrics;
use remote_tagger::mirror::ChangeKind;
use remote_tagger::server::{self, ServeConfig, Server, Source};
use tokio::time::Instant;

use super::{CliResult, DemoArgs, ServeArgs, SourceKind, WorkloadArgs};

pub async fn serve(args: ServeArgs) -> CliResult {
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
    let _metrics = args
        .metrics
        .spawn(|| metrics::server_registry(server.store()))
        .await?;
    server
        .run(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
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

pub async fn demo(args: DemoArgs) -> CliResult {
    let scratch = ScratchDir::create()?;
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
    let store = server.store().clone();
    println!("demo: server listening on {address} with TLS (self-signed P-256) and a bearer token");

    let mut client_config = ClientConfig::new(address.to_string(), &token_file);
    client_config.tls = TlsSettings {
        mode: TlsMode::Verify {
            ca_file: cert_file.clone(),
        },
        ..TlsSettings::default()
    };
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
        println!("demo: tags({id}, high) =");
        println!(
            "        {}",
            mirror.tags(id, Cardinality::High).to_vec().join(" ")
        );
    }

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
            _ = tokio::signal::ctrl_c() => break,
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
                    break;
                }
            }
            event = events.recv() => match event {
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
                Ok(Event::ConnectionLost { reason, .. }) => println!("demo: connection lost: {reason}"),
                Ok(Event::Synced { .. }) | Err(_) => {}
            }
        }
    }
    let telemetry = tagger.status().borrow().telemetry.clone();
    tagger.stop().await;
    server.stop().await.map_err(|e| e.to_string())?;
    println!(
        "demo: done: {} responses received, {} entity updates applied, {} stream errors",
        telemetry.receives, telemetry.updated_entities, telemetry.stream_errors
    );
    Ok(())
}
