//! One test per transition of the client core, through its public contract
//! only: handle_* in, poll_command / poll_event / poll_timeout out.

use std::time::{Duration, Instant};

use remote_tagger::core::{
    BackoffConfig, ClientCore, Command, ConnectError, ConnectionId, ConnectionState, CoreConfig,
    Event, GrpcStatus, LossReason, ProtocolViolation, StatusCode, StreamEnd, Timer, TransportError,
    TransportErrorKind,
};
use remote_tagger::defaults::BACKOFF_RESET_AFTER;
use remote_tagger::domain::{Cardinality, Entity, EntityEvent, EntityId, KNOWN_PREFIXES};
use remote_tagger::harness::scenario;
use remote_tagger::mirror::{ChangeKind, MirrorWriter};
use remote_tagger::proto::model::{self as pb, StreamTagsResponse};

const EPOCH: &str = "epoch-a";

/// An attempt the network refused.
fn refused(detail: &str) -> ConnectError {
    ConnectError::Transport(TransportError {
        kind: TransportErrorKind::Unreachable,
        detail: detail.to_owned(),
    })
}

/// A stream whose connection broke.
fn broken(detail: &str) -> StreamEnd {
    StreamEnd::Transport(TransportError {
        kind: TransportErrorKind::Other,
        detail: detail.to_owned(),
    })
}

/// A stream the server ended with an error.
fn internal_error() -> StreamEnd {
    StreamEnd::Status(GrpcStatus {
        code: StatusCode::Internal,
        message: "internal error".to_owned(),
    })
}

struct Client {
    core: ClientCore,
    now: Instant,
}

impl Client {
    fn new(config: CoreConfig) -> (Self, Vec<Command>) {
        let now = Instant::now();
        let mut client = Self {
            core: ClientCore::new(now, config, MirrorWriter::new()),
            now,
        };
        let commands = client.commands();
        (client, commands)
    }

    /// A default client whose first open was accepted: returns its attempt id.
    fn connected() -> (Self, ConnectionId) {
        let (mut client, commands) = Self::new(CoreConfig::new("test:1", 7));
        let id = open_id(&commands[0]);
        client.core.handle_connected(client.now, id);
        (client, id)
    }

    /// A connected client that completed a snapshot of process://1 and 2.
    fn synced_on_two_entities_at_revision_9() -> (Self, ConnectionId) {
        let (mut client, id) = Self::connected();
        let snapshot = vec![added("process://1", &["a"]), added("process://2", &["b"])];
        client.respond(id, ours(snapshot, 9, true));
        (client, id)
    }

    fn commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.core.poll_command()).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
    }

    fn respond(&mut self, id: ConnectionId, response: StreamTagsResponse) -> Vec<Event> {
        self.core.handle_response(self.now, id, response);
        self.events()
    }

    /// Fails the current attempt and waits out the backoff: the next attempt's id.
    fn reconnect(&mut self, id: ConnectionId) -> (Duration, ConnectionId) {
        self.core
            .handle_stream_closed(self.now, id, broken("reset"));
        let retry_in = lost_retry_in(&self.events());
        self.advance(retry_in);
        let commands = self.commands();
        let next = open_id(&commands[0]);
        self.core.handle_connected(self.now, next);
        (retry_in, next)
    }

    fn mirror_ids(&self) -> Vec<String> {
        self.core
            .mirror()
            .list()
            .iter()
            .map(|e| e.id.to_string())
            .collect()
    }
}

fn open_id(command: &Command) -> ConnectionId {
    match command {
        Command::OpenStream { id, .. } => *id,
        other => panic!("expected an open, got {other:?}"),
    }
}

fn open_request(command: &Command) -> &pb::StreamTagsRequest {
    match command {
        Command::OpenStream { request, .. } => request,
        other => panic!("expected an open, got {other:?}"),
    }
}

fn lost_retry_in(events: &[Event]) -> Duration {
    match events {
        [Event::ConnectionLost { retry_in, .. }] => *retry_in,
        other => panic!("expected one ConnectionLost, got {other:?}"),
    }
}

fn entity(id: &str, low: &[&str]) -> Entity {
    let mut entity = Entity::new(EntityId::parse(id).unwrap());
    entity.low = low.iter().map(|t| (*t).to_owned()).collect();
    entity.orchestrator = vec![format!("pod_name:{id}")];
    entity.high = vec![format!("uid:{id}")];
    entity
}

