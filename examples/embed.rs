//! Embedding the remote tagger in an application: mirror a tagger server,
//! wait for the sync, query tags on the hot path, and follow changes.
//!
//! Start a server in one terminal, then run this in another:
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --release --example embed
//! ```
//!
//! Against a real Datadog Agent, set `REMOTE_TAGGER_TARGET` (e.g.
//! `127.0.0.1:5001`) and `REMOTE_TAGGER_HOME` to a folder holding its
//! `auth_token` and `ipc_cert.pem` (both in `/etc/datadog-agent`).

use std::error::Error;
use std::time::Duration;

use remote_tagger::defaults;
use remote_tagger::{Cardinality, ClientConfig, Event, RemoteTagger, TlsSettings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let target = std::env::var("REMOTE_TAGGER_TARGET").unwrap_or_else(|_| defaults::TARGET.into());
    // The files `serve` writes, in $REMOTE_TAGGER_HOME (see `defaults`).
    let mut config = ClientConfig::new(
        target,
        defaults::auth_token_file(),
        TlsSettings::serve_defaults(),
    );
    config.core.cardinality = Cardinality::Orchestrator;
    config.core.prefixes = vec!["container_id".into(), "kubernetes_pod_uid".into()];

    let tagger = RemoteTagger::start(config)?;
    if tokio::time::timeout(Duration::from_secs(30), tagger.wait_synced())
        .await
        .is_err()
    {
        let status = tagger.status().borrow().clone();
        let last = status
            .last_error
            .map_or("none".to_owned(), |e| e.to_string());
        return Err(format!("not synced after 30 s (last error: {last})").into());
    }

    // One reader per thread; queries never block behind the stream's writes.
    let mirror = tagger.mirror();
    println!("mirrored {} entities", mirror.len());
    for entity in mirror.list().iter().take(3) {
        let tags = mirror.tags(entity.id.as_str(), Cardinality::Orchestrator);
        println!(
            "{} -> {}",
            entity.id,
            tags.iter().collect::<Vec<_>>().join(" ")
        );
    }

    // Changes from here on (the sync's own changes came before).
    let mut changes = tagger.subscribe();
    println!("following changes for 5 s...");
    let follow = async {
        while let Ok(event) = changes.recv().await {
            if let Event::EntitiesChanged(changed) = event {
                for change in changed {
                    println!("{:?} {}", change.kind, change.id);
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), follow).await;
    tagger.stop().await;
    Ok(())
}
