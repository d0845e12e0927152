//! The client-side targets: the core's transitions, and what it makes of
//! arbitrary server responses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use prost::Message;

use crate::core::{
    ClientCore, Command, ConnectionId, CoreConfig, Event, GrpcStatus, StatusCode, StreamEnd,
    UNREQUESTED_PREFIX,
};
use crate::domain::{Cardinality, DomainError, Entity, EntityEvent, EntityId, entity_hash};
use crate::harness::{self, CONVERGE_STEPS, HarnessConfig, Op, client_keeps};
use crate::mirror::{ChangeKind, EntityChange, MirrorReader, MirrorWriter};
use crate::proto::encoded::EncodedStreamTagsResponse;
use crate::proto::model::StreamTagsEvent;

/// The input of [`core_transitions`]: a harness configuration and the ops
/// the network, the server and time perform.
#[derive(Debug, Arbitrary)]
pub struct CoreScenario {
    /// The harness: timeouts, backoff and what the model server holds.
    pub config: HarnessConfig,
    /// What happens, in order.
    pub ops: Vec<Op>,
}

/// `core_transitions`: the bytes become a [`CoreScenario`] that drives the
/// client core against the model server of [`crate::harness`], the same
/// harness as the proptest test `tests/core_model.rs`, which checks every
/// invariant after every op; then the run must converge.
///
/// # Panics
/// On the first invariant violation, with the tail of the trace.
pub fn core_transitions(data: &[u8]) {
    let Ok(scenario) = CoreScenario::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let result = harness::run(scenario.config, &scenario.ops, Instant::now())
        .and_then(|mut run| run.converge(CONVERGE_STEPS));
    if let Err(violation) = result {
        panic!("client core invariant violated: {violation}");
    }
}

/// `decode_response`: arbitrary bytes as what a tagger server sends.
///
/// The first byte picks the client's subscription (cardinality, and every
/// known prefix or only two of them); the rest is a sequence of
/// length-delimited `StreamTagsResponse` messages, each decoded as the
/// driver does (events left encoded, see [`crate::wire`]) and handed to a
/// client core on its open stream. Undecodable bytes break the stream, as a
/// decode error does in the driver. A response that makes
/// the core drop its stream is followed by a reconnect, so later responses
/// exercise the resume and resync paths too.
///
/// After every response it checks that the mirror is consistent with itself
/// and with the subscription, that it changed only as the core's events say
/// and only into a synced state (never half a snapshot), and that every
/// event was either accepted or rejected and counted under its reason.
///
/// # Panics
/// On the first broken check.
pub fn decode_response(data: &[u8]) {
    let Some((&subscription, mut frames)) = data.split_first() else {
        return;
    };
    let mut client = DecodeClient::new(subscription);
    while !frames.is_empty() {
        match EncodedStreamTagsResponse::decode_length_delimited(&mut frames) {
            Ok(response) => client.receive(response),
            Err(error) => {
                // What tonic ends a stream with when a message does not decode.
                client.break_stream(StreamEnd::Status(GrpcStatus {
                    code: StatusCode::Internal,
                    message: format!("undecodable response: {error}"),
                }));
                return;
            }
        }
    }
}

/// A client core on a scripted stream, for [`decode_response`].
struct DecodeClient {
    core: ClientCore,
    mirror: MirrorReader,
    now: Instant,
    /// The open stream the responses arrive on.
    stream: ConnectionId,
}

impl DecodeClient {
    /// Bits 0-1 of `subscription` pick the cardinality, bit 2 a subscription
    /// to two prefixes only (so well-formed events can still be unrequested),
    /// the whole byte seeds the backoff jitter.
    fn new(subscription: u8) -> Self {
        let mut config = CoreConfig::new("fuzz:decode-response", u64::from(subscription));
        config.cardinality = Cardinality::ALL[usize::from(subscription & 3) % 3];
        if subscription & 4 != 0 {
            config.prefixes = vec!["container_id".to_owned(), "process".to_owned()];
        }
        let now = Instant::now();
        let core = ClientCore::new(now, config, MirrorWriter::new());
        let mirror = core.mirror();
        let mut client = Self {
            core,
            mirror,
            now,
            stream: ConnectionId(0),
        };
        client.open_stream();
        client
    }

