//! How one entity is stored: a single refcounted allocation shared by both
//! copies of the mirror and by every [`Tags`] view handed to readers.
//!
//! Entities repeat their tags in whole lists: every container of an app
//! carries the same low and standard lists, every container of a pod the same
//! orchestrator list. So those three lists are interned as units (and their
//! strings individually), and a record points to them. The id and the high
//! cardinality tags are unique to the entity by nature: interning them would
//! only add a header, a pointer and an interner slot to each, so they are
//! stored inline in the record.

use std::fmt;

use hashbrown::HashTable;
use triomphe::ThinArc;

use crate::domain::{Cardinality, Entity, EntityId, EntityRef};
use crate::prefetch::prefetch;

use super::key::{IdKey, fixed_hash, hash_texts};
use super::table::{TableEntry, make_room, prefetch_slot, rebuild};

/// One interned tag string: a thin (8-byte) pointer to a refcounted
/// `[count | len | bytes]` allocation. While a record references it, it is the
/// only `Tag` with its text, so equal tags are the same allocation.
#[derive(Clone)]
pub(super) struct Tag(ThinArc<(), u8>);

impl Tag {
    fn new(text: &str) -> Self {
        Self(ThinArc::from_header_and_slice((), text.as_bytes()))
    }

    fn as_str(&self) -> &str {
        // SAFETY: the bytes were copied from a `&str` in `Tag::new`, the only
        // constructor, and a `ThinArc` never hands out mutable access to a
        // shared slice, so they are still valid UTF-8. Skipping the check
        // matters: this runs for every tag every reader touches, and
        // validating would make reads O(tag length) before the caller even
        // looks at the bytes. (A fat `Arc<str>` would be safe but 16 bytes
        // per list slot instead of 8.) `non_ascii_tags_round_trip` tests it.
        unsafe { std::str::from_utf8_unchecked(&self.0.slice) }
    }

    /// Whether anyone besides the interner still holds this string.
    fn is_shared(&self) -> bool {
        ThinArc::strong_count(&self.0) > 1
    }
}

/// One interned list of interned tags. Like [`Tag`], equal lists of live
/// records are the same allocation. Its header is the content hash of its
/// texts (8 bytes per list, 2 per entity in the node workload): rehashing
/// the interner's table of lists then reads each list once instead of
/// every string of every list, which perf showed at 8 % of `apply` in the
/// 100-client fan-out.
#[derive(Clone)]
pub(super) struct TagList(ThinArc<u64, Tag>);

impl TagList {
    fn tags(&self) -> &[Tag] {
        &self.0.slice
    }

    fn is_same(&self, other: &TagList) -> bool {
        self.0.ptr() == other.0.ptr()
    }

    /// Of its texts, by [`hash_texts`].
    fn content_hash(&self) -> u64 {
        self.0.header.header
    }

    fn holds<S: AsRef<str>>(&self, texts: &[S]) -> bool {
        self.tags().len() == texts.len()
            && self
                .tags()
                .iter()
                .zip(texts)
                .all(|(tag, text)| tag.as_str() == text.as_ref())
    }

    fn is_shared(&self) -> bool {
        ThinArc::strong_count(&self.0) > 1
    }
}

/// Positions of the interned lists in a record.
const LOW: usize = 0;
const ORCHESTRATOR: usize = 1;
const STANDARD: usize = 2;

struct RecordHeader {
    /// Low, orchestrator and standard tags.
    shared: [TagList; 3],
    /// Bytes of the id's tail (its uid, see [`IdKey`]).
    tail_len: u32,
    /// The number of high cardinality tags, and where the tail is: right
    /// after the prefix index, or, with [`HOLDER_FLAG`] set, at the end of
    /// the high tag whose index is in the [`HOLDER_BITS`] (the count then
    /// in the low [`HIGH_COUNT_BITS`]), which holds it so that the tail is
    /// not stored twice. Containers carry `container_id:<uid>`, images
    /// `image_id:<uid>`: in the node workload that saves 15 % of the mirror.
    high: u32,
}

const HOLDER_FLAG: u32 = 1 << 31;
const HIGH_COUNT_BITS: u32 = 24;
const HIGH_COUNT_MASK: u32 = (1 << HIGH_COUNT_BITS) - 1;
const HOLDER_BITS: u32 = 0x7f;

