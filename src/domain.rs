//! Domain types: what the tagger is about, independent of the wire format.
//!
//! The generated types of [`crate::proto`] accept anything the wire carries;
//! the conversions here reject what is malformed with a typed [`DomainError`]
//! instead of panicking, so one bad event never takes a process down.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::proto::model as pb;

/// Entity-ID prefixes the Datadog Agent knows, in the order its
/// `EntityIDPrefix` constants are declared in DataDog/datadog-agent
/// `comp/core/tagger/types/entity_id.go` (commit 8e877fa3ba32, late 2026).
/// Entities of any other well-formed prefix are kept too (a newer Agent
/// adds prefixes over time): see [`EntityId::has_known_prefix`].
pub const KNOWN_PREFIXES: &[&str] = &[
    "container_id",
    "container_image_metadata",
    "ecs_task",
    "host",
    "deployment",
    "kubernetes_metadata",
    "kubernetes_node",
    "kubernetes_kueue_queue",
    "kueue_resource_flavor",
    "kueue_workload",
    "kubernetes_resource_claim",
    "kubernetes_resource_slice",
    "kubernetes_capabilities",
    "kubernetes_pod_uid",
    "process",
    "internal",
    "gpu",
    "kubelet",
    "crd",
];

/// The prefix index of an id whose prefix is not in [`KNOWN_PREFIXES`].
pub const OTHER_PREFIX: u8 = {
    assert!(
        KNOWN_PREFIXES.len() < 127,
        "prefix indexes and ranks fit a byte"
    );
    KNOWN_PREFIXES.len() as u8
};

/// Separator between prefix and uid in the text form of an [`EntityId`].
const ID_SEPARATOR: &str = "://";

/// Why a wire value or a text could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("entity has no id")]
    MissingId,
    #[error("event has no entity")]
    MissingEntity,
    #[error("entity id has an empty prefix")]
    EmptyPrefix,
    #[error("entity id {0:?} has an empty uid")]
    EmptyUid(String),
    #[error("entity id prefix {0:?} holds the separator \"://\"")]
    SeparatorInPrefix(String),
    #[error("entity id {0:?} is not of the form prefix://uid")]
    MalformedId(String),
    #[error("unknown event type {0}")]
    UnknownEventType(i32),
    #[error("event is not a valid StreamTagsEvent message (bad encoding or UTF-8)")]
    MalformedEvent,
    #[error("unknown cardinality {0}")]
    UnknownCardinality(i32),
    #[error("invalid cardinality {0:?} (expected low, orchestrator or high)")]
    InvalidCardinalityName(String),
}

impl DomainError {
    /// A short stable label, for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingId => "missing_id",
            Self::MissingEntity => "missing_entity",
            Self::EmptyPrefix => "empty_prefix",
            Self::EmptyUid(_) => "empty_uid",
            Self::SeparatorInPrefix(_) => "separator_in_prefix",
            Self::MalformedId(_) => "malformed_id",
            Self::UnknownEventType(_) => "unknown_event_type",
            Self::MalformedEvent => "malformed_event",
            Self::UnknownCardinality(_) | Self::InvalidCardinalityName(_) => "unknown_cardinality",
        }
    }
}

/// How much of an entity's tags a query or a subscription wants. Ordered:
/// `Low < Orchestrator < High`, each including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum Cardinality {
    Low,
    Orchestrator,
    #[default]
    High,
}

impl Cardinality {
    pub const ALL: [Cardinality; 3] = [Self::Low, Self::Orchestrator, Self::High];

    /// The lowercase name used on the command line, in JSON and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Orchestrator => "orchestrator",
            Self::High => "high",
        }
    }

    pub fn to_proto(self) -> pb::TagCardinality {
        match self {
            Self::Low => pb::TagCardinality::Low,
            Self::Orchestrator => pb::TagCardinality::Orchestrator,
            Self::High => pb::TagCardinality::High,
        }
    }

    /// Converts a wire value, rejecting numbers the protocol does not define.
    pub fn from_proto(value: i32) -> Result<Self, DomainError> {
        match pb::TagCardinality::try_from(value) {
            Ok(pb::TagCardinality::Low) => Ok(Self::Low),
            Ok(pb::TagCardinality::Orchestrator) => Ok(Self::Orchestrator),
            Ok(pb::TagCardinality::High) => Ok(Self::High),
            Err(_) => Err(DomainError::UnknownCardinality(value)),
        }
    }
}