fn added(id: &str, low: &[&str]) -> pb::StreamTagsEvent {
    EntityEvent::Added(entity(id, low)).to_proto(Cardinality::High)
}

fn deleted(id: &str) -> pb::StreamTagsEvent {
    EntityEvent::Deleted(EntityId::parse(id).unwrap()).to_proto(Cardinality::High)
}

/// A plain Datadog response: no extension fields.
fn plain(events: Vec<pb::StreamTagsEvent>) -> StreamTagsResponse {
    StreamTagsResponse {
        events,
        ..Default::default()
    }
}

/// A response of our extension-aware server.
fn ours(events: Vec<pb::StreamTagsEvent>, revision: u64, complete: bool) -> StreamTagsResponse {
    StreamTagsResponse {
        events,
        revision,
        snapshot_complete: complete,
        server_epoch: EPOCH.into(),
        resumed: false,
    }
}

#[test]
fn new_core_opens_at_once_with_an_explicit_request_and_a_watchdog() {
    let mut config = CoreConfig::new("test:uuid", 1);
    config.cardinality = Cardinality::Orchestrator;
    let (client, commands) = Client::new(config);
    assert_eq!(commands.len(), 1);
    let request = open_request(&commands[0]);
    assert_eq!(request.cardinality, pb::TagCardinality::Orchestrator as i32);
    assert_eq!(
        request.prefixes, KNOWN_PREFIXES,
        "an empty prefix list is sent explicitly as all"
    );
    assert_eq!(request.streaming_id, "test:uuid");
    assert_eq!(
        (request.resume_revision, request.resume_epoch.as_str()),
        (0, "")
    );
    let timeout = client.core.poll_timeout();
    assert_eq!(timeout.timer, Timer::ReceiveWatchdog);
    assert_eq!(timeout.at, client.now + Duration::from_secs(600));
    assert_eq!(client.core.connection_state(), ConnectionState::Connecting);
}

#[test]
fn connect_failure_backs_off_then_retries_with_a_fresh_id() {
    let (mut client, commands) = Client::new(CoreConfig::new("test:1", 3));
    let first = open_id(&commands[0]);
    client
        .core
        .handle_connect_failed(client.now, first, refused("connection refused"));
    let retry_in = lost_retry_in(&client.events());
    assert!((Duration::from_millis(250)..=Duration::from_millis(750)).contains(&retry_in));
    let timeout = client.core.poll_timeout();
    assert_eq!(
        (timeout.timer, timeout.at),
        (Timer::Reconnect, client.now + retry_in)
    );
    assert_eq!(client.core.connection_state(), ConnectionState::BackingOff);
    // Not yet due: nothing happens.
    client.advance(retry_in - Duration::from_millis(1));
    assert!(client.commands().is_empty());
    client.advance(Duration::from_millis(1));
    let second = open_id(&client.commands()[0]);
    assert!(second > first);
}

#[test]
fn headers_alone_neither_reset_backoff_nor_feed_the_watchdog() {
    let (mut client, first) = Client::connected();
    let (_, second) = client.reconnect(first);
    let interval = client.core.backoff_interval();
    assert_eq!(
        interval,
        Duration::from_millis(750),
        "one failure grew the interval"
    );
    let watchdog = client.core.poll_timeout().at;
    client.now += Duration::from_secs(5);
    client.core.handle_connected(client.now, second);
    assert_eq!(client.core.backoff_interval(), interval);
    assert_eq!(client.core.poll_timeout().at, watchdog);
    assert_eq!(client.core.connection_state(), ConnectionState::Syncing);
}

#[test]
fn keep_alive_refreshes_the_watchdog_and_changes_nothing_else() {
    let (mut client, id) = Client::connected();
    client.now += Duration::from_secs(540);
    let events = client.respond(id, plain(vec![]));
    assert!(events.is_empty());
    assert_eq!(
        client.core.poll_timeout().at,
        client.now + Duration::from_secs(600)
    );
    assert_eq!(client.core.telemetry().receives, 1);
    assert!(!client.core.is_synced());
    assert!(client.core.mirror().is_empty());
}

