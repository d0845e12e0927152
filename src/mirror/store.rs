//! One copy of the mirror's content, and the operations the writer logs so
//! `left-right` can replay them onto the other copy.

use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::domain::{EntityId, KNOWN_PREFIXES, OTHER_PREFIX};

use super::record::Record;
use super::table::{self, TableEntry, make_room};

/// Every table in the mirror hashes with this fixed seed: both left-right
/// copies and the interner must agree, and nothing may depend on a
/// per-process random state. (The ids and tags come from the tagger server,
/// which the client trusts, so hash flooding is not a concern here.)
const FIXED_HASHER: FixedState = FixedState::with_seed(0x7a67_6765_725f_6d69);

pub(super) fn fixed_hash(text: &str) -> u64 {
    FIXED_HASHER.hash_one(text)
}

/// An entity id as the mirror keeps it: the position of its prefix in
/// [`KNOWN_PREFIXES`] and its uid, so records store one byte instead of the
/// prefix text and `://` (15 bytes for `container_id://`), about 6 % of a
/// record. An id whose prefix is not in the table keeps [`OTHER_PREFIX`] and
/// its whole text as the tail: a lookup of a known id never reads more than
/// before, and the rare other ones need no table of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IdKey<'a> {
    pub prefix: u8,
    /// The uid, or (with [`OTHER_PREFIX`]) the whole text `prefix://uid`.
    pub tail: &'a str,
}

impl<'a> IdKey<'a> {
    pub(super) fn of(id: &'a EntityId) -> Self {
        if id.has_known_prefix() {
            Self {
                prefix: id.prefix_index(),
                tail: id.uid(),
            }
        } else {
            Self::other(id.as_str())
        }
    }

    fn other(text: &'a str) -> Self {
        Self {
            prefix: OTHER_PREFIX,
            tail: text,
        }
    }

    /// The key of the text form `prefix://uid`; `None` if it is not a valid
    /// id (so no record has it).
    pub(super) fn parse(text: &'a str) -> Option<Self> {
        match EntityId::split(text)? {
            (OTHER_PREFIX, _) => Some(Self::other(text)),
            (prefix, uid) => Some(Self { prefix, tail: uid }),
        }
    }

    pub(super) fn hash(self) -> u64 {
        let mut hasher = FIXED_HASHER.build_hasher();
        hasher.write_u8(self.prefix);
        self.tail.hash(&mut hasher);
        hasher.finish()
    }

    /// The known prefix, `None` for [`OTHER_PREFIX`].
    fn known_prefix(self) -> Option<&'static str> {
        KNOWN_PREFIXES.get(usize::from(self.prefix)).copied()
    }

    /// Where the ids of this key's prefix fall in text order: the ids of
    /// one class order by their tails, those of different classes by their
    /// classes. A known prefix is a class of its own, `2 * rank + 1` (see
    /// [`PREFIX_RANKS`]); the ids of other prefixes share the class between
    /// the known prefixes their text falls between, `2 * (known prefixes
    /// before them)`. (Since no prefix holds `://`, comparing an id of a
    /// known prefix `k` with an other id is decided within `k://`, whatever
    /// the uids.)
    pub(super) fn text_class(self) -> u8 {
        match self.known_prefix() {
            Some(_) => 2 * PREFIX_RANKS[usize::from(self.prefix)] + 1,
            None => {
                let text = self.tail.as_bytes();
                let before = KNOWN_PREFIXES
                    .iter()
                    .filter(|known| known.bytes().chain(*b"://").lt(text.iter().copied()))
                    .count();
                // At most `KNOWN_PREFIXES.len()`, which `OTHER_PREFIX` fits.
                2 * before as u8
            }
        }
    }

    /// Orders like the ids' text.
    pub(super) fn cmp_text(self, other: Self) -> std::cmp::Ordering {
        (self.text_class(), self.tail).cmp(&(other.text_class(), other.tail))
    }

    pub(super) fn to_entity_id(self) -> EntityId {
        let id = match self.known_prefix() {
            Some(prefix) => EntityId::new(prefix, self.tail),
            None => EntityId::parse(self.tail),
        };
        id.expect("an IdKey comes from an EntityId")
    }
}

/// The rank of each of [`KNOWN_PREFIXES`] in text order: no known prefix
/// starts another, so ids of known prefixes order by their prefix first.
const PREFIX_RANKS: [u8; KNOWN_PREFIXES.len()] = {
    let mut ranks = [0u8; KNOWN_PREFIXES.len()];
    let mut i = 0;
    while i < KNOWN_PREFIXES.len() {
        let mut j = 0;
        while j < KNOWN_PREFIXES.len() {
            if text_less(KNOWN_PREFIXES[j], KNOWN_PREFIXES[i]) {
                ranks[i] += 1;
            }
            j += 1;
        }
        i += 1;
    }
    ranks
};

const fn text_less(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut i = 0;
    while i < a.len() && i < b.len() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    a.len() < b.len()
}

