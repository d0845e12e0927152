//! A model of the tagger server, deliberately simple and independent of the
//! real one: a store with revisions and an epoch, a bounded change log, and
//! the responses the wire spec prescribes (snapshot chunks, resume, live).

use std::collections::{BTreeMap, VecDeque};

use super::{HARNESS_PREFIXES, IDS_PER_PREFIX, View, client_keeps};
use crate::domain::{Cardinality, Entity, EntityEvent, EntityId};
use crate::proto::model::{self as pb, StreamTagsRequest, StreamTagsResponse};

/// The model server. Revisions count store changes; every store state is
/// remembered by `(epoch, revision)` so the harness can tell which state a
/// client mirror claims to hold.
pub struct ModelServer {
    store: View,
    epoch: String,
    restarts: u64,
    seed: u64,
    revision: u64,
    log: VecDeque<(u64, EntityEvent)>,
    /// The oldest revision the log can replay from.
    log_floor: u64,
    log_capacity: usize,
    extensions: bool,
    /// Sends every entity, whatever the request's prefixes.
    ignores_prefixes: bool,
    chunk_events: usize,
    /// The subscription of the last stream opened: what live events it gets.
    subscription: Option<Subscription>,
    last_request: Option<StreamTagsRequest>,
    history: BTreeMap<(String, u64), View>,
    snapshots_sent: u64,
    resumes_sent: u64,
}

struct Subscription {
    cardinality: Cardinality,
    prefixes: Vec<String>,
    extensions: bool,
    ignores_prefixes: bool,
}

impl ModelServer {
    /// A server with the harness's entities, a first epoch drawn from `seed`,
    /// snapshots in chunks of `chunk_events` and a change log of `log_capacity`
    /// changes.
    pub fn new(
        seed: u64,
        extensions: bool,
        ignores_prefixes: bool,
        chunk_events: usize,
        log_capacity: usize,
    ) -> Self {
        let mut server = Self {
            store: View::new(),
            epoch: String::new(),
            restarts: 0,
            seed,
            revision: 0,
            log: VecDeque::new(),
            log_floor: 0,
            log_capacity,
            extensions,
            ignores_prefixes,
            chunk_events: chunk_events.max(1),
            subscription: None,
            last_request: None,
            history: BTreeMap::new(),
            snapshots_sent: 0,
            resumes_sent: 0,
        };
        server.restart();
        server
    }

    /// Streams answered with a full snapshot (what resuming saves).
    pub fn snapshots_sent(&self) -> u64 {
        self.snapshots_sent
    }

    /// Streams answered with a resume instead of a snapshot.
    pub fn resumes_sent(&self) -> u64 {
        self.resumes_sent
    }

    /// Whether it speaks this project's extensions.
    pub fn extensions(&self) -> bool {
        self.extensions
    }

    /// Starts or stops speaking the extensions (from the next stream on).
    pub fn set_extensions(&mut self, enabled: bool) {
        self.extensions = enabled;
    }

    /// A new store instance: new epoch, empty change log. The entities stay
    /// (the sources rebuild the same store).
    pub fn restart(&mut self) {
        self.restarts += 1;
        self.epoch = format!("epoch-{:x}-{}", self.seed, self.restarts);
        self.log.clear();
        self.log_floor = self.revision;
        self.subscription = None;
        self.remember();
    }

    /// The store as a subscriber of this cardinality and prefixes sees it:
    /// what this server sends it, and the subscriber keeps.
    pub fn view(&self, cardinality: Cardinality, prefixes: &[String]) -> View {
        self.reduce_view(&self.store, cardinality, prefixes)
    }

    /// The store at `(epoch, revision)` as this subscription sees it, as a list.
    pub fn history_view(
        &self,
        epoch: &str,
        revision: u64,
        cardinality: Cardinality,
        prefixes: &[String],
    ) -> Option<Vec<Entity>> {
        let store = self.history.get(&(epoch.to_owned(), revision))?;
        Some(
            self.reduce_view(store, cardinality, prefixes)
                .into_values()
                .collect(),
        )
    }