impl RecordHeader {
    fn high_count(&self) -> usize {
        if self.high & HOLDER_FLAG == 0 {
            self.high as usize
        } else {
            (self.high & HIGH_COUNT_MASK) as usize
        }
    }

    /// The index of the high tag whose end is the tail, if one is.
    fn tail_holder(&self) -> Option<usize> {
        (self.high & HOLDER_FLAG != 0)
            .then_some(((self.high >> HIGH_COUNT_BITS) & HOLDER_BITS) as usize)
    }
}

/// Width of one entry of the table of high tag ends.
const END_WIDTH: usize = size_of::<u32>();

/// An immutable entity: `[count | shared lists | tail_len | high | len |
/// high tag ends (u32 each) | prefix index (1 byte) | id tail (unless a
/// high tag ends with it) | high tags]` in one allocation behind a thin pointer,
/// so a lookup compares the id without another pointer chase. An update
/// builds a new record; readers holding the old one keep a consistent view.
#[derive(Clone)]
pub(super) struct Record(ThinArc<RecordHeader, u8>);

impl Record {
    fn header(&self) -> &RecordHeader {
        &self.0.header.header
    }

    /// The prefix index byte, the id's tail (unless a high tag holds it)
    /// and the high tags, concatenated.
    fn text(&self) -> &str {
        let ends_len = self.header().high_count() * END_WIDTH;
        // SAFETY: `Interner::record` writes the table of ends, then the
        // prefix index (a byte below 128: one ASCII char, as
        // `OTHER_PREFIX` is) and only whole `&str`s (the tail unless
        // a high tag holds it, then each high tag), and the `ThinArc` is
        // never mutated after, so the bytes after the table are valid UTF-8.
        // Every sub-slice taken from this `&str` below is bounds- and
        // char-boundary-checked. `non_ascii_tags_round_trip` tests it.
        unsafe { std::str::from_utf8_unchecked(&self.0.slice[ends_len..]) }
    }

    pub(super) fn key(&self) -> IdKey<'_> {
        let text = self.text();
        let tail_len = self.header().tail_len as usize;
        let tail_end = match self.header().tail_holder() {
            None => 1 + tail_len,
            Some(holder) => end_at(&self.0.slice, holder).expect("the holder is a high tag"),
        };
        IdKey {
            prefix: text.as_bytes()[0],
            tail: &text[tail_end - tail_len..tail_end],
        }
    }

    /// The id as a domain value.
    pub(super) fn entity_id(&self) -> EntityId {
        self.key().to_entity_id()
    }

    fn high(&self) -> HighTags<'_> {
        let header = self.header();
        let ends_len = header.high_count() * END_WIDTH;
        let tail_len = header.tail_len as usize;
        HighTags {
            text: self.text(),
            start: 1 + header.tail_holder().map_or(tail_len, |_| 0),
            ends: &self.0.slice[..ends_len],
        }
    }

    /// Its address, which no other live record has.
    pub(super) fn identity(&self) -> usize {
        self.0.ptr().addr()
    }

    /// Starts loading the record's first two cache lines: its header, and
    /// its id, which a lookup compares.
    pub(super) fn prefetch(&self) {
        let start = self.0.ptr().cast::<u8>();
        prefetch(start);
        prefetch(start.wrapping_add(64));
    }

    /// Starts loading the lines after the header that hold the id of most
    /// records (a container's uid ends in the third): where the id is
    /// depends on the header, so a lookup would otherwise wait for the
    /// header's line before it even asks for the id's.
    pub(super) fn prefetch_id(&self) {
        let start = self.0.ptr().cast::<u8>();
        prefetch(start.wrapping_add(64));
        prefetch(start.wrapping_add(128));
    }

    pub(super) fn tags_for(&self, cardinality: Cardinality) -> TagsRef<'_> {
        TagsRef::new(self, Selection::UpTo(cardinality))
    }

    pub(super) fn standard(&self) -> TagsRef<'_> {
        TagsRef::new(self, Selection::Standard)
    }

    /// Whether this record already holds exactly `entity`'s tags, so an
    /// upsert of it changes nothing.
    pub(super) fn holds<S: AsRef<str>>(&self, entity: &EntityRef<'_, S>) -> bool {
        let [low, orchestrator, standard] = &self.header().shared;
        low.holds(entity.low)
            && orchestrator.holds(entity.orchestrator)
            && standard.holds(entity.standard)
            && self.high().len() == entity.high.len()
            && self
                .high()
                .zip(entity.high)
                .all(|(tag, text)| tag == text.as_ref())
    }

    /// Whether both records carry the same tags. Interned lists make that a
    /// pointer comparison per list, plus the high tags' bytes.
    pub(super) fn same_tags_as(&self, other: &Record) -> bool {
        let lists = self.header().shared.iter().zip(&other.header().shared);
        lists.into_iter().all(|(a, b)| a.is_same(b)) && self.high().eq(other.high())
    }

    pub(super) fn to_entity(&self) -> Entity {
        let [low, orchestrator, standard] = self
            .header()
            .shared
            .each_ref()
            .map(|list| strings(list.tags()));
        Entity {
            id: self.entity_id(),
            low,
            orchestrator,
            high: self.high().map(str::to_owned).collect(),
            standard,
        }
    }
}

