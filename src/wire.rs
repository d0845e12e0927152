//! `datadog.model.v1.StreamTagsEvent`s without the generated message type:
//! - encoded straight from the domain types, byte for byte what prost writes
//!   for [`EntityEvent::to_proto`] (tested), so every tag is copied once, into
//!   the buffer a server's subscribers share;
//! - decoded in place, into an event whose strings borrow the received bytes,
//!   so a client allocates no string for a tag its mirror already interned.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost::encoding::{
    WireType, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len,
};

use crate::domain::{
    Cardinality, DomainError, Entity, EntityEvent, EntityId, EntityRef, MirrorEvent,
};
use crate::proto::encoded::EncodedStreamTagsResponse;
use crate::proto::model as pb;

/// Field numbers of `StreamTagsEvent`, `Entity` and `EntityId`.
const EVENT_TYPE: u32 = 1;
const EVENT_ENTITY: u32 = 2;
const ENTITY_ID: u32 = 1;
const ENTITY_HASH: u32 = 2;
const ENTITY_HIGH: u32 = 3;
const ENTITY_ORCHESTRATOR: u32 = 4;
const ENTITY_LOW: u32 = 5;
const ENTITY_STANDARD: u32 = 6;
const ID_PREFIX: u32 = 1;
const ID_UID: u32 = 2;

/// Encodes events, each into a slice of a shared block: with a block size
/// of 64 KiB, a snapshot chunk of small events costs a few dozen
/// allocations instead of one per event. A block stays allocated while any
/// of its events is alive, so long-lived events (a live batch queued for a
/// slow subscriber) want the default: blocks of exactly one event.
#[derive(Debug, Default)]
pub struct EventEncoder {
    block: BytesMut,
    block_size: usize,
}

impl EventEncoder {
    /// An encoder that cuts blocks of `block_size` bytes (0: one allocation per
    /// event).
    pub fn with_block_size(block_size: usize) -> Self {
        Self {
            block: BytesMut::new(),
            block_size,
        }
    }

    /// The encoded `StreamTagsEvent` of `event` as a subscriber of
    /// `cardinality` sees it (the same message as `event.to_proto(cardinality)`).
    pub fn event(&mut self, event: &EntityEvent, cardinality: Cardinality) -> Bytes {
        match event {
            EntityEvent::Added(entity) => self.added(entity, cardinality),
            EntityEvent::Modified(entity) => self.encode(
                pb::EventType::Modified,
                &entity.id,
                lists(entity, cardinality),
            ),
            EntityEvent::Deleted(id) => self.encode(pb::EventType::Deleted, id, [&[][..]; 4]),
        }
    }

    /// [`event`](Self::event) of `EntityEvent::Added(entity)`, without owning one.
    pub fn added(&mut self, entity: &Entity, cardinality: Cardinality) -> Bytes {
        self.encode(pb::EventType::Added, &entity.id, lists(entity, cardinality))
    }

