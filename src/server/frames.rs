//! Response framing: how the store's entities and changes become the
//! `StreamTagsResponse`s of a stream. This is the one place that decides
//! how many bytes of events a response holds ([`chunk_budget`],
//! [`Chunker`]), how a snapshot is cut ([`SnapshotChunks`]), how a batch of
//! changes is encoded once for all its subscribers ([`Batch`]), and what
//! each response carries ([`Framer`]); the service only sends what it gets
//! from here, and the store only holds state.
//!
//! The `revision` of a response is a resume point: once a client has applied
//! that response, it holds the store's state at that revision (for its
//! prefixes and cardinality). Snapshot chunks carry the snapshot's revision,
//! which is only a valid resume point once the chunk marked
//! `snapshotComplete` has arrived; live and resumed responses carry the
//! revision of their last change (the last response of a batch, the batch's
//! end even if later changes were filtered out); keep-alives carry the last
//! revision sent; the empty placeholder a stream gets while it waits for a
//! snapshot slot carries 0 (nothing to resume from yet).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::store::{Change, Epoch, PrefixFilter, Snapshot, StoredEntity};
use crate::defaults;
use crate::domain::Cardinality;
use crate::proto::encoded::EncodedStreamTagsResponse;
use crate::wire::EventEncoder;

/// The summed size of encoded events at which a response to a client that
/// accepts messages of `max_message_size` is cut (the first event of a
/// response always goes, however large).
pub(crate) fn chunk_budget(max_message_size: usize) -> usize {
    (max_message_size / 2).min(defaults::CHUNK_TARGET)
}

/// Groups encoded events into responses whose summed event sizes stay
/// within a byte budget. The first event of a chunk always goes, even when it
/// alone is larger than the budget: refusing it would stall the stream forever.
#[derive(Debug)]
pub struct Chunker {
    budget: usize,
    events: Vec<Bytes>,
    size: usize,
}

impl Chunker {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            events: Vec::new(),
            size: 0,
        }
    }

    /// Adds `event` (an encoded `StreamTagsEvent`). When it does not fit in
    /// the current chunk, that chunk is closed and returned, and `event`
    /// starts the next one.
    pub fn push(&mut self, event: Bytes) -> Option<Vec<Bytes>> {
        let len = event.len();
        let closed = if !self.events.is_empty() && self.size.saturating_add(len) > self.budget {
            self.size = 0;
            Some(std::mem::take(&mut self.events))
        } else {
            None
        };
        self.size = self.size.saturating_add(len);
        self.events.push(event);
        closed
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Takes the events of the open chunk (possibly none).
    pub fn take(&mut self) -> Vec<Bytes> {
        self.size = 0;
        std::mem::take(&mut self.events)
    }
}

/// Snapshot events are encoded into blocks of this size (see
/// [`EventEncoder`]).
const SNAPSHOT_BLOCK_SIZE: usize = 64 * 1024;

/// One response's worth of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotChunk {
    /// Encoded `StreamTagsEvent`s.
    pub events: Vec<Bytes>,
    /// True on the last chunk. An empty snapshot is one empty, complete chunk,
    /// so a client always learns that the snapshot is over.
    pub complete: bool,
}

/// Iterator over the chunks of a [`Snapshot`]; yields at least one chunk.
/// Chunks are made (events encoded, or at High the stored events shared)
/// one at a time while the snapshot is sent, so a subscriber holds at most
/// one chunk at a time.
#[derive(Debug)]
pub struct SnapshotChunks {
    entities: std::vec::IntoIter<Arc<StoredEntity>>,
    cardinality: Cardinality,
    /// Shared blocks: a chunk is sent and dropped at once, so nothing pins
    /// a block for long.
    encoder: EventEncoder,
    chunker: Chunker,
    finished: bool,
}

impl SnapshotChunks {
    /// `snapshot` as ADDED events reduced to `cardinality`, in chunks of at
    /// most `budget` summed event bytes (an event larger than `budget` goes
    /// alone in its chunk).
    pub fn new(snapshot: Snapshot, cardinality: Cardinality, budget: usize) -> Self {
        Self {
            entities: snapshot.entities.into_iter(),
            cardinality,
            encoder: EventEncoder::with_block_size(SNAPSHOT_BLOCK_SIZE),
            chunker: Chunker::new(budget),
            finished: false,
        }
    }
}

