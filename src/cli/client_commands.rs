//! `list`, `watch` and `get`: the commands that talk to a tagger server.

use std::io::{BufWriter, IsTerminal, Write};
use std::time::Duration;

use remote_tagger::client::{self, ClientStatus, RemoteTagger};
use remote_tagger::core::{ConnectionState, Event};
use remote_tagger::domain::{Cardinality, Entity, EntityId};
use remote_tagger::metrics;
use remote_tagger::mirror::{ChangeKind, EntityChange, MirrorReader};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::terminal::{escape, escape_tags};
use super::{CliResult, GetArgs, ListArgs, SyncWaitArgs, WatchArgs};

pub async fn list(args: ListArgs) -> CliResult {
    let config = args.connect.client_config(Some(&args.subscription))?;
    let target = config.target.clone();
    let tagger = RemoteTagger::start(config).map_err(|e| e.to_string())?;
    let _metrics = args
        .metrics
        .spawn(|| metrics::client_registry(&tagger))
        .await?;
    wait_whole_store(&tagger, &target, &args.sync).await?;
    let entities = tagger.mirror().list();
    tagger.stop().await;
    // Buffered: stdout alone flushes at every newline, and the pretty JSON
    // of 100k entities is 2 million lines (a write syscall each, 3.7 s).
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &tagger_list_json(&entities))
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_table(&mut out, &entities)
    };
    quiet_on_broken_pipe(written.and_then(|()| out.flush()))
        .map_err(|e| format!("cannot write the list: {e}"))
}

/// Waits until the mirror holds the whole store: synced, and against a
/// plain Datadog server (no end-of-snapshot marker, so "synced" may be
/// mid-snapshot) until the stream has been quiet for the settle time. All
/// of it within `--wait-secs`, whatever the server does: not synced by
/// then is an error; synced but never quiet (a busy node's stream) is a
/// warning, and the mirror is taken as it is.
pub(super) async fn wait_whole_store(
    tagger: &RemoteTagger,
    target: &str,
    sync: &SyncWaitArgs,
) -> CliResult {
    let wait = Duration::from_secs(sync.wait_secs);
    let deadline = Instant::now() + wait;
    let mut changes = tagger.subscribe();
    wait_synced_with_progress(tagger, target, deadline, wait).await?;
    if tagger.status().borrow().extension_aware {
        return Ok(());
    }
    let settle = Duration::from_millis(sync.settle_ms);
    loop {
        let quiet_until = Instant::now() + settle;
        match tokio::time::timeout_at(quiet_until.min(deadline), changes.recv()).await {
            Ok(Err(RecvError::Closed)) => return Ok(()),
            Ok(_) => {}
            Err(_) if quiet_until <= deadline => return Ok(()),
            Err(_) => {
                eprintln!(
                    "remote-tagger: warning: the stream from {} never went quiet for --settle-ms {} \
                     within --wait-secs {} (a plain Datadog server marks no end of its snapshot): \
                     taking the mirror as it is, {} entities",
                    target,
                    sync.settle_ms,
                    sync.wait_secs,
                    tagger.mirror().len()
                );
                return Ok(());
            }
        }
    }
}

/// A closed pipe (`remote-tagger list | head`) ends the output, not in error.
pub(super) fn quiet_on_broken_pipe(written: std::io::Result<()>) -> std::io::Result<()> {
    match written {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// The Datadog `tagger-list` JSON: `{"entities": {"prefix://uid": {"tags": {"remote": [...]}}}}`.
pub fn tagger_list_json(entities: &[Entity]) -> serde_json::Value {
    let entities: serde_json::Map<String, serde_json::Value> = entities
        .iter()
        .map(|entity| {
            let tags = entity.tags(Cardinality::High);
            (entity.id.to_string(), json!({ "tags": { "remote": tags } }))
        })
        .collect();
    json!({ "entities": entities })
}

/// One row per entity, its id and tags escaped (see [`escape`]); padded
/// by characters, as `format!` pads.
fn write_table(out: &mut impl Write, entities: &[Entity]) -> std::io::Result<()> {
    let ids: Vec<_> = entities.iter().map(|e| escape(e.id.as_str())).collect();
    let width = ids
        .iter()
        .map(|id| id.chars().count())
        .max()
        .unwrap_or(0)
        .max("ENTITY".len());
    writeln!(out, "{:<width$}  TAGS", "ENTITY")?;
    for (entity, id) in entities.iter().zip(&ids) {
        let tags = escape_tags(&entity.tags(Cardinality::High));
        writeln!(out, "{id:<width$}  {tags}")?;
    }
    writeln!(out, "{} entities", entities.len())
}

/// Waits for the first sync, showing progress on stderr (a live line on a
/// terminal, a line per state change otherwise).
async fn wait_synced_with_progress(
    tagger: &RemoteTagger,
    target: &str,
    deadline: Instant,
    wait: Duration,
) -> CliResult {
    let interactive = std::io::stderr().is_terminal();
    let mut status = tagger.status();
    let mut last_line = String::new();
    let spinner = ['|', '/', '-', '\\'];
    let mut tick = 0usize;
    loop {
        let line = progress_line(target, &status.borrow());
        if interactive {
            eprint!("\r\x1b[2K{} {line}", spinner[tick % spinner.len()]);
            tick += 1;
        } else if line != last_line {
            eprintln!("{line}");
        }
        last_line = line;
        if tagger.is_synced() {
            if interactive {
                eprint!("\r\x1b[2K");
            }
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = status.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)), if interactive => {}
            _ = tokio::time::sleep_until(deadline) => {
                if interactive {
                    eprintln!();
                }
                let status = status.borrow();
                let why = status.last_error.as_ref().map_or_else(|| format!("{:?}", status.state), ToString::to_string);
                return Err(format!(
                    "not synced with {target} after {}s (last: {why}); check --target, --auth-token-file and --ca-file",
                    wait.as_secs()
                ));
            }
        }
    }
}