impl fmt::Display for Cardinality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Cardinality {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| DomainError::InvalidCardinalityName(s.to_owned()))
    }
}

/// The position of `prefix` in [`KNOWN_PREFIXES`], if it is one (a `match`,
/// not a scan: this runs for every event received and every query).
pub fn known_prefix_index(prefix: &str) -> Option<u8> {
    Some(match prefix {
        "container_id" => 0,
        "container_image_metadata" => 1,
        "ecs_task" => 2,
        "host" => 3,
        "deployment" => 4,
        "kubernetes_metadata" => 5,
        "kubernetes_node" => 6,
        "kubernetes_kueue_queue" => 7,
        "kueue_resource_flavor" => 8,
        "kueue_workload" => 9,
        "kubernetes_resource_claim" => 10,
        "kubernetes_resource_slice" => 11,
        "kubernetes_capabilities" => 12,
        "kubernetes_pod_uid" => 13,
        "process" => 14,
        "internal" => 15,
        "gpu" => 16,
        "kubelet" => 17,
        "crd" => 18,
        _ => return None,
    })
}

/// An entity's identity, `prefix://uid`: a non-empty prefix without the
/// separator (anything else, so that the text form splits back into the same
/// parts) and a non-empty uid. Cheap to clone (one shared allocation). The
/// prefix's position in [`KNOWN_PREFIXES`] (or [`OTHER_PREFIX`]) is kept, so
/// splitting a known id never searches and the mirror gets its key without
/// matching the prefix text.
#[derive(Clone)]
pub struct EntityId {
    text: Arc<str>,
    prefix_index: u8,
}

// Identity is the text alone (the prefix index follows from it), and must
// hash and compare like `str` for `Borrow<str>` lookups.
impl PartialEq for EntityId {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for EntityId {}

impl PartialOrd for EntityId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EntityId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for EntityId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EntityId {
    /// Builds an id from its parts, validating both.
    pub fn new(prefix: &str, uid: &str) -> Result<Self, DomainError> {
        let prefix_index = Self::validate(prefix, uid)?;
        let mut text = String::with_capacity(prefix.len() + ID_SEPARATOR.len() + uid.len());
        text.push_str(prefix);
        text.push_str(ID_SEPARATOR);
        text.push_str(uid);
        Ok(Self {
            text: Arc::from(text),
            prefix_index,
        })
    }

    /// Parses the text form `prefix://uid`; the first separator splits.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let (prefix, uid) = text
            .split_once(ID_SEPARATOR)
            .ok_or_else(|| DomainError::MalformedId(text.to_owned()))?;
        let prefix_index = Self::validate(prefix, uid)?;
        Ok(Self {
            text: Arc::from(text),
            prefix_index,
        })
    }

    /// The prefix's index ([`OTHER_PREFIX`] if it is not a known one), if
    /// both parts are valid.
    fn validate(prefix: &str, uid: &str) -> Result<u8, DomainError> {
        if prefix.is_empty() {
            return Err(DomainError::EmptyPrefix);
        }
        if uid.is_empty() {
            return Err(DomainError::EmptyUid(prefix.to_owned()));
        }
        if let Some(index) = known_prefix_index(prefix) {
            return Ok(index);
        }
        // Joined, such a prefix would split elsewhere: `a://b` + `c` would
        // read back as `a` + `b://c`, another entity.
        if prefix.contains(ID_SEPARATOR) {
            return Err(DomainError::SeparatorInPrefix(prefix.to_owned()));
        }
        Ok(OTHER_PREFIX)
    }

    fn prefix_len(&self) -> usize {
        match KNOWN_PREFIXES.get(usize::from(self.prefix_index)) {
            Some(known) => known.len(),
            // Valid ids hold the separator, and the prefix holds none.
            None => self.text.find(ID_SEPARATOR).unwrap_or_default(),
        }
    }