    /// `store` as a client requesting `prefixes` mirrors it from this
    /// server: what the server sends that the client keeps.
    fn reduce_view(&self, store: &View, cardinality: Cardinality, prefixes: &[String]) -> View {
        store
            .iter()
            .filter(|(id, _)| {
                is_sent(self.ignores_prefixes, prefixes, id) && client_keeps(prefixes, id.prefix())
            })
            .map(|(id, entity)| (id.clone(), entity.reduced(cardinality)))
            .collect()
    }

    /// Keeps the request a stream was opened with, for the invariants.
    pub fn record_request(&mut self, request: StreamTagsRequest) {
        self.last_request = Some(request);
    }

    /// The request the last stream was opened with.
    pub fn last_request(&self) -> Option<&StreamTagsRequest> {
        self.last_request.as_ref()
    }

    /// The first responses of a new stream: a resume if the log allows it,
    /// otherwise a snapshot in chunks.
    pub fn subscribe(&mut self, request: &StreamTagsRequest) -> Vec<StreamTagsResponse> {
        let cardinality = Cardinality::from_proto(request.cardinality).unwrap_or_default();
        let subscription = Subscription {
            cardinality,
            prefixes: request.prefixes.clone(),
            extensions: self.extensions,
            ignores_prefixes: self.ignores_prefixes,
        };
        let can_resume = self.extensions
            && request.resume_epoch == self.epoch
            && (self.log_floor..=self.revision).contains(&request.resume_revision);
        let responses = if can_resume {
            let events = self
                .log
                .iter()
                .filter(|(revision, _)| *revision > request.resume_revision)
                .filter_map(|(_, event)| subscription.wire_event(event))
                .collect();
            let mut response = self.response(events, true);
            response.resumed = true;
            self.resumes_sent += 1;
            vec![response]
        } else {
            self.snapshots_sent += 1;
            self.snapshot(&subscription)
        };
        self.subscription = Some(subscription);
        responses
    }

    fn snapshot(&self, subscription: &Subscription) -> Vec<StreamTagsResponse> {
        let events: Vec<pb::StreamTagsEvent> = self
            .store
            .values()
            .filter_map(|entity| subscription.wire_event(&EntityEvent::Added(entity.clone())))
            .collect();
        let mut responses: Vec<StreamTagsResponse> = events
            .chunks(self.chunk_events)
            .map(|chunk| self.response(chunk.to_vec(), subscription.extensions))
            .collect();
        if subscription.extensions {
            if responses.is_empty() {
                responses.push(self.response(Vec::new(), true));
            }
            if let Some(last) = responses.last_mut() {
                last.snapshot_complete = true;
            }
        }
        responses
    }

    /// Upserts entity `index` with tag variant `variant`; the change, if any.
    pub fn upsert(&mut self, index: u8, variant: u8) -> Option<EntityEvent> {
        let entity = harness_entity(index, variant);
        let event = match self.store.get(&entity.id) {
            Some(old) if *old == entity => return None,
            Some(_) => EntityEvent::Modified(entity.clone()),
            None => EntityEvent::Added(entity.clone()),
        };
        self.store.insert(entity.id.clone(), entity);
        Some(self.commit(event))
    }

    /// Deletes entity `index`; the change, if it existed.
    pub fn delete(&mut self, index: u8) -> Option<EntityEvent> {
        let id = harness_id(index);
        self.store.remove(&id)?;
        Some(self.commit(EntityEvent::Deleted(id)))
    }

    fn commit(&mut self, event: EntityEvent) -> EntityEvent {
        self.revision += 1;
        self.log.push_back((self.revision, event.clone()));
        if self.log.len() > self.log_capacity
            && let Some((dropped, _)) = self.log.pop_front()
        {
            self.log_floor = dropped;
        }
        self.remember();
        event
    }

    fn remember(&mut self) {
        self.history
            .insert((self.epoch.clone(), self.revision), self.store.clone());
    }

    /// The live response the open stream gets for `change`, if it is subscribed.
    pub fn live_response(&self, change: &EntityEvent) -> Option<StreamTagsResponse> {
        let subscription = self.subscription.as_ref()?;
        let event = subscription.wire_event(change)?;
        Some(self.response(vec![event], subscription.extensions))
    }

    /// A response carrying `events` as they are (for malformed input).
    pub fn raw_response(&self, events: Vec<pb::StreamTagsEvent>) -> StreamTagsResponse {
        let extensions = self.subscription.as_ref().is_some_and(|s| s.extensions);
        self.response(events, extensions)
    }

