//! The mirror against a plain reference model, plus the properties a model
//! cannot show: atomic visibility under a concurrent reader, query counters,
//! and the interner giving memory back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use proptest::prelude::*;
use remote_tagger::domain::{Cardinality, Entity, EntityEvent, EntityId, entity_hash};
use remote_tagger::mirror::{
    ChangeKind, EntityChange, MirrorReader, MirrorWriter, QueryCounts, QueryStatus, Tags,
};

type Reference = BTreeMap<EntityId, Entity>;

fn id(text: &str) -> EntityId {
    EntityId::parse(text).unwrap()
}

fn entity(id_text: &str, low: &[&str], high: &[&str]) -> Entity {
    let mut entity = Entity::new(id(id_text));
    entity.low = low.iter().map(|s| s.to_string()).collect();
    entity.high = high.iter().map(|s| s.to_string()).collect();
    entity
}

/// The changes the reference expects for `events`, applying them to it.
fn reference_apply(reference: &mut Reference, events: Vec<EntityEvent>) -> Vec<EntityChange> {
    let mut changes = Vec::new();
    for event in events {
        let id = event.id().clone();
        let kind = match event {
            EntityEvent::Added(entity) | EntityEvent::Modified(entity) => {
                match reference.insert(id.clone(), entity.clone()) {
                    None => Some(ChangeKind::Added),
                    Some(before) if before != entity => Some(ChangeKind::Modified),
                    Some(_) => None,
                }
            }
            EntityEvent::Deleted(_) => reference.remove(&id).map(|_| ChangeKind::Deleted),
        };
        changes.extend(kind.map(|kind| EntityChange { kind, id }));
    }
    changes
}

fn reference_replace_all(reference: &mut Reference, entities: Vec<Entity>) -> Vec<EntityChange> {
    let next: Reference = entities.into_iter().map(|e| (e.id.clone(), e)).collect();
    let mut changes: Vec<EntityChange> = next
        .iter()
        .filter_map(|(id, entity)| {
            let kind = match reference.get(id) {
                None => ChangeKind::Added,
                Some(before) if before != entity => ChangeKind::Modified,
                Some(_) => return None,
            };
            Some(EntityChange {
                kind,
                id: id.clone(),
            })
        })
        .chain(
            reference
                .keys()
                .filter(|id| !next.contains_key(*id))
                .map(|id| EntityChange {
                    kind: ChangeKind::Deleted,
                    id: id.clone(),
                }),
        )
        .collect();
    changes.sort_by(|a, b| a.id.cmp(&b.id));
    *reference = next;
    changes
}

/// Every query of `reader` agrees with `reference`, for every id in `ids`.
fn assert_matches(reader: &MirrorReader, reference: &Reference, ids: &[EntityId]) {
    for id in ids {
        let expected = reference.get(id);
        for cardinality in Cardinality::ALL {
            let want = expected.map(|e| e.tags(cardinality)).unwrap_or_default();
            assert_eq!(
                reader.tags(id.as_str(), cardinality),
                want,
                "{id} {cardinality}"
            );
            assert_eq!(reader.hash(id.as_str(), cardinality), entity_hash(&want));
        }
        let standard = expected.map(|e| e.standard.clone()).unwrap_or_default();
        assert_eq!(reader.standard(id.as_str()), standard, "{id} standard");
        assert_eq!(reader.entity(id.as_str()).as_ref(), expected);
    }
    let view = reader.view();
    for cardinality in Cardinality::ALL {
        let texts = ids.iter().map(EntityId::as_str);
        for (id, tags) in view.tags_of(texts, cardinality) {
            assert_eq!(tags, reader.tags(id, cardinality), "tags_of {id}");
            assert_eq!(view.tags(id, cardinality), tags, "view {id}");
        }
    }
    for id in ids {
        assert_eq!(view.standard(id.as_str()), reader.standard(id.as_str()));
    }
    drop(view);
    assert_eq!(
        reader.list(),
        reference.values().cloned().collect::<Vec<_>>()
    );
    assert_eq!(reader.len(), reference.len());
    assert_eq!(reader.is_empty(), reference.is_empty());
    let mut by_prefix = BTreeMap::new();
    let mut unknown_prefix = 0;
    for id in reference.keys() {
        if id.has_known_prefix() {
            *by_prefix.entry(id.prefix().to_owned()).or_insert(0) += 1;
        } else {
            unknown_prefix += 1;
        }
    }
    assert_eq!(reader.stored_by_prefix(), by_prefix);
    assert_eq!(reader.unknown_prefix_entities(), unknown_prefix);
}

