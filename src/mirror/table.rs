//! Growing the mirror's hash tables without one cache miss after another.
//!
//! Every table in the mirror holds pointers, and hashing an entry reads the
//! allocation it points to. hashbrown grows a full table (or clears it of
//! tombstones) by rehashing its entries one after another, each hash a
//! cache miss: 10 ms for the records of a 100k-entity mirror, during which
//! the batch being applied waits. [`make_room`] rebuilds the table first,
//! hashing its entries with their allocations prefetched ahead, so those
//! misses overlap (see [`crate::prefetch`]).

use hashbrown::HashTable;

use crate::prefetch::prefetch;

/// An entry of one of the mirror's tables.
pub(super) trait TableEntry {
    /// The hash the entry is stored under.
    fn table_hash(&self) -> u64;

    /// Starts loading what [`table_hash`](Self::table_hash) reads.
    fn prefetch_key(&self);
}

/// Makes sure the next insert into `table` does not make hashbrown grow or
/// rehash it: a full table is rebuilt here to the size hashbrown would
/// have chosen, twice its entries (tombstones count as full: rebuilding
/// drops them).
pub(super) fn make_room<T: TableEntry>(table: &mut HashTable<T>) {
    if table.len() == table.capacity() {
        rebuild(table, (2 * table.len()).max(1));
    }
}

/// Starts loading the slot of `table` that most likely holds the entry
/// with this hash, reading only the table's control bytes: a lookup of the
/// same hash a little later then finds the slot (which points to the
/// entry) in cache.
pub(super) fn prefetch_slot<T>(table: &HashTable<T>, hash: u64) {
    let first = table.iter_hash_buckets(hash).next();
    if let Some(slot) = first.and_then(|index| table.get_bucket(index)) {
        prefetch(std::ptr::from_ref(slot));
    }
}

/// How many entries ahead of the one it hashes [`rebuild`] starts loading.
const PREFETCH_AHEAD: usize = 16;

/// The hash of each of `entries`, in order, with what each reads loaded
/// [`PREFETCH_AHEAD`] entries ahead, so that the misses overlap.
pub(super) fn hashes_prefetched<T: TableEntry>(entries: &[T]) -> Vec<u64> {
    (0..entries.len())
        .map(|at| {
            if let Some(ahead) = entries.get(at + PREFETCH_AHEAD) {
                ahead.prefetch_key();
            }
            entries[at].table_hash()
        })
        .collect()
}

/// Moves every entry of `table` into a new table with room for `capacity`
/// entries (or all of them, if more).
pub(super) fn rebuild<T: TableEntry>(table: &mut HashTable<T>, capacity: usize) {
    let entries: Vec<T> = std::mem::take(table).into_iter().collect();
    let hashes = hashes_prefetched(&entries);
    *table = HashTable::with_capacity(capacity.max(entries.len()));
    for (hash, entry) in hashes.into_iter().zip(entries) {
        // With the capacity reserved, hashbrown never calls the hasher.
        table.insert_unique(hash, entry, T::table_hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry whose hash collides on purpose, so rebuilding must keep
    /// equal-hash entries apart.
    struct Number(u64);

    impl TableEntry for Number {
        fn table_hash(&self) -> u64 {
            self.0 % 7
        }

        fn prefetch_key(&self) {}
    }

    #[test]
    fn a_full_table_is_rebuilt_with_every_entry_findable() {
        let mut table = HashTable::new();
        for n in 0..1000 {
            make_room(&mut table);
            let before = table.capacity();
            table.insert_unique(n % 7, Number(n), Number::table_hash);
            assert_eq!(table.capacity(), before, "hashbrown never grows it");
        }
        assert_eq!(table.len(), 1000);
        for n in 0..1000 {
            assert!(table.find(n % 7, |entry| entry.0 == n).is_some());
        }
        rebuild(&mut table, 0);
        assert_eq!(table.len(), 1000);
        assert!(table.find(999 % 7, |entry| entry.0 == 999).is_some());
    }
}
