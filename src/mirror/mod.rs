//! The tag mirror: the local copy of the remote entity -> tags store that the
//! client core fills and every application thread queries.
//!
//! # Design
//!
//! Reads are the hot path of every consumer process, writes come in batches
//! from one stream. So the mirror is a [`left_right`] pair of hash tables:
//! readers enter the published copy wait-free (one epoch bump of their own),
//! the single [`MirrorWriter`] logs operations, applies them to the other copy
//! and swaps, so a batch or a snapshot becomes visible all at once and readers
//! never wait for the writer. The writer may wait for readers still inside
//! the old copy, which is why no query returns while holding a guard.
//!
//! Both copies hold the same immutable records by reference: one allocation
//! per entity with its id and high cardinality tags inline (unique by nature)
//! and thin pointers to its interned low, orchestrator and standard lists
//! (shared by every container of an app or pod), whose strings are interned
//! too. A query hands back a [`Tags`] view: the record plus which of its tags,
//! no string copied. A [`MirrorView`] enters the published copy once for a
//! series of queries, whose [`TagsRef`] results borrow it (no refcount at
//! all), and [`MirrorView::tags_of`] overlaps the cache misses of
//! successive lookups. The interner belongs to the writer and is swept of
//! values nobody references, amortised over the values it interns.
//!
//! Records are built from borrowed strings ([`MirrorEvent`]), so events
//! decoded in place from a received message are stored without an owned
//! copy in between. A snapshot is staged (records built as its chunks come,
//! invisible) and committed in one swap.

mod counters;
mod index;
mod key;
mod record;
mod store;
mod table;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use left_right::{ReadGuard, ReadHandle, WriteHandle};

use crate::domain::{Cardinality, Entity, EntityEvent, EntityId, EntityRef, entity_hash};

// What `MirrorWriter::apply` and `stage` take; the domain owns it.
pub use crate::domain::MirrorEvent;
pub use counters::{QueryCounts, QueryStatus};
pub use record::{Tags, TagsIter, TagsRef};

use counters::{QueryCounter, QueryCounterRegistry};
use key::IdKey;
use record::{Interner, ListHashes, Record};
use store::{Op, Store};

/// How an entity changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One entity that changed, as reported by [`MirrorWriter::apply`] and
/// [`MirrorWriter::replace_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityChange {
    pub kind: ChangeKind,
    pub id: EntityId,
}

/// How the mirror's content changes for one id, given what it held before.
/// Only a real difference is a change: re-sending identical tags is not.
fn change(before: Option<&Record>, after: Option<&Record>) -> Option<ChangeKind> {
    match (before, after) {
        (None, None) => None,
        (None, Some(_)) => Some(ChangeKind::Added),
        (Some(_), None) => Some(ChangeKind::Deleted),
        (Some(before), Some(after)) => {
            (!before.same_tags_as(after)).then_some(ChangeKind::Modified)
        }
    }
}

/// Sorts a snapshot's changes by id. Comparing the ids themselves would
/// chase two pointers per comparison, cache misses all over a snapshot's
/// worth of ids: each id is read once into a key of its text class (see
/// [`IdKey::text_class`]) and its key tail's first bytes, and only ties
/// compare whole ids.
fn sort_by_id(changes: &mut Vec<EntityChange>) {
    let key = |id: &EntityId| {
        let key = IdKey::of(id);
        let tail = key.tail.as_bytes();
        let mut head = [0u8; 8];
        let len = tail.len().min(head.len());
        head[..len].copy_from_slice(&tail[..len]);
        // Zero-padded, the first 8 bytes order like the tail unless they tie.
        (u128::from(key.text_class()) << 64) | u128::from(u64::from_be_bytes(head))
    };
    let mut keyed: Vec<(u128, EntityChange)> = changes
        .drain(..)
        .map(|change| (key(&change.id), change))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    changes.extend(keyed.into_iter().map(|(_, change)| change));
}

/// One event of a batch with the hashes applying it needs, computed before
/// the batch is applied so that the writer can prefetch ahead of it.
struct Prepared<'e, S> {
    id: &'e EntityId,
    /// Of the id's [`IdKey`].
    hash: u64,
    /// The entity an upsert stores, with its lists' hashes; `None` for a
    /// delete.
    upsert: Option<(EntityRef<'e, S>, ListHashes)>,
}

