//! The tagger server over real loopback sockets, driven by the generated
//! tonic client over TLS set up as Datadog's Rust client sets it up (the
//! generated certificate pinned, its pair as the client certificate).

use std::path::Path;
use std::time::Duration;

mod common;

use common::{MIB, TestServer, config_in, entity, within};
use prost::Message as _;
use remote_tagger::domain::{EntityEvent, EntityId, KNOWN_PREFIXES};
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model as pb;
use remote_tagger::server::{
    Authenticator, Epoch, Security, Server, ServiceConfig, Source, Store, StoreHandle,
    TaggerService, serve_incoming,
};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Streaming};

/// The raw generated tonic client against a test server, as a Datadog
/// remote tagger would connect.
trait RawClient {
    async fn channel(&self) -> Channel;
    async fn client(&self) -> AgentSecureClient<Channel>;
    fn authed<T>(&self, message: T) -> Request<T>;
    async fn stream(&self, request: pb::StreamTagsRequest) -> Streaming<pb::StreamTagsResponse>;
}

impl RawClient for TestServer {
    async fn channel(&self) -> Channel {
        common::datadog_client::pinned_channel(self.addr, &self.cert_path()).await
    }

    async fn client(&self) -> AgentSecureClient<Channel> {
        AgentSecureClient::new(self.channel().await).max_decoding_message_size(64 * MIB)
    }

    fn authed<T>(&self, message: T) -> Request<T> {
        with_token(message, &self.token())
    }

