//! One copy of the mirror's content, and the operations the writer logs so
//! `left-right` can replay them onto the other copy.

use hashbrown::HashTable;

use crate::domain::{EntityId, KNOWN_PREFIXES, OTHER_PREFIX};

use super::key::IdKey;
use super::record::Record;
use super::table::{self, TableEntry, make_room};

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