fn strings(tags: &[Tag]) -> Vec<String> {
    tags.iter().map(|tag| tag.as_str().to_owned()).collect()
}

/// The high cardinality tags of a record, read from its table of ends.
#[derive(Clone, Default)]
struct HighTags<'a> {
    /// The record's text: the id, then the high tags.
    text: &'a str,
    /// Where the next tag starts in `text`.
    start: usize,
    /// Ends of the tags not yet iterated, `END_WIDTH` bytes each.
    ends: &'a [u8],
}

fn end_at(ends: &[u8], index: usize) -> Option<usize> {
    let end = ends.get(index * END_WIDTH..)?.first_chunk::<END_WIDTH>()?;
    Some(u32::from_ne_bytes(*end) as usize)
}

impl<'a> HighTags<'a> {
    fn get(&self, index: usize) -> Option<&'a str> {
        let end = end_at(self.ends, index)?;
        let start = match index.checked_sub(1) {
            None => self.start,
            Some(before) => end_at(self.ends, before)?,
        };
        Some(&self.text[start..end])
    }
}

impl<'a> Iterator for HighTags<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let (end, rest) = self.ends.split_first_chunk::<END_WIDTH>()?;
        let end = u32::from_ne_bytes(*end) as usize;
        let tag = &self.text[self.start..end];
        (self.start, self.ends) = (end, rest);
        Some(tag)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.ends.len() / END_WIDTH;
        (len, Some(len))
    }
}

impl ExactSizeIterator for HighTags<'_> {}

/// The content hashes of an entity's interned lists, in record order (see
/// [`LOW`], [`ORCHESTRATOR`], [`STANDARD`]), computed once per event: the
/// prefetches ahead of an event and its interning both need them.
#[derive(Clone, Copy)]
pub(super) struct ListHashes([u64; 3]);

impl ListHashes {
    pub(super) fn of<S: AsRef<str>>(entity: &EntityRef<'_, S>) -> Self {
        Self(shared_lists(entity).map(|texts| hash_texts(texts.iter().map(AsRef::as_ref))))
    }
}

/// The lists of `entity` that records intern, in record order.
fn shared_lists<'e, S>(entity: &EntityRef<'e, S>) -> [&'e [S]; 3] {
    [entity.low, entity.orchestrator, entity.standard]
}

/// Tables below this size are never swept: sweeping a small table often
/// would cost more than the memory it frees.
const MIN_SWEEP_LEN: usize = 1024;

/// The writer's tables of distinct tag strings and tag lists. It holds one
/// reference to each; one nobody else references is garbage, removed by
/// [`Interner::sweep`].
#[derive(Default)]
pub(super) struct Interner {
    strings: HashTable<Tag>,
    lists: HashTable<TagList>,
    /// Strings and lists that survived the last sweep: the next one is due
    /// when the tables have doubled since, so sweeping is amortised O(1) per
    /// interned value and garbage never exceeds what is live (or
    /// `MIN_SWEEP_LEN`).
    len_after_sweep: usize,
    /// Reused between records so building one allocates only what it keeps.
    scratch_bytes: Vec<u8>,
}

fn offset(len: usize) -> u32 {
    // A record is one entity of one gRPC message, capped at a few MiB.
    u32::try_from(len).expect("a record's text is under 4 GiB")
}

impl Interner {
    /// How many distinct tag strings are interned, garbage not yet swept
    /// included.
    pub(super) fn strings(&self) -> usize {
        self.strings.len()
    }