#[test]
fn receive_watchdog_fires_only_after_full_silence() {
    let mut config = CoreConfig::new("test:1", 1);
    config.receive_timeout = Duration::from_secs(30);
    let (mut client, commands) = Client::new(config);
    let id = open_id(&commands[0]);
    client.advance(Duration::from_secs(20));
    client.respond(id, plain(vec![]));
    client.advance(Duration::from_secs(29));
    assert!(
        client.commands().is_empty(),
        "29 s after the last message is not silence enough"
    );
    client.advance(Duration::from_secs(1));
    assert_eq!(client.commands(), vec![Command::CloseStream { id }]);
    let events = client.events();
    assert!(
        matches!(&events[..], [Event::ConnectionLost { reason: reason @ LossReason::ReceiveTimeout { .. }, .. }] if reason.to_string().contains("receive timeout"))
    );
    assert_eq!(client.core.telemetry().stream_errors, 1);
}

#[test]
fn extension_snapshot_is_staged_and_swapped_in_whole() {
    let (mut client, id) = Client::connected();
    let events = client.respond(
        id,
        ours(
            vec![added("process://1", &["a"]), added("process://2", &["b"])],
            5,
            false,
        ),
    );
    assert!(events.is_empty());
    assert!(
        client.core.mirror().is_empty(),
        "readers never see a half-filled snapshot"
    );
    assert!(!client.core.is_synced());
    let events = client.respond(
        id,
        ours(
            vec![added("process://3", &["c"]), deleted("process://2")],
            5,
            true,
        ),
    );
    assert_eq!(client.mirror_ids(), ["process://1", "process://3"]);
    assert!(matches!(events[0], Event::EntitiesChanged(ref changes) if changes.len() == 2));
    assert_eq!(
        events[1],
        Event::Synced {
            resumed: false,
            entities: 2
        }
    );
    let point = client.core.resume_point().unwrap();
    assert_eq!((point.epoch.as_str(), point.revision), (EPOCH, 5));
    assert_eq!(client.core.telemetry().snapshots, 1);
}

#[test]
fn empty_extension_snapshot_syncs_an_empty_mirror() {
    let (mut client, id) = Client::connected();
    let events = client.respond(id, ours(vec![], 0, true));
    assert_eq!(
        events,
        vec![Event::Synced {
            resumed: false,
            entities: 0
        }]
    );
    assert!(client.core.is_synced());
}

#[test]
fn plain_server_first_batch_replaces_and_later_batches_merge() {
    let (mut client, id) = Client::connected();
    client.respond(id, plain(vec![added("process://old", &["x"])]));
    let (_, id) = client.reconnect(id);
    let events = client.respond(id, plain(vec![added("process://1", &["a"])]));
    assert_eq!(
        client.mirror_ids(),
        ["process://1"],
        "the first batch replaces the store"
    );
    assert!(events.contains(&Event::Synced {
        resumed: false,
        entities: 1
    }));
    assert!(client.core.resume_point().is_none());
    client.respond(id, plain(vec![added("process://2", &["b"])]));
    assert_eq!(
        client.mirror_ids(),
        ["process://1", "process://2"],
        "later batches merge"
    );
}

#[test]
fn mirror_survives_disconnects() {
    let (mut client, id) = Client::connected();
    client.respond(id, ours(vec![added("process://1", &["a"])], 1, true));
    client
        .core
        .handle_stream_closed(client.now, id, broken("gone"));
    assert!(!client.core.is_synced());
    assert_eq!(client.mirror_ids(), ["process://1"]);
    assert_eq!(
        client.core.mirror().tags("process://1", Cardinality::Low),
        ["a"]
    );
}

#[test]
fn reconnect_asks_to_resume_and_applies_deltas_when_resumed() {
    let (mut client, id) = Client::synced_on_two_entities_at_revision_9();
    client
        .core
        .handle_stream_closed(client.now, id, broken("reset"));
    let retry_in = lost_retry_in(&client.events());
    client.advance(retry_in);
    let commands = client.commands();
    let request = open_request(&commands[0]);
    assert_eq!(
        (request.resume_revision, request.resume_epoch.as_str()),
        (9, EPOCH)
    );
    let id = open_id(&commands[0]);
    let mut resumed = ours(vec![deleted("process://2")], 10, false);
    resumed.resumed = true;
    let events = client.respond(id, resumed);
    assert_eq!(client.mirror_ids(), ["process://1"]);
    assert!(events.contains(&Event::Synced {
        resumed: true,
        entities: 1
    }));
    assert_eq!(client.core.resume_point().unwrap().revision, 10);
    assert_eq!(
        (
            client.core.telemetry().resumes,
            client.core.telemetry().snapshots
        ),
        (1, 1)
    );
}

