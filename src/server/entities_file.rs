//! The `--entities FILE` source: a JSON list of entities, re-read when it
//! changes; the store is kept holding what the file holds.
//!
//! ```json
//! [{"id": "container_id://abc", "low": ["image:nginx"], "orchestrator": [],
//!   "high": ["container_id:abc"], "standard": ["env:prod"]}]
//! ```
//!
//! Missing (or null) tag lists are empty. A file that does not parse, or is
//! larger than the limit (`--entities-max-bytes`), is reported once, in one
//! line, and the last good state stays served: a half-saved edit never
//! empties the store.
//!
//! A large file must not stop the server: it is streamed (never held in
//! memory as text), parsed on a blocking thread, and applied to the store in
//! batches of [`APPLY_BATCH`] events, each under a short lock.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::hub::StoreHandle;
use super::stats::increment;
use super::store::PrefixFilter;
use crate::domain::{DomainError, Entity, EntityEvent, EntityId};

/// Why an entities file cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntitiesFileError {
    /// serde's message, which ends with the line and column.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// An element that is not an entity (bad JSON inside it, a field of the
    /// wrong type, an unknown field): serde's message, with the line and
    /// column.
    #[error("entity #{position}: {reason}")]
    InvalidEntity {
        /// 1-based position in the list.
        position: usize,
        reason: String,
    },
    #[error("entity #{position} has an invalid id {id:?}: {reason}")]
    InvalidId {
        position: usize,
        id: String,
        reason: DomainError,
    },
    #[error("entity #{position}: id {id:?} appears more than once")]
    DuplicateId { position: usize, id: String },
    #[error("cannot read it: {0}")]
    Unreadable(String),
    #[error(
        "{size} bytes, over the --entities-max-bytes limit of {limit} bytes; raise the limit or shrink the file"
    )]
    TooLarge { size: u64, limit: u64 },
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

/// Parses an entities file held in memory into its entities by id. Never
/// panics, whatever the bytes: invalid UTF-8, bad JSON, unknown fields (a
/// misspelled list name would otherwise drop its tags silently), invalid or
/// duplicate ids are all errors.
pub fn parse_entities_file(bytes: &[u8]) -> Result<BTreeMap<EntityId, Entity>, EntitiesFileError> {
    parse(serde_json::Deserializer::from_slice(bytes))
}

/// [`parse_entities_file`], streamed from `reader` (give it a buffered one):
/// the list is read element by element, each turned into an [`Entity`] at
/// once, so the only copy of the file in memory is its entities.
pub fn read_entities_file(
    reader: impl Read,
) -> Result<BTreeMap<EntityId, Entity>, EntitiesFileError> {
    parse(serde_json::Deserializer::from_reader(reader))
}

fn parse<'de, R: serde_json::de::Read<'de>>(
    mut deserializer: serde_json::Deserializer<R>,
) -> Result<BTreeMap<EntityId, Entity>, EntitiesFileError> {
    let mut list = EntityList::default();
    let parsed = (&mut list)
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    match (parsed, list.rejected) {
        (Err(error), _) if error.is_io() => Err(EntitiesFileError::Unreadable(error.to_string())),
        (_, Some(rejected)) => Err(rejected),
        (Err(error), None) => Err(EntitiesFileError::Json(escape_control_chars(
            &error.to_string(),
        ))),
        (Ok(()), None) => Ok(list.entities),
    }
}

/// Visits the top-level list, turning each element into an entity as it is
/// read. The first element it refuses is kept in `rejected`, typed: serde
/// only carries the message of an error.
#[derive(Default)]
struct EntityList {
    entities: BTreeMap<EntityId, Entity>,
    rejected: Option<EntitiesFileError>,
}

impl EntityList {
    /// Keeps `error` and stops the parse.
    fn reject<E: serde::de::Error>(&mut self, error: EntitiesFileError) -> E {
        self.rejected = Some(error);
        E::custom("an entity was rejected")
    }