    fn encode(&mut self, kind: pb::EventType, id: &EntityId, lists: [&[String]; 4]) -> Bytes {
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

        if self.block.capacity() < event_len {
            self.block = BytesMut::with_capacity(self.block_size.max(event_len));
        }
        let buf = &mut self.block;
        if kind != 0 {
            encode_key(EVENT_TYPE, WireType::Varint, buf);
            encode_varint(kind, buf);
        }
        encode_key(EVENT_ENTITY, WireType::LengthDelimited, buf);
        encode_varint(entity_len as u64, buf);
        encode_key(ENTITY_ID, WireType::LengthDelimited, buf);
        encode_varint(id_len as u64, buf);
        encode_string_if_set(ID_PREFIX, id.prefix(), buf);
        encode_string_if_set(ID_UID, id.uid(), buf);
        for (tags, field) in lists.iter().zip(LIST_FIELDS) {
            for tag in *tags {
                encode_string(field, tag, buf);
            }
        }
        debug_assert_eq!(buf.len(), event_len);
        buf.split().freeze()
    }
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
    let reduced = entity.as_reduced(cardinality);
    [
        reduced.high,
        reduced.orchestrator,
        reduced.low,
        reduced.standard,
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

/// What a `StreamTagsEvent` carries, read in place: the tags borrow the
/// encoded bytes, and all of them sit in one vector (one allocation per
/// event). Decoding follows prost's rules: the last value of a singular field
/// wins, repeated fields and repeated messages accumulate, unknown fields are
/// skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEvent<'a> {
    /// ADDED, MODIFIED or DELETED.
    pub kind: pb::EventType,
    /// The entity it is about.
    pub id: EntityId,
    /// Every tag, list after list in [`LIST_ORDER`].
    tags: Vec<&'a str>,
    /// Where each list of [`LIST_ORDER`] is in `tags`.
    lists: [Range<usize>; LIST_ORDER.len()],
}

/// The order of the lists in [`DecodedEvent::tags`], as `Entity` field
/// numbers: the order encoders write them in (field-number order), so
/// decoding usually appends each list right after the previous one.
const LIST_ORDER: [u32; 4] = [
    ENTITY_HIGH,
    ENTITY_ORCHESTRATOR,
    ENTITY_LOW,
    ENTITY_STANDARD,
];
const HIGH: usize = 0;
const ORCHESTRATOR: usize = 1;
const LOW: usize = 2;
const STANDARD: usize = 3;

fn list_position(field: u32) -> Option<usize> {
    LIST_ORDER.iter().position(|&list| list == field)
}

impl<'a> DecodedEvent<'a> {
    /// The low-cardinality tags.
    pub fn low(&self) -> &[&'a str] {
        &self.tags[self.lists[LOW].clone()]
    }

    /// The orchestrator-cardinality tags.
    pub fn orchestrator(&self) -> &[&'a str] {
        &self.tags[self.lists[ORCHESTRATOR].clone()]
    }

    /// The high-cardinality tags.
    pub fn high(&self) -> &[&'a str] {
        &self.tags[self.lists[HIGH].clone()]
    }

    /// The standard tags.
    pub fn standard(&self) -> &[&'a str] {
        &self.tags[self.lists[STANDARD].clone()]
    }

    /// Drops the tags above `cardinality` (a server may send more than asked).
    pub fn reduce(&mut self, cardinality: Cardinality) {
        if cardinality < Cardinality::High {
            self.lists[HIGH].end = self.lists[HIGH].start;
        }
        if cardinality < Cardinality::Orchestrator {
            self.lists[ORCHESTRATOR].end = self.lists[ORCHESTRATOR].start;
        }
    }

    /// The owned domain event (what [`EntityEvent::from_proto`] gives for
    /// the same bytes).
    pub fn to_event(&self) -> EntityEvent {
        let owned = |tags: &[&str]| tags.iter().map(|tag| (*tag).to_owned()).collect();
        let entity = || Entity {
            id: self.id.clone(),
            low: owned(self.low()),
            orchestrator: owned(self.orchestrator()),
            high: owned(self.high()),
            standard: owned(self.standard()),
        };
        match self.kind {
            pb::EventType::Added => EntityEvent::Added(entity()),
            pb::EventType::Modified => EntityEvent::Modified(entity()),
            pb::EventType::Deleted => EntityEvent::Deleted(self.id.clone()),
        }
    }
}

impl<'a> MirrorEvent for DecodedEvent<'a> {
    type Tag = &'a str;

    fn id(&self) -> &EntityId {
        &self.id
    }