fn prepare<E: MirrorEvent>(events: &[E]) -> Vec<Prepared<'_, E::Tag>> {
    events
        .iter()
        .map(|event| Prepared {
            id: event.id(),
            hash: IdKey::of(event.id()).hash(),
            upsert: event.upserted().map(|entity| {
                let lists = ListHashes::of(&entity);
                (entity, lists)
            }),
        })
        .collect()
}

/// How many events ahead of the one being applied the writer starts
/// loading what the next ones read: the table slots of their id's published
/// record and of their interned lists, then (once those slots are in cache)
/// the record and the lists, then (once the lists are) the lists' strings.
/// An event touches entries scattered over the mirror, one cache miss after
/// another when taken one event at a time; prefetched, the misses of
/// several events overlap.
const PREFETCH_SLOTS: usize = 16;
const PREFETCH_RECORDS_AND_LISTS: usize = 8;
const PREFETCH_STRINGS: usize = 4;

/// Starts loading the table slots of the published record of `event`'s id
/// and of the interned lists its upsert compares with.
fn prefetch_slots<S>(published: &Store, interner: &Interner, event: &Prepared<'_, S>) {
    published.prefetch_slot(event.hash);
    if let Some((_, lists)) = &event.upsert {
        interner.prefetch_list_slots(lists);
    }
}

/// Starts loading the published record of `event`'s id and the interned
/// lists its upsert compares with.
fn prefetch_record_and_lists<S>(published: &Store, interner: &Interner, event: &Prepared<'_, S>) {
    published.prefetch(event.hash);
    if let Some((_, lists)) = &event.upsert {
        interner.prefetch_lists(lists);
    }
}

/// Prefetches for the first events of a batch, which no earlier event
/// prefetched for: without this, 8 of the 20 events of a fan-out batch
/// would start cold.
fn prefetch_first<S>(published: &Store, interner: &Interner, events: &[Prepared<'_, S>]) {
    let (near, far) = events.split_at(PREFETCH_RECORDS_AND_LISTS.min(events.len()));
    for event in far.iter().take(PREFETCH_SLOTS - PREFETCH_RECORDS_AND_LISTS) {
        prefetch_slots(published, interner, event);
    }
    for event in near {
        prefetch_record_and_lists(published, interner, event);
    }
}

/// Prefetches for the events after `ahead[0]`, the one being applied.
fn prefetch_ahead<S>(published: &Store, interner: &Interner, ahead: &[Prepared<'_, S>]) {
    if let Some(next) = ahead.get(PREFETCH_SLOTS) {
        prefetch_slots(published, interner, next);
    }
    if let Some(next) = ahead.get(PREFETCH_RECORDS_AND_LISTS) {
        prefetch_record_and_lists(published, interner, next);
    }
    if let Some(Prepared {
        upsert: Some((_, lists)),
        ..
    }) = ahead.get(PREFETCH_STRINGS)
    {
        interner.prefetch_strings(lists);
    }
}

/// How many events [`walk_prefetched`] prepares at a time. Preparing a
/// whole 100k-entity snapshot first read every string to hash it, then
/// again once the cache had evicted it, to intern it: `replace_all` of 100k
/// took 101-110 ms instead of 87-89 (mirror bench).
const PREPARE_BLOCK: usize = 256;

/// Hands each event to `each` (its id, the id's hash and what an upsert
/// stores), in order, prefetching ahead of it for the events that follow.
fn walk_prefetched<'e, E: MirrorEvent>(
    published: &Store,
    interner: &mut Interner,
    events: &'e [E],
    mut each: impl FnMut(&mut Interner, &'e EntityId, u64, Option<&(EntityRef<'e, E::Tag>, ListHashes)>),
) {
    for block in events.chunks(PREPARE_BLOCK) {
        let prepared = prepare(block);
        prefetch_first(published, interner, &prepared);
        for (at, event) in prepared.iter().enumerate() {
            prefetch_ahead(published, interner, &prepared[at..]);
            each(interner, event.id, event.hash, event.upsert.as_ref());
        }
    }
}

