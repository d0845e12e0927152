//! The relay (`serve --upstream`): origin -> relay -> clients, with
//! cardinality and prefixes honoured at the relay, live changes passed
//! through, and convergence after the origin restarts with new content.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestServer, client_config, within};
use remote_tagger::client::RemoteTagger;
use remote_tagger::domain::{Cardinality, Entity};
use remote_tagger::server::Source;

fn write_entities(path: &Path, entities: serde_json::Value) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec(&entities).unwrap()).unwrap();
    std::fs::rename(temporary, path).unwrap();
}

fn sorted(mut entities: Vec<Entity>) -> Vec<Entity> {
    entities.sort_by(|a, b| a.id.cmp(&b.id));
    entities
}

/// Waits until `tagger`'s mirror holds exactly `expected`.
async fn converges(tagger: &RemoteTagger, what: &str, expected: &[Entity]) {
    within(what, async {
        while sorted(tagger.mirror().list()) != expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// What a client of `cardinality` and `prefix` should mirror of the origin.
fn seen_by(origin: &TestServer, cardinality: Cardinality, prefix: Option<&str>) -> Vec<Entity> {
    sorted(
        origin
            .store
            .entities()
            .into_iter()
            .filter(|e| prefix.is_none_or(|p| e.id.prefix() == p))
            .map(|e| e.reduced(cardinality))
            .collect(),
    )
}

#[tokio::test]
async fn clients_of_a_relay_converge_through_live_changes_and_an_origin_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("entities.json");
    write_entities(
        &file,
        serde_json::json!([
            {"id": "container_id://abc", "low": ["image:nginx"], "orchestrator": ["pod_name:web-1"],
             "high": ["container_id:abc"], "standard": ["service:web"]},
            {"id": "process://1", "low": ["process_name:init"], "high": ["pid:1"]},
            {"id": "process://2", "low": ["process_name:sh"], "high": ["pid:2"]},
        ]),
    );
    let origin_source = Source::EntitiesFile(file.clone());
    let source = origin_source.clone();
    let origin = TestServer::start_in(dir, move |config| config.source = source).await;
    let origin_addr = origin.addr;

    let upstream = client_config(&origin, &origin_addr.to_string());
    let relay =
        TestServer::start(move |config| config.source = Source::Upstream(Box::new(upstream))).await;
    let full = RemoteTagger::start(client_config(&relay, &relay.addr.to_string())).unwrap();
    let mut narrow_config = client_config(&relay, &relay.addr.to_string());
    narrow_config.core.cardinality = Cardinality::Low;
    narrow_config.core.prefixes = vec!["process".to_owned()];
    let narrow = RemoteTagger::start(narrow_config).unwrap();

    converges(
        &full,
        "the first sync",
        &seen_by(&origin, Cardinality::High, None),
    )
    .await;
    converges(
        &narrow,
        "the narrow first sync",
        &seen_by(&origin, Cardinality::Low, Some("process")),
    )
    .await;
    relay
        .wait_for_stats("the relay to report its upstream synced", |s| {
            s.upstream_connected && s.upstream_synced
        })
        .await;

    // A live change crosses the relay.
    write_entities(
        &file,
        serde_json::json!([
            {"id": "container_id://abc", "low": ["image:nginx:1.27"], "high": ["container_id:abc"]},
            {"id": "process://1", "low": ["process_name:init"], "high": ["pid:1"]},
        ]),
    );
    origin
        .wait_for_stats("the origin to reload", |s| s.store_entities == 2)
        .await;
    converges(
        &full,
        "the live change",
        &seen_by(&origin, Cardinality::High, None),
    )
    .await;

    // The origin goes away: the relay keeps serving, and says so.
    let served_meanwhile = seen_by(&origin, Cardinality::High, None);
    let dir = origin.stop().await;
    relay
        .wait_for_stats("the relay to notice", |s| !s.upstream_connected)
        .await;
    assert_eq!(sorted(full.mirror().list()), served_meanwhile);
    assert!(!relay.store.stats().upstream_synced);

    // It comes back (a new epoch) with different content, deletions included.
    write_entities(
        &file,
        serde_json::json!([
            {"id": "process://1", "low": ["process_name:systemd"], "high": ["pid:1"]},
            {"id": "process://3", "low": ["process_name:bash"], "high": ["pid:3"]},
            {"id": "host://node", "low": ["host:node"]},
        ]),
    );
    let origin = TestServer::start_in(dir, move |config| {
        config.source = origin_source;
        config.listen = origin_addr;
    })
    .await;
    converges(
        &full,
        "the resync",
        &seen_by(&origin, Cardinality::High, None),
    )
    .await;
    converges(
        &narrow,
        "the narrow resync",
        &seen_by(&origin, Cardinality::Low, Some("process")),
    )
    .await;
    relay
        .wait_for_stats("the relay to resync", |s| s.upstream_synced)
        .await;

    full.stop().await;
    narrow.stop().await;
    relay.stop().await;
    origin.stop().await;
}