    fn upserted(&self) -> Option<EntityRef<'_, &'a str>> {
        (self.kind != pb::EventType::Deleted).then(|| EntityRef {
            id: &self.id,
            low: self.low(),
            orchestrator: self.orchestrator(),
            high: self.high(),
            standard: self.standard(),
        })
    }
}

/// Decodes an encoded `StreamTagsEvent`, rejecting what
/// [`EntityEvent::from_proto`] rejects, and bytes that are not a valid
/// message (which prost would reject too).
///
/// One pass appends the tags in wire order. Encoders write the lists in
/// field-number order, which is `LIST_ORDER`, so each list lands right
/// after the one before; tags that arrive out of that order (which prost
/// accepts) are regrouped by a second pass over the entity.
pub fn decode_event(bytes: &[u8]) -> Result<DecodedEvent<'_>, DomainError> {
    let mut kind = 0;
    let mut entity = EntityReader::default();
    for field in Fields::new(bytes) {
        match field? {
            (EVENT_TYPE, Value::Varint(value)) => kind = value as i32,
            // A repeated `entity` field is merged into the first, as prost does.
            (EVENT_ENTITY, Value::Bytes(body)) => entity.read(body)?,
            (EVENT_TYPE | EVENT_ENTITY, _) => return Err(DomainError::MalformedEvent),
            _ => {}
        }
    }
    let EntityReader {
        seen,
        id,
        mut tags,
        counts,
        in_order,
        ..
    } = entity;
    if !in_order {
        tags = regroup(bytes, &counts)?;
    }
    // Checked in `EntityEvent::from_proto`'s order, so both report the
    // same error for the same bytes.
    if !seen {
        return Err(DomainError::MissingEntity);
    }
    let kind = pb::EventType::try_from(kind).map_err(|_| DomainError::UnknownEventType(kind))?;
    let (prefix, uid) = id.ok_or(DomainError::MissingId)?;
    Ok(DecodedEvent {
        kind,
        id: EntityId::new(prefix, uid)?,
        tags,
        lists: list_ranges(&counts),
    })
}

/// Where each list of [`LIST_ORDER`] is in the tags, given how many tags
/// each has.
fn list_ranges(counts: &[usize; LIST_ORDER.len()]) -> [Range<usize>; LIST_ORDER.len()] {
    let mut next = 0;
    counts.map(|count| {
        let list = next..next + count;
        next = list.end;
        list
    })
}

/// What the `Entity` bodies of one event carry so far.
struct EntityReader<'a> {
    /// Whether the event has an `entity` field.
    seen: bool,
    /// Present once an `id` field was seen, even an empty one.
    id: Option<(&'a str, &'a str)>,
    /// The tags in wire order.
    tags: Vec<&'a str>,
    /// Tags per list of [`LIST_ORDER`].
    counts: [usize; LIST_ORDER.len()],
    /// The list of the last tag appended.
    last_list: usize,
    /// Whether no tag came after a tag of a later list.
    in_order: bool,
}

impl Default for EntityReader<'_> {
    fn default() -> Self {
        Self {
            seen: false,
            id: None,
            tags: Vec::new(),
            counts: [0; LIST_ORDER.len()],
            last_list: 0,
            in_order: true,
        }
    }
}