#[test]
fn refused_resume_gets_a_fresh_snapshot_that_drops_entities_deleted_meanwhile() {
    let (mut client, id) = Client::synced_on_two_entities_at_revision_9();
    let (_, id) = client.reconnect(id);
    let mut fresh = ours(vec![added("process://1", &["a2"])], 40, true);
    fresh.server_epoch = "epoch-b".into();
    let events = client.respond(id, fresh);
    assert_eq!(client.mirror_ids(), ["process://1"]);
    let Event::EntitiesChanged(changes) = &events[0] else {
        panic!("{events:?}")
    };
    let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::Modified, ChangeKind::Deleted]);
    assert_eq!(client.core.resume_point().unwrap().epoch, "epoch-b");
}

#[test]
fn backoff_resets_only_once_a_stream_stayed_up_its_reset_period_after_a_good_message() {
    let (mut client, id) = Client::connected();
    let (_, id) = client.reconnect(id);
    let (_, id) = client.reconnect(id);
    assert_eq!(client.core.backoff_interval(), Duration::from_millis(1125));
    client.respond(id, plain(vec![]));
    assert_eq!(
        client.core.poll_timeout().timer,
        Timer::ReceiveWatchdog,
        "a keep-alive is no proof"
    );
    client.respond(id, plain(vec![added("process://1", &["a"])]));
    assert_eq!(
        client.core.backoff_interval(),
        Duration::from_millis(1125),
        "a good message alone is no proof that the server stays up"
    );
    let reset = client.core.poll_timeout();
    assert_eq!(
        (reset.timer, reset.at),
        (Timer::BackoffReset, client.now + BACKOFF_RESET_AFTER)
    );
    // More good messages do not move the deadline.
    client.now += Duration::from_secs(10);
    client.respond(id, plain(vec![added("process://2", &["b"])]));
    assert_eq!(client.core.poll_timeout(), reset);
    client.advance(reset.at - client.now - Duration::from_millis(1));
    assert_eq!(client.core.backoff_interval(), Duration::from_millis(1125));
    client.advance(Duration::from_millis(1));
    assert_eq!(client.core.backoff_interval(), Duration::from_millis(500));
    assert!(client.commands().is_empty() && client.events().is_empty());
    assert_eq!(
        client.core.poll_timeout().timer,
        Timer::ReceiveWatchdog,
        "the reset fires once per stream"
    );
    let (retry_in, _) = client.reconnect(id);
    assert!(
        retry_in <= Duration::from_millis(750),
        "{retry_in:?} is drawn around the initial interval"
    );
}

#[test]
fn a_stream_lost_within_its_reset_period_keeps_climbing_the_backoff() {
    let (mut client, id) = Client::connected();
    let (_, id) = client.reconnect(id);
    client.respond(id, ours(vec![added("process://1", &["a"])], 1, true));
    client.now += BACKOFF_RESET_AFTER - Duration::from_millis(1);
    let (retry_in, _) = client.reconnect(id);
    let (low, high) = BackoffConfig::default().jitter_bounds(Duration::from_millis(750));
    assert!(
        (low..=high).contains(&retry_in),
        "{retry_in:?} is drawn around the second interval"
    );
    assert_eq!(client.core.backoff_interval(), Duration::from_millis(1125));
}

/// At the deadline the reset is earned whichever input the driver handles
/// first: its timeout, or the stream's end.
#[test]
fn a_stream_lost_at_its_reset_deadline_resets_first() {
    let (mut client, id) = Client::connected();
    let (_, id) = client.reconnect(id);
    client.respond(id, ours(vec![added("process://1", &["a"])], 1, true));
    client.now += BACKOFF_RESET_AFTER;
    let (retry_in, _) = client.reconnect(id);
    assert!(
        retry_in <= Duration::from_millis(750),
        "{retry_in:?} is drawn around the initial interval"
    );
}

/// With no reset period the spec's own rule holds: a good message resets.
#[test]
fn a_zero_reset_period_resets_on_the_good_message() {
    let mut config = CoreConfig::new("test:1", 5);
    config.backoff.reset_after = Duration::ZERO;
    let (mut client, commands) = Client::new(config);
    let id = open_id(&commands[0]);
    client.core.handle_connected(client.now, id);
    let (_, id) = client.reconnect(id);
    assert_eq!(client.core.backoff_interval(), Duration::from_millis(750));
    client.respond(id, plain(vec![added("process://1", &["a"])]));
    assert_eq!(client.core.backoff_interval(), Duration::from_millis(500));
    assert_eq!(client.core.poll_timeout().timer, Timer::ReceiveWatchdog);
}

