//! One copy of the mirror's content, and the operations the writer logs so
//! `left-right` can replay them onto the other copy.
//!
//! # Who owns a record
//!
//! Both copies hold the same records. Counting each record once per copy
//! made every snapshot's commit touch every record twice (a refcount up to
//! clone the table into the first copy, and later down), each a cache miss.
//! So a copy's index holds [`Alias`]es, bitwise copies of the record that
//! own nothing, and the pair of copies owns one reference to each record it
//! holds:
//! - a record enters the pair with an operation the writer logs, which
//!   carries the reference ([`Op`]);
//! - `left-right` applies each operation first to one copy
//!   ([`absorb_first`](left_right::Absorb::absorb_first)) and, once readers
//!   have left the other, to that one
//!   ([`absorb_second`](left_right::Absorb::absorb_second)). Only then is a
//!   record the operation removes held by neither copy, and its reference
//!   is released;
//! - [`drop_second`](left_right::Absorb::drop_second) releases what the
//!   last copy holds, `drop_first` nothing.
//!
//! Readers that keep a record beyond their view ([`super::Tags`]) hold a
//! reference of their own. An operation dropped without being applied (the
//! writer panicking) leaks its records rather than risk releasing one a copy
//! still shows.

use std::mem::ManuallyDrop;
use std::ops::Deref;

use crate::domain::{EntityId, KNOWN_PREFIXES, OTHER_PREFIX};

use super::index::Index;
use super::key::IdKey;
use super::record::Record;
use super::table::TableEntry;

/// A record as a copy holds it: the same pointer as the [`Record`] the pair
/// owns, owning nothing itself (dropping one releases nothing).
#[repr(transparent)]
pub(super) struct Alias(ManuallyDrop<Record>);

impl Alias {
    /// Hands `record`'s reference over to the pair of copies.
    pub(super) fn own(record: Record) -> Self {
        Self(ManuallyDrop::new(record))
    }

    /// Another alias of the same record.
    ///
    /// # Safety
    ///
    /// The record must stay alive while the copy is used: released only
    /// once no copy and no operation holds it (see the module's comment).
    pub(super) unsafe fn copy(&self) -> Self {
        // SAFETY: a bitwise copy of a `Record` is the same pointer; the
        // caller keeps it alive, and `ManuallyDrop` never releases it.
        Self(ManuallyDrop::new(unsafe { std::ptr::read(&*self.0) }))
    }

    /// Releases the pair's reference to the record.
    ///
    /// # Safety
    ///
    /// No copy holds the record any more, and no other alias of it is used
    /// afterwards.
    unsafe fn release(self) {
        drop(ManuallyDrop::into_inner(self.0));
    }
}

impl Deref for Alias {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.0
    }
}

impl TableEntry for Alias {
    fn table_hash(&self) -> u64 {
        self.key().hash()
    }

    fn prefetch_key(&self) {
        self.prefetch();
    }
}

/// The records, keyed by id, plus the per-prefix entity counts telemetry
/// wants, kept up to date so reading them never scans the index.
#[derive(Default)]
pub(super) struct Store {
    records: Index<Alias>,
    /// Entity count per prefix index: one per entry of [`KNOWN_PREFIXES`],
    /// then the ids of every other prefix ([`OTHER_PREFIX`]).
    by_prefix: PrefixCounts,
}

type PrefixCounts = [u64; KNOWN_PREFIXES.len() + 1];