impl<'a> EntityReader<'a> {
    fn read(&mut self, body: &'a [u8]) -> Result<(), DomainError> {
        self.seen = true;
        let text = Text::of(body);
        // Tags take at least 2 bytes each and usually a few dozen: a guess
        // that saves growing the vector a few times per event.
        self.tags.reserve(body.len() / 32 + 4);
        for field in Fields::new(body) {
            let (number, value) = field?;
            let Value::Bytes(bytes) = value else {
                // Every field of `Entity` we know is length-delimited.
                if (ENTITY_ID..=ENTITY_STANDARD).contains(&number) {
                    return Err(DomainError::MalformedEvent);
                }
                continue;
            };
            match number {
                ENTITY_ID => merge_id(self.id.get_or_insert(("", "")), bytes)?,
                // `hash` is unused, but still UTF-8 checked like prost does.
                ENTITY_HASH => {
                    text.read(bytes)?;
                }
                _ => {
                    if let Some(list) = list_position(number) {
                        self.tags.push(text.read(bytes)?);
                        self.counts[list] += 1;
                        self.in_order &= list >= self.last_list;
                        self.last_list = list;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The tags of the event `bytes` (already read once) grouped in
/// [`LIST_ORDER`], for tags that arrived out of it; `counts` are the tags
/// per list.
fn regroup<'a>(
    bytes: &'a [u8],
    counts: &[usize; LIST_ORDER.len()],
) -> Result<Vec<&'a str>, DomainError> {
    let mut tags = vec![""; counts.iter().sum()];
    let mut cursors = list_ranges(counts).map(|list| list.start);
    for field in Fields::new(bytes) {
        let (EVENT_ENTITY, Value::Bytes(body)) = field? else {
            continue;
        };
        let text = Text::of(body);
        for field in Fields::new(body) {
            if let (number, Value::Bytes(bytes)) = field?
                && let Some(list) = list_position(number)
            {
                tags[cursors[list]] = text.read(bytes)?;
                cursors[list] += 1;
            }
        }
    }
    Ok(tags)
}

fn merge_id<'a>(id: &mut (&'a str, &'a str), body: &'a [u8]) -> Result<(), DomainError> {
    let text = Text::of(body);
    for field in Fields::new(body) {
        match field? {
            (ID_PREFIX, Value::Bytes(bytes)) => id.0 = text.read(bytes)?,
            (ID_UID, Value::Bytes(bytes)) => id.1 = text.read(bytes)?,
            (ID_PREFIX | ID_UID, _) => return Err(DomainError::MalformedEvent),
            _ => {}
        }
    }
    Ok(())
}

/// Reads the strings of one message body. Checking a body for ASCII is one
/// fast scan; when it passes, every string in it is valid UTF-8 without a
/// check of its own (which cost a quarter of decoding, measured with perf).
/// Tags are nearly always ASCII, and so are the keys and the lengths under
/// 128 around them.
#[derive(Clone, Copy)]
struct Text {
    body_is_ascii: bool,
}

impl Text {
    fn of(body: &[u8]) -> Self {
        Self {
            body_is_ascii: body.is_ascii(),
        }
    }

    /// `bytes` (a slice of the body) as a string, if valid UTF-8.
    fn read(self, bytes: &[u8]) -> Result<&str, DomainError> {
        if self.body_is_ascii {
            debug_assert!(bytes.is_ascii());
            // SAFETY: `bytes` is part of a body whose every byte is ASCII,
            // and ASCII is valid UTF-8.
            Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
        } else {
            std::str::from_utf8(bytes).map_err(|_| DomainError::MalformedEvent)
        }
    }
}

/// One field's value; fixed-width values and groups are skipped, not read.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skipped,
}

/// Nesting prost tolerates in skipped groups.
const MAX_GROUP_DEPTH: u32 = 100;

/// The `(field number, value)` pairs of one message body.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    #[inline]
    fn next_field(&mut self) -> Result<(u32, Value<'a>), DomainError> {
        let (number, wire_type) = self.key()?;
        Ok((number, self.value(number, wire_type, 0)?))
    }

    /// A field's key. Keys of fields 1 to 15 are one byte: read inline,
    /// anything else by prost.
    #[inline]
    fn key(&mut self) -> Result<(u32, WireType), DomainError> {
        if let Some((&byte, rest)) = self.rest.split_first()
            && byte < 0x80
            && byte >> 3 != 0
            && let Ok(wire_type) = WireType::try_from(u64::from(byte & 0x07))
        {
            self.rest = rest;
            return Ok((u32::from(byte >> 3), wire_type));
        }
        decode_key(&mut self.rest).map_err(|_| DomainError::MalformedEvent)
    }

    /// A varint: one byte inline (every length under 128), longer ones by
    /// prost.
    #[inline]
    fn varint(&mut self) -> Result<u64, DomainError> {
        if let Some((&byte, rest)) = self.rest.split_first()
            && byte < 0x80
        {
            self.rest = rest;
            return Ok(u64::from(byte));
        }
        decode_varint(&mut self.rest).map_err(|_| DomainError::MalformedEvent)
    }

    #[inline]
    fn value(
        &mut self,
        number: u32,
        wire_type: WireType,
        depth: u32,
    ) -> Result<Value<'a>, DomainError> {
        Ok(match wire_type {
            WireType::Varint => Value::Varint(self.varint()?),
            WireType::LengthDelimited => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| DomainError::MalformedEvent)?;
                let bytes = self.rest.get(..len).ok_or(DomainError::MalformedEvent)?;
                self.rest = &self.rest[len..];
                Value::Bytes(bytes)
            }
            WireType::SixtyFourBit => self.skip(8)?,
            WireType::ThirtyTwoBit => self.skip(4)?,
            // Deprecated groups appear only as unknown fields: skipped
            // whole, nested ones included, through their end tag.
            WireType::StartGroup => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(DomainError::MalformedEvent);
                }
                loop {
                    match self.key()? {
                        (inner, WireType::EndGroup) if inner == number => break Value::Skipped,
                        (_, WireType::EndGroup) => return Err(DomainError::MalformedEvent),
                        (inner, inner_type) => {
                            self.value(inner, inner_type, depth + 1)?;
                        }
                    }
                }
            }
            WireType::EndGroup => return Err(DomainError::MalformedEvent),
        })
    }

    fn skip(&mut self, len: usize) -> Result<Value<'a>, DomainError> {
        self.rest = self.rest.get(len..).ok_or(DomainError::MalformedEvent)?;
        Ok(Value::Skipped)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), DomainError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.next_field();
        if field.is_err() {
            // Nothing after a malformed field can be trusted.
            self.rest = &[];
        }
        Some(field)
    }
}