/// The only handle that changes the mirror, owned by the client core. It
/// spawns no thread and reads no clock: everything it does happens inside
/// its methods ([`apply`](Self::apply), [`stage`](Self::stage) and
/// [`commit_staged`](Self::commit_staged), [`replace_all`](Self::replace_all)).
pub struct MirrorWriter {
    handle: WriteHandle<Store, Op>,
    /// The writer's own view of the published copy, which after every
    /// publish is the whole current content.
    published: ReadHandle<Store>,
    interner: Interner,
    /// Ids touched earlier in the batch being applied, with their new record
    /// (`None` once deleted): later events for them must see those changes,
    /// which are not published yet. Kept to reuse its allocation.
    batch: HashTable<(EntityId, Option<Record>)>,
    /// The snapshot being received (see [`stage`](Self::stage)): records
    /// built as its chunks arrive, invisible until committed.
    staged: StagedSnapshot,
    counters: QueryCounterRegistry,
}

/// One entity of a staged snapshot, with the hash of its id; no record once
/// a later event deleted it.
struct Staged {
    hash: u64,
    id: EntityId,
    record: Option<Record>,
}

/// The snapshot being received, in arrival order. Servers send snapshots
/// sorted by id. While the ids keep increasing, none can repeat: an upsert
/// is a push, a delete a binary search, and the diff the commit returns
/// comes out sorted, so a first sync neither indexes nor sorts its 100k ids.
/// The first id out of order builds an index by id.
#[derive(Default)]
struct StagedSnapshot {
    entities: Vec<Staged>,
    /// Positions in `entities` of the ids staged and not deleted, by hash;
    /// `None` while every id is greater than the one before it.
    index: Option<HashTable<usize>>,
    /// Entities staged and not deleted.
    live: usize,
}

impl StagedSnapshot {
    fn reserve(&mut self, additional: usize) {
        self.entities.reserve(additional);
        if let Some(index) = &mut self.index {
            index.reserve(additional, |&at| self.entities[at].hash);
        }
    }

    /// Replaces the staged record of `id`, or stages it after the others.
    fn upsert(&mut self, hash: u64, id: &EntityId, record: Record) {
        let entities = &mut self.entities;
        let staged = |record| Staged {
            hash,
            id: id.clone(),
            record: Some(record),
        };
        if self.index.is_none() && entities.last().is_none_or(|last| last.id < *id) {
            self.live += 1;
            entities.push(staged(record));
            return;
        }
        let index = self.index.get_or_insert_with(|| index_of(entities));
        match index.entry(hash, |&at| entities[at].id == *id, |&at| entities[at].hash) {
            Entry::Occupied(slot) => entities[*slot.get()].record = Some(record),
            Entry::Vacant(slot) => {
                self.live += 1;
                slot.insert(entities.len());
                entities.push(staged(record));
            }
        }
    }

    fn remove(&mut self, hash: u64, id: &EntityId) {
        let entities = &mut self.entities;
        let at = match &mut self.index {
            None => entities.binary_search_by(|staged| staged.id.cmp(id)).ok(),
            Some(index) => index
                .find_entry(hash, |&at| entities[at].id == *id)
                .ok()
                .map(|slot| slot.remove().0),
        };
        if let Some(at) = at
            && entities[at].record.take().is_some()
        {
            self.live -= 1;
        }
    }

    fn len(&self) -> usize {
        self.live
    }

    /// The staged entities in arrival order, and whether that is id order;
    /// nothing is staged afterwards.
    fn take(&mut self) -> (Vec<Staged>, bool) {
        let sorted = self.index.take().is_none();
        self.live = 0;
        (std::mem::take(&mut self.entities), sorted)
    }
}

/// The index of a [`StagedSnapshot`]'s entities that are not deleted.
fn index_of(entities: &[Staged]) -> HashTable<usize> {
    let mut index = HashTable::with_capacity(entities.len());
    for (at, staged) in entities.iter().enumerate() {
        if staged.record.is_some() {
            index.insert_unique(staged.hash, at, |&at| entities[at].hash);
        }
    }
    index
}

impl MirrorWriter {
    pub fn new() -> Self {
        let (handle, published) = left_right::new::<Store, Op>();
        Self {
            handle,
            published,
            interner: Interner::default(),
            batch: HashTable::new(),
            staged: StagedSnapshot::default(),
            counters: QueryCounterRegistry::default(),
        }
    }

    /// A new reader for one thread. Clone it (or call this again) per thread.
    pub fn reader(&self) -> MirrorReader {
        MirrorReader {
            handle: self.published.clone(),
            counter: self.counters.register(),
        }
    }

