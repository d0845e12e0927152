//! The server's entity store: a pure, synchronous state machine (no I/O, no
//! async runtime), so it can be tested exhaustively and driven by a simulation.
//! It holds state; how responses are made of that state is the `frames`
//! module's business (each entity is kept with its High snapshot event
//! already encoded, see [`StoredEntity`], so that a snapshot costs a copy).
//!
//! Every effective change gets the next store revision and is kept in a
//! bounded change log; a client that reconnects to the same store instance
//! (same [`Epoch`]) with a revision still covered by the log can be sent just
//! the changes after it instead of a whole snapshot.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::domain::{Cardinality, Entity, EntityEvent, EntityId};
use crate::rng::SplitMix64;
use crate::wire::EventEncoder;

/// Identity of one store instance. A restarted server gets a new epoch, so a
/// client's revision from a previous instance is never mistaken for one of
/// this instance.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// An epoch from 64 bits of OS randomness (production: unique per start).
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 8];
        getrandom::getrandom(&mut bytes)?;
        Ok(Self::from_bits(u64::from_le_bytes(bytes)))
    }

    /// A reproducible epoch for simulations and tests. A simulated restart
    /// must use a different seed, or clients would resume across instances.
    pub fn from_seed(seed: u64) -> Self {
        Self::from_bits(SplitMix64::new(seed).next_u64())
    }

    fn from_bits(bits: u64) -> Self {
        Self(format!("{bits:016x}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.0)
    }
}

/// One effective change of the store and the revision it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub event: EntityEvent,
}

/// Which entity-ID prefixes a subscriber wants. An empty request list means
/// every prefix (what newer Datadog servers do, and what clients rely on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixFilter {
    /// `None` matches everything.
    prefixes: Option<BTreeSet<String>>,
}

impl PrefixFilter {
    pub fn all() -> Self {
        Self::default()
    }

    /// The filter of a `StreamTagsRequest.prefixes` list.
    pub fn from_request(prefixes: &[String]) -> Self {
        if prefixes.is_empty() {
            Self::all()
        } else {
            Self {
                prefixes: Some(prefixes.iter().cloned().collect()),
            }
        }
    }

    pub fn matches(&self, id: &EntityId) -> bool {
        self.prefixes
            .as_ref()
            .is_none_or(|prefixes| prefixes.contains(id.prefix()))
    }
}

/// An entity as the store holds it, with its snapshot event at High
/// cardinality encoded once, when it is stored. Datadog's remote taggers all
/// ask for High, so a snapshot copies these bytes instead of encoding every
/// tag again: on the 100k workload, encoding was the largest part of the
/// server's CPU in a sync. The price is the encoded size in memory (about
/// 570 bytes per workload entity). A change of the entity replaces the whole
/// `StoredEntity`, and with it the event.
#[derive(Debug)]
pub struct StoredEntity {
    entity: Entity,
    added_high: Bytes,
}

impl StoredEntity {
    fn new(entity: Entity) -> Self {
        // An allocation of its own, exactly the event's size (block size 0):
        // a slice of a shared block would pin the whole block for as long as
        // the entity is unchanged.
        let added_high = EventEncoder::with_block_size(0).added(&entity, Cardinality::High);
        Self { entity, added_high }
    }

    pub fn entity(&self) -> &Entity {
        &self.entity
    }

    /// The encoded ADDED event of this entity as a subscriber of
    /// `cardinality` sees it.
    pub(crate) fn added(&self, encoder: &mut EventEncoder, cardinality: Cardinality) -> Bytes {
        if cardinality == Cardinality::High {
            self.added_high.clone()
        } else {
            encoder.added(&self.entity, cardinality)
        }
    }
}

/// The matching entities of the store at one revision. Taking it is cheap
/// (shared pointers); the responses are made of it while it is sent (see
/// [`SnapshotChunks`](super::SnapshotChunks)).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: u64,
    pub entities: Vec<Arc<StoredEntity>>,
}

/// The entity store with its revision counter and bounded change log.
#[derive(Debug)]
pub struct Store {
    epoch: Epoch,
    revision: u64,
    entities: BTreeMap<EntityId, Arc<StoredEntity>>,
    /// Entities whose prefix is not in the table (a newer Agent's, relayed
    /// or from the entities file): served like the others, and counted.
    unknown_prefix_entities: u64,
    log: VecDeque<Change>,
    log_capacity: usize,
    /// The revision the oldest logged change follows: the log can replay
    /// everything after any revision in `log_start..=revision`.
    log_start: u64,
}