    fn intern(&mut self, text: &str) -> Tag {
        let hash = fixed_hash(text);
        make_room(&mut self.strings);
        self.strings
            .entry(hash, |tag| tag.as_str() == text, Tag::table_hash)
            .or_insert_with(|| Tag::new(text))
            .get()
            .clone()
    }

    /// The interned list of `texts` (whose content hash is `hash`), reusing
    /// `previous` (the same list of the record being replaced) when it is
    /// unchanged: an update usually changes one list and keeps the others.
    /// Lists repeat far more than they change (every container of an app
    /// has the same low list), so a known list is found from the texts
    /// alone; only a new list interns its strings.
    fn intern_list<S: AsRef<str>>(
        &mut self,
        texts: &[S],
        hash: u64,
        previous: Option<&TagList>,
    ) -> TagList {
        debug_assert_eq!(hash, hash_texts(texts.iter().map(AsRef::as_ref)));
        // Comparing the stored hashes first skips reading the strings of a
        // list that changed.
        let is_texts = |list: &TagList| list.content_hash() == hash && list.holds(texts);
        if let Some(previous) = previous.filter(|list| is_texts(list)) {
            return previous.clone();
        }
        if let Some(list) = self.lists.find(hash, is_texts) {
            return list.clone();
        }
        let tags: Vec<Tag> = texts
            .iter()
            .map(|text| self.intern(text.as_ref()))
            .collect();
        let list = TagList(ThinArc::from_header_and_iter(hash, tags.into_iter()));
        make_room(&mut self.lists);
        self.lists
            .insert_unique(hash, list.clone(), TagList::table_hash);
        list
    }

    /// Builds the record of `entity` (whose lists hash to `hashes`), reusing
    /// the lists of `previous` (the record it replaces) where they are
    /// unchanged.
    pub(super) fn record<S: AsRef<str>>(
        &mut self,
        entity: &EntityRef<'_, S>,
        hashes: &ListHashes,
        previous: Option<&Record>,
    ) -> Record {
        let previous = previous.map(|record| &record.header().shared);
        let lists = shared_lists(entity);
        let shared = [LOW, ORCHESTRATOR, STANDARD].map(|part| {
            self.intern_list(
                lists[part],
                hashes.0[part],
                previous.map(|lists| &lists[part]),
            )
        });
        let key = IdKey::of(entity.id);
        let high_count = offset(entity.high.len());
        // Only when the header has the bits to say which tag holds it.
        let holder = entity
            .high
            .iter()
            .take(HOLDER_BITS as usize + 1)
            .position(|tag| tag.as_ref().ends_with(key.tail))
            .filter(|_| high_count <= HIGH_COUNT_MASK);
        let bytes = &mut self.scratch_bytes;
        bytes.clear();
        let mut end = 1 + holder.map_or(key.tail.len(), |_| 0);
        for tag in entity.high {
            end += tag.as_ref().len();
            bytes.extend_from_slice(&offset(end).to_ne_bytes());
        }
        bytes.push(key.prefix);
        if holder.is_none() {
            bytes.extend_from_slice(key.tail.as_bytes());
        }
        for tag in entity.high {
            bytes.extend_from_slice(tag.as_ref().as_bytes());
        }
        let holder_bits = holder.map_or(0, |k| HOLDER_FLAG | offset(k) << HIGH_COUNT_BITS);
        let header = RecordHeader {
            shared,
            tail_len: offset(key.tail.len()),
            high: high_count | holder_bits,
        };
        Record(ThinArc::from_header_and_slice(header, bytes))
    }