    /// An empty response: a keep-alive.
    pub fn keep_alive(&self) -> StreamTagsResponse {
        self.raw_response(Vec::new())
    }

    /// A plausible, complete-looking response to feed with a stale id.
    pub fn snapshot_response_for_stale_input(&self) -> StreamTagsResponse {
        let entity = harness_entity(0, 1);
        let mut response = self.response(
            vec![EntityEvent::Added(entity).to_proto(Cardinality::High)],
            true,
        );
        response.snapshot_complete = true;
        response
    }

    fn response(&self, events: Vec<pb::StreamTagsEvent>, extensions: bool) -> StreamTagsResponse {
        if !extensions {
            return StreamTagsResponse {
                events,
                ..Default::default()
            };
        }
        StreamTagsResponse {
            events,
            revision: self.revision,
            snapshot_complete: false,
            server_epoch: self.epoch.clone(),
            resumed: false,
        }
    }
}

impl Subscription {
    fn wants(&self, id: &EntityId) -> bool {
        is_sent(self.ignores_prefixes, &self.prefixes, id)
    }

    fn wire_event(&self, event: &EntityEvent) -> Option<pb::StreamTagsEvent> {
        self.wants(event.id())
            .then(|| event.to_proto(self.cardinality))
    }
}

/// Whether a server sends entities of `id` to a request for `prefixes`:
/// those named (an empty list: all), or all if it `ignores_prefixes`.
fn is_sent(ignores_prefixes: bool, prefixes: &[String], id: &EntityId) -> bool {
    ignores_prefixes || prefixes.is_empty() || prefixes.iter().any(|p| p == id.prefix())
}

/// The id of harness entity `index`: few ids per prefix, so changes collide.
pub fn harness_id(index: u8) -> EntityId {
    let prefix = HARNESS_PREFIXES[usize::from(index) % HARNESS_PREFIXES.len()];
    let uid = (index / HARNESS_PREFIXES.len() as u8) % IDS_PER_PREFIX;
    EntityId::new(prefix, &format!("id-{uid}")).expect("harness ids are valid")
}

/// Harness entity `index` with tag variant `variant`; some variants leave
/// lists empty, some repeat a tag across cardinalities.
pub fn harness_entity(index: u8, variant: u8) -> Entity {
    let id = harness_id(index);
    let v = variant % 8;
    let mut entity = Entity::new(id.clone());
    entity.low = vec![format!("env:e{}", v % 2), format!("service:s{}", v % 3)];
    if !v.is_multiple_of(4) {
        entity.orchestrator = vec![format!("pod_name:p{}", v % 4)];
    }
    if !v.is_multiple_of(5) {
        entity.high = vec![
            format!("container_id:{}-{v}", id.uid()),
            "env:e0".to_owned(),
        ];
    }
    if v.is_multiple_of(3) {
        entity.standard = vec![format!("env:e{}", v % 2)];
    }
    entity
}

/// A DELETED for an id the server never had.
pub fn unknown_delete() -> pb::StreamTagsEvent {
    let id = EntityId::new(HARNESS_PREFIXES[0], "never-stored").expect("valid id");
    EntityEvent::Deleted(id).to_proto(Cardinality::High)
}

/// A malformed event of one of several kinds, each of which the client must
/// reject (and count) without touching its mirror.
pub fn malformed_event(kind: u8) -> pb::StreamTagsEvent {
    let valid = harness_entity(kind, kind).to_proto();
    let with_id = |prefix: &str, uid: &str| pb::Entity {
        id: Some(pb::EntityId {
            prefix: prefix.to_owned(),
            uid: uid.to_owned(),
        }),
        ..valid.clone()
    };
    let (event_type, entity) = match kind % 6 {
        0 => (pb::EventType::Added as i32, None),
        1 => (
            pb::EventType::Added as i32,
            Some(pb::Entity {
                id: None,
                ..valid.clone()
            }),
        ),
        2 => (pb::EventType::Modified as i32, Some(with_id("", "x"))),
        3 => (pb::EventType::Added as i32, Some(with_id("process", ""))),
        4 => (pb::EventType::Deleted as i32, Some(with_id("a://b", "x"))),
        _ => (7, Some(valid)),
    };
    pb::StreamTagsEvent {
        r#type: event_type,
        entity,
    }
}
