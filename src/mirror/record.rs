//! How one entity is stored: a single refcounted allocation holding its id and
//! one slice of interned tags, shared by both copies of the mirror and by every
//! [`Tags`] view handed to readers.

use std::fmt;
use std::ops::Range;

use hashbrown::HashTable;
use triomphe::ThinArc;

use crate::domain::{Cardinality, Entity, EntityId};

use super::store::fixed_hash;

/// One interned tag string: a thin (8-byte) pointer to a refcounted
/// `[count | len | bytes]` allocation. Tag strings repeat across thousands of
/// entities (`env:prod`, `kube_namespace:default`, image names), so each
/// distinct string is stored once and records hold pointers to it.
///
/// Because the [`Interner`] hands out one `Tag` per distinct string, two tags
/// of live records are equal exactly when they point to the same allocation.
#[derive(Clone)]
pub(super) struct Tag(ThinArc<(), u8>);

impl Tag {
    fn new(text: &str) -> Self {
        Self(ThinArc::from_header_and_slice((), text.as_bytes()))
    }

    pub(super) fn as_str(&self) -> &str {
        // SAFETY: the bytes were copied from a `&str` in `Tag::new`, the only
        // constructor, and a `ThinArc` never hands out mutable access to a
        // shared slice, so they are still valid UTF-8. Skipping the check
        // matters: this runs for every tag every reader touches, and
        // validating would make reads O(tag length) before the caller even
        // looks at the bytes. (A fat `Arc<str>` would be safe but 16 bytes
        // per tag slot instead of 8.) `non_ascii_tags_round_trip` tests it.
        unsafe { std::str::from_utf8_unchecked(&self.0.slice) }
    }

    fn is_same(&self, other: &Tag) -> bool {
        self.0.ptr() == other.0.ptr()
    }

    /// Whether anyone besides the interner still holds this string.
    fn is_shared(&self) -> bool {
        ThinArc::strong_count(&self.0) > 1
    }
}

/// The most tags a record holds. Boundaries between the four lists are `u16`
/// to keep the record header small; an entity with more tags than this (no
/// real one comes close) keeps the first `MAX_TAGS` of low, orchestrator,
/// high, standard, in that order.
pub(super) const MAX_TAGS: usize = u16::MAX as usize;

/// Identity and list boundaries of a record; the tags follow it inline.
struct RecordHeader {
    id: EntityId,
    /// Where the low, orchestrator and high tags end in the tag slice;
    /// standard tags run from the last of these to the end.
    ends: [u16; 3],
}

/// An immutable entity: `[count | id | ends | len | tags...]` in one
/// allocation behind a thin pointer. Records are never modified: an update
/// builds a new record, so readers holding the old one keep a consistent view.
#[derive(Clone)]
pub(super) struct Record(ThinArc<RecordHeader, Tag>);

impl Record {
    pub(super) fn id(&self) -> &EntityId {
        &self.0.header.header.id
    }

    fn tags(&self) -> &[Tag] {
        &self.0.slice
    }

    pub(super) fn is_same(&self, other: &Record) -> bool {
        self.0.ptr() == other.0.ptr()
    }

    /// The ranges of the low, orchestrator, high and standard tags.
    fn parts(&self) -> [Range<usize>; 4] {
        let [low, orchestrator, high] = self.0.header.header.ends.map(usize::from);
        [
            0..low,
            low..orchestrator,
            orchestrator..high,
            high..self.tags().len(),
        ]
    }

    /// The tags a query of `cardinality` returns. Low, orchestrator and high
    /// are contiguous in that order, so every cardinality is one range.
    pub(super) fn tags_for(&self, cardinality: Cardinality) -> Tags {
        let [low, orchestrator, high, _] = self.parts();
        let end = match cardinality {
            Cardinality::Low => low.end,
            Cardinality::Orchestrator => orchestrator.end,
            Cardinality::High => high.end,
        };
        Tags::new(self, 0..end)
    }

    pub(super) fn standard(&self) -> Tags {
        let [.., standard] = self.parts();
        Tags::new(self, standard)
    }

    /// Whether this record already holds exactly `entity`'s tags, so an
    /// upsert of it changes nothing.
    pub(super) fn holds(&self, entity: &Entity) -> bool {
        let lists = entity_lists(entity);
        self.parts().into_iter().zip(lists).all(|(range, list)| {
            range.len() == list.len()
                && self.tags()[range]
                    .iter()
                    .zip(list)
                    .all(|(tag, text)| tag.as_str() == text)
        })
    }