    /// The interned lists that interning an entity with these hashes will
    /// compare with it.
    fn candidates<'i>(&'i self, hashes: &ListHashes) -> impl Iterator<Item = &'i TagList> {
        let hashes = hashes.0;
        hashes
            .into_iter()
            .flat_map(|hash| self.lists.iter_hash(hash))
    }

    /// Starts loading the interned lists with these hashes, for an entity
    /// interned soon (see [`crate::prefetch`]).
    pub(super) fn prefetch_lists(&self, hashes: &ListHashes) {
        for list in self.candidates(hashes) {
            prefetch(list.0.ptr());
        }
    }

    /// Starts loading the table slots of the interned lists with these
    /// hashes, so that [`prefetch_lists`](Self::prefetch_lists) a few
    /// events later finds them in cache.
    pub(super) fn prefetch_list_slots(&self, hashes: &ListHashes) {
        for hash in hashes.0 {
            prefetch_slot(&self.lists, hash);
        }
    }

    /// Starts loading the strings of the interned lists with these hashes,
    /// which interning compares. It reads the lists: call it once they are
    /// in cache ([`prefetch_lists`](Self::prefetch_lists) a few events
    /// earlier).
    pub(super) fn prefetch_strings(&self, hashes: &ListHashes) {
        for tag in self.candidates(hashes).flat_map(TagList::tags) {
            prefetch(tag.0.ptr());
        }
    }

    /// Drops every list and string no record references any more, and
    /// leaves each table room for its live values to double.
    pub(super) fn sweep(&mut self) {
        // Lists first: dropping a list releases its strings.
        self.lists.retain(|list| list.is_shared());
        self.strings.retain(|tag| tag.is_shared());
        resize_after_sweep(&mut self.lists);
        resize_after_sweep(&mut self.strings);
        self.len_after_sweep = self.strings.len() + self.lists.len();
    }

    /// Sweeps if the tables have doubled since the last sweep.
    pub(super) fn sweep_if_grown(&mut self) {
        let len = self.strings.len() + self.lists.len();
        if len > (2 * self.len_after_sweep).max(MIN_SWEEP_LEN) {
            self.sweep();
        }
    }
}

impl TableEntry for Tag {
    fn table_hash(&self) -> u64 {
        fixed_hash(self.as_str())
    }

    fn prefetch_key(&self) {
        prefetch(self.0.ptr());
    }
}

impl TableEntry for TagList {
    fn table_hash(&self) -> u64 {
        self.content_hash()
    }

    fn prefetch_key(&self) {
        prefetch(self.0.ptr());
    }
}

/// Sizes a swept table for its live values to double before it must grow,
/// giving memory back if most of it was garbage. Growing rebuilds the
/// table, about a millisecond for a mirror's lists or strings, and every
/// mirror a process feeds from the same stream grows at the same event: in
/// the 100-client fan-out, 100 rebuilds at once held every client up (p99
/// 36-92 ms without this room, 20-21 ms with it and the smaller records).
fn resize_after_sweep<T: TableEntry>(table: &mut HashTable<T>) {
    let room = 2 * table.len().max(MIN_SWEEP_LEN);
    if table.capacity() < room || table.capacity() > 2 * room {
        rebuild(table, room);
    }
}

/// Which of a record's tags a [`Tags`] view shows.
#[derive(Clone, Copy, Default)]
enum Selection {
    UpTo(Cardinality),
    #[default]
    Standard,
}

/// Some of an entity's tags, borrowed from the mirror for as long as the
/// [`MirrorView`](super::MirrorView) it came from: its record and which
/// tags. Making one writes nothing, not even a refcount, so lookups from
/// many threads never contend for the cache line of a popular entity.
/// [`Tags::from`] keeps it beyond the view.
#[derive(Clone, Copy, Default)]
pub struct TagsRef<'a> {
    /// `None` when the selection is empty.
    record: Option<&'a Record>,
    selection: Selection,
}

/// Some of an entity's tags, owned: a reference to its record and which
/// tags, so making one costs a refcount increment and no string copies. It
/// stays valid (and unchanged) after the mirror moves on; it keeps the
/// record alive meanwhile.
#[derive(Clone, Default)]
pub struct Tags {
    /// `None` when the selection is empty, so an empty result holds nothing.
    record: Option<Record>,
    selection: Selection,
}

/// The interned lists and high tags `selection` covers, in query order.
fn select(record: &Record, selection: Selection) -> ([&[Tag]; 2], HighTags<'_>) {
    let lists = record.header().shared.each_ref().map(TagList::tags);
    let none = HighTags::default();
    match selection {
        Selection::UpTo(Cardinality::Low) => ([lists[LOW], &[]], none),
        Selection::UpTo(Cardinality::Orchestrator) => ([lists[LOW], lists[ORCHESTRATOR]], none),
        Selection::UpTo(Cardinality::High) => ([lists[LOW], lists[ORCHESTRATOR]], record.high()),
        Selection::Standard => ([lists[STANDARD], &[]], none),
    }
}

