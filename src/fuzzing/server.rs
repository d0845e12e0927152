//! The server-side targets: requests through the gRPC handlers in-process,
//! and the `--entities` file parser.

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::domain::{Cardinality, Entity, EntityEvent, EntityId, KNOWN_PREFIXES, diff_entities};
use crate::harness::{harness_entity, harness_id};
use crate::proto::encoded::agent_secure_server::AgentSecure;
use crate::proto::model::{self as pb, FetchEntityRequest, StreamTagsRequest, StreamTagsResponse};
use crate::server::{
    Authenticator, Epoch, PrefixFilter, ServiceConfig, Store, StoreHandle, TaggerService,
    parse_entities_file, read_entities_file, write_entities_file,
};

/// The token the service under test accepts.
const TOKEN: &str = "fuzz0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
/// A stream that owes a response and sends nothing for this long has
/// stalled: a finding (a client would wait forever).
const STALL: Duration = Duration::from_secs(5);

/// The input of [`server_request`]: a store with some history, a service
/// configuration, one call, and changes while a stream is live.
#[derive(Debug, Arbitrary)]
pub struct ServerScenario {
    /// Changes applied before the call, so a resume has a log to replay.
    history: Vec<StoreChange>,
    change_log_capacity: u8,
    /// Small, so a snapshot or a batch spans several responses (the chunk
    /// budget is half of it).
    max_message_size: u16,
    /// Live batches beyond it evict the stream.
    subscriber_buffer: u8,
    credentials: Credentials,
    call: Call,
    /// Change batches applied once a stream is synced.
    live: Vec<Vec<StoreChange>>,
}

/// A change of the store, on the harness's few entities so they collide.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum StoreChange {
    Upsert { entity: u8, variant: u8 },
    Delete { entity: u8 },
}