    /// Whether both records carry the same tags in the same lists. Interned
    /// tags make this a pointer comparison per tag.
    pub(super) fn same_tags_as(&self, other: &Record) -> bool {
        self.0.header.header.ends == other.0.header.header.ends
            && self.tags().len() == other.tags().len()
            && self
                .tags()
                .iter()
                .zip(other.tags())
                .all(|(a, b)| a.is_same(b))
    }

    pub(super) fn to_entity(&self) -> Entity {
        let [low, orchestrator, high, standard] =
            self.parts().map(|range| strings(&self.tags()[range]));
        Entity {
            id: self.id().clone(),
            low,
            orchestrator,
            high,
            standard,
        }
    }
}

fn entity_lists(entity: &Entity) -> [&[String]; 4] {
    [
        &entity.low,
        &entity.orchestrator,
        &entity.high,
        &entity.standard,
    ]
}

fn strings(tags: &[Tag]) -> Vec<String> {
    tags.iter().map(|tag| tag.as_str().to_owned()).collect()
}

/// Interned strings below this count are never swept: sweeping a small table
/// often would cost more than the memory it frees.
const MIN_SWEEP_LEN: usize = 1024;

/// The writer's table of distinct tag strings. It holds one reference to each;
/// a string nobody else references is garbage, removed by [`Interner::sweep`].
#[derive(Default)]
pub(super) struct Interner {
    strings: HashTable<Tag>,
    /// How many strings survived the last sweep: the next one is due when the
    /// table has doubled since, so sweeping is amortised O(1) per interned
    /// string and garbage never exceeds the live strings (or `MIN_SWEEP_LEN`).
    len_after_sweep: usize,
    /// Reused between records so building one allocates only the record.
    scratch: Vec<Tag>,
}

impl Interner {
    pub(super) fn len(&self) -> usize {
        self.strings.len()
    }

    fn intern(&mut self, text: &str) -> Tag {
        let hash = fixed_hash(text);
        self.strings
            .entry(
                hash,
                |tag| tag.as_str() == text,
                |tag| fixed_hash(tag.as_str()),
            )
            .or_insert_with(|| Tag::new(text))
            .get()
            .clone()
    }

    /// Builds the record of `entity`. Tags equal to the one at the same
    /// position in `previous` (the record it replaces) are reused without
    /// hashing: an update usually changes a few tags and keeps the rest.
    pub(super) fn record(&mut self, entity: &Entity, previous: Option<&Record>) -> Record {
        let previous_tags = previous.map_or(&[][..], Record::tags);
        let mut ends = [0u16; 3];
        let mut scratch = std::mem::take(&mut self.scratch);
        for (part, list) in entity_lists(entity).into_iter().enumerate() {
            let room = MAX_TAGS - scratch.len();
            for text in &list[..list.len().min(room)] {
                let tag = match previous_tags.get(scratch.len()) {
                    Some(tag) if tag.as_str() == text => tag.clone(),
                    _ => self.intern(text),
                };
                scratch.push(tag);
            }
            if let Some(end) = ends.get_mut(part) {
                *end = u16::try_from(scratch.len()).expect("scratch never exceeds MAX_TAGS");
            }
        }
        let header = RecordHeader {
            id: entity.id.clone(),
            ends,
        };
        let record = Record(ThinArc::from_header_and_iter(header, scratch.drain(..)));
        self.scratch = scratch;
        record
    }

    /// Drops every string no record references any more.
    pub(super) fn sweep(&mut self) {
        self.strings.retain(|tag| tag.is_shared());
        if self.strings.capacity() > 4 * self.strings.len().max(MIN_SWEEP_LEN) {
            self.strings.shrink_to_fit(|tag| fixed_hash(tag.as_str()));
        }
        self.len_after_sweep = self.strings.len();
    }

    /// Sweeps if the table has doubled since the last sweep.
    pub(super) fn sweep_if_grown(&mut self) {
        if self.strings.len() > (2 * self.len_after_sweep).max(MIN_SWEEP_LEN) {
            self.sweep();
        }
    }
}