    /// Executes the core's open command and reports the headers.
    fn open_stream(&mut self) {
        match self.core.poll_command() {
            Some(Command::OpenStream { id, .. }) => self.stream = id,
            other => panic!("a core due to connect asked for {other:?}"),
        }
        assert_eq!(self.core.poll_command(), None, "more than one open");
        assert!(self.core.poll_event().is_none(), "an open with an event");
        self.core.handle_connected(self.now, self.stream);
    }

    /// If the last response made the core drop its stream, waits out the
    /// backoff and opens the next one.
    fn ensure_stream(&mut self) {
        if self.core.current_connection().is_some() {
            return;
        }
        let timeout = self.core.poll_timeout();
        self.now = self.now.max(timeout.at);
        self.core.handle_timeout(self.now);
        self.open_stream();
    }

    fn receive(&mut self, response: EncodedStreamTagsResponse) {
        self.ensure_stream();
        self.now += Duration::from_millis(10);
        let requested = self.core.config().requested_prefixes();
        let expected_rejections = rejections(&response.events, &requested);
        let telemetry_before = self.core.telemetry().clone();
        let before = self.mirror_map();

        self.core.handle_response(self.now, self.stream, response);

        let telemetry = self.core.telemetry();
        assert_eq!(
            telemetry.receives,
            telemetry_before.receives + 1,
            "a response on the open stream was not counted"
        );
        let mut rejected = telemetry.rejected_events.clone();
        for (reason, count) in &telemetry_before.rejected_events {
            *rejected.get_mut(reason).expect("counters never vanish") -= count;
        }
        rejected.retain(|_, count| *count > 0);
        assert_eq!(
            rejected, expected_rejections,
            "events rejected (by reason) differ from the malformed and unrequested ones"
        );

        let dropped = self.core.current_connection().is_none();
        let closed = self.core.poll_command();
        match (&closed, dropped) {
            (None, false) => {}
            (Some(Command::CloseStream { id }), true) if *id == self.stream => {}
            _ => panic!("command {closed:?} with stream dropped={dropped}"),
        }
        assert_eq!(self.core.poll_command(), None, "more than one command");

        let after = self.mirror_map();
        let mut changes = Vec::new();
        let mut lost = false;
        while let Some(event) = self.core.poll_event() {
            match event {
                Event::EntitiesChanged(batch) => changes.extend(batch),
                Event::Synced { entities, .. } => assert_eq!(
                    entities,
                    after.len(),
                    "Synced announces a different entity count than the mirror holds"
                ),
                Event::ConnectionLost { id, .. } => {
                    assert_eq!(id, self.stream, "lost a stream that was not open");
                    lost = true;
                }
            }
        }
        assert_eq!(
            lost, dropped,
            "stream dropped without ConnectionLost, or vice versa"
        );
        check_changes(&before, &after, &changes);
        if before != after {
            assert!(
                self.core.is_synced(),
                "the mirror changed while the core is {:?}: readers saw a partial snapshot",
                self.core.connection_state()
            );
        }
        check_mirror(&self.mirror, self.core.config());
    }

    fn break_stream(&mut self, end: StreamEnd) {
        self.ensure_stream();
        let before = self.mirror_map();
        self.core.handle_stream_closed(self.now, self.stream, end);
        assert!(
            self.core.current_connection().is_none(),
            "a closed stream stays open"
        );
        assert_eq!(before, self.mirror_map(), "a disconnect changed the mirror");
    }

    fn mirror_map(&self) -> BTreeMap<EntityId, Entity> {
        let list = self.mirror.list();
        let count = list.len();
        let map: BTreeMap<EntityId, Entity> = list
            .into_iter()
            .map(|entity| (entity.id.clone(), entity))
            .collect();
        assert_eq!(map.len(), count, "the mirror lists an id twice");
        map
    }
}