#[test]
fn backoff_grows_to_its_cap_and_never_gives_up() {
    let mut config = CoreConfig::new("test:1", 9);
    config.backoff = BackoffConfig {
        max_interval: Duration::from_secs(10),
        ..BackoffConfig::default()
    };
    let (mut client, commands) = Client::new(config);
    let mut id = open_id(&commands[0]);
    for _ in 0..30 {
        client
            .core
            .handle_connect_failed(client.now, id, refused("refused"));
        let retry_in = lost_retry_in(&client.events());
        assert!(retry_in <= Duration::from_secs(15));
        client.advance(retry_in);
        id = open_id(&client.commands()[0]);
    }
    assert_eq!(client.core.backoff_interval(), Duration::from_secs(10));
}

#[test]
fn stale_ids_change_nothing() {
    let (mut client, first) = Client::connected();
    let (_, second) = client.reconnect(first);
    let timeout = client.core.poll_timeout();
    client.core.handle_response(
        client.now,
        first,
        ours(vec![added("process://1", &["a"])], 1, true),
    );
    client
        .core
        .handle_stream_closed(client.now, first, broken("late"));
    client
        .core
        .handle_connect_failed(client.now, ConnectionId(99), refused("future"));
    assert!(client.commands().is_empty() && client.events().is_empty());
    assert!(client.core.mirror().is_empty());
    assert_eq!(client.core.poll_timeout(), timeout);
    assert_eq!(client.core.current_connection(), Some(second));
    assert_eq!(client.core.telemetry().receives, 0);
}

/// wire-spec section 1: a prefix outside the table (a newer Agent's) is
/// kept whether requested or not; a known prefix that was not requested is
/// the server breaking the filter, and is rejected.
#[test]
fn prefixes_outside_the_table_are_kept_and_unrequested_known_ones_rejected() {
    let mut config = CoreConfig::new("test:1", 1);
    config.prefixes = vec!["process".into(), "kubernetes_future_thing".into()];
    let (mut client, commands) = Client::new(config);
    let id = open_id(&commands[0]);
    let Command::OpenStream { request, .. } = &commands[0] else {
        unreachable!("open_id checked it")
    };
    assert_eq!(request.prefixes, ["process", "kubernetes_future_thing"]);
    client.respond(
        id,
        plain(vec![
            added("kubernetes_future_thing://ns/a", &["a"]),
            added("kueue_workload://ns/job", &["b"]),
            added("other_new_thing://x", &["c"]),
            added("process://1", &["d"]),
        ]),
    );
    assert_eq!(
        client.mirror_ids(),
        [
            "kubernetes_future_thing://ns/a",
            "other_new_thing://x",
            "process://1"
        ]
    );
    let mirror = client.core.mirror();
    assert_eq!(mirror.tags("other_new_thing://x", Cardinality::Low), ["c"]);
    assert_eq!(mirror.unknown_prefix_entities(), 2);
    let rejected = &client.core.telemetry().rejected_events;
    assert_eq!(rejected.get("unrequested_prefix"), Some(&1), "{rejected:?}");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    client.respond(id, plain(vec![deleted("other_new_thing://x")]));
    assert_eq!(client.core.mirror().unknown_prefix_entities(), 1);
}

#[test]
fn malformed_and_unrequested_events_are_skipped_and_counted() {
    let mut config = CoreConfig::new("test:1", 1);
    config.prefixes = vec!["process".into()];
    config.cardinality = Cardinality::Low;
    let (mut client, commands) = Client::new(config);
    let id = open_id(&commands[0]);
    let missing_id = pb::StreamTagsEvent {
        r#type: 0,
        entity: Some(pb::Entity::default()),
    };
    let unknown_type = pb::StreamTagsEvent {
        r#type: 5,
        ..added("process://9", &["x"])
    };
    let separator_in_prefix = pb::StreamTagsEvent {
        r#type: 0,
        entity: Some(pb::Entity {
            id: Some(pb::EntityId {
                prefix: "pod://x".into(),
                uid: "1".into(),
            }),
            ..Default::default()
        }),
    };
    let events = vec![
        missing_id,
        unknown_type,
        separator_in_prefix,
        added("container_id://c", &["y"]),
        added("process://1", &["a"]),
    ];
    client.respond(id, plain(events));
    assert_eq!(client.mirror_ids(), ["process://1"]);
    let stored = client.core.mirror().entity("process://1").unwrap();
    assert!(
        stored.high.is_empty() && stored.orchestrator.is_empty(),
        "reduced to LOW client-side"
    );
    let rejected = &client.core.telemetry().rejected_events;
    assert_eq!(rejected.get("missing_id"), Some(&1));
    assert_eq!(rejected.get("unknown_event_type"), Some(&1));
    assert_eq!(rejected.get("separator_in_prefix"), Some(&1));
    assert_eq!(rejected.get("unrequested_prefix"), Some(&1));
}