fn progress_line(target: &str, status: &ClientStatus) -> String {
    match status.state {
        ConnectionState::Connecting => format!("connecting to {target}..."),
        ConnectionState::Syncing => format!(
            "syncing from {target}: {} entities received",
            status.staged_entities.max(status.mirrored_entities)
        ),
        ConnectionState::Synced => format!("synced: {} entities", status.mirrored_entities),
        ConnectionState::BackingOff => format!(
            "retrying {target} ({})",
            escape(
                &status
                    .last_error
                    .as_ref()
                    .map_or_else(|| "not connected".to_owned(), ToString::to_string)
            )
        ),
    }
}

pub async fn watch(args: WatchArgs) -> CliResult {
    let config = args.connect.client_config(Some(&args.subscription))?;
    let tagger = RemoteTagger::start(config).map_err(|e| e.to_string())?;
    let _metrics = args
        .metrics
        .spawn(|| metrics::client_registry(&tagger))
        .await?;
    let mirror = tagger.mirror();
    let mut events = tagger.subscribe();
    let mut out = std::io::stdout();
    // Until Ctrl-C, which ends the command wherever it is (see `super::run`).
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                eprintln!("remote-tagger: fell behind, {missed} events not shown");
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        match event {
            Event::Synced { resumed, entities } => {
                let how = if resumed { "resumed" } else { "snapshot" };
                eprintln!("synced ({how}): {entities} entities");
            }
            Event::ConnectionLost {
                reason, retry_in, ..
            } => {
                eprintln!(
                    "connection lost: {}; retrying in {retry_in:.1?}",
                    escape(&reason.to_string())
                );
            }
            Event::EntitiesChanged(changes) => {
                let tags_of_changes = high_tags_of(&mirror, &changes);
                for (change, tags) in changes.iter().zip(tags_of_changes) {
                    let line = if args.json {
                        json!({ "kind": change_name(change.kind), "id": change.id.as_str(), "tags": tags })
                            .to_string()
                    } else {
                        let sign = match change.kind {
                            ChangeKind::Added => '+',
                            ChangeKind::Modified => '~',
                            ChangeKind::Deleted => '-',
                        };
                        format!(
                            "{sign} {} {}",
                            escape(change.id.as_str()),
                            escape_tags(&tags)
                        )
                    };
                    if let Err(error) = writeln!(out, "{line}") {
                        tagger.stop().await;
                        return quiet_on_broken_pipe(Err(error))
                            .map_err(|e| format!("cannot write: {e}"));
                    }
                }
            }
            // Events of a later version of the library: nothing to show.
            _ => {}
        }
    }
    tagger.stop().await;
    Ok(())
}

/// The high tags of each changed entity (none for a deleted one), looked
/// up in one view and copied out of it, so writing them out (which may
/// block on a slow pipe) never holds the mirror's writer up.
fn high_tags_of(mirror: &MirrorReader, changes: &[EntityChange]) -> Vec<Vec<String>> {
    let is_deleted = |change: &EntityChange| change.kind == ChangeKind::Deleted;
    let view = mirror.view();
    let present = changes.iter().filter(|c| !is_deleted(c));
    let mut found = view
        .tags_of(present.map(|c| c.id.as_str()), Cardinality::High)
        .map(|(_, tags)| tags.to_vec());
    changes
        .iter()
        .map(|change| match is_deleted(change) {
            true => Vec::new(),
            false => found.next().unwrap_or_default(),
        })
        .collect()
}

fn change_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "added",
        ChangeKind::Modified => "modified",
        ChangeKind::Deleted => "deleted",
    }
}

pub async fn get(args: GetArgs) -> CliResult {
    let id = EntityId::parse(&args.entity)
        .map_err(|e| format!("{e} (expected e.g. container_id://abc)"))?;
    let config = args.request.client_config()?;
    let tags = client::fetch_entity(&config, &id, args.request.cardinality)
        .await
        .map_err(super::request_error)?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        writeln!(out, "{}", json!(tags))
    } else {
        tags.iter()
            .try_for_each(|tag| writeln!(out, "{}", escape(tag)))
    };
    quiet_on_broken_pipe(written).map_err(|e| format!("cannot write: {e}"))
}