impl Store {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            records: Index::with_capacity(capacity),
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
        let found = self.records.find(hash, |record| {
            // Where the id sits depends on the record's header: load its
            // lines now rather than once the header has come.
            record.prefetch_id();
            record.key() == key
        });
        found.map(Deref::deref)
    }

    /// Starts loading the record of the id with this hash, which a lookup
    /// will compare soon (see [`crate::prefetch`]).
    pub(super) fn prefetch(&self, hash: u64) {
        for record in self.records.candidates(hash) {
            record.prefetch();
        }
    }

    /// Starts loading the index bucket of the id with this hash, so that a
    /// [`prefetch`](Self::prefetch) of the same hash a few lookups later
    /// finds the record's address in cache.
    pub(super) fn prefetch_slot(&self, hash: u64) {
        self.records.prefetch(hash);
    }

    pub(super) fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().map(Deref::deref)
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

    /// Inserts `record` of `id`, which the store does not hold, into a store
    /// the writer builds for [`Op::ReplaceAll`], taking its reference (`id`
    /// saves reading the record, likely a cache miss, for its prefix).
    pub(super) fn insert_unique(&mut self, hash: u64, id: &EntityId, record: Record) {
        count_entity(&mut self.by_prefix, id.prefix_index(), 1);
        self.records.insert_unique(hash, Alias::own(record));
    }

    /// Puts `new` where the record `old` was (found by identity, no string
    /// comparison); returns the alias it took out.
    fn swap(&mut self, hash: u64, old: Option<usize>, new: Option<Alias>) -> Option<Alias> {
        let is_old = |record: &Alias| Some(record.identity()) == old;
        let removed = match new {
            Some(new) => match self.records.replace(hash, is_old, new) {
                Ok(removed) => return Some(removed),
                Err(new) => {
                    count_entity(&mut self.by_prefix, new.key().prefix, 1);
                    self.records.insert_unique(hash, new);
                    return None;
                }
            },
            None => self.records.remove(hash, is_old)?,
        };
        count_entity(&mut self.by_prefix, removed.key().prefix, -1);
        Some(removed)
    }

    /// A copy of this store whose index aliases the same records.
    ///
    /// # Safety
    ///
    /// The records must stay alive as long as the copy holds them (see the
    /// module's comment).
    unsafe fn alias(&self) -> Self {
        Self {
            // SAFETY: per the caller.
            records: unsafe { self.records.alias() },
            by_prefix: self.by_prefix,
        }
    }

    /// Releases the pair's reference to every record the store holds.
    ///
    /// # Safety
    ///
    /// No copy holds these records any more.
    unsafe fn release_all(&mut self) {
        for record in self.records.take_all() {
            // SAFETY: per the caller.
            unsafe { record.release() };
        }
        self.by_prefix = PrefixCounts::default();
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
    /// Puts `new` where the record whose [`Record::identity`] is `old` was.
    /// The writer read `old` from the published copy (or from earlier in the
    /// same batch), which is exactly what the copy absorbing this operation
    /// holds at that point; it stays alive until this operation has been
    /// applied to both copies (the pair's reference is released then), so
    /// its address is not reused meanwhile. `new` carries the reference
    /// the pair will own.
    Swap {
        hash: u64,
        old: Option<usize>,
        new: Option<Alias>,
    },
    /// A completed snapshot, built once by the writer; it carries the
    /// references to its records.
    ReplaceAll(Store),
}

impl Op {
    /// Logs `new` in place of `old` (either absent).
    pub(super) fn swap(hash: u64, old: Option<&Record>, new: Option<Record>) -> Self {
        Self::Swap {
            hash,
            old: old.map(Record::identity),
            new: new.map(Alias::own),
        }
    }
}

impl left_right::Absorb<Op> for Store {
    fn absorb_first(&mut self, op: &mut Op, _: &Self) {
        match op {
            Op::Swap { hash, old, new } => {
                // SAFETY: the operation carries `new`'s reference until its
                // second application hands it to the pair.
                let new = new.as_ref().map(|new| unsafe { new.copy() });
                // The other copy still shows what this takes out: nothing is
                // released.
                let _ = self.swap(*hash, *old, new);
            }
            // SAFETY: the operation's records stay alive until its second
            // application hands them to the pair; what this copy held, the
            // other copy still shows and releases then.
            Op::ReplaceAll(store) => *self = unsafe { store.alias() },
        }
    }

    fn absorb_second(&mut self, op: Op, _: &Self) {
        match op {
            Op::Swap { hash, old, new } => {
                if let Some(removed) = self.swap(hash, old, new) {
                    // SAFETY: the first copy already took it out, and readers
                    // have left this one.
                    unsafe { removed.release() };
                }
            }
            Op::ReplaceAll(store) => {
                // SAFETY: the first copy already holds the snapshot instead,
                // and readers have left this one.
                unsafe { self.release_all() };
                *self = store;
            }
        }
    }

    fn drop_second(mut self: Box<Self>) {
        // SAFETY: the other copy is gone (`drop_first`), readers too.
        unsafe { self.release_all() };
    }

    fn sync_with(&mut self, first: &Self) {
        // The copy `left-right` started with, empty: nothing to release.
        debug_assert_eq!(self.len(), 0);
        // SAFETY: `first` owns these records for the pair from now on, and
        // both copies follow the same operations.
        *self = unsafe { first.alias() };
    }
}