/// Whether `selection` shows none of `record`'s tags. The record's own high
/// tags are checked first: the interned lists live elsewhere in memory, and
/// reading one that is out of cache doubled the cost of a lookup. For a
/// High query of an entity with high tags, no list is read at all.
fn selects_nothing(record: &Record, selection: Selection) -> bool {
    let lists = &record.header().shared;
    let no_low = || lists[LOW].tags().is_empty();
    let no_orchestrator = || lists[ORCHESTRATOR].tags().is_empty();
    match selection {
        Selection::UpTo(Cardinality::Low) => no_low(),
        Selection::UpTo(Cardinality::Orchestrator) => no_low() && no_orchestrator(),
        Selection::UpTo(Cardinality::High) => {
            record.header().high_count() == 0 && no_low() && no_orchestrator()
        }
        Selection::Standard => lists[STANDARD].tags().is_empty(),
    }
}

impl<'a> TagsRef<'a> {
    fn new(record: &'a Record, selection: Selection) -> Self {
        Self {
            record: (!selects_nothing(record, selection)).then_some(record),
            selection,
        }
    }

    pub fn iter(&self) -> TagsIter<'a> {
        let ([first, second], high): ([&[Tag]; 2], _) = match self.record {
            Some(record) => select(record, self.selection),
            None => ([&[], &[]], HighTags::default()),
        };
        TagsIter {
            current: first.iter(),
            then: second,
            high,
        }
    }

    pub fn len(&self) -> usize {
        self.iter().len()
    }

    pub fn is_empty(&self) -> bool {
        self.record.is_none()
    }

    pub fn get(&self, index: usize) -> Option<&'a str> {
        let ([first, second], high) = select(self.record?, self.selection);
        let Some(index) = index.checked_sub(first.len()) else {
            return Some(first[index].as_str());
        };
        match index.checked_sub(second.len()) {
            None => Some(second[index].as_str()),
            Some(index) => high.get(index),
        }
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl From<TagsRef<'_>> for Tags {
    fn from(tags: TagsRef<'_>) -> Self {
        Self {
            record: tags.record.cloned(),
            selection: tags.selection,
        }
    }
}

impl Tags {
    /// The same tags, borrowed.
    pub fn as_tags_ref(&self) -> TagsRef<'_> {
        TagsRef {
            record: self.record.as_ref(),
            selection: self.selection,
        }
    }

    pub fn iter(&self) -> TagsIter<'_> {
        self.as_tags_ref().iter()
    }

    pub fn len(&self) -> usize {
        self.as_tags_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.record.is_none()
    }

    pub fn get(&self, index: usize) -> Option<&str> {
        self.as_tags_ref().get(index)
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.as_tags_ref().to_vec()
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = &'a str;
    type IntoIter = TagsIter<'a>;

    fn into_iter(self) -> TagsIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for TagsRef<'a> {
    type Item = &'a str;
    type IntoIter = TagsIter<'a>;

    fn into_iter(self) -> TagsIter<'a> {
        self.iter()
    }
}

/// The strings of a [`Tags`] or [`TagsRef`] view, in order.
#[derive(Clone)]
pub struct TagsIter<'a> {
    current: std::slice::Iter<'a, Tag>,
    /// The interned list after `current`, if any.
    then: &'a [Tag],
    high: HighTags<'a>,
}

impl<'a> Iterator for TagsIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            if let Some(tag) = self.current.next() {
                return Some(tag.as_str());
            }
            if self.then.is_empty() {
                return self.high.next();
            }
            self.current = std::mem::take(&mut self.then).iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.current.len() + self.then.len() + self.high.len();
        (len, Some(len))
    }
}

impl ExactSizeIterator for TagsIter<'_> {}

impl fmt::Debug for TagsRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_tags_ref().fmt(f)
    }
}

/// Both views compare by their strings, with each other and with lists of
/// strings.
macro_rules! compare_by_strings {
    ($($view:ty),*) => {$(
        impl PartialEq for $view {
            fn eq(&self, other: &Self) -> bool {
                self.iter().eq(other.iter())
            }
        }

        impl Eq for $view {}

        impl<S: AsRef<str>> PartialEq<[S]> for $view {
            fn eq(&self, other: &[S]) -> bool {
                self.iter().eq(other.iter().map(AsRef::as_ref))
            }
        }

        impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for $view {
            fn eq(&self, other: &[S; N]) -> bool {
                *self == other[..]
            }
        }

        impl<S: AsRef<str>> PartialEq<Vec<S>> for $view {
            fn eq(&self, other: &Vec<S>) -> bool {
                *self == other[..]
            }
        }
    )*};
}