impl Store {
    /// An empty store at revision 0. `change_log_capacity` bounds how many
    /// changes are kept for resuming clients (0 disables resuming).
    pub fn new(epoch: Epoch, change_log_capacity: usize) -> Self {
        Self {
            epoch,
            revision: 0,
            entities: BTreeMap::new(),
            unknown_prefix_entities: 0,
            log: VecDeque::new(),
            log_capacity: change_log_capacity,
            log_start: 0,
        }
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Entities whose prefix is not in
    /// [`KNOWN_PREFIXES`](crate::domain::KNOWN_PREFIXES).
    pub fn unknown_prefix_entities(&self) -> u64 {
        self.unknown_prefix_entities
    }

    pub fn get(&self, id: &EntityId) -> Option<&Arc<StoredEntity>> {
        self.entities.get(id)
    }

    /// Applies `events` in order and returns the effective changes, each with
    /// its new revision. Sources may re-send what the store already holds, so
    /// events are diffed against it: an ADDED or MODIFIED with the tags the
    /// entity already has changes nothing; one for an absent entity is
    /// reported as ADDED, one for a present entity with other tags as
    /// MODIFIED; a DELETED of an absent entity changes nothing.
    pub fn apply(&mut self, events: impl IntoIterator<Item = EntityEvent>) -> Vec<Change> {
        let mut changes = Vec::new();
        for event in events {
            let effective = match event {
                EntityEvent::Added(entity) | EntityEvent::Modified(entity) => {
                    match self.entities.get(&entity.id) {
                        Some(current) if current.entity == entity => None,
                        Some(_) => Some(EntityEvent::Modified(entity)),
                        None => Some(EntityEvent::Added(entity)),
                    }
                }
                EntityEvent::Deleted(id) => self
                    .entities
                    .contains_key(&id)
                    .then_some(EntityEvent::Deleted(id)),
            };
            let Some(event) = effective else { continue };
            if !event.id().has_known_prefix() {
                match &event {
                    EntityEvent::Added(_) => self.unknown_prefix_entities += 1,
                    EntityEvent::Modified(_) => {}
                    EntityEvent::Deleted(_) => self.unknown_prefix_entities -= 1,
                }
            }
            match &event {
                EntityEvent::Added(entity) | EntityEvent::Modified(entity) => {
                    self.entities.insert(
                        entity.id.clone(),
                        Arc::new(StoredEntity::new(entity.clone())),
                    );
                }
                EntityEvent::Deleted(id) => {
                    self.entities.remove(id);
                }
            }
            self.revision += 1;
            let change = Change {
                revision: self.revision,
                event,
            };
            self.record(change.clone());
            changes.push(change);
        }
        changes
    }

    fn record(&mut self, change: Change) {
        if self.log_capacity == 0 {
            self.log_start = change.revision;
            return;
        }
        if self.log.len() == self.log_capacity
            && let Some(oldest) = self.log.pop_front()
        {
            self.log_start = oldest.revision;
        }
        self.log.push_back(change);
    }

    /// The matching entities at the current revision.
    pub fn snapshot(&self, filter: &PrefixFilter) -> Snapshot {
        Snapshot {
            revision: self.revision,
            entities: self
                .entities
                .values()
                .filter(|stored| filter.matches(&stored.entity().id))
                .cloned()
                .collect(),
        }
    }

    /// Every change after `revision`, if `epoch` is this store's and the log
    /// still holds all of them; `None` means the client needs a snapshot.
    /// A revision ahead of the store (impossible for an honest client of this
    /// epoch) is refused too.
    pub fn changes_since(&self, epoch: &str, revision: u64) -> Option<Vec<Change>> {
        if epoch != self.epoch.as_str() || revision < self.log_start || revision > self.revision {
            return None;
        }
        let skip = usize::try_from(revision - self.log_start).ok()?;
        Some(self.log.iter().skip(skip).cloned().collect())
    }
}

/// Shared with the tests of the other server modules.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entity(id: &str, low: &[&str], orchestrator: &[&str], high: &[&str]) -> Entity {
        let mut entity = Entity::new(EntityId::parse(id).unwrap());
        entity.low = low.iter().map(|t| t.to_string()).collect();
        entity.orchestrator = orchestrator.iter().map(|t| t.to_string()).collect();
        entity.high = high.iter().map(|t| t.to_string()).collect();
        entity.standard = vec!["env:test".into()];
        entity
    }

    pub(crate) fn store() -> Store {
        Store::new(Epoch::from_seed(1), 100)
    }

    fn id(text: &str) -> EntityId {
        EntityId::parse(text).unwrap()
    }

    #[test]
    fn apply_diffs_against_the_store() {
        let mut store = store();
        let a = entity("container_id://a", &["l"], &[], &[]);
        let changes = store.apply([EntityEvent::Added(a.clone())]);
        assert_eq!(
            changes,
            [Change {
                revision: 1,
                event: EntityEvent::Added(a.clone())
            }]
        );
        // Re-adding or re-modifying with identical tags changes nothing.
        assert!(store.apply([EntityEvent::Added(a.clone())]).is_empty());
        assert!(store.apply([EntityEvent::Modified(a.clone())]).is_empty());
        assert_eq!(store.revision(), 1);
        // ADDED of a present entity with other tags is a modification.
        let a2 = entity("container_id://a", &["l2"], &[], &[]);
        let changes = store.apply([EntityEvent::Added(a2.clone())]);
        assert_eq!(changes[0].event, EntityEvent::Modified(a2.clone()));
        // MODIFIED of an absent entity is an addition.
        let b = entity("host://b", &[], &[], &["h"]);
        let changes = store.apply([EntityEvent::Modified(b.clone())]);
        assert_eq!(changes[0].event, EntityEvent::Added(b.clone()));
        // Deleting an absent entity changes nothing; a present one is removed.
        assert!(
            store
                .apply([EntityEvent::Deleted(id("host://zz"))])
                .is_empty()
        );
        let changes = store.apply([EntityEvent::Deleted(id("host://b"))]);
        assert_eq!(changes[0].event, EntityEvent::Deleted(id("host://b")));
        assert_eq!(changes[0].revision, 4);
        assert_eq!(store.len(), 1);
        assert_eq!(*store.get(&a.id).unwrap().entity(), a2);
    }

    #[test]
    fn events_of_one_batch_apply_in_order() {
        let mut store = store();
        let a = entity("process://1", &["x"], &[], &[]);
        let changes = store.apply([
            EntityEvent::Added(a.clone()),
            EntityEvent::Deleted(a.id.clone()),
            EntityEvent::Added(a.clone()),
        ]);
        let revisions: Vec<u64> = changes.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [1, 2, 3]);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn prefix_filter_empty_means_all() {
        let all = PrefixFilter::from_request(&[]);
        let hosts = PrefixFilter::from_request(&["host".to_string()]);
        assert!(all.matches(&id("process://1")));
        assert!(hosts.matches(&id("host://1")));
        assert!(!hosts.matches(&id("process://1")));
        // Exact prefix match, not a string prefix.
        assert!(!PrefixFilter::from_request(&["contain".into()]).matches(&id("container_id://1")));
        // A prefix outside the table: everything's, and only a list naming it.
        let future = id("kubernetes_future_thing://1");
        assert!(all.matches(&future) && !hosts.matches(&future));
        assert!(PrefixFilter::from_request(&["kubernetes_future_thing".into()]).matches(&future));
    }

    #[test]
    fn entities_of_prefixes_outside_the_table_are_counted() {
        let mut store = store();
        let future = entity("kubernetes_future_thing://1", &["x"], &[], &[]);
        store.apply([
            EntityEvent::Added(future.clone()),
            EntityEvent::Added(entity("host://a", &["x"], &[], &[])),
            EntityEvent::Modified(entity("kubernetes_future_thing://1", &["y"], &[], &[])),
            EntityEvent::Added(entity("other_new_thing://2", &[], &[], &[])),
        ]);
        assert_eq!((store.len(), store.unknown_prefix_entities()), (3, 2));
        store.apply([
            EntityEvent::Deleted(future.id.clone()),
            EntityEvent::Deleted(future.id),
        ]);
        assert_eq!((store.len(), store.unknown_prefix_entities()), (2, 1));
    }

    #[test]
    fn changes_since_replays_what_the_log_covers() {
        let mut store = Store::new(Epoch::from_seed(1), 3);
        let epoch = store.epoch().as_str().to_owned();
        for i in 0..5 {
            store.apply([EntityEvent::Added(entity(
                &format!("process://{i}"),
                &[],
                &[],
                &[],
            ))]);
        }
        // The log holds revisions 3, 4, 5: resuming after 2..=5 works.
        assert_eq!(store.changes_since(&epoch, 5), Some(vec![]));
        let replay = store.changes_since(&epoch, 3).unwrap();
        let revisions: Vec<u64> = replay.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [4, 5]);
        assert_eq!(store.changes_since(&epoch, 2).unwrap().len(), 3);
        // Older than the log, ahead of the store, or another epoch: snapshot.
        assert_eq!(store.changes_since(&epoch, 1), None);
        assert_eq!(store.changes_since(&epoch, 6), None);
        assert_eq!(store.changes_since("other", 5), None);
        assert_eq!(store.changes_since("", 5), None);
    }

    #[test]
    fn a_zero_capacity_log_only_resumes_at_the_current_revision() {
        let mut store = Store::new(Epoch::from_seed(1), 0);
        let epoch = store.epoch().as_str().to_owned();
        store.apply([EntityEvent::Added(entity("process://1", &[], &[], &[]))]);
        assert_eq!(store.changes_since(&epoch, 1), Some(vec![]));
        assert_eq!(store.changes_since(&epoch, 0), None);
    }

    #[test]
    fn epochs_differ_by_seed_and_are_hex() {
        let a = Epoch::from_seed(1);
        assert_eq!(a, Epoch::from_seed(1));
        assert_ne!(a, Epoch::from_seed(2));
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(Epoch::random().unwrap(), Epoch::random().unwrap());
    }
}
