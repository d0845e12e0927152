//! Replays every committed fuzz input through the harness function its
//! cargo-fuzz target calls, so the regression suite runs under a plain
//! `cargo test`, without cargo-fuzz: the minimised corpus
//! (`fuzz/corpus/<target>/`) and the inputs of every bug the fuzzer found
//! (`fuzz/regressions/<target>/`, which minimising never drops).
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus` (re)writes
//! the hand-made seeds, which `fuzz/ci.sh cmin` then minimises with the rest.

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;
use remote_tagger::domain::{Cardinality, Entity, EntityEvent, EntityId};
use remote_tagger::fuzzing;
use remote_tagger::proto::model::{self as pb, StreamTagsResponse};

fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|entry| entry.expect("readable fuzz input directory").path())
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

/// Runs `harness` on every committed input of `target`, reporting every
/// file that panics rather than stopping at the first.
fn replay(target: &str, harness: fn(&[u8])) {
    let corpus = files_in(&fuzz_dir("corpus", target));
    assert!(!corpus.is_empty(), "no committed corpus for {target}");
    let mut files = corpus;
    files.extend(files_in(&fuzz_dir("regressions", target)));
    files.sort();
    let failures: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = fs::read(path).expect("readable fuzz input");
            std::panic::catch_unwind(|| harness(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs fail (panics above); replay one with \
         `cargo fuzz run -s none {target} <file>`:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn core_transitions_corpus() {
    replay("core_transitions", fuzzing::core_transitions);
}

#[test]
fn decode_response_corpus() {
    replay("decode_response", fuzzing::decode_response);
}

#[test]
fn server_request_corpus() {
    replay("server_request", fuzzing::server_request);
}

#[test]
fn entities_file_corpus() {
    replay("entities_file", fuzzing::entities_file);
}

/// Writes the hand-made seeds of the targets whose input is a wire format
/// (the others' seeds come from the fuzzer itself, minimised).
#[test]
#[ignore = "writes into fuzz/corpus; run by hand to regenerate seeds"]
fn write_seed_corpus() {
    for (name, data) in decode_response_seeds() {
        write_seed("decode_response", name, &data);
    }
}

fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir("corpus", target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn entity(prefix: &str, uid: &str, tag: &str) -> Entity {
    let mut entity = Entity::new(EntityId::new(prefix, uid).unwrap());
    entity.low = vec![format!("env:{tag}")];
    entity.orchestrator = vec![format!("pod_name:{tag}")];
    entity.high = vec![format!("container_id:{tag}")];
    entity.standard = vec![format!("service:{tag}")];
    entity
}

fn added(entity: &Entity) -> pb::StreamTagsEvent {
    EntityEvent::Added(entity.clone()).to_proto(Cardinality::High)
}

fn deleted(entity: &Entity) -> pb::StreamTagsEvent {
    EntityEvent::Deleted(entity.id.clone()).to_proto(Cardinality::High)
}

/// A response of an extension-aware server.
fn extended(
    events: Vec<pb::StreamTagsEvent>,
    epoch: &str,
    revision: u64,
    complete: bool,
) -> StreamTagsResponse {
    StreamTagsResponse {
        events,
        revision,
        snapshot_complete: complete,
        server_epoch: epoch.to_owned(),
        resumed: false,
    }
}

fn plain(events: Vec<pb::StreamTagsEvent>) -> StreamTagsResponse {
    StreamTagsResponse {
        events,
        ..Default::default()
    }
}

/// `decode_response`'s format: a subscription byte, then length-delimited
/// responses.
fn frames(subscription: u8, responses: &[StreamTagsResponse]) -> Vec<u8> {
    let mut data = vec![subscription];
    for response in responses {
        response.encode_length_delimited(&mut data).unwrap();
    }
    data
}

fn decode_response_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const HIGH_ALL_PREFIXES: u8 = 2;
    const LOW_TWO_PREFIXES: u8 = 4;
    let pod = entity("kubernetes_pod_uid", "p1", "a");
    let container = entity("container_id", "c1", "b");
    let process = entity("process", "42", "c");
    let future = entity("kubernetes_future_thing", "ns/f1", "d");
    let odd_prefix = entity("a:b", "u", "e");
    let node = entity("kubernetes_node", "n1", "f");
    let malformed = |r#type: i32, id: Option<(&str, &str)>| pb::StreamTagsEvent {
        r#type,
        entity: Some(pb::Entity {
            id: id.map(|(prefix, uid)| pb::EntityId {
                prefix: prefix.to_owned(),
                uid: uid.to_owned(),
            }),
            ..container.to_proto()
        }),
    };
    vec![
        (
            "plain-snapshot-then-live",
            frames(
                HIGH_ALL_PREFIXES,
                &[
                    plain(vec![added(&pod), added(&container)]),
                    plain(vec![]),
                    plain(vec![added(&process), deleted(&pod)]),
                ],
            ),
        ),
        (
            "chunked-snapshot-live-then-resume",
            frames(
                HIGH_ALL_PREFIXES,
                &[
                    extended(vec![added(&pod)], "e1", 2, false),
                    extended(vec![added(&container)], "e1", 2, true),
                    extended(vec![deleted(&container)], "e1", 3, false),
                    extended(vec![added(&process)], "e2", 1, false),
                    StreamTagsResponse {
                        resumed: true,
                        ..extended(vec![added(&container)], "e1", 4, false)
                    },
                ],
            ),
        ),
        (
            "malformed-and-unrequested",
            frames(
                LOW_TWO_PREFIXES,
                &[plain(vec![
                    pb::StreamTagsEvent {
                        r#type: 0,
                        entity: None,
                    },
                    malformed(0, None),
                    malformed(1, Some(("", "x"))),
                    malformed(0, Some(("process", ""))),
                    malformed(2, Some(("a://b", "x"))),
                    malformed(7, Some(("process", "1"))),
                    added(&pod),
                    added(&process),
                ])],
            ),
        ),
        (
            // Outside the table: kept whether requested or not; a known
            // prefix not requested is still rejected.
            "newer-agent-prefixes",
            frames(
                LOW_TWO_PREFIXES,
                &[
                    plain(vec![added(&future), added(&node), added(&process)]),
                    plain(vec![added(&odd_prefix), deleted(&future)]),
                ],
            ),
        ),
    ]
}