    /// Opens a stream with the right token.
    async fn stream(&self, request: pb::StreamTagsRequest) -> Streaming<pb::StreamTagsResponse> {
        let mut client = self.client().await;
        client
            .tagger_stream_entities(self.authed(request))
            .await
            .unwrap()
            .into_inner()
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn stream_request(cardinality: pb::TagCardinality, prefixes: &[&str]) -> pb::StreamTagsRequest {
    pb::StreamTagsRequest {
        cardinality: cardinality as i32,
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        streaming_id: "test:1".into(),
        ..Default::default()
    }
}

async fn next(stream: &mut Streaming<pb::StreamTagsResponse>) -> pb::StreamTagsResponse {
    within("a response", stream.message())
        .await
        .unwrap()
        .expect("the stream ended")
}

/// Reads a whole snapshot: every response up to the one marked complete.
async fn read_snapshot(
    stream: &mut Streaming<pb::StreamTagsResponse>,
) -> Vec<pb::StreamTagsResponse> {
    let mut responses = Vec::new();
    loop {
        let response = next(stream).await;
        let complete = response.snapshot_complete;
        responses.push(response);
        if complete {
            return responses;
        }
    }
}

fn uids(response: &pb::StreamTagsResponse) -> Vec<String> {
    response
        .events
        .iter()
        .map(|e| e.entity.as_ref().unwrap().id.as_ref().unwrap().uid.clone())
        .collect()
}

fn kinds(response: &pb::StreamTagsResponse) -> Vec<pb::EventType> {
    response.events.iter().map(|e| e.r#type()).collect()
}

#[tokio::test]
async fn tls_stream_sends_the_snapshot_then_live_events() {
    let server = TestServer::start(|_| {}).await;
    server.store.apply([
        EntityEvent::Added(entity("container_id://a", &["l"], &["o"], &["h"])),
        EntityEvent::Added(entity("host://b", &["l"], &[], &[])),
    ]);
    let mut stream = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let snapshot = next(&mut stream).await;
    assert!(snapshot.snapshot_complete);
    assert!(!snapshot.resumed);
    assert_eq!(snapshot.server_epoch, server.store.epoch().as_str());
    assert_eq!(snapshot.revision, 2);
    assert_eq!(uids(&snapshot), ["a", "b"]);
    assert_eq!(kinds(&snapshot), [pb::EventType::Added; 2]);
    let a = snapshot.events[0].entity.as_ref().unwrap();
    assert_eq!(
        (
            &a.low_cardinality_tags[..],
            &a.orchestrator_cardinality_tags[..],
            &a.high_cardinality_tags[..],
            &a.standard_tags[..]
        ),
        (
            &["l".to_string()][..],
            &["o".to_string()][..],
            &["h".to_string()][..],
            &["service:web".to_string()][..]
        )
    );

    server.store.apply([
        EntityEvent::Modified(entity("container_id://a", &["l2"], &["o"], &["h"])),
        EntityEvent::Deleted(EntityId::parse("host://b").unwrap()),
    ]);
    let live = next(&mut stream).await;
    assert_eq!(
        kinds(&live),
        [pb::EventType::Modified, pb::EventType::Deleted]
    );
    assert_eq!(live.revision, 4);
    assert!(!live.snapshot_complete);
    let deleted = live.events[1].entity.as_ref().unwrap();
    assert!(deleted.low_cardinality_tags.is_empty() && deleted.standard_tags.is_empty());
    let stats = server.store.stats();
    assert_eq!(stats.snapshots_sent, 1);
    assert_eq!(stats.events.high, 4);
    server.stop().await;
}

#[tokio::test]
async fn an_empty_store_still_answers_at_once_with_a_complete_snapshot() {
    let server = TestServer::start(|_| {}).await;
    let mut stream = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let first = next(&mut stream).await;
    assert!(first.events.is_empty());
    assert!(first.snapshot_complete);
    assert!(!first.server_epoch.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_tokens_are_unauthenticated() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let wrong = "f".repeat(64);
    let request = stream_request(pb::TagCardinality::High, &[]);
    for attempt in [
        with_token(request.clone(), &wrong),
        Request::new(request.clone()),
    ] {
        let status = client.tagger_stream_entities(attempt).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(!status.message().contains(server.token().trim()));
    }
    let fetch = pb::FetchEntityRequest {
        id: Some(EntityId::parse("host://a").unwrap().to_proto()),
        cardinality: 0,
    };
    for attempt in [with_token(fetch.clone(), &wrong), Request::new(fetch)] {
        let status = client.tagger_fetch_entity(attempt).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    assert_eq!(server.store.stats().auth_failures, 4);
    server.stop().await;
}

#[tokio::test]
async fn a_rotated_token_takes_effect_for_new_streams() {
    let server = TestServer::start(|_| {}).await;
    let old = server.token();
    let new = "0123456789abcdef".repeat(4);
    std::fs::write(server.dir.path().join("auth_token"), &new).unwrap();
    let mut client = server.client().await;
    let request = stream_request(pb::TagCardinality::High, &[]);
    let status = client
        .tagger_stream_entities(with_token(request.clone(), &old))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        client
            .tagger_stream_entities(with_token(request, &new))
            .await
            .is_ok()
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_cardinality_is_an_invalid_argument() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let mut request = stream_request(pb::TagCardinality::High, &[]);
    request.cardinality = 5;
    let status = client
        .tagger_stream_entities(server.authed(request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("invalid cardinality"),
        "{}",
        status.message()
    );
    let fetch = pb::FetchEntityRequest {
        id: Some(EntityId::parse("host://a").unwrap().to_proto()),
        cardinality: 5,
    };
    let status = client
        .tagger_fetch_entity(server.authed(fetch))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("invalid cardinality"));
    server.stop().await;
}

#[tokio::test]
async fn fetch_entity_answers_by_cardinality() {
    let server = TestServer::start(|_| {}).await;
    server.store.apply([EntityEvent::Added(entity(
        "container_id://a",
        &["l"],
        &["o"],
        &["h"],
    ))]);
    let mut client = server.client().await;

    let missing_id = pb::FetchEntityRequest {
        id: None,
        cardinality: 0,
    };
    let status = client
        .tagger_fetch_entity(server.authed(missing_id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), r#"missing "id" parameter"#);

    let fetch = |id: pb::EntityId, cardinality: pb::TagCardinality| pb::FetchEntityRequest {
        id: Some(id),
        cardinality: cardinality as i32,
    };
    for unknown in [
        EntityId::parse("container_id://zz").unwrap().to_proto(),
        pb::EntityId {
            prefix: "no_such_prefix".into(),
            uid: "x".into(),
        },
    ] {
        let response = client
            .tagger_fetch_entity(server.authed(fetch(unknown.clone(), pb::TagCardinality::High)))
            .await
            .unwrap()
            .into_inner();
        assert!(response.tags.is_empty());
        assert_eq!(response.id, Some(unknown));
    }

    let id = EntityId::parse("container_id://a").unwrap().to_proto();
    for (cardinality, tags) in [
        (pb::TagCardinality::Low, vec!["l"]),
        (pb::TagCardinality::Orchestrator, vec!["l", "o"]),
        (pb::TagCardinality::High, vec!["l", "o", "h"]),
    ] {
        let response = client
            .tagger_fetch_entity(server.authed(fetch(id.clone(), cardinality)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.tags, tags);
        assert_eq!(response.cardinality(), cardinality);
        assert_eq!(response.id.as_ref(), Some(&id));
    }
    server.stop().await;
}

#[tokio::test]
async fn prefix_filter_and_cardinality_reduction_apply_to_snapshot_and_live_events() {
    let server = TestServer::start(|_| {}).await;
    server.store.apply([
        EntityEvent::Added(entity("container_id://a", &["l"], &["o"], &["h"])),
        EntityEvent::Added(entity("host://b", &["l"], &["o"], &["h"])),
    ]);
    let mut low_hosts = server
        .stream(stream_request(pb::TagCardinality::Low, &["host"]))
        .await;
    let mut orchestrator_all = server
        .stream(stream_request(pb::TagCardinality::Orchestrator, &[]))
        .await;

    let snapshot = next(&mut low_hosts).await;
    assert_eq!(uids(&snapshot), ["b"]);
    let b = snapshot.events[0].entity.as_ref().unwrap();
    assert_eq!(b.low_cardinality_tags, ["l"]);
    assert!(b.orchestrator_cardinality_tags.is_empty() && b.high_cardinality_tags.is_empty());
    assert_eq!(b.standard_tags, ["service:web"]);

    let snapshot = next(&mut orchestrator_all).await;
    assert_eq!(uids(&snapshot), ["a", "b"]);
    for event in &snapshot.events {
        let e = event.entity.as_ref().unwrap();
        assert_eq!(e.orchestrator_cardinality_tags, ["o"]);
        assert!(e.high_cardinality_tags.is_empty());
    }

    // A container change is filtered out of the host stream: the next thing
    // it sees is the host change that follows.
    server.store.apply([EntityEvent::Added(entity(
        "container_id://c",
        &["l"],
        &["o"],
        &["h"],
    ))]);
    server.store.apply([EntityEvent::Modified(entity(
        "host://b",
        &["l2"],
        &["o"],
        &["h"],
    ))]);
    let live = next(&mut low_hosts).await;
    assert_eq!(uids(&live), ["b"]);
    assert_eq!(live.revision, 4);
    let b = live.events[0].entity.as_ref().unwrap();
    assert_eq!(b.low_cardinality_tags, ["l2"]);
    assert!(b.orchestrator_cardinality_tags.is_empty() && b.high_cardinality_tags.is_empty());

    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(uids(&next(&mut orchestrator_all).await));
    }
    assert_eq!(seen, ["c", "b"]);
    server.stop().await;
}

/// wire-spec section 1: older Go clients panic on a prefix they do not
/// know, so an explicit list gets exactly the prefixes it names, in the
/// snapshot and live; an empty list gets everything, a newer Agent's
/// prefixes and invented ones included; the store counts those.
#[tokio::test]
async fn an_explicit_prefix_list_never_gets_a_prefix_it_did_not_name() {
    let server = TestServer::start(|_| {}).await;
    server.store.apply([
        EntityEvent::Added(entity("container_id://a", &["l"], &[], &[])),
        EntityEvent::Added(entity("kueue_workload://ns/b", &["l"], &[], &[])),
        EntityEvent::Added(entity("kubernetes_future_thing://c", &["l"], &[], &[])),
    ]);
    assert_eq!(server.store.stats().store_unknown_prefix_entities, 1);
    let table: Vec<&str> = KNOWN_PREFIXES.to_vec();
    let mut known = server
        .stream(stream_request(pb::TagCardinality::High, &table))
        .await;
    let mut everything = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let mut invented = server
        .stream(stream_request(
            pb::TagCardinality::High,
            &["kubernetes_future_thing"],
        ))
        .await;
    assert_eq!(uids(&next(&mut known).await), ["a", "ns/b"]);
    assert_eq!(uids(&next(&mut everything).await), ["a", "c", "ns/b"]);
    assert_eq!(uids(&next(&mut invented).await), ["c"]);

    server.store.apply([EntityEvent::Added(entity(
        "kubernetes_future_thing://d",
        &["l"],
        &[],
        &[],
    ))]);
    server.store.apply([EntityEvent::Deleted(
        EntityId::parse("container_id://a").unwrap(),
    )]);
    assert_eq!(server.store.stats().store_unknown_prefix_entities, 2);
    // The table's stream skips the invented prefix's change: the next
    // thing it sees is the delete that follows.
    let live = next(&mut known).await;
    assert_eq!(
        (uids(&live), kinds(&live)),
        (vec!["a".to_owned()], vec![pb::EventType::Deleted])
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(uids(&next(&mut everything).await));
    }
    assert_eq!(seen, ["d", "a"]);
    assert_eq!(uids(&next(&mut invented).await), ["d"]);

    let mut client = server.client().await;
    let fetched = client
        .tagger_fetch_entity(
            server.authed(pb::FetchEntityRequest {
                id: Some(
                    EntityId::parse("kubernetes_future_thing://d")
                        .unwrap()
                        .to_proto(),
                ),
                cardinality: pb::TagCardinality::High as i32,
            }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.tags, ["l"]);
    server.stop().await;
}

#[tokio::test]
async fn resume_sends_only_later_changes_or_falls_back_to_a_snapshot() {
    let server = TestServer::start(|config| config.change_log_capacity = 4).await;
    server.store.apply([
        EntityEvent::Added(entity("host://a", &["1"], &[], &[])),
        EntityEvent::Added(entity("host://b", &["1"], &[], &[])),
    ]);
    let mut first = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let snapshot = next(&mut first).await;
    let (epoch, revision) = (snapshot.server_epoch.clone(), snapshot.revision);
    drop(first);

    server
        .store
        .apply([EntityEvent::Modified(entity("host://a", &["2"], &[], &[]))]);
    let resume = |epoch: &str, revision: u64| pb::StreamTagsRequest {
        resume_epoch: epoch.into(),
        resume_revision: revision,
        ..stream_request(pb::TagCardinality::High, &[])
    };

    // Same epoch, revision in the log: only the change since.
    let mut resumed = server.stream(resume(&epoch, revision)).await;
    let response = next(&mut resumed).await;
    assert!(response.resumed);
    assert!(!response.snapshot_complete);
    assert_eq!(uids(&response), ["a"]);
    assert_eq!(kinds(&response), [pb::EventType::Modified]);
    assert_eq!(response.revision, revision + 1);
    // ... then live changes, not resumed ones.
    server
        .store
        .apply([EntityEvent::Deleted(EntityId::parse("host://b").unwrap())]);
    let live = next(&mut resumed).await;
    assert!(!live.resumed);
    assert_eq!(kinds(&live), [pb::EventType::Deleted]);

    // Resuming at the current revision: an empty, resumed first response.
    let current = server.store.revision();
    let mut up_to_date = server.stream(resume(&epoch, current)).await;
    let response = next(&mut up_to_date).await;
    assert!(response.resumed && response.events.is_empty());
    assert_eq!(response.revision, current);

    // Another epoch: a full snapshot.
    let mut stale = server.stream(resume("0000000000000000", revision)).await;
    let response = next(&mut stale).await;
    assert!(!response.resumed && response.snapshot_complete);
    assert_eq!(uids(&response), ["a"]);

    // A revision the log no longer covers: a full snapshot.
    for i in 0..5 {
        server.store.apply([EntityEvent::Added(entity(
            &format!("process://{i}"),
            &[],
            &[],
            &[],
        ))]);
    }
    let mut too_old = server.stream(resume(&epoch, revision)).await;
    let response = next(&mut too_old).await;
    assert!(!response.resumed && response.snapshot_complete);
    assert_eq!(response.events.len(), 6);

    let stats = server.store.stats();
    assert_eq!((stats.resumes_accepted, stats.resumes_refused), (2, 2));
    server.stop().await;
}

#[tokio::test]
async fn a_snapshot_over_4_mib_arrives_chunked_and_whole() {
    let server = TestServer::start(|_| {}).await;
    let big_tag = "h".repeat(50_000);
    server.store.apply((0..100).map(|i| {
        EntityEvent::Added(entity(
            &format!("process://{i:03}"),
            &["l"],
            &[],
            &[&big_tag],
        ))
    }));
    // One entity larger than the whole chunk budget still goes, alone.
    let huge_tag = "x".repeat(3 * MIB);
    server.store.apply([EntityEvent::Added(entity(
        "process://huge",
        &[],
        &[],
        &[&huge_tag],
    ))]);

    let mut stream = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let responses = read_snapshot(&mut stream).await;
    assert!(responses.len() >= 3, "{} responses", responses.len());
    let budget = 2 * MIB;
    for response in &responses {
        let size: usize = response.events.iter().map(|e| e.encoded_len()).sum();
        assert!(
            size <= budget || response.events.len() == 1,
            "a chunk of {} events weighs {size} bytes",
            response.events.len()
        );
    }
    let complete: Vec<bool> = responses.iter().map(|r| r.snapshot_complete).collect();
    assert!(complete[..complete.len() - 1].iter().all(|c| !c));
    let mut all: Vec<String> = responses.iter().flat_map(uids).collect();
    all.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("{i:03}")).collect();
    expected.push("huge".into());
    assert_eq!(all, expected);
    assert!(
        responses
            .iter()
            .any(|r| uids(r) == ["huge"] && r.events[0].encoded_len() > budget)
    );
    server.stop().await;
}

#[tokio::test]
async fn an_idle_stream_gets_keepalives() {
    let server = TestServer::start(|config| {
        config.service.keepalive_interval = Duration::from_millis(50);
    })
    .await;
    server
        .store
        .apply([EntityEvent::Added(entity("host://a", &[], &[], &[]))]);
    let mut stream = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let snapshot = next(&mut stream).await;
    assert!(snapshot.snapshot_complete);
    for _ in 0..2 {
        let keepalive = next(&mut stream).await;
        assert!(keepalive.events.is_empty());
        assert!(!keepalive.snapshot_complete && !keepalive.resumed);
        assert_eq!(keepalive.server_epoch, snapshot.server_epoch);
        assert_eq!(keepalive.revision, snapshot.revision);
    }
    assert!(server.store.stats().keepalives >= 2);
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_is_evicted_while_another_keeps_streaming() {
    let server = TestServer::start(|config| config.service.subscriber_buffer = 2).await;
    let mut stalled = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let mut active = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    assert!(next(&mut stalled).await.snapshot_complete);
    assert!(next(&mut active).await.snapshot_complete);

    // Feed 64 KiB changes one at a time, each awaited on the active stream,
    // until the stalled one (which reads no more) fills up and is evicted.
    let tag = "s".repeat(64 * 1024);
    let mut received = 0u64;
    for i in 0..1000 {
        if server.store.stats().subscribers_evicted > 0 {
            break;
        }
        server.store.apply([EntityEvent::Added(entity(
            &format!("process://{i}"),
            &[],
            &[],
            &[&tag],
        ))]);
        while received < server.store.revision() {
            received = next(&mut active).await.revision;
        }
    }
    let stats = server.store.stats();
    assert_eq!(stats.subscribers_evicted, 1, "{stats:?}");

    // The active stream still works after the eviction.
    server
        .store
        .apply([EntityEvent::Added(entity("host://after", &[], &[], &[]))]);
    assert_eq!(uids(&next(&mut active).await), ["after"]);

    // The stalled stream, once read, ends with an error telling it to resync.
    let end = within("the evicted stream to end", async {
        loop {
            match stalled.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("an eviction ends with an error status, never OK");
    assert_eq!(end.code(), Code::ResourceExhausted);
    assert_eq!(
        end.message(),
        "the subscriber fell behind: more than 2 change batches were waiting for it; reconnect to resync"
    );
    server
        .wait_for_stats("the evicted subscriber to go", |s| s.subscribers == 1)
        .await;
    assert!(server.store.stats().stream_errors >= 1);
    server.stop().await;
}

#[tokio::test]
async fn the_builtin_workload_serves_a_snapshot_then_churn() {
    let server = TestServer::start(|config| {
        config.source = Source::Workload {
            entities: 200,
            seed: 42,
            churn_per_sec: 200.0,
        };
    })
    .await;
    let mut stream = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let snapshot: usize = read_snapshot(&mut stream)
        .await
        .iter()
        .map(|r| r.events.len())
        .sum();
    // Churn may already have run: the store hovers around its size.
    assert!((150..=250).contains(&snapshot), "{snapshot} entities");
    let churn = next(&mut stream).await;
    assert!(!churn.events.is_empty());
    assert!(!churn.snapshot_complete);
    server.stop().await;
}

fn write_entities(path: &Path, json: &str) {
    // Write then rename, as editors and config tools do: the watcher never
    // sees a half-written file.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, json).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test]
async fn entities_file_changes_stream_as_events_and_a_broken_file_keeps_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entities.json");
    write_entities(
        &path,
        r#"[{"id": "host://kept", "low": ["a"]}, {"id": "host://changed", "low": ["a"]},
            {"id": "host://gone"}]"#,
    );
    let file = path.clone();
    let server = TestServer::start_in(dir, move |config| {
        config.source = Source::EntitiesFile(file);
        config.file_poll_interval = Duration::from_millis(20);
    })
    .await;
    let mut stream = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    let snapshot = next(&mut stream).await;
    assert_eq!(uids(&snapshot), ["changed", "gone", "kept"]);

    write_entities(
        &path,
        r#"[{"id": "host://kept", "low": ["a"]}, {"id": "host://changed", "low": ["b"]},
            {"id": "host://new", "high": ["h"]}]"#,
    );
    let reload = next(&mut stream).await;
    let mut events: Vec<(pb::EventType, String)> =
        kinds(&reload).into_iter().zip(uids(&reload)).collect();
    events.sort();
    assert_eq!(
        events,
        [
            (pb::EventType::Added, "new".to_string()),
            (pb::EventType::Modified, "changed".to_string()),
            (pb::EventType::Deleted, "gone".to_string()),
        ]
    );

    write_entities(&path, r#"[{"id": "host://kept"}, {"id": "host://kept"}]"#);
    server
        .wait_for_stats("the broken file to be reported", |s| s.source_errors == 1)
        .await;
    // Fixed again with one more entity: only that addition streams, so the
    // broken file changed nothing.
    write_entities(
        &path,
        r#"[{"id": "host://kept", "low": ["a"]}, {"id": "host://changed", "low": ["b"]},
            {"id": "host://new", "high": ["h"]}, {"id": "host://later"}]"#,
    );
    let fixed = next(&mut stream).await;
    assert_eq!(kinds(&fixed), [pb::EventType::Added]);
    assert_eq!(uids(&fixed), ["later"]);
    assert_eq!(server.store.stats().store_entities, 4);
    server.stop().await;
}

#[tokio::test]
async fn other_agent_secure_methods_are_unimplemented() {
    let server = TestServer::start(|_| {}).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    within("the channel", grpc.ready()).await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<pb::FetchEntityRequest, pb::FetchEntityResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/datadog.api.v1.AgentSecure/GetHostname",
    );
    let status = grpc
        .unary(
            server.authed(pb::FetchEntityRequest::default()),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    server.stop().await;
}

#[tokio::test]
async fn secrets_are_created_private_and_reused_across_restarts() {
    let server = TestServer::start(|_| {}).await;
    let token = server.token();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let cert = std::fs::read(server.cert_path()).unwrap();
    #[cfg(unix)]
    for file in [server.dir.path().join("auth_token"), server.cert_path()] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let epoch = server.store.epoch();
    // A stream open at shutdown ends cleanly, telling the client why.
    let mut stream = server
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    next(&mut stream).await;
    let dir = server.stop().await;
    let end = within("the stream to end", stream.message())
        .await
        .unwrap_err();
    assert_eq!(end.code(), Code::Unavailable);
    assert_eq!(
        end.message(),
        "the tagger server is shutting down; reconnect later"
    );

    let restarted = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(restarted.token(), token);
    assert_eq!(std::fs::read(restarted.cert_path()).unwrap(), cert);
    assert_ne!(restarted.store.epoch(), epoch, "a restart is a new epoch");
    // The kept certificate still verifies as the client's CA.
    let mut stream = restarted
        .stream(stream_request(pb::TagCardinality::High, &[]))
        .await;
    assert!(next(&mut stream).await.snapshot_complete);
    restarted.stop().await;
}

#[tokio::test]
async fn startup_errors_name_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config_in(dir.path());
    config.listen = taken.local_addr().unwrap();
    let message = Server::bind(config).await.err().unwrap().to_string();
    assert!(
        message.starts_with(&format!(
            "cannot listen on {}: address in use",
            taken.local_addr().unwrap()
        )),
        "{message}"
    );

    let mut config = config_in(dir.path());
    config.source = Source::EntitiesFile(dir.path().join("missing.json"));
    let message = Server::bind(config).await.err().unwrap().to_string();
    assert!(message.contains("missing.json"), "{message}");

    std::fs::write(dir.path().join("bad_cert.pem"), "garbage").unwrap();
    let mut config = config_in(dir.path());
    config.cert_file = dir.path().join("bad_cert.pem");
    let message = Server::bind(config).await.err().unwrap().to_string();
    assert!(
        message.contains("bad_cert.pem") && message.contains("no PEM certificate"),
        "{message}"
    );
}

/// The lower-level entry point, as a simulation uses it: a given store, any
/// incoming connection stream, and plaintext.
#[tokio::test]
async fn serve_incoming_works_over_plaintext_with_a_given_store() {
    let store = StoreHandle::new(Store::new(Epoch::from_seed(7), 100));
    store.apply([EntityEvent::Added(entity("host://a", &["l"], &[], &[]))]);
    let token = "t".repeat(40);
    let service = TaggerService::new(
        store.clone(),
        Authenticator::fixed(&token).unwrap(),
        ServiceConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (shutdown, signal) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_incoming(
        service,
        Security::InsecurePlaintext,
        incoming,
        async {
            let _ = signal.await;
        },
    ));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AgentSecureClient::new(channel);
    let mut stream = client
        .tagger_stream_entities(with_token(
            stream_request(pb::TagCardinality::High, &[]),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = next(&mut stream).await;
    assert_eq!(uids(&snapshot), ["a"]);
    assert_eq!(snapshot.server_epoch, Epoch::from_seed(7).as_str());
    shutdown.send(()).unwrap();
    within("shutdown", task).await.unwrap().unwrap();
}