/// Some of an entity's tags: a reference to its record and a range, so making
/// one costs a refcount increment and no string copies. It stays valid (and
/// unchanged) after the mirror moves on; it keeps the record alive meanwhile.
#[derive(Clone, Default)]
pub struct Tags {
    /// `None` when the range is empty, so an empty result holds nothing.
    record: Option<Record>,
    start: u16,
    end: u16,
}

impl Tags {
    fn new(record: &Record, range: Range<usize>) -> Self {
        if range.is_empty() {
            return Self::default();
        }
        // Ranges come from `Record::parts`, whose bounds are u16 `ends` or the
        // tag count, which `Interner::record` caps at MAX_TAGS.
        let bound = |at: usize| u16::try_from(at).expect("record ranges fit in u16");
        Self {
            record: Some(record.clone()),
            start: bound(range.start),
            end: bound(range.end),
        }
    }

    fn as_slice(&self) -> &[Tag] {
        match &self.record {
            Some(record) => &record.tags()[usize::from(self.start)..usize::from(self.end)],
            None => &[],
        }
    }

    pub fn iter(&self) -> TagsIter<'_> {
        TagsIter(self.as_slice().iter())
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.record.is_none()
    }

    pub fn get(&self, index: usize) -> Option<&str> {
        self.as_slice().get(index).map(Tag::as_str)
    }

    pub fn to_vec(&self) -> Vec<String> {
        strings(self.as_slice())
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = &'a str;
    type IntoIter = TagsIter<'a>;

    fn into_iter(self) -> TagsIter<'a> {
        self.iter()
    }
}

/// The strings of a [`Tags`] view, in order.
#[derive(Clone)]
pub struct TagsIter<'a>(std::slice::Iter<'a, Tag>);

impl<'a> Iterator for TagsIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.0.next().map(Tag::as_str)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for TagsIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(Tag::as_str)
    }
}

impl ExactSizeIterator for TagsIter<'_> {}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Tags {
    fn eq(&self, other: &Tags) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Tags {}

impl<S: AsRef<str>> PartialEq<[S]> for Tags {
    fn eq(&self, other: &[S]) -> bool {
        self.iter().eq(other.iter().map(AsRef::as_ref))
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for Tags {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for Tags {
    fn eq(&self, other: &Vec<S>) -> bool {
        *self == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(id: &str, low: &[&str], high: &[&str]) -> Entity {
        let mut entity = Entity::new(EntityId::parse(id).unwrap());
        entity.low = low.iter().map(|s| s.to_string()).collect();
        entity.high = high.iter().map(|s| s.to_string()).collect();
        entity
    }

    #[test]
    fn non_ascii_tags_round_trip() {
        let mut interner = Interner::default();
        let texts = ["région:île-de-france", "名前:テスト", "emoji:🦀", ""];
        let record = interner.record(&entity("process://1", &texts, &[]), None);
        assert_eq!(record.tags_for(Cardinality::Low), texts);
        assert_eq!(record.to_entity().low, texts);
    }

    #[test]
    fn equal_strings_share_one_allocation() {
        let mut interner = Interner::default();
        let a = interner.record(&entity("process://1", &["env:prod"], &["pid:1"]), None);
        let b = interner.record(&entity("process://2", &["env:prod"], &["pid:2"]), None);
        assert!(a.tags()[0].is_same(&b.tags()[0]));
        assert!(!a.tags()[1].is_same(&b.tags()[1]));
        assert_eq!(interner.len(), 3);
    }

    #[test]
    fn oversized_entities_keep_the_first_max_tags_in_list_order() {
        let mut interner = Interner::default();
        let many: Vec<String> = (0..MAX_TAGS + 5).map(|i| format!("t{i}")).collect();
        let mut big = Entity::new(EntityId::parse("process://1").unwrap());
        big.low = vec!["first".into()];
        big.high = many.clone();
        big.standard = vec!["dropped".into()];
        let record = interner.record(&big, None);
        let high = record.tags_for(Cardinality::High);
        assert_eq!(high.len(), MAX_TAGS);
        assert_eq!(high.get(0), Some("first"));
        assert_eq!(high.get(MAX_TAGS - 1), Some(many[MAX_TAGS - 2].as_str()));
        assert!(record.standard().is_empty());
        assert!(
            !record.holds(&big),
            "a truncated record does not hold the whole entity"
        );
    }
}