impl Iterator for SnapshotChunks {
    type Item = SnapshotChunk;

    fn next(&mut self) -> Option<SnapshotChunk> {
        if self.finished {
            return None;
        }
        for entity in self.entities.by_ref() {
            let event = entity.added(&mut self.encoder, self.cardinality);
            if let Some(events) = self.chunker.push(event) {
                return Some(SnapshotChunk {
                    events,
                    complete: false,
                });
            }
        }
        self.finished = true;
        Some(SnapshotChunk {
            events: self.chunker.take(),
            complete: true,
        })
    }
}

/// Changes applied together, shared by every subscriber.
pub(crate) type ChangeBatch = Arc<Batch>;

/// The changes of one batch, and their encoded events for each cardinality,
/// made by the first subscriber that needs them and shared by the others:
/// with many subscribers, encoding is paid once per change, not once per
/// subscriber. (A prefix filter only skips events, so it needs no encoding
/// of its own.)
pub(crate) struct Batch {
    changes: Vec<Change>,
    encoded: [OnceLock<Vec<Bytes>>; Cardinality::ALL.len()],
}

impl Batch {
    /// Each change with its encoded `StreamTagsEvent` at `cardinality`.
    fn encoded(&self, cardinality: Cardinality) -> impl Iterator<Item = (&Change, &Bytes)> {
        let encoded = self.encoded[cardinality as usize].get_or_init(|| {
            // One allocation per event: a batch may wait long in a slow
            // subscriber's queue, and must not pin more than its own bytes.
            let mut encoder = EventEncoder::default();
            self.changes
                .iter()
                .map(|change| encoder.event(&change.event, cardinality))
                .collect()
        });
        self.changes.iter().zip(encoded)
    }
}

impl From<Vec<Change>> for Batch {
    fn from(changes: Vec<Change>) -> Self {
        Self {
            changes,
            encoded: Default::default(),
        }
    }
}

impl std::ops::Deref for Batch {
    type Target = [Change];

    fn deref(&self) -> &[Change] {
        &self.changes
    }
}

/// The responses of one stream: each carries the store's epoch, events are
/// reduced to the stream's cardinality, and a response is cut at its chunk
/// budget; revisions follow the resume-point rule above. Cheap to clone
/// (the epoch is shared).
#[derive(Debug, Clone)]
pub struct Framer {
    epoch: Epoch,
    cardinality: Cardinality,
    budget: usize,
}

impl Framer {
    pub fn new(epoch: Epoch, cardinality: Cardinality, budget: usize) -> Self {
        Self {
            epoch,
            cardinality,
            budget,
        }
    }

    pub fn cardinality(&self) -> Cardinality {
        self.cardinality
    }

    fn response(&self, events: Vec<Bytes>, revision: u64) -> EncodedStreamTagsResponse {
        EncodedStreamTagsResponse {
            events,
            revision,
            snapshot_complete: false,
            server_epoch: self.epoch.as_str().to_owned(),
            resumed: false,
        }
    }

    /// The empty response a stream gets at once while it waits for a
    /// snapshot slot (clients must not wait for headers): nothing to resume
    /// from yet.
    pub fn placeholder(&self) -> EncodedStreamTagsResponse {
        self.response(Vec::new(), 0)
    }

    /// The empty response that tells an idle client the stream is alive; the
    /// client holds everything up to `revision`.
    pub fn keepalive(&self, revision: u64) -> EncodedStreamTagsResponse {
        self.response(Vec::new(), revision)
    }

    /// The responses of `snapshot`, the last one marked `snapshotComplete`;
    /// each is made (its events encoded) when it is asked for.
    pub fn snapshot(&self, snapshot: Snapshot) -> SnapshotResponses {
        SnapshotResponses {
            framer: self.clone(),
            revision: snapshot.revision,
            chunks: SnapshotChunks::new(snapshot, self.cardinality, self.budget),
        }
    }

