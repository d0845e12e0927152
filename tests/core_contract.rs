//! What the client core promises beyond its transitions, which neither the
//! transition tests nor the simulations observe: its progress and identity
//! accessors, and the defensive reduction of tags a server sends beyond the
//! subscribed cardinality (our server and the model server never do).

use std::time::{Duration, Instant};

use remote_tagger::core::{Backoff, BackoffConfig, ClientCore, Command, ConnectionId, CoreConfig};
use remote_tagger::domain::{Cardinality, Entity, EntityEvent, EntityId};
use remote_tagger::mirror::MirrorWriter;
use remote_tagger::proto::model::StreamTagsResponse;

fn entity(id: &str, variant: &str) -> Entity {
    let mut entity = Entity::new(EntityId::parse(id).unwrap());
    entity.low = vec![format!("env:{variant}")];
    entity.orchestrator = vec![format!("pod_name:{variant}")];
    entity.high = vec![format!("container_id:{variant}")];
    entity
}

/// A response of an extension-aware server carrying every tag of `events`.
fn response(events: Vec<EntityEvent>, revision: u64, complete: bool) -> StreamTagsResponse {
    StreamTagsResponse {
        events: events
            .iter()
            .map(|event| event.to_proto(Cardinality::High))
            .collect(),
        revision,
        snapshot_complete: complete,
        server_epoch: "epoch-1".to_owned(),
        resumed: false,
    }
}

/// A core of `cardinality` whose first open was accepted.
fn connected(cardinality: Cardinality) -> (ClientCore, Instant, ConnectionId) {
    let now = Instant::now();
    let mut config = CoreConfig::new("test:contract", 3);
    config.cardinality = cardinality;
    config.prefixes = vec!["process".to_owned()];
    let mut core = ClientCore::new(now, config, MirrorWriter::new());
    let Some(Command::OpenStream { id, .. }) = core.poll_command() else {
        panic!("a new core opens a stream at once");
    };
    core.handle_connected(now, id);
    (core, now, id)
}

#[test]
fn connection_ids_read_as_conn_number() {
    assert_eq!(ConnectionId(7).to_string(), "conn#7");
}

#[test]
fn staged_entities_count_a_snapshot_in_progress_only() {
    let (mut core, now, id) = connected(Cardinality::High);
    assert_eq!(core.staged_entities(), 0);
    let first_chunk = vec![
        EntityEvent::Added(entity("process://1", "a")),
        EntityEvent::Added(entity("process://2", "b")),
    ];
    core.handle_response(now, id, response(first_chunk, 5, false));
    assert_eq!(core.staged_entities(), 2);
    let last_chunk = vec![EntityEvent::Added(entity("process://3", "c"))];
    core.handle_response(now, id, response(last_chunk, 5, true));
    assert_eq!(core.staged_entities(), 0);
    assert_eq!(core.mirror().len(), 3);
}

#[test]
fn tags_beyond_the_cardinality_are_dropped_from_adds_and_modifies() {
    for cardinality in [Cardinality::Low, Cardinality::Orchestrator] {
        let (mut core, now, id) = connected(cardinality);
        let added = vec![EntityEvent::Added(entity("process://1", "a"))];
        core.handle_response(now, id, response(added, 1, true));
        let modified = vec![EntityEvent::Modified(entity("process://1", "b"))];
        core.handle_response(now, id, response(modified, 2, false));
        let mirrored = core.mirror().entity("process://1").unwrap();
        assert_eq!(
            mirrored,
            entity("process://1", "b").reduced(cardinality),
            "{cardinality:?}"
        );
    }
}

#[test]
fn backoff_exposes_its_config() {
    let config = BackoffConfig {
        initial_interval: Duration::from_millis(20),
        max_interval: Duration::from_secs(2),
        multiplier: 2.0,
        randomization: 0.1,
        reset_after: Duration::from_secs(3),
    };
    assert_eq!(Backoff::new(config.clone(), 1).config(), &config);
}