    /// The text form, `prefix://uid`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn prefix(&self) -> &str {
        &self.text[..self.prefix_len()]
    }

    pub fn uid(&self) -> &str {
        &self.text[self.prefix_len() + ID_SEPARATOR.len()..]
    }

    /// The position of the prefix in [`KNOWN_PREFIXES`], or [`OTHER_PREFIX`].
    pub fn prefix_index(&self) -> u8 {
        self.prefix_index
    }

    /// Whether the prefix is one of [`KNOWN_PREFIXES`]. Any other prefix is
    /// one a newer Agent added: its entities are stored, queried and served
    /// like the others, and counted (`tagger_unknown_prefix_entities`).
    pub fn has_known_prefix(&self) -> bool {
        self.prefix_index != OTHER_PREFIX
    }

    /// Splits the text form `prefix://uid` into the index of its prefix
    /// ([`OTHER_PREFIX`] if it is not a known one) and its uid, without
    /// allocating; `None` if it is not a valid id. Agrees with
    /// [`parse`](Self::parse).
    pub fn split(text: &str) -> Option<(u8, &str)> {
        // A byte search, not `split_once`: this runs for every query, and a
        // known prefix has no ':' of its own.
        let colon = text.bytes().position(|byte| byte == b':')?;
        let (index, uid) = match text[colon..].strip_prefix(ID_SEPARATOR) {
            Some(uid) if colon > 0 => {
                let prefix = &text[..colon];
                (known_prefix_index(prefix).unwrap_or(OTHER_PREFIX), uid)
            }
            Some(_) => return None,
            // The prefix holds a ':' of its own, so it is not a known one.
            None => (OTHER_PREFIX, text.split_once(ID_SEPARATOR)?.1),
        };
        (!uid.is_empty()).then_some((index, uid))
    }

    pub fn to_proto(&self) -> pb::EntityId {
        pb::EntityId {
            prefix: self.prefix().to_owned(),
            uid: self.uid().to_owned(),
        }
    }

    pub fn from_proto(id: &pb::EntityId) -> Result<Self, DomainError> {
        Self::new(&id.prefix, &id.uid)
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId({})", self.text)
    }
}

impl std::borrow::Borrow<str> for EntityId {
    fn borrow(&self) -> &str {
        &self.text
    }
}

/// An entity with its four tag lists, as the store holds it (full cardinality).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    pub id: EntityId,
    pub low: Vec<String>,
    pub orchestrator: Vec<String>,
    pub high: Vec<String>,
    pub standard: Vec<String>,
}

impl Entity {
    /// An entity with no tags.
    pub fn new(id: EntityId) -> Self {
        Self {
            id,
            low: Vec::new(),
            orchestrator: Vec::new(),
            high: Vec::new(),
            standard: Vec::new(),
        }
    }

    pub fn as_ref(&self) -> EntityRef<'_, String> {
        EntityRef {
            id: &self.id,
            low: &self.low,
            orchestrator: &self.orchestrator,
            high: &self.high,
            standard: &self.standard,
        }
    }

    /// This entity as a subscriber of `cardinality` sees it, borrowed:
    /// ORCHESTRATOR drops the high tags, LOW drops the high and orchestrator
    /// tags. Every reduced form (owned, proto, encoded) derives from this.
    pub fn as_reduced(&self, cardinality: Cardinality) -> EntityRef<'_, String> {
        let kept = |wanted: Cardinality, tags| if cardinality >= wanted { tags } else { &[][..] };
        EntityRef {
            high: kept(Cardinality::High, &self.high[..]),
            orchestrator: kept(Cardinality::Orchestrator, &self.orchestrator[..]),
            ..self.as_ref()
        }
    }

    /// [`as_reduced`](Self::as_reduced), owned.
    pub fn reduced(&self, cardinality: Cardinality) -> Self {
        let reduced = self.as_reduced(cardinality);
        Self {
            id: self.id.clone(),
            low: reduced.low.to_vec(),
            orchestrator: reduced.orchestrator.to_vec(),
            high: reduced.high.to_vec(),
            standard: reduced.standard.to_vec(),
        }
    }

    /// The tags a query of `cardinality` returns: low, then orchestrator, then
    /// high, in that order, neither deduplicated nor sorted.
    pub fn tags(&self, cardinality: Cardinality) -> Vec<String> {
        let mut tags = self.low.clone();
        if cardinality >= Cardinality::Orchestrator {
            tags.extend_from_slice(&self.orchestrator);
        }
        if cardinality >= Cardinality::High {
            tags.extend_from_slice(&self.high);
        }
        tags
    }

    pub fn to_proto(&self) -> pb::Entity {
        self.to_proto_reduced(Cardinality::High)
    }

    /// The wire form of [`reduced`](Self::reduced), copying each kept tag once.
    pub fn to_proto_reduced(&self, cardinality: Cardinality) -> pb::Entity {
        let reduced = self.as_reduced(cardinality);
        pb::Entity {
            id: Some(self.id.to_proto()),
            hash: String::new(),
            high_cardinality_tags: reduced.high.to_vec(),
            orchestrator_cardinality_tags: reduced.orchestrator.to_vec(),
            low_cardinality_tags: reduced.low.to_vec(),
            standard_tags: reduced.standard.to_vec(),
        }
    }

    /// Converts a wire entity, taking its tag lists without copying them.
    pub fn from_proto(entity: pb::Entity) -> Result<Self, DomainError> {
        let id = entity.id.as_ref().ok_or(DomainError::MissingId)?;
        Ok(Self {
            id: EntityId::from_proto(id)?,
            low: entity.low_cardinality_tags,
            orchestrator: entity.orchestrator_cardinality_tags,
            high: entity.high_cardinality_tags,
            standard: entity.standard_tags,
        })
    }
}