#[derive(Debug, Clone)]
enum Step {
    Apply(Vec<EntityEvent>),
    ReplaceAll(Vec<Entity>),
    /// A snapshot staged in chunks, then committed. Deletes drop an entity
    /// staged before; `sorted` stages the events in id order (how servers
    /// send snapshots), which the commit relies on to skip sorting its diff.
    Staged {
        chunks: Vec<Vec<EntityEvent>>,
        sorted: bool,
    },
}

/// A few ids over several prefixes, so batches repeat ids and deletes hit
/// unknown ones. Some prefixes are outside the table (a newer Agent's),
/// placed so that text order interleaves them with known ones: `host-a`
/// sorts before `host://`, `a:b` holds a ':'.
fn id_pool() -> Vec<EntityId> {
    [
        "container_id",
        "process",
        "kubernetes_node",
        "host",
        "host-a",
        "kubernetes_future_thing",
        "a:b",
    ]
    .iter()
    .flat_map(|prefix| (0..3).map(move |uid| EntityId::new(prefix, &uid.to_string()).unwrap()))
    .collect()
}

fn tag_list() -> impl Strategy<Value = Vec<String>> {
    // A small alphabet makes tags repeat across entities and lists; "" is a
    // legal tag too.
    prop::collection::vec(
        prop::sample::select(vec!["", "env:prod", "env:dev", "app:web", "é:ü", "a"])
            .prop_map(str::to_owned),
        0..4,
    )
}

fn entity_strategy() -> impl Strategy<Value = Entity> {
    (
        prop::sample::select(id_pool()),
        tag_list(),
        tag_list(),
        tag_list(),
        tag_list(),
    )
        .prop_map(|(id, low, orchestrator, high, standard)| Entity {
            id,
            low,
            orchestrator,
            high,
            standard,
        })
}

fn event_strategy() -> impl Strategy<Value = EntityEvent> {
    prop_oneof![
        entity_strategy().prop_map(EntityEvent::Added),
        entity_strategy().prop_map(EntityEvent::Modified),
        prop::sample::select(id_pool()).prop_map(EntityEvent::Deleted),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::vec(event_strategy(), 0..12).prop_map(Step::Apply),
        1 => prop::collection::vec(entity_strategy(), 0..10).prop_map(Step::ReplaceAll),
        1 => (
            prop::collection::vec(prop::collection::vec(event_strategy(), 0..6), 0..4),
            any::<bool>(),
        )
            .prop_map(|(chunks, sorted)| Step::Staged { chunks, sorted }),
    ]
}

