//! The `--entities FILE` source: a JSON list of entities, re-read when it
//! changes, each change turned into ADDED/MODIFIED/DELETED events.
//!
//! ```json
//! [{"id": "container_id://abc", "low": ["image:nginx"], "orchestrator": [],
//!   "high": ["container_id:abc"], "standard": ["env:prod"]}]
//! ```
//!
//! Missing (or null) tag lists are empty. A file that does not parse is
//! reported once, in one line, and the last good state stays served: a
//! half-saved edit never empties the store.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::hub::StoreHandle;
use super::stats::increment;
use crate::domain::{DomainError, Entity, EntityEvent, EntityId};

/// Why the bytes of an entities file are not a valid entity list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntitiesFileError {
    /// serde's message, which ends with the line and column.
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("entity #{position} has an invalid id {id:?}: {reason}")]
    InvalidId {
        /// 1-based position in the list.
        position: usize,
        id: String,
        reason: DomainError,
    },
    #[error("entity id {0:?} appears more than once")]
    DuplicateId(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityRecord {
    id: String,
    #[serde(default)]
    low: Option<Vec<String>>,
    #[serde(default)]
    orchestrator: Option<Vec<String>>,
    #[serde(default)]
    high: Option<Vec<String>>,
    #[serde(default)]
    standard: Option<Vec<String>>,
}

/// Parses an entities file. Never panics, whatever the bytes: invalid UTF-8,
/// bad JSON, unknown fields (a misspelled list name would otherwise drop its
/// tags silently), invalid or duplicate ids are all errors.
pub fn parse_entities_file(bytes: &[u8]) -> Result<Vec<Entity>, EntitiesFileError> {
    let records: Vec<EntityRecord> = serde_json::from_slice(bytes)
        .map_err(|e| EntitiesFileError::Json(escape_control_chars(&e.to_string())))?;
    let mut seen = std::collections::BTreeSet::new();
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let id =
                EntityId::parse(&record.id).map_err(|reason| EntitiesFileError::InvalidId {
                    position: index + 1,
                    id: record.id.clone(),
                    reason,
                })?;
            if !seen.insert(id.clone()) {
                return Err(EntitiesFileError::DuplicateId(record.id));
            }
            Ok(Entity {
                id,
                low: record.low.unwrap_or_default(),
                orchestrator: record.orchestrator.unwrap_or_default(),
                high: record.high.unwrap_or_default(),
                standard: record.standard.unwrap_or_default(),
            })
        })
        .collect()
}