/// Hashes a list of strings by content, so a list can be found from the
/// strings of an event without interning them first.
pub(super) fn hash_texts<'a>(texts: impl ExactSizeIterator<Item = &'a str>) -> u64 {
    let mut hasher = FIXED_HASHER.build_hasher();
    hasher.write_usize(texts.len());
    for text in texts {
        text.hash(&mut hasher);
    }
    hasher.finish()
}

/// The records, keyed by id, plus the per-prefix entity counts telemetry
/// wants, kept up to date so reading them never scans the table.
#[derive(Clone, Default)]
pub(super) struct Store {
    records: HashTable<Record>,
    /// Entity count per prefix index: one per entry of [`KNOWN_PREFIXES`],
    /// then the ids of every other prefix ([`OTHER_PREFIX`]).
    by_prefix: PrefixCounts,
}

type PrefixCounts = [u64; KNOWN_PREFIXES.len() + 1];

impl Store {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            records: HashTable::with_capacity(capacity),
            ..Self::default()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn get(&self, key: IdKey<'_>) -> Option<&Record> {
        self.get_hashed(key.hash(), key)
    }

    pub(super) fn get_hashed(&self, hash: u64, key: IdKey<'_>) -> Option<&Record> {
        self.records.find(hash, |record| record.key() == key)
    }

    /// Starts loading the record of the id with this hash, which a lookup
    /// will compare soon (see [`crate::prefetch`]).
    pub(super) fn prefetch(&self, hash: u64) {
        for record in self.records.iter_hash(hash) {
            record.prefetch();
        }
    }

    /// Starts loading the table slot that most likely holds the record of
    /// the id with this hash, reading only the table's control bytes, so
    /// that a [`prefetch`](Self::prefetch) of the same hash a few lookups
    /// later finds the slot (the record's address) in cache.
    pub(super) fn prefetch_slot(&self, hash: u64) {
        table::prefetch_slot(&self.records, hash);
    }

    pub(super) fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
    }

    /// `(prefix, count)` for every known prefix with at least one entity.
    pub(super) fn counts_by_prefix(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        KNOWN_PREFIXES
            .iter()
            .zip(self.by_prefix)
            .filter(|&(_, count)| count > 0)
            .map(|(&prefix, count)| (prefix, count))
    }

    /// Entities whose prefix is not in [`KNOWN_PREFIXES`].
    pub(super) fn other_prefix_count(&self) -> u64 {
        self.by_prefix[usize::from(OTHER_PREFIX)]
    }

    /// Inserts `record` of `id`, which the store does not hold (`id` saves
    /// reading the record, likely a cache miss, for its prefix).
    pub(super) fn insert_unique(&mut self, hash: u64, id: &EntityId, record: Record) {
        count_entity(&mut self.by_prefix, id.prefix_index(), 1);
        self.records.insert_unique(hash, record, Record::table_hash);
    }

    /// Replaces `old` (found by identity, no string comparison) with `new`.
    fn swap(&mut self, hash: u64, old: Option<&Record>, new: Option<Record>) {
        let slot = old.and_then(|old| self.records.find_entry(hash, |r| r.is_same(old)).ok());
        match (slot, new) {
            (Some(mut slot), Some(new)) => *slot.get_mut() = new,
            (Some(slot), None) => {
                let (removed, _) = slot.remove();
                count_entity(&mut self.by_prefix, removed.key().prefix, -1);
            }
            (None, Some(new)) => {
                count_entity(&mut self.by_prefix, new.key().prefix, 1);
                make_room(&mut self.records);
                self.records.insert_unique(hash, new, Record::table_hash);
            }
            (None, None) => {}
        }
    }
}

/// Counts `delta` entities with the prefix of index `prefix`.
fn count_entity(by_prefix: &mut PrefixCounts, prefix: u8, delta: i64) {
    let slot = &mut by_prefix[usize::from(prefix)];
    *slot = slot.saturating_add_signed(delta);
}

/// What the writer logs. Each operation is applied to both copies in the same
/// order, so they stay identical.
pub(super) enum Op {
    /// Puts `new` where `old` was. The writer read `old` from the published
    /// copy (or from earlier in the same batch), which is exactly what the
    /// copy absorbing this operation holds at that point.
    Swap {
        hash: u64,
        old: Option<Record>,
        new: Option<Record>,
    },
    /// A completed snapshot, built once by the writer and cloned (records by
    /// reference) into the first copy.
    ReplaceAll(Store),
}

impl left_right::Absorb<Op> for Store {
    fn absorb_first(&mut self, op: &mut Op, _: &Self) {
        match op {
            Op::Swap { hash, old, new } => self.swap(*hash, old.as_ref(), new.clone()),
            Op::ReplaceAll(store) => *self = store.clone(),
        }
    }

    fn absorb_second(&mut self, op: Op, _: &Self) {
        match op {
            Op::Swap { hash, old, new } => self.swap(hash, old.as_ref(), new),
            Op::ReplaceAll(store) => *self = store,
        }
    }

    fn sync_with(&mut self, first: &Self) {
        *self = first.clone();
    }
}
