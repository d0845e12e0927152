//! Stream events encoded straight from the domain types into the bytes of a
//! `datadog.model.v1.StreamTagsEvent`: byte for byte what prost writes for
//! [`EntityEvent::to_proto`] (tested), without building that message first,
//! so every tag is copied once, into the buffer the subscribers share.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::domain::{Cardinality, Entity, EntityEvent, EntityId};
use crate::proto::model as pb;

/// Field numbers of `StreamTagsEvent`, `Entity` and `EntityId`.
const EVENT_TYPE: u32 = 1;
const EVENT_ENTITY: u32 = 2;
const ENTITY_ID: u32 = 1;
const ENTITY_HIGH: u32 = 3;
const ENTITY_ORCHESTRATOR: u32 = 4;
const ENTITY_LOW: u32 = 5;
const ENTITY_STANDARD: u32 = 6;
const ID_PREFIX: u32 = 1;
const ID_UID: u32 = 2;

/// The encoded `StreamTagsEvent` of `event` as a subscriber of `cardinality`
/// sees it (the same message as `event.to_proto(cardinality)`).
pub fn encode_event(event: &EntityEvent, cardinality: Cardinality) -> Bytes {
    match event {
        EntityEvent::Added(entity) => encode_added(entity, cardinality),
        EntityEvent::Modified(entity) => encode(
            pb::EventType::Modified,
            &entity.id,
            lists(entity, cardinality),
        ),
        EntityEvent::Deleted(id) => encode(pb::EventType::Deleted, id, [&[][..]; 4]),
    }
}

/// [`encode_event`] of `EntityEvent::Added(entity)`, without owning one.
pub fn encode_added(entity: &Entity, cardinality: Cardinality) -> Bytes {
    encode(pb::EventType::Added, &entity.id, lists(entity, cardinality))
}

fn encode(kind: pb::EventType, id: &EntityId, lists: [&[String]; 4]) -> Bytes {
    let kind = kind as u64;
    let id_len = id_message_len(id);
    let entity_len = key_len(ENTITY_ID)
        + encoded_len_varint(id_len as u64)
        + id_len
        + lists
            .iter()
            .zip(LIST_FIELDS)
            .map(|(tags, field)| tags.iter().map(|tag| string_len(field, tag)).sum::<usize>())
            .sum::<usize>();
    let kind_len = if kind == 0 {
        0
    } else {
        key_len(EVENT_TYPE) + encoded_len_varint(kind)
    };
    let event_len =
        kind_len + key_len(EVENT_ENTITY) + encoded_len_varint(entity_len as u64) + entity_len;

    let mut buf = BytesMut::with_capacity(event_len);
    if kind != 0 {
        encode_key(EVENT_TYPE, WireType::Varint, &mut buf);
        encode_varint(kind, &mut buf);
    }
    encode_key(EVENT_ENTITY, WireType::LengthDelimited, &mut buf);
    encode_varint(entity_len as u64, &mut buf);
    encode_key(ENTITY_ID, WireType::LengthDelimited, &mut buf);
    encode_varint(id_len as u64, &mut buf);
    encode_string_if_set(ID_PREFIX, id.prefix(), &mut buf);
    encode_string_if_set(ID_UID, id.uid(), &mut buf);
    for (tags, field) in lists.iter().zip(LIST_FIELDS) {
        for tag in *tags {
            encode_string(field, tag, &mut buf);
        }
    }
    debug_assert_eq!(buf.len(), event_len);
    buf.freeze()
}

/// The repeated string fields of `Entity`, in field-number order (the order
/// prost writes them in), matching [`lists`].
const LIST_FIELDS: [u32; 4] = [
    ENTITY_HIGH,
    ENTITY_ORCHESTRATOR,
    ENTITY_LOW,
    ENTITY_STANDARD,
];

/// The tag lists a subscriber of `cardinality` gets, in [`LIST_FIELDS`] order.
fn lists(entity: &Entity, cardinality: Cardinality) -> [&[String]; 4] {
    let kept = |wanted: Cardinality, tags| if cardinality >= wanted { tags } else { &[][..] };
    [
        kept(Cardinality::High, &entity.high[..]),
        kept(Cardinality::Orchestrator, &entity.orchestrator[..]),
        &entity.low,
        &entity.standard,
    ]
}

fn id_message_len(id: &EntityId) -> usize {
    string_len_if_set(ID_PREFIX, id.prefix()) + string_len_if_set(ID_UID, id.uid())
}

/// A repeated string element: always written, even when empty.
fn string_len(field: u32, text: &str) -> usize {
    key_len(field) + encoded_len_varint(text.len() as u64) + text.len()
}

/// A singular proto3 string: left out when empty.
fn string_len_if_set(field: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        string_len(field, text)
    }
}

fn encode_string(field: u32, text: &str, buf: &mut BytesMut) {
    encode_key(field, WireType::LengthDelimited, buf);
    encode_varint(text.len() as u64, buf);
    buf.put_slice(text.as_bytes());
}

fn encode_string_if_set(field: u32, text: &str, buf: &mut BytesMut) {
    if !text.is_empty() {
        encode_string(field, text, buf);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::workload::{Workload, WorkloadConfig};

    fn assert_same_as_prost(event: &EntityEvent) {
        for cardinality in Cardinality::ALL {
            assert_eq!(
                encode_event(event, cardinality),
                event.to_proto(cardinality).encode_to_vec(),
                "{event:?} at {cardinality}"
            );
        }
    }

    #[test]
    fn workload_events_encode_like_prost() {
        let mut workload = Workload::new(WorkloadConfig {
            entities: 500,
            seed: 7,
        });
        for entity in workload.snapshot() {
            assert_same_as_prost(&EntityEvent::Added(entity));
        }
        for event in workload.next_events(2000) {
            assert_same_as_prost(&event);
        }
    }

    #[test]
    fn empty_and_long_and_non_ascii_tags_encode_like_prost() {
        let mut entity = Entity::new(EntityId::parse("container_id://é").unwrap());
        entity.low = vec![String::new(), "x".repeat(300)];
        entity.orchestrator = vec!["名前:テスト".to_owned()];
        entity.high = vec!["emoji:🦀".to_owned(), String::new()];
        entity.standard = vec!["s".repeat(20_000)];
        assert_same_as_prost(&EntityEvent::Added(entity.clone()));
        assert_same_as_prost(&EntityEvent::Modified(entity.clone()));
        assert_same_as_prost(&EntityEvent::Deleted(entity.id.clone()));
        assert_same_as_prost(&EntityEvent::Added(Entity::new(entity.id)));
    }
}