proptest! {
    #[test]
    fn mirror_matches_reference(steps in prop::collection::vec(step_strategy(), 1..12)) {
        let mut writer = MirrorWriter::new();
        let reader = writer.reader();
        let mut reference = Reference::new();
        let ids = id_pool();
        for step in steps {
            let (got, want) = match step {
                Step::Apply(events) => (
                    writer.apply(events.clone()),
                    reference_apply(&mut reference, events),
                ),
                Step::ReplaceAll(entities) => (
                    writer.replace_all(entities.clone()),
                    reference_replace_all(&mut reference, entities),
                ),
                Step::Staged { mut chunks, sorted } => {
                    if sorted {
                        let mut events = chunks.concat();
                        events.sort_by(|a, b| a.id().cmp(b.id()));
                        events.dedup_by(|a, b| a.id() == b.id());
                        chunks = events.chunks(3).map(<[EntityEvent]>::to_vec).collect();
                    }
                    let mut snapshot = Reference::new();
                    reference_apply(&mut snapshot, chunks.concat());
                    for chunk in chunks {
                        writer.stage(chunk);
                    }
                    prop_assert_eq!(writer.staged_len(), snapshot.len());
                    (
                        writer.commit_staged(),
                        reference_replace_all(&mut reference, snapshot.into_values().collect()),
                    )
                }
            };
            prop_assert_eq!(got, want);
            prop_assert_eq!(writer.len(), reference.len());
            assert_matches(&reader, &reference, &ids);
        }
    }
}

#[test]
fn tags_follow_cardinality_order_without_dedupe() {
    let mut writer = MirrorWriter::new();
    let reader = writer.reader();
    let mut full = entity("container_id://c1", &["l", "x"], &["h", "x"]);
    full.orchestrator = vec!["o".into()];
    full.standard = vec!["s".into()];
    writer.apply(vec![EntityEvent::Added(full)]);
    let high = reader.tags("container_id://c1", Cardinality::High);
    assert_eq!(high, ["l", "x", "o", "h", "x"]);
    assert_eq!(high.get(3), Some("h"));
    assert_eq!(high.iter().last(), Some("x"));
    assert_eq!(high.iter().len(), 5);
    assert_eq!(high.to_vec(), ["l", "x", "o", "h", "x"]);
    assert_eq!(
        reader.tags("container_id://c1", Cardinality::Orchestrator),
        ["l", "x", "o"]
    );
    assert_eq!(
        reader.tags("container_id://c1", Cardinality::Low),
        ["l", "x"]
    );
    assert_eq!(reader.standard("container_id://c1"), ["s"]);
    assert!(
        reader
            .tags("container_id://nope", Cardinality::High)
            .is_empty()
    );
    assert!(reader.tags("not an id", Cardinality::High).is_empty());
}

/// `tags_of` looks ids up ahead of the caller: whatever the number of ids
/// (fewer than its lookahead, or many more), it yields each once, in order,
/// with what separate lookups return, and counts each as one query.
/// What a newer Agent sends: prefixes of today's table and one no table has
/// yet, stored, queried, listed in text order and counted like the others.
#[test]
fn entities_of_prefixes_outside_the_table_are_first_class() {
    let mut writer = MirrorWriter::new();
    let reader = writer.reader();
    let texts = [
        "kubernetes_node://node-1",
        "kueue_workload://ns/job",
        "crd://datadogmetrics.datadoghq.com",
        "kubernetes_resource_claim://ns/gpu-claim",
        "kubernetes_future_thing://ns/thing",
        "host-a://x",
        "host://h",
    ];
    let entities: Vec<Entity> = texts
        .iter()
        .map(|text| entity(text, &["env:prod"], &[&format!("name:{text}")]))
        .collect();
    let added = writer.apply(
        entities
            .iter()
            .cloned()
            .map(EntityEvent::Added)
            .collect::<Vec<_>>(),
    );
    assert_eq!(added.len(), texts.len());
    for entity in &entities {
        let text = entity.id.as_str();
        assert_eq!(
            reader.tags(text, Cardinality::High),
            entity.tags(Cardinality::High)
        );
        assert_eq!(reader.entity(text).as_ref(), Some(entity));
    }
    let view = reader.view();
    let found: Vec<(&str, Vec<String>)> = view
        .tags_of(texts, Cardinality::Low)
        .map(|(id, tags)| (id, tags.to_vec()))
        .collect();
    assert!(
        found.iter().all(|(_, tags)| tags == &["env:prod"]),
        "{found:?}"
    );
    drop(view);
    let mut sorted = texts.to_vec();
    sorted.sort_unstable();
    let listed: Vec<String> = reader.list().iter().map(|e| e.id.to_string()).collect();
    assert_eq!(listed, sorted);
    assert_eq!(reader.unknown_prefix_entities(), 2);
    let by_prefix = reader.stored_by_prefix();
    assert_eq!(by_prefix.values().sum::<u64>(), 5);
    assert_eq!(by_prefix.get("kubernetes_resource_claim"), Some(&1));

    // A snapshot without the invented prefix deletes it, in id order.
    let changes = writer.replace_all(entities[..4].to_vec());
    let deleted: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        deleted,
        [
            "host-a://x",
            "host://h",
            "kubernetes_future_thing://ns/thing"
        ]
    );
    assert!(changes.iter().all(|c| c.kind == ChangeKind::Deleted));
    assert_eq!(reader.unknown_prefix_entities(), 0);
    assert!(
        reader
            .tags("kubernetes_future_thing://ns/thing", Cardinality::High)
            .is_empty()
    );
}