    /// Applies a batch and publishes it at once: readers see all of it or
    /// none. ADDED and MODIFIED replace the whole entity (an upsert, whatever
    /// the label); DELETED of an unknown id is a no-op.
    ///
    /// Returns what changed, in batch order. The kind reflects the mirror,
    /// not the event label: an upsert of an unknown id is `Added`, of a known
    /// one `Modified`, and an upsert that changes no tag or a delete of an
    /// unknown id reports nothing.
    pub fn apply<E: MirrorEvent>(
        &mut self,
        events: impl IntoIterator<Item = E>,
    ) -> Vec<EntityChange> {
        let Self {
            handle,
            published,
            interner,
            batch,
            ..
        } = self;
        let published = published
            .enter()
            .expect("the writer keeps the mirror alive");
        let events: Vec<E> = events.into_iter().collect();
        let mut changes = Vec::with_capacity(events.len());
        walk_prefetched(
            &published,
            interner,
            &events,
            |interner, id, hash, upsert| {
                let is_id = |(touched, _): &(EntityId, Option<Record>)| touched == id;
                let before = match batch.find(hash, is_id) {
                    Some((_, record)) => record.clone(),
                    None => published.get_hashed(hash, IdKey::of(id)).cloned(),
                };
                let after = match upsert {
                    Some((entity, _)) if before.as_ref().is_some_and(|r| r.holds(entity)) => return,
                    Some((entity, lists)) => Some(interner.record(entity, lists, before.as_ref())),
                    None => None,
                };
                let Some(kind) = change(before.as_ref(), after.as_ref()) else {
                    return;
                };
                changes.push(EntityChange {
                    kind,
                    id: id.clone(),
                });
                let rehash = |(touched, _): &(EntityId, Option<Record>)| IdKey::of(touched).hash();
                match batch.entry(hash, is_id, rehash) {
                    Entry::Occupied(mut touched) => touched.get_mut().1 = after.clone(),
                    Entry::Vacant(untouched) => {
                        untouched.insert((id.clone(), after.clone()));
                    }
                }
                handle.append(Op::swap(hash, before.as_ref(), after));
            },
        );
        drop(published);
        batch.clear();
        if !changes.is_empty() {
            handle.publish();
            interner.sweep_if_grown();
        }
        changes
    }

    /// Replaces the whole content at once with a completed snapshot (the last
    /// entity wins if an id repeats): [`stage`](Self::stage) it all, then
    /// [`commit_staged`](Self::commit_staged). Anything staged before is
    /// dropped.
    pub fn replace_all(&mut self, entities: Vec<Entity>) -> Vec<EntityChange> {
        self.discard_staged();
        self.stage(entities.into_iter().map(EntityEvent::Added));
        self.commit_staged()
    }

    /// Adds events to the snapshot being received, which readers do not
    /// see: upserts replace the whole staged entity, a delete removes it.
    /// Each entity's record is built (and its tags interned) now, so the work
    /// of a snapshot is spread over its chunks as they arrive rather than
    /// done at once when it completes.
    pub fn stage<E: MirrorEvent>(&mut self, events: impl IntoIterator<Item = E>) {
        let Self {
            published,
            interner,
            staged,
            ..
        } = self;
        let published = published
            .enter()
            .expect("the writer keeps the mirror alive");
        let events: Vec<E> = events.into_iter().collect();
        staged.reserve(events.len());
        walk_prefetched(
            &published,
            interner,
            &events,
            |interner, id, hash, upsert| {
                let Some((entity, lists)) = upsert else {
                    staged.remove(hash, id);
                    return;
                };
                // The published record is reused when unchanged, and its lists
                // otherwise: a resync mostly re-sends what the mirror holds.
                let previous = published.get_hashed(hash, IdKey::of(id));
                let record = match previous {
                    Some(previous) if previous.holds(entity) => previous.clone(),
                    _ => interner.record(entity, lists, previous),
                };
                staged.upsert(hash, id, record);
            },
        );
    }

    /// Entities staged so far.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Drops the staged snapshot (its stream broke before it completed).
    pub fn discard_staged(&mut self) {
        self.staged.take();
        self.interner.sweep_if_grown();
    }