compare_by_strings!(Tags, TagsRef<'_>);

impl PartialEq<Tags> for TagsRef<'_> {
    fn eq(&self, other: &Tags) -> bool {
        *self == other.as_tags_ref()
    }
}

impl PartialEq<TagsRef<'_>> for Tags {
    fn eq(&self, other: &TagsRef<'_>) -> bool {
        self.as_tags_ref() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn build(interner: &mut Interner, entity: &Entity) -> Record {
        let entity = entity.as_ref();
        interner.record(&entity, &ListHashes::of(&entity), None)
    }

    fn entity(id: &str, low: &[&str], high: &[&str]) -> Entity {
        let mut entity = Entity::new(EntityId::parse(id).unwrap());
        entity.low = texts(low);
        entity.high = texts(high);
        entity
    }

    #[test]
    fn a_view_is_empty_exactly_when_it_shows_no_tag() {
        let mut interner = Interner::default();
        for shape in 0..16u32 {
            let some = |bit: u32, tag: &str| -> Vec<String> {
                if shape & bit == 0 {
                    vec![]
                } else {
                    texts(&[tag])
                }
            };
            let mut full = entity("process://1", &[], &[]);
            full.low = some(1, "env:prod");
            full.orchestrator = some(2, "pod_name:p");
            full.high = some(4, "pid:1");
            full.standard = some(8, "service:s");
            let record = build(&mut interner, &full);
            let views = Cardinality::ALL
                .map(|cardinality| (record.tags_for(cardinality), full.tags(cardinality)));
            for (view, expected) in views
                .iter()
                .chain([&(record.standard(), full.standard.clone())])
            {
                assert_eq!(view.is_empty(), expected.is_empty(), "{full:?}");
                assert_eq!(view, expected);
            }
        }
    }

    #[test]
    fn non_ascii_tags_round_trip() {
        let mut interner = Interner::default();
        let odd = ["région:île-de-france", "名前:テスト", "emoji:🦀", ""];
        let mut full = entity("process://ü-1", &odd, &odd);
        full.orchestrator = texts(&odd[1..]);
        full.standard = texts(&odd[..2]);
        let record = build(&mut interner, &full);
        assert_eq!(record.entity_id(), full.id);
        assert_eq!(record.to_entity(), full);
        let high = record.tags_for(Cardinality::High);
        assert_eq!(high, full.tags(Cardinality::High));
        assert_eq!(high.len(), 11);
        let by_index: Vec<&str> = (0..high.len()).map(|i| high.get(i).unwrap()).collect();
        assert_eq!(by_index, full.tags(Cardinality::High));
        assert_eq!(high.get(11), None);
        assert!(record.holds(&full.as_ref()));
    }

    #[test]
    fn a_high_tag_ending_with_the_uid_holds_it() {
        let mut interner = Interner::default();
        let uid = "0123abcd".repeat(8);
        // The header can name one of the first 128 high tags as the holder.
        let holder_at = |at: usize| -> Vec<String> {
            let mut high: Vec<String> = (0..at + 2).map(|i| format!("tag:{i}")).collect();
            high[at] = format!("container_id:{uid}");
            high
        };
        let cases = [
            (vec![format!("container_id:{uid}"), "name:web".into()], true),
            (vec!["name:web".into(), format!("container_id:{uid}")], true),
            (vec![uid.clone()], true),
            (vec![format!("{uid}:suffix")], false),
            (vec![], false),
            (holder_at(127), true),
            (holder_at(128), false),
        ];
        for (high, held) in cases {
            let mut container = Entity::new(EntityId::new("container_id", &uid).unwrap());
            container.low = texts(&["env:prod"]);
            container.high = high.clone();
            let record = build(&mut interner, &container);
            assert_eq!(record.entity_id(), container.id, "{high:?}");
            assert_eq!(record.to_entity(), container, "{high:?}");
            assert_eq!(
                record.tags_for(Cardinality::High),
                container.tags(Cardinality::High)
            );
            assert!(record.holds(&container.as_ref()));
            let stored = record.0.slice.len();
            let tags: usize = high.iter().map(String::len).sum();
            let uid_len = if held { 0 } else { uid.len() };
            assert_eq!(
                stored,
                high.len() * END_WIDTH + 1 + uid_len + tags,
                "{high:?}"
            );
        }
    }

    #[test]
    fn records_of_prefixes_outside_the_table_keep_the_whole_id() {
        let mut interner = Interner::default();
        for text in ["kubernetes_future_thing://ns/a", "a:b://c", "pod://x://y"] {
            let mut other = entity(text, &["env:prod"], &["name:x"]);
            let record = build(&mut interner, &other);
            assert_eq!(record.key(), IdKey::of(&other.id));
            assert_eq!(record.key().tail, text);
            assert_eq!(record.to_entity(), other);
            // A high tag ending with the whole text holds it, as a uid.
            other.high.push(format!("ref:{text}"));
            let held = build(&mut interner, &other);
            assert_eq!(held.to_entity(), other);
            assert!(held.holds(&other.as_ref()));
            let tags: usize = other.high.iter().map(String::len).sum();
            assert_eq!(held.0.slice.len(), 2 * END_WIDTH + 1 + tags, "{text}");
        }
    }

    #[test]
    fn equal_lists_and_strings_share_one_allocation() {
        let mut interner = Interner::default();
        let a = build(
            &mut interner,
            &entity("process://1", &["env:prod", "app:x"], &["pid:1"]),
        );
        let b = build(
            &mut interner,
            &entity("process://2", &["env:prod", "app:x"], &["pid:2"]),
        );
        let c = build(&mut interner, &entity("process://3", &["app:x"], &[]));
        let low = |record: &Record| record.header().shared[LOW].clone();
        assert!(low(&a).is_same(&low(&b)));
        assert!(!low(&a).is_same(&low(&c)));
        assert_eq!(low(&a).tags()[1].0.ptr(), low(&c).tags()[0].0.ptr());
        // High tags are stored inline, never interned.
        assert_eq!(interner.strings(), 2);
        assert!(!a.same_tags_as(&b));
        let a_again = build(
            &mut interner,
            &entity("process://1", &["env:prod", "app:x"], &["pid:1"]),
        );
        assert!(a.same_tags_as(&a_again));
    }

    #[test]
    fn interned_values_are_found_after_the_tables_grow_and_shrink() {
        let mut interner = Interner::default();
        let texts: Vec<String> = (0..5000).map(|i| format!("pod_name:web-{i}")).collect();
        let entity_of = |i: usize| {
            let text = texts[i].as_str();
            entity(&format!("process://{i}"), &[text, "env:prod"], &[])
        };
        let first: Vec<Record> = (0..texts.len())
            .map(|i| build(&mut interner, &entity_of(i)))
            .collect();
        let (strings, lists) = (interner.strings.len(), interner.lists.len());
        // Every low list, and the empty list of the other two.
        assert_eq!((strings, lists), (texts.len() + 1, texts.len() + 1));
        let again: Vec<Record> = (0..texts.len())
            .map(|i| build(&mut interner, &entity_of(i)))
            .collect();
        assert!(first.iter().zip(&again).all(|(a, b)| a.same_tags_as(b)));
        assert_eq!(
            (interner.strings.len(), interner.lists.len()),
            (strings, lists)
        );

        // Keep one entity in a hundred: the sweep leaves the tables sparse
        // enough to be rebuilt smaller, and what is left is still found.
        let kept: Vec<usize> = (0..texts.len()).step_by(100).collect();
        let kept_records: Vec<Record> = kept.iter().map(|&i| first[i].clone()).collect();
        let capacity = interner.lists.capacity();
        drop((first, again));
        interner.sweep();
        assert!(interner.lists.capacity() < capacity);
        assert_eq!(interner.lists.len(), kept.len() + 1);
        for (&i, record) in kept.iter().zip(&kept_records) {
            assert!(build(&mut interner, &entity_of(i)).same_tags_as(record));
        }
        assert_eq!(interner.lists.len(), kept.len() + 1);
    }

    #[test]
    fn empty_selections_hold_no_record() {
        let mut interner = Interner::default();
        let record = build(&mut interner, &entity("process://1", &[], &["pid:1"]));
        assert!(record.tags_for(Cardinality::Orchestrator).is_empty());
        assert!(record.standard().record.is_none());
        assert_eq!(record.tags_for(Cardinality::High), ["pid:1"]);
    }
}