/// serde's message quotes the offending input (an unknown field's name, say)
/// as it is, control characters included: escaped, the error stays one line
/// (a field name holding `\n` once split it into two log lines).
fn escape_control_chars(message: &str) -> String {
    let mut line = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

/// The events that turn the entity set `previous` into `next`.
pub fn diff_entities(
    previous: &BTreeMap<EntityId, Entity>,
    next: &BTreeMap<EntityId, Entity>,
) -> Vec<EntityEvent> {
    let deleted = previous
        .keys()
        .filter(|id| !next.contains_key(*id))
        .map(|id| EntityEvent::Deleted(id.clone()));
    let upserted = next
        .values()
        .filter_map(|entity| match previous.get(&entity.id) {
            None => Some(EntityEvent::Added(entity.clone())),
            Some(old) if old != entity => Some(EntityEvent::Modified(entity.clone())),
            Some(_) => None,
        });
    deleted.chain(upserted).collect()
}

/// Why the entities file could not be loaded at startup.
#[derive(Debug, thiserror::Error)]
#[error("entities file {}: {reason}", path.display())]
pub struct EntitiesFileLoadError {
    pub path: PathBuf,
    pub reason: String,
}

/// Size and modification time: a cheap test for "the file may have changed"
/// before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

/// Follows one entities file: remembers its last good contents and turns
/// each valid change into events.
#[derive(Debug)]
pub struct EntitiesFileWatcher {
    path: PathBuf,
    fingerprint: Option<Fingerprint>,
    content_hash: u64,
    current: BTreeMap<EntityId, Entity>,
    /// The last problem logged, so a broken file is reported once, not at
    /// every poll.
    reported_problem: Option<String>,
}

impl EntitiesFileWatcher {
    /// Loads `path` for the first time. Unlike later reloads, a missing or
    /// invalid file is an error: the server would otherwise start empty.
    /// Returns the watcher and the ADDED events of the initial entities.
    pub async fn open(
        path: impl Into<PathBuf>,
    ) -> Result<(Self, Vec<EntityEvent>), EntitiesFileLoadError> {
        let mut watcher = Self {
            path: path.into(),
            fingerprint: None,
            content_hash: 0,
            current: BTreeMap::new(),
            reported_problem: None,
        };
        match watcher.reload().await {
            Ok(events) => Ok((watcher, events.unwrap_or_default())),
            Err(reason) => Err(EntitiesFileLoadError {
                path: watcher.path,
                reason,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file once. Returns the events of a valid change; logs a
    /// problem (once per distinct problem) and returns nothing otherwise.
    pub async fn poll(&mut self) -> Vec<EntityEvent> {
        match self.reload().await {
            Ok(events) => {
                if self.reported_problem.take().is_some() {
                    tracing::info!(path = %self.path.display(), "entities file is valid again");
                }
                events.unwrap_or_default()
            }
            Err(problem) => {
                if self.reported_problem.as_ref() != Some(&problem) {
                    tracing::warn!(
                        "entities file {}: {problem}; keeping the last good state ({} entities)",
                        self.path.display(),
                        self.current.len()
                    );
                    self.reported_problem = Some(problem);
                }
                Vec::new()
            }
        }
    }

    /// Polls every `interval` and applies the changes to `store`, forever.
    pub async fn run(mut self, store: StoreHandle, interval: Duration) -> Infallible {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and `open` just read the file.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let previous_problem = self.reported_problem.clone();
            let events = self.poll().await;
            if self.reported_problem.is_some() && self.reported_problem != previous_problem {
                increment(&store.telemetry().source_errors);
            }
            if !events.is_empty() {
                let changes = store.apply(events);
                tracing::info!(path = %self.path.display(), changes, "entities file reloaded");
            }
        }
    }

    /// Re-reads the file if it may have changed. `Ok(None)`: unchanged.
    async fn reload(&mut self) -> Result<Option<Vec<EntityEvent>>, String> {
        let metadata = tokio::fs::metadata(&self.path).await.map_err(|e| {
            // Forget the fingerprint so a re-created file is read even if it
            // looks like the old one.
            self.fingerprint = None;
            format!("cannot read it: {e}")
        })?;
        let fingerprint = Fingerprint {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        };
        if self.fingerprint == Some(fingerprint) {
            return Ok(None);
        }
        let bytes = tokio::fs::read(&self.path)
            .await
            .map_err(|e| format!("cannot read it: {e}"))?;
        // Remembered before parsing: a broken file is not re-parsed (nor
        // re-reported) until it changes again.
        self.fingerprint = Some(fingerprint);
        let content_hash = {
            let mut hasher = DefaultHasher::new();
            bytes.hash(&mut hasher);
            hasher.finish()
        };
        if content_hash == self.content_hash && self.reported_problem.is_none() {
            return Ok(None);
        }
        let entities = parse_entities_file(&bytes).map_err(|e| e.to_string())?;
        self.content_hash = content_hash;
        let next: BTreeMap<EntityId, Entity> = entities
            .into_iter()
            .map(|entity| (entity.id.clone(), entity))
            .collect();
        let events = diff_entities(&self.current, &next);
        self.current = next;
        Ok(Some(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entities_with_missing_and_null_lists() {
        let entities = parse_entities_file(
            br#"[{"id": "container_id://abc", "low": ["a"], "high": null},
                 {"id": "host://h", "orchestrator": ["o"], "standard": ["s"]}]"#,
        )
        .unwrap();
        assert_eq!(entities.len(), 2);
        assert_eq!(entities[0].id.as_str(), "container_id://abc");
        assert_eq!(entities[0].low, ["a"]);
        assert!(entities[0].high.is_empty() && entities[0].orchestrator.is_empty());
        assert_eq!(entities[1].orchestrator, ["o"]);
        assert_eq!(entities[1].standard, ["s"]);
        assert_eq!(parse_entities_file(b"[]").unwrap(), vec![]);
        // A newer Agent's prefixes, and one no Agent has yet.
        let newer = parse_entities_file(
            br#"[{"id": "kubernetes_resource_claim://ns/gpu"},
                 {"id": "kubernetes_future_thing://ns/a", "low": ["l"]}]"#,
        )
        .unwrap();
        assert!(newer[0].id.has_known_prefix());
        assert_eq!(newer[1].id.prefix(), "kubernetes_future_thing");
        assert_eq!(newer[1].low, ["l"]);
    }

    #[test]
    fn reports_what_is_wrong() {
        let error = |bytes: &[u8]| parse_entities_file(bytes).unwrap_err().to_string();
        let json = error(b"[{\"id\": \"host://a\",\n  \"low\": [1]}]");
        assert!(json.contains("line 2 column"), "{json}");
        let unknown_field = error(br#"[{"id": "host://a", "hihg": []}]"#);
        assert!(unknown_field.contains("hihg"), "{unknown_field}");
        // Found by the entities_file fuzz target: the name is quoted raw.
        let control_chars = error(b"[{\"co\\nnt\\u0000\": []}]");
        assert!(control_chars.contains(r"co\nnt\u{0}"), "{control_chars}");
        let bad_id = error(br#"[{"id": "host://a"}, {"id": "pod:x"}]"#);
        assert!(
            bad_id.contains("entity #2") && bad_id.contains("pod:x"),
            "{bad_id}"
        );
        let empty_uid = error(br#"[{"id": "kubernetes_future_thing://"}]"#);
        assert!(empty_uid.contains("empty uid"), "{empty_uid}");
        let duplicate = error(br#"[{"id": "host://a"}, {"id": "host://a", "low": ["x"]}]"#);
        assert!(
            duplicate.contains("\"host://a\" appears more than once"),
            "{duplicate}"
        );
        assert!(error(b"{}").contains("invalid JSON"));
        assert!(error(b"\xff\xfe").contains("invalid JSON"));
        assert!(error(&b"[".repeat(100_000)).contains("invalid JSON"));
    }

    #[test]
    fn diff_produces_added_modified_deleted() {
        let entity = |id: &str, low: &str| {
            let mut e = Entity::new(EntityId::parse(id).unwrap());
            e.low = vec![low.to_owned()];
            (e.id.clone(), e)
        };
        let previous = BTreeMap::from([
            entity("host://kept", "x"),
            entity("host://changed", "x"),
            entity("host://gone", "x"),
        ]);
        let next = BTreeMap::from([
            entity("host://kept", "x"),
            entity("host://changed", "y"),
            entity("host://new", "x"),
        ]);
        let events = diff_entities(&previous, &next);
        assert_eq!(
            events,
            [
                EntityEvent::Deleted(EntityId::parse("host://gone").unwrap()),
                EntityEvent::Modified(next[&EntityId::parse("host://changed").unwrap()].clone()),
                EntityEvent::Added(next[&EntityId::parse("host://new").unwrap()].clone()),
            ]
        );
    }

    #[tokio::test]
    async fn watcher_reloads_changes_and_keeps_the_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entities.json");
        std::fs::write(&path, r#"[{"id": "host://a"}]"#).unwrap();
        let (mut watcher, initial) = EntitiesFileWatcher::open(&path).await.unwrap();
        assert!(
            matches!(initial.as_slice(), [EntityEvent::Added(e)] if e.id.as_str() == "host://a")
        );
        assert!(watcher.poll().await.is_empty(), "unchanged file, no events");

        std::fs::write(&path, r#"[{"id": "host://a"}, {"id": "host://bb"}, "#).unwrap();
        assert!(watcher.poll().await.is_empty(), "broken file, no events");
        assert!(watcher.reported_problem.is_some());

        std::fs::write(&path, r#"[{"id": "host://bb"}]"#).unwrap();
        let events = watcher.poll().await;
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(watcher.reported_problem.is_none());

        std::fs::remove_file(&path).unwrap();
        assert!(watcher.poll().await.is_empty());
        std::fs::write(&path, r#"[{"id": "host://bb"}]"#).unwrap();
        assert!(
            watcher.poll().await.is_empty(),
            "same contents as the last good state"
        );
    }

    #[tokio::test]
    async fn open_fails_on_a_missing_or_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entities.json");
        let missing = EntitiesFileWatcher::open(&path)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("entities.json") && missing.contains("cannot read"),
            "{missing}"
        );
        std::fs::write(&path, "[").unwrap();
        let invalid = EntitiesFileWatcher::open(&path)
            .await
            .unwrap_err()
            .to_string();
        assert!(invalid.contains("invalid JSON"), "{invalid}");
    }
}