impl StoreChange {
    fn event(self) -> EntityEvent {
        match self {
            Self::Upsert { entity, variant } => EntityEvent::Added(harness_entity(entity, variant)),
            Self::Delete { entity } => EntityEvent::Deleted(harness_id(entity)),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Credentials {
    Valid,
    Missing,
    /// Any `authorization` value (left out if it is not a valid header value).
    Header(String),
}

impl Credentials {
    fn attach<T>(&self, request: &mut Request<T>) {
        let value = match self {
            Self::Valid => format!("Bearer {TOKEN}"),
            Self::Missing => return,
            Self::Header(value) => value.clone(),
        };
        if let Ok(value) = MetadataValue::try_from(value) {
            request.metadata_mut().insert("authorization", value);
        }
    }

    /// Checks the outcome of authentication; true if the call got past it.
    fn check<T>(&self, result: &Result<T, Status>) -> bool {
        let passed = !matches!(result, Err(status) if status.code() == Code::Unauthenticated);
        match self {
            Self::Valid => assert!(passed, "the valid token was refused"),
            Self::Missing => assert!(!passed, "a call without a token got through"),
            Self::Header(value) => assert!(
                !passed || value.contains(TOKEN),
                "authorization {value:?} got through without the token"
            ),
        }
        passed
    }
}

#[derive(Debug, Arbitrary)]
enum Call {
    Stream {
        cardinality: WireCardinality,
        prefixes: Vec<PrefixChoice>,
        resume: Option<ResumeFrom>,
    },
    Fetch {
        id: Option<FetchId>,
        cardinality: WireCardinality,
    },
    /// Raw bytes for the request message: what prost accepts reaches the
    /// handler (what it refuses, tonic answers before any handler runs).
    StreamBytes(Vec<u8>),
    FetchBytes(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum WireCardinality {
    Known(Cardinality),
    Raw(i32),
}

impl WireCardinality {
    fn value(&self) -> i32 {
        match self {
            Self::Known(cardinality) => cardinality.to_proto() as i32,
            Self::Raw(value) => *value,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum PrefixChoice {
    Known(u8),
    Other(String),
}

impl PrefixChoice {
    fn text(&self) -> String {
        match self {
            Self::Known(index) => KNOWN_PREFIXES[usize::from(*index) % KNOWN_PREFIXES.len()].into(),
            Self::Other(prefix) => prefix.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct ResumeFrom {
    /// The served store's epoch, or this one.
    other_epoch: Option<String>,
    revision: u8,
}

#[derive(Debug, Arbitrary)]
enum FetchId {
    /// One of the entities the store may hold.
    Stored(u8),
    Any {
        prefix: PrefixChoice,
        uid: String,
    },
}

impl FetchId {
    fn to_proto(&self) -> pb::EntityId {
        match self {
            Self::Stored(index) => harness_id(*index).to_proto(),
            Self::Any { prefix, uid } => pb::EntityId {
                prefix: prefix.text(),
                uid: uid.clone(),
            },
        }
    }
}

/// `server_request`: the bytes become a [`ServerScenario`]; its call goes
/// through the [`TaggerService`] handlers in-process, on a fresh
/// current-thread runtime (dropped afterwards, with any task it still has).
///
/// Checks the spec's status codes (UNAUTHENTICATED without the token,
/// INVALID_ARGUMENT for a bad cardinality or a fetch without id, OK with
/// empty tags for an unknown entity, RESOURCE_EXHAUSTED for an evicted
/// subscriber, UNAVAILABLE at shutdown), that a stream's first responses
/// come at once and bring a client exactly to the store's state (a complete
/// snapshot, or a resume replaying the right changes), within the chunk
/// budget, and that live changes keep it there.
///
/// # Panics
/// On the first broken check.
pub fn server_request(data: &[u8]) {
    let Ok(scenario) = ServerScenario::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
        .block_on(scenario.run());
}

/// What the served store holds, kept alongside it: the store at every
/// revision, so a resumed client's starting point is known.
struct Reference {
    store: Store,
    history: Vec<BTreeMap<EntityId, Entity>>,
}

impl Reference {
    fn new(store: Store) -> Self {
        Self {
            store,
            history: vec![BTreeMap::new()],
        }
    }

    /// Applies `changes`; the revision of the last effective change that
    /// `filter` matches, if any.
    fn apply(&mut self, changes: &[StoreChange], filter: &PrefixFilter) -> Option<u64> {
        let mut last_matching = None;
        for change in self.store.apply(changes.iter().map(|c| c.event())) {
            let mut entities = self.history.last().expect("revision 0").clone();
            match &change.event {
                EntityEvent::Added(entity) | EntityEvent::Modified(entity) => {
                    entities.insert(entity.id.clone(), entity.clone());
                }
                EntityEvent::Deleted(id) => {
                    entities.remove(id);
                }
            }
            assert_eq!(self.history.len() as u64, change.revision, "revisions skip");
            self.history.push(entities);
            if filter.matches(change.event.id()) {
                last_matching = Some(change.revision);
            }
        }
        last_matching
    }

    /// The store at `revision` as a subscriber of `filter` and `cardinality` sees it.
    fn view(
        &self,
        revision: u64,
        filter: &PrefixFilter,
        cardinality: Cardinality,
    ) -> BTreeMap<EntityId, Entity> {
        self.history[usize::try_from(revision).expect("small revisions")]
            .iter()
            .filter(|(id, _)| filter.matches(id))
            .map(|(id, entity)| (id.clone(), entity.reduced(cardinality)))
            .collect()
    }
}

impl ServerScenario {
    async fn run(self) {
        let epoch = Epoch::from_seed(1);
        let log_capacity = usize::from(self.change_log_capacity);
        let mut served = Store::new(epoch.clone(), log_capacity);
        served.apply(self.history.iter().map(|c| c.event()));
        let mut reference = Reference::new(Store::new(epoch, log_capacity));
        reference.apply(&self.history, &PrefixFilter::all());
        let handle = StoreHandle::new(served);
        let config = ServiceConfig {
            max_message_size: usize::from(self.max_message_size),
            subscriber_buffer: usize::from(self.subscriber_buffer),
            ..ServiceConfig::default()
        };
        let auth = Authenticator::fixed(TOKEN).expect("a valid token");
        let service = TaggerService::new(handle.clone(), auth, config);
        let call = Caller {
            service: &service,
            handle: &handle,
            credentials: &self.credentials,
        };
        match &self.call {
            Call::Stream {
                cardinality,
                prefixes,
                resume,
            } => {
                let resume = resume.as_ref();
                let request = StreamTagsRequest {
                    cardinality: cardinality.value(),
                    prefixes: prefixes.iter().map(PrefixChoice::text).collect(),
                    streaming_id: "fuzz:server-request".into(),
                    resume_revision: resume.map_or(0, |r| u64::from(r.revision)),
                    resume_epoch: resume.map_or_else(String::new, |r| {
                        r.other_epoch
                            .clone()
                            .unwrap_or_else(|| handle.epoch().as_str().to_owned())
                    }),
                    ..StreamTagsRequest::default()
                };
                call.stream(request, &mut reference, &self.live).await;
            }
            Call::Fetch { id, cardinality } => {
                let request = FetchEntityRequest {
                    id: id.as_ref().map(FetchId::to_proto),
                    cardinality: cardinality.value(),
                };
                call.fetch(request, &reference).await;
            }
            Call::StreamBytes(bytes) => {
                if let Ok(request) = StreamTagsRequest::decode(bytes.as_slice()) {
                    call.stream(request, &mut reference, &self.live).await;
                }
            }
            Call::FetchBytes(bytes) => {
                if let Ok(request) = FetchEntityRequest::decode(bytes.as_slice()) {
                    call.fetch(request, &reference).await;
                }
            }
        }
    }
}

/// One call on the service under test.
struct Caller<'a> {
    service: &'a TaggerService,
    handle: &'a StoreHandle,
    credentials: &'a Credentials,
}

fn assert_invalid_cardinality<T: std::fmt::Debug>(result: &Result<T, Status>, value: i32) {
    match result {
        Err(status) if status.code() == Code::InvalidArgument => assert!(
            status.message().starts_with("invalid cardinality"),
            "INVALID_ARGUMENT for cardinality {value} says {:?}",
            status.message()
        ),
        other => panic!("cardinality {value} answered {other:?}, not INVALID_ARGUMENT"),
    }
}

impl Caller<'_> {
    async fn fetch(&self, request: FetchEntityRequest, reference: &Reference) {
        let expected = request.clone();
        let mut call = Request::new(request);
        self.credentials.attach(&mut call);
        let result = self.service.tagger_fetch_entity(call).await;
        if !self.credentials.check(&result) {
            return;
        }
        let Some(wire_id) = expected.id else {
            match &result {
                Err(status) if status.code() == Code::InvalidArgument => assert_eq!(
                    status.message(),
                    r#"missing "id" parameter"#,
                    "fetch without id"
                ),
                other => panic!("fetch without id answered {other:?}"),
            }
            return;
        };
        let Ok(cardinality) = Cardinality::from_proto(expected.cardinality) else {
            assert_invalid_cardinality(&result, expected.cardinality);
            return;
        };
        let response = match result {
            Ok(response) => response.into_inner(),
            Err(status) => panic!("fetch of {wire_id:?} failed: {status:?}"),
        };
        // An id the store cannot hold is just an unknown entity: empty tags.
        let tags = EntityId::from_proto(&wire_id)
            .ok()
            .and_then(|id| {
                reference
                    .store
                    .get(&id)
                    .map(|e| e.entity().tags(cardinality))
            })
            .unwrap_or_default();
        assert_eq!(
            response,
            pb::FetchEntityResponse {
                id: Some(wire_id),
                cardinality: expected.cardinality,
                tags,
            },
            "fetch response"
        );
    }

    async fn stream(
        &self,
        request: StreamTagsRequest,
        reference: &mut Reference,
        live: &[Vec<StoreChange>],
    ) {
        let expected = request.clone();
        let mut call = Request::new(request);
        self.credentials.attach(&mut call);
        let result = self.service.tagger_stream_entities(call).await;
        if !self.credentials.check(&result) {
            return;
        }
        let Ok(cardinality) = Cardinality::from_proto(expected.cardinality) else {
            assert_invalid_cardinality(&result, expected.cardinality);
            return;
        };
        let responses = match result {
            Ok(response) => response.into_inner(),
            Err(status) => panic!("a valid stream request failed: {status:?}"),
        };
        let mut client = StreamClient {
            responses,
            filter: PrefixFilter::from_request(&expected.prefixes),
            cardinality,
            epoch: self.handle.epoch().as_str().to_owned(),
            budget: self.service.config().max_message_size / 2,
            view: BTreeMap::new(),
        };
        client.sync(&expected, reference).await;

        let buffer = self.service.config().subscriber_buffer.max(1);
        let mut effective_batches = 0;
        let mut last_matching = None;
        for batch in live {
            let revision = reference.store.revision();
            let matching = reference.apply(batch, &client.filter);
            let applied = self.handle.apply(batch.iter().map(|c| c.event()));
            let effective = reference.store.revision() - revision;
            assert_eq!(
                applied as u64, effective,
                "served and reference stores diverge"
            );
            effective_batches += usize::from(effective > 0);
            last_matching = matching.or(last_matching);
        }
        if effective_batches > buffer {
            client.expect_end(Code::ResourceExhausted).await;
            return;
        }
        if let Some(revision) = last_matching {
            client.follow_until(revision).await;
        }
        let expected_view = reference.view(reference.store.revision(), &client.filter, cardinality);
        assert_eq!(
            client.view, expected_view,
            "the live client drifted from the store"
        );
        self.handle.close();
        client.expect_end(Code::Unavailable).await;
    }
}

/// The client end of one stream: what it received so far, as a store.
struct StreamClient {
    responses: <TaggerService as AgentSecure>::TaggerStreamEntitiesStream,
    filter: PrefixFilter,
    cardinality: Cardinality,
    epoch: String,
    budget: usize,
    view: BTreeMap<EntityId, Entity>,
}

impl StreamClient {
    /// The next response as a client decodes it from the wire.
    async fn next(&mut self) -> Result<StreamTagsResponse, Status> {
        let item = tokio::time::timeout(STALL, self.responses.next())
            .await
            .unwrap_or_else(|_| panic!("the stream stalled for {STALL:?}"));
        let response = item.expect("the stream ended without a status")?;
        let wire = response.encode_to_vec();
        Ok(StreamTagsResponse::decode(wire.as_slice())
            .expect("the server's responses decode as StreamTagsResponse"))
    }

    /// The next response, checked and applied to the client's store.
    async fn receive(&mut self) -> StreamTagsResponse {
        let mut response = match self.next().await {
            Ok(response) => response,
            Err(status) => panic!("the stream failed: {status:?}"),
        };
        assert_eq!(response.server_epoch, self.epoch, "response epoch");
        if response.events.len() > 1 {
            let size: usize = response.events.iter().map(Message::encoded_len).sum();
            assert!(
                size <= self.budget,
                "{size} bytes of events over the {} budget",
                self.budget
            );
        }
        for event in std::mem::take(&mut response.events) {
            let event = EntityEvent::from_proto(event).expect("the server sends valid events");
            assert!(
                self.filter.matches(event.id()),
                "unrequested {}",
                event.id()
            );
            match event {
                EntityEvent::Added(entity) | EntityEvent::Modified(entity) => {
                    assert_eq!(
                        entity.reduced(self.cardinality),
                        entity,
                        "tags above the cardinality"
                    );
                    self.view.insert(entity.id.clone(), entity);
                }
                EntityEvent::Deleted(id) => {
                    self.view.remove(&id);
                }
            }
        }
        response
    }

    /// The stream's first responses: a resume if the store can replay from
    /// the request's point, otherwise a whole snapshot. Either way the client
    /// ends up with the store's state.
    async fn sync(&mut self, request: &StreamTagsRequest, reference: &Reference) {
        let can_resume = !request.resume_epoch.is_empty()
            && reference
                .store
                .changes_since(&request.resume_epoch, request.resume_revision)
                .is_some();
        let revision = reference.store.revision();
        if can_resume {
            self.view = reference.view(request.resume_revision, &self.filter, self.cardinality);
            let first = self.receive().await;
            assert!(
                first.resumed,
                "a possible resume was answered with {first:?}"
            );
            let mut last = first;
            while last.revision < revision {
                last = self.receive().await;
                assert!(
                    !last.resumed && !last.snapshot_complete,
                    "stray flags: {last:?}"
                );
            }
        } else {
            loop {
                let chunk = self.receive().await;
                assert!(!chunk.resumed, "an impossible resume was accepted");
                assert_eq!(chunk.revision, revision, "snapshot chunk revision");
                if chunk.snapshot_complete {
                    break;
                }
            }
        }
        assert_eq!(
            self.view,
            reference.view(revision, &self.filter, self.cardinality),
            "the synced client differs from the store"
        );
    }

    /// Receives live responses until one covers `revision`.
    async fn follow_until(&mut self, revision: u64) {
        loop {
            let response = self.receive().await;
            assert!(
                !response.resumed && !response.snapshot_complete,
                "stray flags: {response:?}"
            );
            if response.revision >= revision {
                return;
            }
        }
    }

    async fn expect_end(&mut self, code: Code) {
        match self.next().await {
            Err(status) => assert_eq!(status.code(), code, "stream end: {status:?}"),
            Ok(response) => panic!("expected the stream to end with {code:?}, got {response:?}"),
        }
    }
}

/// `entities_file`: arbitrary bytes as an `--entities` file. Either a clear
/// one-line error, or entities that survive a round trip through the
/// documented format and load into a consistent store; the streamed parse
/// of the server's watcher says the same as the in-memory one.
///
/// # Panics
/// On the first broken check.
pub fn entities_file(data: &[u8]) {
    let parsed = parse_entities_file(data);
    // A 3-byte buffer: every element crosses refills. serde's column of a
    // semantic error (a wrong type, an unknown field) may differ by one
    // between the two readers, so errors compare by kind.
    let streamed = read_entities_file(std::io::BufReader::with_capacity(3, data));
    match (&streamed, &parsed) {
        (Ok(streamed), Ok(parsed)) => assert_eq!(streamed, parsed, "the streamed parse differs"),
        (Err(streamed), Err(parsed)) => assert_eq!(
            std::mem::discriminant(streamed),
            std::mem::discriminant(parsed),
            "the streamed parse fails otherwise: {streamed} / {parsed}"
        ),
        _ => panic!("the streamed parse differs: {streamed:?} / {parsed:?}"),
    }
    let entities = match parsed {
        Ok(entities) => entities,
        Err(error) => {
            let message = error.to_string();
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "not a one-line error: {message:?}"
            );
            return;
        }
    };
    let mut rewritten = Vec::new();
    write_entities_file(&mut rewritten, entities.values()).expect("a Vec takes every byte");
    assert_eq!(
        parse_entities_file(&rewritten).as_ref(),
        Ok(&entities),
        "the entities do not survive a round trip"
    );
    let added = diff_entities(&BTreeMap::new(), &entities);
    let mut store = Store::new(Epoch::from_seed(0), entities.len());
    let changes = store.apply(added);
    assert_eq!(changes.len(), entities.len(), "every entity is a change");
    assert_eq!(store.len(), entities.len(), "every entity is stored");
    for entity in entities.values() {
        assert_eq!(
            store.get(&entity.id).map(|e| e.entity()),
            Some(entity),
            "stored {}",
            entity.id
        );
    }
    assert!(
        diff_entities(&entities, &entities).is_empty(),
        "a file differs from itself"
    );
}