#[test]
fn delete_of_an_unknown_id_is_a_no_op() {
    let (mut client, id) = Client::connected();
    client.respond(id, ours(vec![added("process://1", &["a"])], 1, true));
    let events = client.respond(id, ours(vec![deleted("process://404")], 2, false));
    assert!(events.is_empty());
    assert_eq!(client.mirror_ids(), ["process://1"]);
    assert_eq!(client.core.resume_point().unwrap().revision, 2);
}

#[test]
fn epoch_change_mid_snapshot_drops_the_stream() {
    let (mut client, id) = Client::connected();
    client.respond(id, ours(vec![added("process://1", &["a"])], 1, false));
    let mut other = ours(vec![added("process://2", &["b"])], 1, true);
    other.server_epoch = "epoch-z".into();
    let events = client.respond(id, other);
    assert_eq!(client.commands(), vec![Command::CloseStream { id }]);
    assert!(
        matches!(&events[..], [Event::ConnectionLost { reason: reason @ LossReason::ProtocolViolation(ProtocolViolation::EpochChangedMidSnapshot { .. }), .. }] if reason.to_string().contains("protocol violation"))
    );
    assert!(
        client.core.mirror().is_empty(),
        "the staged half snapshot is discarded"
    );
}

#[test]
fn resumed_answer_for_an_epoch_we_never_had_is_a_violation() {
    let (mut client, id) = Client::connected();
    let mut resumed = ours(vec![], 3, false);
    resumed.resumed = true;
    client.respond(id, resumed);
    assert_eq!(client.commands(), vec![Command::CloseStream { id }]);
    assert!(!client.core.is_synced());
}

#[test]
fn live_changes_are_published_as_events() {
    let (mut client, id) = Client::connected();
    client.respond(id, ours(vec![added("process://1", &["a"])], 1, true));
    let events = client.respond(
        id,
        ours(
            vec![added("process://1", &["b"]), added("process://2", &["c"])],
            3,
            false,
        ),
    );
    let [Event::EntitiesChanged(changes)] = &events[..] else {
        panic!("{events:?}")
    };
    let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::Modified, ChangeKind::Added]);
    assert_eq!(client.core.telemetry().updated_entities, 1 + 2);
    assert_eq!(
        client.core.mirror().tags("process://1", Cardinality::High),
        ["b", "pod_name:process://1", "uid:process://1"]
    );
}

/// The resync loop of issue 17: a server that completes a snapshot and
/// fails at once, again and again. Each failure must climb the backoff
/// ladder as a plain connect failure does, so a minute of it holds no more
/// attempts than the ladder allows (before the fix: one every 0.25-0.75 s,
/// each a full snapshot).
#[test]
fn a_server_that_fails_right_after_each_snapshot_climbs_the_backoff_ladder() {
    let config = CoreConfig::new("test:1", 11);
    let ladder = config.backoff.clone();
    let (mut client, commands) = Client::new(config);
    let mut id = open_id(&commands[0]);
    let started = client.now;
    let minute = Duration::from_secs(60);
    let mut attempts = 1;
    let mut interval = ladder.initial_interval;
    while client.now - started < minute {
        client.core.handle_connected(client.now, id);
        let synced = client.respond(id, ours(vec![added("process://1", &["a"])], 1, true));
        assert!(
            synced.iter().any(|e| matches!(e, Event::Synced { .. })),
            "{synced:?}"
        );
        client
            .core
            .handle_stream_closed(client.now, id, internal_error());
        let retry_in = lost_retry_in(&client.events());
        let (low, high) = ladder.jitter_bounds(interval);
        assert!(
            (low..=high).contains(&retry_in),
            "attempt {attempts}: {retry_in:?} is off the ladder's rung {low:?}..={high:?}"
        );
        interval = ladder.grow(interval);
        client.advance(retry_in);
        id = open_id(&client.commands()[0]);
        attempts += 1;
    }
    let bound = scenario::most_attempts_within(&ladder, minute);
    assert!(
        attempts <= bound,
        "{attempts} attempts in a simulated minute; the ladder allows {bound}"
    );
}