    fn insert(&mut self, position: usize, record: EntityRecord) -> Result<(), EntitiesFileError> {
        let id = EntityId::parse(&record.id).map_err(|reason| EntitiesFileError::InvalidId {
            position,
            id: record.id.clone(),
            reason,
        })?;
        match self.entities.entry(id) {
            Entry::Occupied(_) => Err(EntitiesFileError::DuplicateId {
                position,
                id: record.id,
            }),
            Entry::Vacant(slot) => {
                let id = slot.key().clone();
                slot.insert(Entity {
                    id,
                    low: record.low.unwrap_or_default(),
                    orchestrator: record.orchestrator.unwrap_or_default(),
                    high: record.high.unwrap_or_default(),
                    standard: record.standard.unwrap_or_default(),
                });
                Ok(())
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for &mut EntityList {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for &mut EntityList {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a list of entities")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut elements: A) -> Result<(), A::Error> {
        let mut position = 0;
        loop {
            position += 1;
            let record = match elements.next_element::<EntityRecord>() {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(()),
                Err(error) => {
                    let reason = escape_control_chars(&error.to_string());
                    return Err(self.reject(EntitiesFileError::InvalidEntity { position, reason }));
                }
            };
            if let Err(rejected) = self.insert(position, record) {
                return Err(self.reject(rejected));
            }
        }
    }
}

/// Writes `entities` as an entities file, one entity per line: the inverse
/// of [`read_entities_file`], for tools, tests and benchmarks.
pub fn write_entities_file<'a>(
    mut out: impl Write,
    entities: impl IntoIterator<Item = &'a Entity>,
) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Record<'a> {
        id: &'a str,
        low: &'a [String],
        orchestrator: &'a [String],
        high: &'a [String],
        standard: &'a [String],
    }
    out.write_all(b"[")?;
    for (index, entity) in entities.into_iter().enumerate() {
        out.write_all(if index == 0 { b"\n" } else { b",\n" })?;
        let record = Record {
            id: entity.id.as_str(),
            low: &entity.low,
            orchestrator: &entity.orchestrator,
            high: &entity.high,
            standard: &entity.standard,
        };
        serde_json::to_writer(&mut out, &record)?;
    }
    out.write_all(b"\n]\n")
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

/// Reads and parses the file at `path`, refusing one of more than
/// `max_bytes`.
fn load(path: &Path, max_bytes: u64) -> Result<BTreeMap<EntityId, Entity>, EntitiesFileError> {
    let unreadable = |error: std::io::Error| EntitiesFileError::Unreadable(error.to_string());
    let file = File::open(path).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    if size > max_bytes {
        return Err(EntitiesFileError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    read_at_most(&file, max_bytes).map_err(|error| match error {
        // It grew while it was read: its size now.
        EntitiesFileError::TooLarge { size, limit } => EntitiesFileError::TooLarge {
            size: file.metadata().map_or(size, |now| now.len().max(size)),
            limit,
        },
        other => other,
    })
}

/// [`read_entities_file`] of at most `max_bytes` of `reader`: a byte more is
/// [`EntitiesFileError::TooLarge`] (with `size` the bytes read, a lower
/// bound), whatever the parse made of the bytes before.
fn read_at_most(
    reader: impl Read,
    max_bytes: u64,
) -> Result<BTreeMap<EntityId, Entity>, EntitiesFileError> {
    let bound = max_bytes.saturating_add(1);
    let mut limited = reader.take(bound);
    let parsed = read_entities_file(BufReader::with_capacity(READ_BUFFER, &mut limited));
    if limited.limit() == 0 {
        return Err(EntitiesFileError::TooLarge {
            size: bound,
            limit: max_bytes,
        });
    }
    parsed
}

/// The read buffer of an entities file.
const READ_BUFFER: usize = 64 * 1024;

/// Events applied to the store under one lock: a reload of a large file
/// takes many locks, and fetches and new subscriptions get the store between
/// them. Each effective batch is one entry in every subscriber's buffer
/// (1,000 by default), so a subscriber still sending its snapshot survives
/// a reload of a million changes.
const APPLY_BATCH: usize = 1024;

/// Applies a valid file to `store`: the entities of `previous` (the last
/// good file's ids) it no longer has are deleted, and every entity of the
/// file is applied as MODIFIED, which the store drops when it has those
/// tags already (see [`super::Store::apply`]); in batches of
/// [`APPLY_BATCH`]. Returns the ids of the file and the number of effective
/// changes.
fn apply_file(
    store: &StoreHandle,
    previous: &BTreeSet<EntityId>,
    entities: BTreeMap<EntityId, Entity>,
) -> (BTreeSet<EntityId>, usize) {
    let ids: BTreeSet<EntityId> = entities.keys().cloned().collect();
    let gone = previous.difference(&ids).cloned().map(EntityEvent::Deleted);
    let mut events = gone
        .chain(entities.into_values().map(EntityEvent::Modified))
        .peekable();
    let mut changes = 0;
    while events.peek().is_some() {
        changes += store.apply(events.by_ref().take(APPLY_BATCH));
    }
    // Ends its borrow of `ids`.
    drop(events);
    (ids, changes)
}

/// Why the entities file could not be loaded at startup.
#[derive(Debug, thiserror::Error)]
#[error("entities file {}: {reason}", path.display())]
pub struct EntitiesFileLoadError {
    pub path: PathBuf,
    pub reason: EntitiesFileError,
}

/// Size and modification time: a cheap test for "the file may have changed"
/// before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

/// Follows one entities file and keeps the store holding its entities: each
/// valid change is applied, a broken file leaves the last good state.
#[derive(Debug)]
pub struct EntitiesFileWatcher {
    path: PathBuf,
    max_bytes: u64,
    /// Of the file as last read, valid or not: an unchanged file is not read
    /// again.
    fingerprint: Option<Fingerprint>,
    /// What is wrong with the file as last read, logged once when it
    /// appeared; `None` while the file is valid.
    problem: Option<EntitiesFileError>,
    /// The ids of the last good file, which the store holds: what the next
    /// one no longer has is deleted.
    ids: BTreeSet<EntityId>,
}

impl EntitiesFileWatcher {
    fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self {
            path,
            max_bytes,
            fingerprint: None,
            problem: None,
            ids: BTreeSet::new(),
        }
    }

    /// Loads `path` (at most `max_bytes` of it) into `store` for the first
    /// time. Unlike later reloads, a missing or invalid file is an error:
    /// the server would otherwise start empty. Blocks for as long as reading
    /// and parsing the file take: call it off the async reactor.
    pub fn open(
        path: impl Into<PathBuf>,
        max_bytes: u64,
        store: &StoreHandle,
    ) -> Result<Self, EntitiesFileLoadError> {
        let mut watcher = Self::new(path.into(), max_bytes);
        match watcher.check() {
            Ok(entities) => {
                if let Some(entities) = entities {
                    (watcher.ids, _) = apply_file(store, &watcher.ids, entities);
                }
                Ok(watcher)
            }
            Err(reason) => Err(EntitiesFileLoadError {
                path: watcher.path,
                reason,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file once and applies a valid change to `store`. A problem
    /// is logged and counted once, when it appears; recovery is logged only
    /// when a changed file parsed, never because a broken one stayed as it
    /// was. Returns the number of effective changes. Blocks like
    /// [`open`](Self::open).
    pub fn reload(&mut self, store: &StoreHandle) -> usize {
        match self.check() {
            Ok(None) => 0,
            Ok(Some(entities)) => {
                if self.problem.take().is_some() {
                    tracing::info!(path = %self.path.display(), "entities file is valid again");
                }
                let changes;
                (self.ids, changes) = apply_file(store, &self.ids, entities);
                if changes > 0 {
                    tracing::info!(path = %self.path.display(), changes, "entities file reloaded");
                }
                changes
            }
            Err(problem) => {
                if self.problem.as_ref() != Some(&problem) {
                    tracing::warn!(
                        "entities file {}: {problem}; keeping the last good state ({} entities)",
                        self.path.display(),
                        store.stats().store_entities
                    );
                    increment(&store.telemetry().source_errors);
                    self.problem = Some(problem);
                }
                0
            }
        }
    }

    /// Reloads every `interval`, forever, on a blocking thread: a large file
    /// takes seconds to parse, which the reactor must not wait for.
    pub async fn run(mut self, store: StoreHandle, interval: Duration) -> Infallible {
        let (path, max_bytes) = (self.path.clone(), self.max_bytes);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and `open` just read the file.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let reloading = store.clone();
            let reloaded = tokio::task::spawn_blocking(move || {
                self.reload(&reloading);
                self
            })
            .await;
            self = reloaded.unwrap_or_else(|error| {
                tracing::error!(
                    %error,
                    path = %path.display(),
                    "entities file reload failed; reading the file again at the next check"
                );
                // What the store holds now, since the reload may have
                // stopped half-way through.
                let mut fresh = Self::new(path.clone(), max_bytes);
                fresh.ids = store
                    .snapshot(&PrefixFilter::all())
                    .entities
                    .iter()
                    .map(|stored| stored.entity().id.clone())
                    .collect();
                fresh
            });
        }
    }

    /// Parses the file if it may have changed. `Ok(None)`: unchanged since
    /// the last check, valid or not.
    fn check(&mut self) -> Result<Option<BTreeMap<EntityId, Entity>>, EntitiesFileError> {
        let metadata = std::fs::metadata(&self.path).map_err(|error| {
            // Forget the fingerprint so a re-created file is read even if it
            // looks like the old one.
            self.fingerprint = None;
            EntitiesFileError::Unreadable(error.to_string())
        })?;
        let fingerprint = Fingerprint {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        };
        if self.fingerprint == Some(fingerprint) {
            return Ok(None);
        }
        // Remembered before parsing: a broken file is not parsed again (nor
        // reported again) until it changes.
        self.fingerprint = Some(fingerprint);
        load(&self.path, self.max_bytes).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::server::store::{Epoch, Store};
    use crate::workload::{Workload, WorkloadConfig};

    fn id(text: &str) -> EntityId {
        EntityId::parse(text).unwrap()
    }

    fn handle() -> StoreHandle {
        StoreHandle::new(Store::new(Epoch::from_seed(1), 100))
    }

    fn stored_ids(store: &StoreHandle) -> Vec<String> {
        store
            .snapshot(&PrefixFilter::all())
            .entities
            .iter()
            .map(|stored| stored.entity().id.to_string())
            .collect()
    }

    #[test]
    fn parses_entities_with_missing_and_null_lists() {
        let entities = parse_entities_file(
            br#"[{"id": "host://h", "orchestrator": ["o"], "standard": ["s"]},
                 {"id": "container_id://abc", "low": ["a"], "high": null}]"#,
        )
        .unwrap();
        assert_eq!(entities.len(), 2);
        let container = &entities[&id("container_id://abc")];
        assert_eq!(container.id.as_str(), "container_id://abc");
        assert_eq!(container.low, ["a"]);
        assert!(container.high.is_empty() && container.orchestrator.is_empty());
        let host = &entities[&id("host://h")];
        assert_eq!(host.orchestrator, ["o"]);
        assert_eq!(host.standard, ["s"]);
        assert_eq!(parse_entities_file(b"[]").unwrap(), BTreeMap::new());
        // A newer Agent's prefixes, and one no Agent has yet.
        let newer = parse_entities_file(
            br#"[{"id": "kubernetes_resource_claim://ns/gpu"},
                 {"id": "kubernetes_future_thing://ns/a", "low": ["l"]}]"#,
        )
        .unwrap();
        assert!(
            newer[&id("kubernetes_resource_claim://ns/gpu")]
                .id
                .has_known_prefix()
        );
        let future = &newer[&id("kubernetes_future_thing://ns/a")];
        assert_eq!(future.id.prefix(), "kubernetes_future_thing");
        assert_eq!(future.low, ["l"]);
    }

    #[test]
    fn reports_what_is_wrong_and_where() {
        let error = |bytes: &[u8]| parse_entities_file(bytes).unwrap_err().to_string();
        let wrong_type = error(b"[{\"id\": \"host://a\",\n  \"low\": [1]}]");
        assert!(
            wrong_type.starts_with("entity #1: ") && wrong_type.contains("line 2 column"),
            "{wrong_type}"
        );
        let unknown_field = error(br#"[{"id": "host://a"}, {"id": "host://b", "hihg": []}]"#);
        assert!(
            unknown_field.starts_with("entity #2: ") && unknown_field.contains("hihg"),
            "{unknown_field}"
        );
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
        assert_eq!(
            duplicate,
            r#"entity #2: id "host://a" appears more than once"#
        );
        // A malformed element: where it is in the list, and in the text.
        let malformed = error(b"[{\"id\": \"host://a\"},\n {\"id\": \"host://b\", \"low\": [}]");
        assert_eq!(malformed, "entity #2: expected value at line 2 column 29");
        let truncated = error(br#"[{"id": "host://a"}, {"id": "host://b"}, "#);
        assert!(truncated.starts_with("entity #3: EOF"), "{truncated}");
        assert!(error(b"{}").contains("invalid JSON"));
        assert!(error(b"[] []").contains("invalid JSON: trailing characters"));
        assert!(error(b"\xff\xfe").contains("invalid JSON"));
        // Deep nesting is refused at the first level it does not fit.
        assert_eq!(
            error(&b"[".repeat(100_000)),
            "entity #1: invalid type: sequence, expected a string at line 1 column 2"
        );
    }

    fn to_json<'a>(entities: impl IntoIterator<Item = &'a Entity>) -> Vec<u8> {
        let mut json = Vec::new();
        write_entities_file(&mut json, entities).unwrap();
        json
    }

    #[test]
    fn a_streamed_parse_gives_the_entities_of_the_file() {
        let workload = Workload::new(WorkloadConfig {
            entities: 2_000,
            seed: 7,
        });
        let json = to_json(workload.store().values());
        // A small buffer: elements, strings and escapes cross its refills.
        let streamed = read_entities_file(BufReader::with_capacity(7, json.as_slice())).unwrap();
        assert_eq!(&streamed, workload.store());
        assert_eq!(parse_entities_file(&json).unwrap(), streamed);
        assert_eq!(parse_entities_file(&to_json([])), Ok(BTreeMap::new()));
        // And the same errors, at the same places.
        let mut broken = json.clone();
        broken.truncate(json.len() / 2);
        assert_eq!(
            read_entities_file(BufReader::with_capacity(7, broken.as_slice())),
            parse_entities_file(&broken)
        );
    }

    /// Writes `json` as a new file (a new inode, as editors save), so the
    /// watcher sees a change even within one mtime tick if the size differs.
    fn write(path: &Path, json: &str) {
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, json).unwrap();
        std::fs::rename(&temporary, path).unwrap();
    }

    #[test]
    fn watcher_reloads_changes_and_keeps_the_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entities.json");
        let store = handle();
        write(&path, r#"[{"id": "host://a"}, {"id": "host://gone"}]"#);
        let mut watcher = EntitiesFileWatcher::open(&path, u64::MAX, &store).unwrap();
        assert_eq!(stored_ids(&store), ["host://a", "host://gone"]);
        assert_eq!(watcher.reload(&store), 0, "unchanged file");

        write(&path, r#"[{"id": "host://a"}, {"id": "host://bb"}, "#);
        assert_eq!(watcher.reload(&store), 0, "broken file");
        assert_eq!(stored_ids(&store), ["host://a", "host://gone"]);

        write(
            &path,
            r#"[{"id": "host://a"}, {"id": "host://bb", "low": ["x"]}]"#,
        );
        assert_eq!(watcher.reload(&store), 2, "gone deleted, bb added");
        assert_eq!(stored_ids(&store), ["host://a", "host://bb"]);
        let revision = store.revision();

        std::fs::remove_file(&path).unwrap();
        assert_eq!(watcher.reload(&store), 0);
        assert_eq!(stored_ids(&store), ["host://a", "host://bb"]);
        write(
            &path,
            r#"[{"id": "host://a"}, {"id": "host://bb", "low": ["x"]}]"#,
        );
        assert_eq!(
            watcher.reload(&store),
            0,
            "same contents as the last good state"
        );
        assert_eq!(store.revision(), revision);
    }

    #[test]
    fn open_fails_on_a_missing_or_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entities.json");
        let open = || {
            EntitiesFileWatcher::open(&path, u64::MAX, &handle())
                .unwrap_err()
                .to_string()
        };
        let missing = open();
        assert!(
            missing.contains("entities.json") && missing.contains("cannot read"),
            "{missing}"
        );
        std::fs::write(&path, "[").unwrap();
        let invalid = open();
        assert!(invalid.contains("entity #1: EOF"), "{invalid}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_with_its_size_and_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entities.json");
        let small = r#"[{"id": "host://a"}]"#;
        write(&path, small);
        let limit = small.len() as u64;
        let store = handle();
        let mut watcher = EntitiesFileWatcher::open(&path, limit, &store).unwrap();

        let large = r#"[{"id": "host://a"}, {"id": "host://b"}]"#;
        write(&path, large);
        assert_eq!(watcher.reload(&store), 0);
        assert_eq!(stored_ids(&store), ["host://a"], "the last good state");
        assert_eq!(
            watcher.problem,
            Some(EntitiesFileError::TooLarge {
                size: large.len() as u64,
                limit
            })
        );
        assert_eq!(store.stats().source_errors, 1);

        let refused = EntitiesFileWatcher::open(&path, limit, &handle())
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            format!(
                "entities file {}: {} bytes, over the --entities-max-bytes limit of {limit} bytes; raise the limit or shrink the file",
                path.display(),
                large.len()
            )
        );
    }

    #[test]
    fn what_is_read_stops_one_byte_past_the_limit() {
        // `load` checks the size first; this is for a file that grows
        // while it is read.
        let json = br#"[{"id": "host://a"}]  "#;
        let limit = json.len() as u64;
        assert_eq!(read_at_most(&json[..], limit).unwrap().len(), 1);
        assert_eq!(
            read_at_most(&json[..], limit - 1),
            Err(EntitiesFileError::TooLarge {
                size: limit,
                limit: limit - 1
            })
        );
    }

    /// The log lines themselves are checked by `tests/entities_file.rs`,
    /// under a global subscriber: a scoped one here would race with the
    /// other tests, which hit the same callsites on their own threads.
    #[test]
    fn a_broken_file_is_reported_once_and_valid_again_only_after_a_good_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entities.json");
        let store = handle();
        write(&path, r#"[{"id": "host://a"}]"#);
        let mut watcher = EntitiesFileWatcher::open(&path, u64::MAX, &store).unwrap();

        write(&path, r#"[{"id": "host://a"}, {"id": "host://b"}, "#);
        let broken = Some(EntitiesFileError::InvalidEntity {
            position: 3,
            reason: "EOF while parsing a value at line 1 column 41".to_owned(),
        });
        for _ in 0..5 {
            assert_eq!(watcher.reload(&store), 0);
            assert_eq!(watcher.problem, broken, "still broken");
        }
        assert_eq!(store.stats().source_errors, 1, "reported once");

        write(&path, r#"[{"id": "host://a"}, {"id": "host://b"}]"#);
        assert_eq!(watcher.reload(&store), 1);
        assert_eq!(watcher.problem, None, "valid again");
        assert_eq!(watcher.reload(&store), 0);
        assert_eq!(store.stats().source_errors, 1);
    }

    #[test]
    fn a_reload_is_applied_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entities.json");
        let store = handle();
        write(&path, "[]");
        let mut watcher = EntitiesFileWatcher::open(&path, u64::MAX, &store).unwrap();
        let (_, mut subscription) = store
            .subscribe_with_snapshot(&PrefixFilter::all(), 100)
            .unwrap();
        let count = 3 * APPLY_BATCH + 1;
        let entities: Vec<Entity> = (0..count)
            .map(|i| Entity::new(id(&format!("process://{i}"))))
            .collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&to_json(&entities))
            .unwrap();
        assert_eq!(watcher.reload(&store), count);
        let mut sizes = Vec::new();
        while let Ok(batch) = subscription.batches.try_recv() {
            sizes.push(batch.len());
        }
        assert_eq!(sizes, [APPLY_BATCH, APPLY_BATCH, APPLY_BATCH, 1]);
    }
}