    /// The responses that carry the changes of `batches` matching `filter`,
    /// each with the revision the client holds once it has that response. A
    /// client that held everything up to `synced_revision` holds everything
    /// up to `end_revision` after the last one. With `resumed`, the first
    /// response is made even when nothing matches, flagged as the start of a
    /// resumed stream.
    pub(crate) fn changes<'a>(
        &self,
        batches: &'a [ChangeBatch],
        filter: &'a PrefixFilter,
        synced_revision: u64,
        end_revision: u64,
        mut resumed: bool,
    ) -> impl Iterator<Item = (EncodedStreamTagsResponse, u64)> + use<'a> {
        let framer = self.clone();
        let cardinality = self.cardinality;
        let mut matching = batches
            .iter()
            .flat_map(move |batch| batch.encoded(cardinality))
            .filter(|(change, _)| filter.matches(change.event.id()));
        let mut chunker = Chunker::new(self.budget);
        // Revision of the last change in the open chunk: once a client has a
        // chunk, it holds everything up to there.
        let mut chunk_revision = synced_revision;
        let mut finished = false;
        std::iter::from_fn(move || {
            if finished {
                return None;
            }
            for (change, event) in matching.by_ref() {
                let closed = chunker.push(event.clone());
                let revision = std::mem::replace(&mut chunk_revision, change.revision);
                if let Some(events) = closed {
                    let mut response = framer.response(events, revision);
                    response.resumed = std::mem::take(&mut resumed);
                    return Some((response, revision));
                }
            }
            finished = true;
            (!chunker.is_empty() || resumed).then(|| {
                let mut response = framer.response(chunker.take(), end_revision);
                response.resumed = resumed;
                (response, end_revision)
            })
        })
    }
}

/// The responses of one snapshot (see [`Framer::snapshot`]); at least one.
#[derive(Debug)]
pub struct SnapshotResponses {
    framer: Framer,
    revision: u64,
    chunks: SnapshotChunks,
}

impl Iterator for SnapshotResponses {
    type Item = EncodedStreamTagsResponse;

    fn next(&mut self) -> Option<EncodedStreamTagsResponse> {
        let chunk = self.chunks.next()?;
        let mut response = self.framer.response(chunk.events, self.revision);
        response.snapshot_complete = chunk.complete;
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::domain::{Entity, EntityEvent};
    use crate::proto::model as pb;
    use crate::server::store::Store;
    use crate::server::store::tests::{entity, store};

    /// The snapshot a new subscriber of `store` gets, as chunks.
    fn snapshot_chunks(
        store: &Store,
        cardinality: Cardinality,
        filter: &PrefixFilter,
        budget: usize,
    ) -> SnapshotChunks {
        SnapshotChunks::new(store.snapshot(filter), cardinality, budget)
    }

    #[test]
    fn the_budget_is_half_the_message_size_at_most_the_target() {
        assert_eq!(chunk_budget(4 * 1024 * 1024), defaults::CHUNK_TARGET);
        assert_eq!(chunk_budget(1000), 500);
        assert_eq!(chunk_budget(1), 0);
    }

    #[test]
    fn snapshot_filters_reduces_and_marks_the_last_chunk() {
        let mut store = store();
        store.apply([
            EntityEvent::Added(entity("container_id://a", &["l"], &["o"], &["h"])),
            EntityEvent::Added(entity("host://b", &["l"], &["o"], &["h"])),
        ]);
        let filter = PrefixFilter::from_request(&["container_id".into()]);
        let chunks: Vec<SnapshotChunk> =
            snapshot_chunks(&store, Cardinality::Orchestrator, &filter, usize::MAX).collect();
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].complete);
        let [event] = chunks[0].events.as_slice() else {
            panic!("expected one event, got {:?}", chunks[0].events)
        };
        let event = pb::StreamTagsEvent::decode(event.as_ref()).unwrap();
        assert_eq!(event.r#type, pb::EventType::Added as i32);
        let wire = event.entity.as_ref().unwrap();
        assert_eq!(wire.id.as_ref().unwrap().uid, "a");
        assert_eq!(wire.low_cardinality_tags, ["l"]);
        assert_eq!(wire.orchestrator_cardinality_tags, ["o"]);
        assert!(wire.high_cardinality_tags.is_empty());
        assert_eq!(wire.standard_tags, ["env:test"]);
    }