#[test]
fn tags_of_yields_every_id_in_order_with_its_tags() {
    let mut writer = MirrorWriter::new();
    let reader = writer.reader();
    let entities =
        (0..30).map(|i| entity(&format!("process://{i}"), &["l"], &[&format!("pid:{i}")]));
    writer.apply(entities.map(EntityEvent::Added).collect::<Vec<_>>());
    // Known, unknown and malformed ids, some repeated.
    let pool: Vec<String> = (0..40)
        .map(|i| match i % 10 {
            7 => "not an id".to_owned(),
            9 => format!("container_id://{i}"),
            _ => format!("process://{}", i % 33),
        })
        .collect();
    for len in [0, 1, 8, 9, 10, 16, 17, 40] {
        let ids = &pool[..len];
        let before = reader.query_counts();
        let view = reader.view();
        let got: Vec<(&str, Vec<String>)> = view
            .tags_of(ids.iter().map(String::as_str), Cardinality::High)
            .map(|(id, tags)| (id, tags.to_vec()))
            .collect();
        drop(view);
        let want: Vec<(&str, Vec<String>)> = ids
            .iter()
            .map(|id| (id.as_str(), reader.tags(id, Cardinality::High).to_vec()))
            .collect();
        assert_eq!(got, want, "{len} ids");
        let counted = |counts: &QueryCounts| {
            QueryStatus::ALL.map(|status| counts.get(Cardinality::High, status))
        };
        let [success, empty] = counted(&reader.query_counts());
        let [success_before, empty_before] = counted(&before);
        let found = want.iter().filter(|(_, tags)| !tags.is_empty()).count() as u64;
        assert_eq!(success - success_before, 2 * found, "{len} ids");
        assert_eq!(empty - empty_before, 2 * (len as u64 - found), "{len} ids");
    }
}

/// A view's results borrow the copy it entered: they stay what they were
/// while the writer moves on (it publishes to the other copy), and an owned
/// `Tags` made from one outlives the view.
#[test]
fn a_view_reads_one_copy_until_dropped() {
    let mut writer = MirrorWriter::new();
    let reader = writer.reader();
    writer.apply(vec![EntityEvent::Added(entity("host://h", &["old"], &[]))]);
    let (kept, applied) = std::thread::scope(|scope| {
        let view = reader.view();
        assert_eq!(format!("{view:?}"), "MirrorView { len: 1 }");
        let before = view.tags("host://h", Cardinality::Low);
        let writing = scope
            .spawn(|| writer.apply(vec![EntityEvent::Added(entity("host://h", &["new"], &[]))]));
        // The writer has published the batch or waits for this view: either
        // way the view still shows the copy it entered.
        assert_eq!(view.tags("host://h", Cardinality::Low), ["old"]);
        assert_eq!(before, ["old"]);
        let kept = Tags::from(before);
        drop(view);
        (kept, writing.join().unwrap())
    });
    assert_eq!(applied.len(), 1);
    assert_eq!(kept, ["old"]);
    assert_eq!(reader.view().tags("host://h", Cardinality::Low), ["new"]);
}