    /// Replaces the whole content at once with the staged snapshot, which
    /// is then empty. Returns the diff against the previous content, sorted
    /// by id: `Added` for new ids, `Modified` for ids whose tags differ,
    /// `Deleted` for ids gone.
    pub fn commit_staged(&mut self) -> Vec<EntityChange> {
        let (staged, staged_sorted) = self.staged.take();
        let published = self
            .published
            .enter()
            .expect("the writer keeps the mirror alive");
        let mut next = Store::with_capacity(staged.len());
        let mut changes = Vec::with_capacity(staged.len());
        // A first sync has nothing to compare with: skip the lookups.
        let first_sync = published.len() == 0;
        let staged = staged
            .into_iter()
            .filter_map(|Staged { hash, id, record }| Some((hash, id, record?)));
        for (hash, id, record) in staged {
            let previous = if first_sync {
                None
            } else {
                published.get_hashed(hash, IdKey::of(&id))
            };
            let kind = change(previous, Some(&record));
            next.insert_unique(hash, &id, record);
            if let Some(kind) = kind {
                changes.push(EntityChange { kind, id });
            }
        }
        let staged_changes = changes.len();
        changes.extend(
            published
                .records()
                .filter(|record| next.get(record.key()).is_none())
                .map(|record| EntityChange {
                    kind: ChangeKind::Deleted,
                    id: record.entity_id(),
                }),
        );
        drop(published);
        if !staged_sorted || changes.len() > staged_changes {
            sort_by_id(&mut changes);
        }
        self.handle.append(Op::ReplaceAll(next));
        // The first publish shows the snapshot; the second waits for queries
        // still in the old copy (microseconds) and replays the snapshot into
        // it, releasing the previous content now instead of at the next batch:
        // otherwise two full snapshots would stay alive in between.
        self.handle.publish();
        self.handle.publish();
        // A snapshot typically drops many strings, and this call is already
        // O(entities): sweep now rather than wait for the interner to double.
        self.interner.sweep();
        changes
    }

    pub fn len(&self) -> usize {
        self.published.enter().map_or(0, |store| store.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many distinct tag strings the interner holds, including garbage
    /// not yet swept.
    pub fn interned_strings(&self) -> usize {
        self.interner.strings()
    }
}

impl Default for MirrorWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MirrorWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorWriter")
            .field("len", &self.len())
            .field("interned_strings", &self.interned_strings())
            .finish()
    }
}

/// A query handle for one thread (`Send`, not `Sync`; clone it for another
/// thread). Queries never wait for the writer and never hold the published
/// copy after they return. Once the writer is dropped, the mirror reads as
/// empty.
pub struct MirrorReader {
    handle: ReadHandle<Store>,
    counter: QueryCounter,
}

impl MirrorReader {
    /// Runs `read` on the published copy, for as short a time as `read` takes.
    fn read<R>(&self, read: impl FnOnce(&Store) -> R, gone: R) -> R {
        match self.handle.enter() {
            Some(store) => read(&store),
            None => gone,
        }
    }

    /// Enters the published copy for a series of lookups whose results
    /// borrow it: no refcount per lookup, and the copy is entered once
    /// instead of once per lookup (each time a fence). For a batch of work,
    /// like tagging the metrics of one received packet. While a view is
    /// held, the writer can publish at most once more before it waits for
    /// the view to be dropped (and the client stops receiving meanwhile),
    /// so never hold one across a wait, and never on the writer's thread.
    pub fn view(&self) -> MirrorView<'_> {
        MirrorView {
            store: self.handle.enter(),
            counter: &self.counter,
        }
    }

    /// Low, then orchestrator (if `cardinality` >= Orchestrator), then high
    /// (if High) tags of `id` (text form `prefix://uid`), neither deduplicated
    /// nor sorted; empty for an unknown id. Counts one query.
    pub fn tags(&self, id: &str, cardinality: Cardinality) -> Tags {
        self.view().tags(id, cardinality).into()
    }

    /// The standard tags of `id`; empty for an unknown id.
    pub fn standard(&self, id: &str) -> Tags {
        self.view().standard(id).into()
    }

    pub fn entity(&self, id: &str) -> Option<Entity> {
        let key = IdKey::parse(id)?;
        self.read(|store| store.get(key).map(Record::to_entity), None)
    }

    /// Every entity, sorted by id.
    pub fn list(&self) -> Vec<Entity> {
        let mut records: Vec<Record> =
            self.read(|store| store.records().cloned().collect(), Vec::new());
        records.sort_unstable_by(|a, b| a.key().cmp_text(b.key()));
        records.iter().map(Record::to_entity).collect()
    }

    /// The Agent's entity hash of `tags(id, cardinality)`. Not counted as a
    /// query: it is a digest, not a lookup an application made.
    pub fn hash(&self, id: &str, cardinality: Cardinality) -> String {
        let view = self.view();
        let tags = tags_or_none(view.record(id), cardinality);
        entity_hash(&tags.iter().collect::<Vec<_>>())
    }

    pub fn len(&self) -> usize {
        self.read(Store::len, 0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entities per known id prefix (`tagger_stored_entities`), prefixes
    /// with none left out. Entities of other prefixes are counted apart, in
    /// [`unknown_prefix_entities`](Self::unknown_prefix_entities).
    pub fn stored_by_prefix(&self) -> BTreeMap<String, u64> {
        let counts: Vec<(&str, u64)> =
            self.read(|store| store.counts_by_prefix().collect(), Vec::new());
        counts
            .into_iter()
            .map(|(prefix, count)| (prefix.to_owned(), count))
            .collect()
    }

    /// Entities whose prefix is not in
    /// [`KNOWN_PREFIXES`](crate::domain::KNOWN_PREFIXES)
    /// (`tagger_unknown_prefix_entities`): what a newer Agent sends.
    pub fn unknown_prefix_entities(&self) -> u64 {
        self.read(Store::other_prefix_count, 0)
    }

    /// Queries per cardinality and status (`tagger_queries`), summed over
    /// every reader of this mirror, dropped ones included.
    pub fn query_counts(&self) -> QueryCounts {
        self.counter.registry().totals()
    }
}

/// The published copy of the mirror, entered for a series of lookups (see
/// [`MirrorReader::view`]). Its results borrow it.
pub struct MirrorView<'r> {
    /// `None` once the writer is dropped: the mirror then reads as empty.
    store: Option<ReadGuard<'r, Store>>,
    counter: &'r QueryCounter,
}