/// How many of `events` a client requesting `requested` must reject, by reason.
/// Independent of the core's in-place decoder: prost and
/// `EntityEvent::from_proto` say what each event is.
fn rejections(events: &[Bytes], requested: &[String]) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for event in events {
        let reason = match StreamTagsEvent::decode(event.as_ref()).map(EntityEvent::from_proto) {
            Ok(Ok(event)) if client_keeps(requested, event.id().prefix()) => continue,
            Ok(Ok(_)) => UNREQUESTED_PREFIX,
            Ok(Err(error)) => error.reason(),
            Err(_) => DomainError::MalformedEvent.reason(),
        };
        *counts.entry(reason).or_default() += 1;
    }
    counts
}

/// The reported changes explain the mirror's difference exactly: every id
/// whose content changed is reported, each id's first change fits what the
/// mirror held before and its last change fits what it holds now.
fn check_changes(
    before: &BTreeMap<EntityId, Entity>,
    after: &BTreeMap<EntityId, Entity>,
    changes: &[EntityChange],
) {
    let mut first_and_last: BTreeMap<&EntityId, (ChangeKind, ChangeKind)> = BTreeMap::new();
    for change in changes {
        first_and_last
            .entry(&change.id)
            .and_modify(|(_, last)| *last = change.kind)
            .or_insert((change.kind, change.kind));
    }
    for (id, (first, last)) in &first_and_last {
        let was_there = before.contains_key(*id);
        assert_eq!(
            *first != ChangeKind::Added,
            was_there,
            "first change of {id} is {first:?}, but it was there before: {was_there}"
        );
        let is_there = after.contains_key(*id);
        assert_eq!(
            *last != ChangeKind::Deleted,
            is_there,
            "last change of {id} is {last:?}, but it is there now: {is_there}"
        );
    }
    let ids = before.keys().chain(after.keys());
    for id in ids.filter(|id| before.get(*id) != after.get(*id)) {
        assert!(
            first_and_last.contains_key(id),
            "{id} changed without being reported"
        );
    }
}

/// Every query of the mirror agrees with its listing, and the listing holds
/// only what the subscription allows: requested prefixes (and prefixes
/// outside the table, see [`client_keeps`]), tags reduced to the subscribed
/// cardinality.
fn check_mirror(mirror: &MirrorReader, config: &CoreConfig) {
    let requested = config.requested_prefixes();
    let entities = mirror.list();
    assert_eq!(mirror.len(), entities.len(), "len() differs from list()");
    let by_prefix = mirror.stored_by_prefix();
    let unknown = entities.iter().filter(|e| !e.id.has_known_prefix()).count();
    assert_eq!(
        mirror.unknown_prefix_entities(),
        unknown as u64,
        "unknown-prefix count differs from list()"
    );
    assert_eq!(
        by_prefix.values().sum::<u64>() + unknown as u64,
        entities.len() as u64,
        "per-prefix counts differ from list()"
    );
    assert!(
        by_prefix.keys().all(|prefix| requested.contains(prefix)),
        "entities stored under unrequested prefixes: {by_prefix:?}"
    );
    for entity in &entities {
        let id = entity.id.as_str();
        assert_eq!(
            entity.reduced(config.cardinality),
            *entity,
            "{id} holds tags above the subscribed cardinality"
        );
        assert_eq!(mirror.entity(id).as_ref(), Some(entity), "entity({id})");
        assert_eq!(mirror.standard(id), entity.standard, "standard({id})");
        for cardinality in Cardinality::ALL {
            let tags = entity.tags(cardinality);
            assert_eq!(
                mirror.tags(id, cardinality),
                tags,
                "tags({id}, {cardinality})"
            );
            assert_eq!(
                mirror.hash(id, cardinality),
                entity_hash(&tags),
                "hash({id}, {cardinality})"
            );
        }
    }
    let view = mirror.view();
    for cardinality in Cardinality::ALL {
        let ids = entities.iter().map(|entity| entity.id.as_str());
        let found: Vec<_> = view.tags_of(ids, cardinality).collect();
        assert_eq!(found.len(), entities.len(), "tags_of yields one per id");
        for (entity, (id, tags)) in entities.iter().zip(found) {
            assert_eq!(id, entity.id.as_str(), "tags_of order");
            assert_eq!(
                tags,
                entity.tags(cardinality),
                "tags_of({id}, {cardinality})"
            );
        }
    }
}