#[test]
fn query_counts_split_by_cardinality_and_status_over_all_readers() {
    let mut writer = MirrorWriter::new();
    let reader = writer.reader();
    writer.apply(vec![EntityEvent::Added(entity(
        "process://1",
        &["l"],
        &["h"],
    ))]);
    reader.tags("process://1", Cardinality::High);
    reader.tags("process://1", Cardinality::High);
    reader.tags("process://2", Cardinality::High);
    reader.tags("process://1", Cardinality::Low);
    writer.apply(vec![EntityEvent::Added(entity("process://3", &[], &["h"]))]);
    reader.tags("process://3", Cardinality::Orchestrator);
    // A reader on another thread, dropped before the totals are read: its
    // counts must survive it.
    let other = reader.clone();
    std::thread::spawn(move || {
        other.tags("process://1", Cardinality::Low);
        other.hash("process://1", Cardinality::Low);
        other.standard("process://1");
    })
    .join()
    .unwrap();
    let counts = reader.query_counts();
    let expect = [
        (Cardinality::High, QueryStatus::Success, 2),
        (Cardinality::High, QueryStatus::EmptyTags, 1),
        (Cardinality::Low, QueryStatus::Success, 2),
        (Cardinality::Low, QueryStatus::EmptyTags, 0),
        (Cardinality::Orchestrator, QueryStatus::Success, 0),
        (Cardinality::Orchestrator, QueryStatus::EmptyTags, 1),
    ];
    for (cardinality, status, n) in expect {
        assert_eq!(
            counts.get(cardinality, status),
            n,
            "{cardinality} {}",
            status.as_str()
        );
    }
    assert_eq!(counts, writer.reader().query_counts());
}

#[test]
fn interner_sweep_frees_unreferenced_strings() {
    let mut writer = MirrorWriter::new();
    let ids: Vec<String> = (0..2000).map(|i| format!("container_id://{i}")).collect();
    let unique_tags: Vec<String> = (0..2000).map(|i| format!("container_name:c{i}")).collect();
    let entities: Vec<Entity> = ids
        .iter()
        .zip(&unique_tags)
        .map(|(id, tag)| entity(id, &["env:prod", tag], &["high:inline"]))
        .collect();
    writer.replace_all(entities);
    assert_eq!(writer.interned_strings(), 2001);

    // A view taken before the strings go stays readable after they are swept.
    let reader = writer.reader();
    let held = reader.tags(&ids[7], Cardinality::High);
    writer.replace_all(Vec::new());
    assert_eq!(
        writer.interned_strings(),
        2,
        "only the held view's strings stay"
    );
    assert_eq!(held, ["env:prod", "container_name:c7", "high:inline"]);
    drop(held);
    writer.replace_all(Vec::new());
    assert_eq!(writer.interned_strings(), 0);

    // Churn through batches: 20 000 distinct strings pass through, at most
    // 1000 live at once; amortised sweeps keep the garbage bounded.
    for round in 0..20 {
        writer.apply((0..1000).map(|i| {
            let tag = format!("pod_name:p{round}-{i}");
            EntityEvent::Added(entity(&ids[i], &["env:prod", &tag], &[]))
        }));
        writer.apply(ids[..1000].iter().map(|i| EntityEvent::Deleted(id(i))));
    }
    assert!(
        writer.interned_strings() <= 3002,
        "{} strings interned",
        writer.interned_strings()
    );
}