/// An entity's id and tag lists, borrowed from an [`Entity`] (`S` =
/// `String`) or from a received message (`S` = `&str`): what the mirror needs
/// to store an entity, whoever owns the strings.
#[derive(Debug, Clone, Copy)]
pub struct EntityRef<'a, S> {
    pub id: &'a EntityId,
    pub low: &'a [S],
    pub orchestrator: &'a [S],
    pub high: &'a [S],
    pub standard: &'a [S],
}

/// One change of the store, as carried by a `StreamTagsEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityEvent {
    Added(Entity),
    Modified(Entity),
    /// DELETED carries the id only.
    Deleted(EntityId),
}

impl EntityEvent {
    pub fn id(&self) -> &EntityId {
        match self {
            Self::Added(entity) | Self::Modified(entity) => &entity.id,
            Self::Deleted(id) => id,
        }
    }

    /// The wire form of this event as a subscriber of `cardinality` sees it.
    pub fn to_proto(&self, cardinality: Cardinality) -> pb::StreamTagsEvent {
        let (kind, entity) = match self {
            Self::Added(entity) => (pb::EventType::Added, entity.to_proto_reduced(cardinality)),
            Self::Modified(entity) => (
                pb::EventType::Modified,
                entity.to_proto_reduced(cardinality),
            ),
            Self::Deleted(id) => (
                pb::EventType::Deleted,
                pb::Entity {
                    id: Some(id.to_proto()),
                    ..Default::default()
                },
            ),
        };
        pb::StreamTagsEvent {
            r#type: kind as i32,
            entity: Some(entity),
        }
    }