    /// The events of a snapshot, decoded, with the chunks' boundaries dropped.
    fn snapshot_events(store: &Store, cardinality: Cardinality) -> Vec<pb::StreamTagsEvent> {
        snapshot_chunks(store, cardinality, &PrefixFilter::all(), usize::MAX)
            .flat_map(|chunk| chunk.events)
            .map(|event| pb::StreamTagsEvent::decode(event.as_ref()).unwrap())
            .collect()
    }

    #[test]
    fn a_cached_high_event_is_the_entity_encoded_and_goes_when_the_entity_changes() {
        let mut store = store();
        let a = entity("container_id://a", &["l"], &["o"], &["h"]);
        store.apply([EntityEvent::Added(a.clone())]);
        let expected = |entity: &Entity, cardinality| {
            pb::StreamTagsEvent::decode(EventEncoder::default().added(entity, cardinality).as_ref())
                .unwrap()
        };
        assert_eq!(
            snapshot_events(&store, Cardinality::High),
            [expected(&a, Cardinality::High)]
        );
        // Snapshots send the bytes encoded when the entity was stored.
        let sent = || {
            let mut chunks = snapshot_chunks(&store, Cardinality::High, &PrefixFilter::all(), 1);
            chunks.next().unwrap().events.remove(0)
        };
        let (first, second) = (sent(), sent());
        assert_eq!(first.as_ptr(), second.as_ptr());
        // Other cardinalities are encoded as asked, not served from the cache.
        assert_eq!(
            snapshot_events(&store, Cardinality::Low),
            [expected(&a, Cardinality::Low)]
        );
        let a2 = entity("container_id://a", &["l"], &["o"], &["h2"]);
        store.apply([EntityEvent::Modified(a2.clone())]);
        assert_eq!(
            snapshot_events(&store, Cardinality::High),
            [expected(&a2, Cardinality::High)]
        );
    }

    #[test]
    fn empty_snapshot_is_one_empty_complete_chunk() {
        let chunks: Vec<SnapshotChunk> =
            snapshot_chunks(&store(), Cardinality::High, &PrefixFilter::all(), 10).collect();
        assert_eq!(
            chunks,
            [SnapshotChunk {
                events: vec![],
                complete: true
            }]
        );
    }