impl MirrorView<'_> {
    fn record(&self, id: &str) -> Option<&Record> {
        self.store.as_ref()?.get(IdKey::parse(id)?)
    }

    /// What [`MirrorReader::tags`] returns, borrowed. Counts one query.
    pub fn tags(&self, id: &str, cardinality: Cardinality) -> TagsRef<'_> {
        counted_tags(self.counter, self.record(id), cardinality)
    }

    /// The standard tags of `id`, borrowed; empty for an unknown id.
    pub fn standard(&self, id: &str) -> TagsRef<'_> {
        self.record(id).map(Record::standard).unwrap_or_default()
    }

    /// [`tags`](Self::tags) of each of `ids`, in order, with its id. Faster
    /// per id than separate calls: it starts loading an id's bytes, table
    /// slot and record several ids ahead, so the cache misses of successive
    /// lookups overlap instead of following one another.
    pub fn tags_of<'i, I>(&self, ids: I, cardinality: Cardinality) -> TagsOf<'_, 'i, I::IntoIter>
    where
        I: IntoIterator<Item = &'i str>,
    {
        TagsOf {
            store: self.store.as_deref(),
            counter: self.counter,
            ids: ids.into_iter(),
            cardinality,
            ahead: VecDeque::with_capacity(ID_AHEAD),
        }
    }
}

/// The tags of `record` up to `cardinality` (none for no record), counted
/// as one query.
fn counted_tags<'a>(
    counter: &QueryCounter,
    record: Option<&'a Record>,
    cardinality: Cardinality,
) -> TagsRef<'a> {
    let tags = tags_or_none(record, cardinality);
    counter.count(cardinality, tags.is_empty());
    tags
}

/// The tags of `record` up to `cardinality`; none for no record (an unknown
/// id).
fn tags_or_none(record: Option<&Record>, cardinality: Cardinality) -> TagsRef<'_> {
    record
        .map(|record| record.tags_for(cardinality))
        .unwrap_or_default()
}

/// How many ids ahead of its lookup [`TagsOf`] starts loading what the
/// lookup reads, one step after another, each once the step before has
/// brought what it needs into cache: the id's bytes, then (hashing the id)
/// its table slot, then (reading the slot) its record. Chosen on the lookup
/// bench (random order over 100k entities) among 8 triples, in 2-3
/// alternating runs each: 10/6/3 read 115-122 ns per lookup, 12/8/4
/// 121-133, 16/12/6 163-167, and without the slot step (the id 8 ahead,
/// the record 4 ahead) 151-161.
const ID_AHEAD: usize = 10;
const SLOT_AHEAD: usize = 6;
const RECORD_AHEAD: usize = 3;