/// A first sync skips its sweep only when nothing can be garbage: a
/// staged record replaced or deleted before the commit leaves strings no
/// record holds, and those still go at the commit.
#[test]
fn a_first_sync_that_dropped_staged_records_still_sweeps() {
    let mut writer = MirrorWriter::new();
    writer.stage([
        EntityEvent::Added(entity("container_id://1", &["gone:replaced"], &[])),
        EntityEvent::Added(entity("container_id://2", &["gone:deleted"], &[])),
        EntityEvent::Added(entity("container_id://1", &["env:prod"], &[])),
        EntityEvent::Deleted(id("container_id://2")),
    ]);
    assert_eq!(writer.interned_strings(), 3);
    writer.commit_staged();
    assert_eq!(writer.interned_strings(), 1, "only env:prod is referenced");

    // Nothing dropped: every interned string stays, as a sweep would keep.
    let mut fresh = MirrorWriter::new();
    fresh.replace_all(vec![
        entity("container_id://1", &["env:prod", "a:1"], &[]),
        entity("container_id://2", &["env:prod", "b:2"], &[]),
    ]);
    assert_eq!(fresh.interned_strings(), 3);
    // Then the next snapshot releases the first one's strings.
    fresh.replace_all(vec![entity("container_id://3", &["env:prod"], &[])]);
    assert_eq!(fresh.interned_strings(), 1);
}

/// The generation every entity of a consistent state carries.
fn generation_of(entities: &[Entity]) -> Option<&str> {
    entities.first().map(|e| e.low[0].as_str())
}

#[test]
fn concurrent_reader_never_sees_half_a_batch_or_snapshot() {
    const ENTITIES: usize = 200;
    const GENERATIONS: usize = 300;
    let generation = |g: usize| -> Vec<Entity> {
        // Every generation renames half the ids, so batches mix deletes and
        // adds; the count stays ENTITIES throughout.
        (0..ENTITIES)
            .map(|i| {
                let uid = if i % 2 == 0 {
                    i
                } else {
                    i + ENTITIES * (g % 2)
                };
                entity(&format!("process://{uid}"), &[&format!("gen:{g}")], &["h"])
            })
            .collect()
    };
    let mut writer = MirrorWriter::new();
    writer.replace_all(generation(0));
    let reader = writer.reader();
    let done = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(2));
    let checker = {
        let (done, started) = (Arc::clone(&done), Arc::clone(&started));
        std::thread::spawn(move || {
            started.wait();
            let mut observed = 0usize;
            loop {
                let finished = done.load(Ordering::Acquire);
                let entities = reader.list();
                assert_eq!(entities.len(), ENTITIES, "a half-applied batch");
                let current = generation_of(&entities).unwrap().to_owned();
                for entity in &entities {
                    assert_eq!(entity.low[0], current, "mixed generations in one view");
                }
                observed += 1;
                if finished {
                    return (observed, current);
                }
            }
        })
    };
    started.wait();
    for g in 1..=GENERATIONS {
        let next = generation(g);
        if g % 10 == 0 {
            writer.replace_all(next);
        } else {
            let previous = generation(g - 1);
            let mut events: Vec<EntityEvent> = previous
                .iter()
                .filter(|old| !next.iter().any(|new| new.id == old.id))
                .map(|old| EntityEvent::Deleted(old.id.clone()))
                .collect();
            events.extend(next.into_iter().map(EntityEvent::Modified));
            writer.apply(events);
        }
    }
    done.store(true, Ordering::Release);
    let (observed, last) = checker.join().unwrap();
    assert!(observed > 0);
    assert_eq!(last, format!("gen:{GENERATIONS}"));
}

#[test]
fn handles_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<MirrorWriter>();
    assert_send::<MirrorReader>();
    assert_send::<Tags>();
}

#[test]
fn readers_see_an_empty_mirror_once_the_writer_is_gone() {
    let mut writer = MirrorWriter::new();
    let reader = writer.reader();
    writer.apply(vec![EntityEvent::Added(entity("host://h", &["l"], &[]))]);
    let held = reader.tags("host://h", Cardinality::Low);
    drop(writer);
    assert!(reader.tags("host://h", Cardinality::Low).is_empty());
    assert!(reader.list().is_empty());
    assert_eq!(held, ["l"]);
}