    #[test]
    fn chunks_respect_the_budget_but_always_take_a_first_event() {
        let mut store = store();
        let big = "x".repeat(1000);
        store.apply(
            (0..10)
                .map(|i| EntityEvent::Added(entity(&format!("process://{i}"), &[&big], &[], &[]))),
        );
        let all = PrefixFilter::all();
        let event_size = snapshot_chunks(&store, Cardinality::High, &all, usize::MAX)
            .next()
            .unwrap()
            .events[0]
            .len();
        // Three events fit in the budget, a fourth does not.
        let budget = event_size * 3 + event_size / 2;
        let chunks: Vec<SnapshotChunk> =
            snapshot_chunks(&store, Cardinality::High, &all, budget).collect();
        let sizes: Vec<usize> = chunks.iter().map(|c| c.events.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let complete: Vec<bool> = chunks.iter().map(|c| c.complete).collect();
        assert_eq!(complete, [false, false, false, true]);
        // A budget below one event still makes progress: one event per chunk.
        let tiny: Vec<SnapshotChunk> =
            snapshot_chunks(&store, Cardinality::High, &all, 1).collect();
        assert_eq!(tiny.len(), 10);
        assert!(tiny.iter().all(|c| c.events.len() == 1));
    }

    #[test]
    fn snapshot_responses_carry_the_epoch_and_revision_and_mark_the_last() {
        let mut store = store();
        store.apply(
            (0..3).map(|i| EntityEvent::Added(entity(&format!("host://{i}"), &[], &[], &[]))),
        );
        let framer = Framer::new(store.epoch().clone(), Cardinality::High, 1);
        let responses: Vec<EncodedStreamTagsResponse> = framer
            .snapshot(store.snapshot(&PrefixFilter::all()))
            .collect();
        let shape: Vec<(usize, u64, bool)> = responses
            .iter()
            .map(|r| (r.events.len(), r.revision, r.snapshot_complete))
            .collect();
        assert_eq!(shape, [(1, 3, false), (1, 3, false), (1, 3, true)]);
        assert!(
            responses
                .iter()
                .all(|r| r.server_epoch == store.epoch().as_str() && !r.resumed)
        );
        let placeholder = framer.placeholder();
        assert_eq!((placeholder.events.len(), placeholder.revision), (0, 0));
        assert_eq!(framer.keepalive(7).revision, 7);
    }

    /// The batches of `store.apply` for each of `rounds`.
    fn batches(store: &mut Store, rounds: &[&[EntityEvent]]) -> Vec<ChangeBatch> {
        rounds
            .iter()
            .map(|events| ChangeBatch::new(store.apply(events.iter().cloned()).into()))
            .collect()
    }

    fn added(id: &str) -> EntityEvent {
        EntityEvent::Added(entity(id, &["x".repeat(100).as_str()], &[], &[]))
    }

    /// What each change response of `responses` is: its events' ids, the
    /// revision it carries, the revision the client holds after it, and
    /// whether it is flagged resumed.
    fn shapes(
        responses: impl Iterator<Item = (EncodedStreamTagsResponse, u64)>,
    ) -> Vec<(Vec<String>, u64, u64, bool)> {
        responses
            .map(|(response, synced)| {
                let ids = response
                    .events
                    .iter()
                    .map(|event| {
                        let event = pb::StreamTagsEvent::decode(event.as_ref()).unwrap();
                        let id = event.entity.unwrap().id.unwrap();
                        format!("{}://{}", id.prefix, id.uid)
                    })
                    .collect();
                (ids, response.revision, synced, response.resumed)
            })
            .collect()
    }

    #[test]
    fn change_responses_carry_the_revision_a_client_holds_after_each() {
        let mut store = store();
        let batches = batches(
            &mut store,
            &[
                &[added("host://a"), added("process://skipped")],
                &[added("host://b"), added("host://c")],
            ],
        );
        let event_size = batches[0]
            .encoded(Cardinality::High)
            .next()
            .unwrap()
            .1
            .len();
        // Two events to a response.
        let framer = Framer::new(store.epoch().clone(), Cardinality::High, event_size * 2);
        let hosts = PrefixFilter::from_request(&["host".into()]);
        let responses = shapes(framer.changes(&batches, &hosts, 0, 4, false));
        let ids = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
        // The first response ends with host://b (revision 3); the last ends
        // the round, whose last change is filtered out.
        assert_eq!(
            responses,
            [
                (ids(&["host://a", "host://b"]), 3, 3, false),
                (ids(&["host://c"]), 4, 4, false),
            ]
        );
        // Nothing matching: nothing to send, unless the stream resumes.
        let nothing = PrefixFilter::from_request(&["gpu".into()]);
        assert!(shapes(framer.changes(&batches, &nothing, 0, 4, false)).is_empty());
        assert_eq!(
            shapes(framer.changes(&batches, &nothing, 0, 4, true)),
            [(vec![], 4, 4, true)]
        );
        // Resumed: only the first response says so.
        let resumed = shapes(framer.changes(&batches, &hosts, 0, 4, true));
        let flags: Vec<bool> = resumed.iter().map(|r| r.3).collect();
        assert_eq!(flags, [true, false]);
    }

    #[test]
    fn a_batch_is_encoded_once_per_cardinality_for_every_subscriber() {
        let mut store = store();
        let batch = &batches(&mut store, &[&[added("host://a")]])[0];
        let event = |cardinality| batch.encoded(cardinality).next().unwrap().1.as_ptr();
        assert_eq!(event(Cardinality::High), event(Cardinality::High));
        assert_ne!(event(Cardinality::High), event(Cardinality::Low));
    }
}