    /// Converts a wire event. DELETED keeps only the id, whatever else it carries.
    pub fn from_proto(event: pb::StreamTagsEvent) -> Result<Self, DomainError> {
        let entity = event.entity.ok_or(DomainError::MissingEntity)?;
        match pb::EventType::try_from(event.r#type) {
            Ok(pb::EventType::Added) => Ok(Self::Added(Entity::from_proto(entity)?)),
            Ok(pb::EventType::Modified) => Ok(Self::Modified(Entity::from_proto(entity)?)),
            Ok(pb::EventType::Deleted) => {
                let id = entity.id.as_ref().ok_or(DomainError::MissingId)?;
                Ok(Self::Deleted(EntityId::from_proto(id)?))
            }
            Err(_) => Err(DomainError::UnknownEventType(event.r#type)),
        }
    }
}

/// The events that turn the entity set `previous` into `next`: what a
/// source that sees whole states (the host's scans, the relay's mirror)
/// applies to the store.
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

/// An event the mirror can apply: an owned [`EntityEvent`], or a
/// [`DecodedEvent`](crate::wire::DecodedEvent) whose strings borrow a
/// received message (so applying it allocates only what the mirror keeps).
pub trait MirrorEvent {
    type Tag: AsRef<str>;

    fn id(&self) -> &EntityId;

    /// The entity an upsert (ADDED or MODIFIED) stores; `None` for DELETED.
    fn upserted(&self) -> Option<EntityRef<'_, Self::Tag>>;
}

impl MirrorEvent for EntityEvent {
    type Tag = String;

    fn id(&self) -> &EntityId {
        EntityEvent::id(self)
    }

    fn upserted(&self) -> Option<EntityRef<'_, String>> {
        match self {
            Self::Added(entity) | Self::Modified(entity) => Some(entity.as_ref()),
            Self::Deleted(_) => None,
        }
    }
}

/// Entity hash as the Datadog Agent computes it: FNV-1 (not 1a) 64-bit over
/// the sorted tags concatenated with no separator, lowercase hex; no tags ->
/// the empty string.
pub fn entity_hash<S: AsRef<str>>(tags: &[S]) -> String {
    if tags.is_empty() {
        return String::new();
    }
    let mut sorted: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = sorted
        .iter()
        .flat_map(|tag| tag.bytes())
        .fold(OFFSET_BASIS, |hash, byte| {
            hash.wrapping_mul(PRIME) ^ u64::from(byte)
        });
    format!("{hash:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_indexes_are_positions_in_known_prefixes_and_none_prefixes_another() {
        for (position, prefix) in KNOWN_PREFIXES.iter().enumerate() {
            assert_eq!(known_prefix_index(prefix), Some(position as u8));
            // The mirror orders ids of known prefixes by (prefix, uid), which
            // is their text order only while no prefix starts another.
            for other in KNOWN_PREFIXES.iter().filter(|other| *other != prefix) {
                assert!(!other.starts_with(prefix), "{other} starts with {prefix}");
            }
            assert!(!prefix.contains(':'), "split() relies on it: {prefix}");
        }
        assert_eq!(known_prefix_index("unknown"), None);
        assert_eq!(EntityId::split("process://12"), Some((14, "12")));
        assert_eq!(EntityId::split("process://"), None);
        assert_eq!(EntityId::split("process:12"), None);
        assert_eq!(EntityId::split("://12"), None);
        assert_eq!(EntityId::split("nope://12"), Some((OTHER_PREFIX, "12")));
        assert_eq!(EntityId::split("a:b://c"), Some((OTHER_PREFIX, "c")));
        assert_eq!(EntityId::split("process:x://y"), Some((OTHER_PREFIX, "y")));
    }

    #[test]
    fn entity_id_round_trips_and_rejects_malformed() {
        let id = EntityId::parse("container_id://abc").unwrap();
        assert_eq!((id.prefix(), id.uid()), ("container_id", "abc"));
        assert!(id.has_known_prefix());
        assert_eq!(EntityId::from_proto(&id.to_proto()).unwrap(), id);
        assert_eq!(EntityId::new("", "x"), Err(DomainError::EmptyPrefix));
        assert_eq!(
            EntityId::new("process", ""),
            Err(DomainError::EmptyUid("process".into()))
        );
        assert_eq!(
            EntityId::parse("pod://"),
            Err(DomainError::EmptyUid("pod".into()))
        );
        assert_eq!(
            EntityId::new("a://b", "c"),
            Err(DomainError::SeparatorInPrefix("a://b".into()))
        );
        assert_eq!(
            EntityId::parse("process:12"),
            Err(DomainError::MalformedId("process:12".into()))
        );
        // A uid may itself hold the separator: only the first one splits.
        assert_eq!(EntityId::parse("host://a://b").unwrap().uid(), "a://b");
    }

    #[test]
    fn ids_of_prefixes_outside_the_table_are_kept_whole() {
        for (prefix, uid) in [
            ("kubernetes_future_thing", "ns/name"),
            ("pod", "x://y"),
            ("a:b", "c"),
            ("a:", "/c"),
            ("é", "ü"),
            ("host ", "x"),
        ] {
            let id = EntityId::new(prefix, uid).unwrap();
            assert_eq!(id.as_str(), format!("{prefix}://{uid}"));
            assert_eq!((id.prefix(), id.uid()), (prefix, uid), "{id:?}");
            assert!(!id.has_known_prefix());
            assert_eq!(id.prefix_index(), OTHER_PREFIX);
            assert_eq!(EntityId::parse(id.as_str()), Ok(id.clone()));
            assert_eq!(EntityId::from_proto(&id.to_proto()), Ok(id.clone()));
            assert_eq!(EntityId::split(id.as_str()), Some((OTHER_PREFIX, uid)));
        }
    }

    proptest::proptest! {
        /// `split` (the mirror's allocation-free path) and `parse` agree on
        /// what is an id and on its parts, whatever the text.
        #[test]
        fn split_agrees_with_parse(text in "[a-c:/_é]{0,12}") {
            let parsed = EntityId::parse(&text);
            let split = EntityId::split(&text);
            proptest::prop_assert_eq!(
                split,
                parsed.as_ref().ok().map(|id| (id.prefix_index(), id.uid()))
            );
            if let Ok(id) = parsed {
                proptest::prop_assert_eq!(EntityId::new(id.prefix(), id.uid()), Ok(id.clone()));
            }
        }
    }

    #[test]
    fn cardinality_conversions_reject_unknown_values() {
        for c in Cardinality::ALL {
            assert_eq!(Cardinality::from_proto(c.to_proto() as i32), Ok(c));
            assert_eq!(c.as_str().parse::<Cardinality>(), Ok(c));
        }
        assert_eq!(
            Cardinality::from_proto(3),
            Err(DomainError::UnknownCardinality(3))
        );
        assert_eq!(
            Cardinality::from_proto(-1),
            Err(DomainError::UnknownCardinality(-1))
        );
        assert!("none".parse::<Cardinality>().is_err());
    }

    #[test]
    fn event_conversion_rejects_malformed_events() {
        let missing_entity = pb::StreamTagsEvent {
            r#type: 0,
            entity: None,
        };
        assert_eq!(
            EntityEvent::from_proto(missing_entity),
            Err(DomainError::MissingEntity)
        );
        let missing_id = pb::StreamTagsEvent {
            r#type: 0,
            entity: Some(pb::Entity::default()),
        };
        assert_eq!(
            EntityEvent::from_proto(missing_id),
            Err(DomainError::MissingId)
        );
        let id = EntityId::parse("process://1").unwrap();
        let bad_type = pb::StreamTagsEvent {
            r#type: 7,
            entity: Some(Entity::new(id.clone()).to_proto()),
        };
        assert_eq!(
            EntityEvent::from_proto(bad_type),
            Err(DomainError::UnknownEventType(7))
        );
        let mut entity = Entity::new(id.clone());
        entity.high = vec!["h".into()];
        let deleted = EntityEvent::Deleted(id.clone()).to_proto(Cardinality::High);
        assert_eq!(
            EntityEvent::from_proto(deleted),
            Ok(EntityEvent::Deleted(id))
        );
        let added = EntityEvent::Added(entity.clone());
        assert_eq!(
            EntityEvent::from_proto(added.to_proto(Cardinality::High)),
            Ok(added)
        );
    }

    #[test]
    fn reduction_and_tag_order_follow_the_spec() {
        let mut entity = Entity::new(EntityId::parse("process://1").unwrap());
        entity.low = vec!["l".into()];
        entity.orchestrator = vec!["o".into()];
        entity.high = vec!["h".into()];
        entity.standard = vec!["s".into()];
        assert_eq!(entity.tags(Cardinality::High), ["l", "o", "h"]);
        assert_eq!(entity.tags(Cardinality::Orchestrator), ["l", "o"]);
        assert_eq!(entity.tags(Cardinality::Low), ["l"]);
        let low = entity.reduced(Cardinality::Low);
        assert!(low.orchestrator.is_empty() && low.high.is_empty());
        assert_eq!(low.standard, ["s"]);
        for c in Cardinality::ALL {
            assert_eq!(entity.to_proto_reduced(c), entity.reduced(c).to_proto());
        }
    }

    #[test]
    fn entity_hash_is_fnv1_over_sorted_tags() {
        assert_eq!(entity_hash::<&str>(&[]), "");
        // FNV-1 64 of "a" is 0xaf63bd4c8601b7be; sorting makes order irrelevant.
        assert_eq!(entity_hash(&["a"]), "af63bd4c8601b7be");
        assert_eq!(entity_hash(&["b", "a"]), entity_hash(&["a", "b"]));
        assert_eq!(entity_hash(&["b", "a"]), entity_hash(&["ab"]));
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
}