impl From<pb::StreamTagsResponse> for EncodedStreamTagsResponse {
    /// The same response with its events encoded (what the wire carries).
    fn from(response: pb::StreamTagsResponse) -> Self {
        Self {
            events: response
                .events
                .iter()
                .map(|event| Bytes::from(event.encode_to_vec()))
                .collect(),
            revision: response.revision,
            snapshot_complete: response.snapshot_complete,
            server_epoch: response.server_epoch,
            resumed: response.resumed,
        }
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
                EventEncoder::default().event(event, cardinality),
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

    /// What prost and `EntityEvent::from_proto` make of `bytes`: the
    /// reference the in-place decoder must agree with.
    fn reference(bytes: &[u8]) -> Option<Result<EntityEvent, DomainError>> {
        let event = pb::StreamTagsEvent::decode(bytes).ok()?;
        Some(EntityEvent::from_proto(event))
    }

    fn assert_decodes_like_prost(bytes: &[u8]) {
        let decoded = decode_event(bytes).map(|event| event.to_event());
        match reference(bytes) {
            Some(expected) => assert_eq!(decoded, expected, "{bytes:?}"),
            None => assert!(
                decoded.is_err(),
                "prost rejects {bytes:?}, we got {decoded:?}"
            ),
        }
    }

    fn wire_event() -> impl proptest::strategy::Strategy<Value = pb::StreamTagsEvent> {
        use proptest::prelude::*;
        let text = || prop::sample::select(vec!["", "a", "env:prod", "é:ü", "process", "host"]);
        let tags = move || prop::collection::vec(text().prop_map(str::to_owned), 0..3);
        let id = (text(), text()).prop_map(|(prefix, uid)| pb::EntityId {
            prefix: prefix.to_owned(),
            uid: uid.to_owned(),
        });
        let entity = (prop::option::of(id), text(), tags(), tags(), tags(), tags()).prop_map(
            |(id, hash, high, orchestrator, low, standard)| pb::Entity {
                id,
                hash: hash.to_owned(),
                high_cardinality_tags: high,
                orchestrator_cardinality_tags: orchestrator,
                low_cardinality_tags: low,
                standard_tags: standard,
            },
        );
        (-1..4i32, prop::option::of(entity))
            .prop_map(|(r#type, entity)| pb::StreamTagsEvent { r#type, entity })
    }

    proptest::proptest! {
        #[test]
        fn decoding_in_place_agrees_with_prost(event in wire_event()) {
            assert_decodes_like_prost(&event.encode_to_vec());
        }

        /// Damaged, truncated, concatenated (prost merges a repeated message
        /// field) and unknown-field-laden encodings.
        #[test]
        fn decoding_damaged_bytes_agrees_with_prost(
            first in wire_event(),
            second in wire_event(),
            flips in proptest::collection::vec((0usize..512, 0u8..=255), 0..3),
            cut in 0usize..512,
        ) {
            let mut bytes = first.encode_to_vec();
            bytes.extend(second.encode_to_vec());
            // Unknown fields: a varint, a length-delimited one, and a group
            // (field 14) holding a varint and a nested group (field 15).
            bytes.extend([0x38, 0x05, 0x42, 0x01, 0x00]);
            bytes.extend([0x73, 0x08, 0x01, 0x7b, 0x7c, 0x74]);
            assert_decodes_like_prost(&bytes);
            let len = bytes.len();
            for (at, value) in flips {
                bytes[at % len] ^= value;
            }
            assert_decodes_like_prost(&bytes);
            bytes.truncate(cut % (bytes.len() + 1));
            assert_decodes_like_prost(&bytes);
        }
    }

    /// Lists interleaved and out of field-number order inside one body, as
    /// another encoder may write them: regrouped like prost does.
    #[test]
    fn interleaved_lists_decode_like_prost() {
        let mut bytes = vec![0x08, 0x01, 0x12, 0];
        let id = [
            0x0a, 0x0b, 0x0a, 0x04, b'h', b'o', b's', b't', 0x12, 0x03, b'u', b'i', b'd',
        ];
        let mut body = id.to_vec();
        for (field, tag) in [
            (6, "s1"),
            (5, "l1"),
            (3, "h1"),
            (5, "l2"),
            (4, "o1"),
            (3, "h2"),
        ] {
            body.extend([field << 3 | 2, tag.len() as u8]);
            body.extend(tag.as_bytes());
        }
        bytes[3] = body.len() as u8;
        bytes.extend(body);
        assert_decodes_like_prost(&bytes);
        let event = decode_event(&bytes).unwrap();
        assert_eq!(event.high(), ["h1", "h2"]);
        assert_eq!(event.low(), ["l1", "l2"]);
        assert_eq!(event.orchestrator(), ["o1"]);
        assert_eq!(event.standard(), ["s1"]);
    }

    #[test]
    fn decoded_workload_events_round_trip() {
        let mut workload = Workload::new(WorkloadConfig {
            entities: 200,
            seed: 3,
        });
        // Small blocks: events span several, and share each.
        let mut encoder = EventEncoder::with_block_size(4096);
        for event in workload.next_events(1000) {
            let bytes = encoder.event(&event, Cardinality::High);
            assert_eq!(decode_event(&bytes).unwrap().to_event(), event);
        }
    }

    #[test]
    fn reduce_drops_what_the_cardinality_excludes() {
        let mut entity = Entity::new(EntityId::parse("process://1").unwrap());
        entity.low = vec!["l".into()];
        entity.orchestrator = vec!["o".into()];
        entity.high = vec!["h".into()];
        entity.standard = vec!["s".into()];
        let bytes = EventEncoder::default().added(&entity, Cardinality::High);
        for cardinality in Cardinality::ALL {
            let mut decoded = decode_event(&bytes).unwrap();
            decoded.reduce(cardinality);
            assert_eq!(
                decoded.to_event(),
                EntityEvent::Added(entity.reduced(cardinality))
            );
        }
    }
}