/// An id waiting for its lookup in [`TagsOf`].
struct PendingId<'i> {
    id: &'i str,
    /// Its key and the key's hash, once computed (`Some(None)` for a
    /// malformed id, which no record has).
    key: Option<Option<(IdKey<'i>, u64)>>,
}

impl<'i> PendingId<'i> {
    fn key(&mut self) -> Option<(IdKey<'i>, u64)> {
        let id = self.id;
        *self
            .key
            .get_or_insert_with(|| IdKey::parse(id).map(|key| (key, key.hash())))
    }

    /// Starts the step of loading that `distance` ids before its lookup
    /// calls for (see [`ID_AHEAD`]). Further than [`SLOT_AHEAD`], the id's
    /// bytes may not be in cache yet, so it is not hashed.
    fn load(&mut self, store: Option<&Store>, distance: usize) {
        if distance > SLOT_AHEAD {
            return;
        }
        let (Some(store), Some((_, hash))) = (store, self.key()) else {
            return;
        };
        if distance <= RECORD_AHEAD {
            store.prefetch(hash);
        } else {
            store.prefetch_slot(hash);
        }
    }
}

/// The iterator of [`MirrorView::tags_of`].
pub struct TagsOf<'v, 'i, I> {
    store: Option<&'v Store>,
    counter: &'v QueryCounter,
    ids: I,
    cardinality: Cardinality,
    /// The next ids to look up, in order: the one at index `n` is looked
    /// up after the `n` before it.
    ahead: VecDeque<PendingId<'i>>,
}

impl<'v, 'i, I: Iterator<Item = &'i str>> Iterator for TagsOf<'v, 'i, I> {
    type Item = (&'i str, TagsRef<'v>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.ahead.len() < ID_AHEAD {
            let Some(id) = self.ids.next() else { break };
            crate::prefetch::prefetch(id.as_ptr());
            let distance = self.ahead.len();
            let mut pending = PendingId { id, key: None };
            // Only while filling up do ids start this close to their lookup.
            pending.load(self.store, distance);
            self.ahead.push_back(pending);
        }
        let mut current = self.ahead.pop_front()?;
        // Each id passes every distance below the one it started at once,
        // so each step runs once per id.
        for distance in [SLOT_AHEAD, RECORD_AHEAD] {
            if let Some(coming) = self.ahead.get_mut(distance) {
                coming.load(self.store, distance);
            }
        }
        let record = match (self.store, current.key()) {
            (Some(store), Some((key, hash))) => store.get_hashed(hash, key),
            _ => None,
        };
        let tags = counted_tags(self.counter, record, self.cardinality);
        Some((current.id, tags))
    }
}

impl fmt::Debug for MirrorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.store.as_ref().map_or(0, |store| store.len());
        f.debug_struct("MirrorView").field("len", &len).finish()
    }
}

impl<I> fmt::Debug for TagsOf<'_, '_, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagsOf")
            .field("cardinality", &self.cardinality)
            .field("loading_ahead", &self.ahead.len())
            .finish_non_exhaustive()
    }
}

impl Clone for MirrorReader {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            counter: self.counter.registry().register(),
        }
    }
}

impl fmt::Debug for MirrorReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorReader")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KNOWN_PREFIXES;

    #[test]
    fn changes_sort_like_their_ids_text() {
        let uids = [
            "a",
            "a\0",
            "a\0\0",
            "abcdefgh",
            "abcdefgh0",
            "abcdefgh1",
            "abcdefg",
            "b",
            "é",
            "0",
        ];
        // Prefixes outside the table, around and inside known ones: one
        // starting a known one, one a known one starts (with bytes below
        // and above ':' next), one holding ':', one before and one after
        // every known prefix.
        let others = [
            "hos",
            "host-a",
            "host_a",
            "host:a",
            "hosta",
            "kubernetes_future_thing",
            "kubelet2",
            "container_id:x",
            "a",
            "zzz",
            "é",
            "\u{1}",
        ];
        let mut changes: Vec<EntityChange> = KNOWN_PREFIXES
            .iter()
            .chain(&others)
            .rev()
            .flat_map(|prefix| uids.iter().rev().map(move |uid| (prefix, uid)))
            .map(|(prefix, uid)| EntityChange {
                kind: ChangeKind::Added,
                id: EntityId::new(prefix, uid).unwrap(),
            })
            .collect();
        let mut by_text = changes.clone();
        by_text.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        sort_by_id(&mut changes);
        assert_eq!(changes, by_text);
    }
}
