//! The mirror's index from an id's hash to its record: a lookup reads one
//! cache line of it, then the record, whose id it compares.
//!
//! A lookup's cost is its cache misses. A hashbrown table keeps its control
//! bytes and its slots in two arrays, two lines per lookup. Here a bucket is
//! one 64-byte line holding seven entries and their one-byte tags (eight
//! bits of the hash), so a lookup loads the bucket of its hash, finds the
//! entries whose tag matches (one in 255 of the others does), and compares
//! each one's key. An entry goes to the first bucket with room from the one
//! of its hash on; each bucket counts the entries that went past it full
//! (as Facebook's F14 does), so a lookup stops at the first bucket without
//! one (no tombstones), and a removal decrements the counts it passed.
//!
//! The index never drops an entry: its owner decides when an entry's value
//! ends (the two copies of the mirror hold aliases of the same records, see
//! `store.rs`). So it can be copied bitwise, [`Index::alias`].

use std::mem::MaybeUninit;

use crate::prefetch::prefetch;

use super::table::TableEntry;

/// Entries per bucket: with one-byte tags and a one-byte count of entries
/// that went past, seven 8-byte entries fill a cache line.
const SLOTS: usize = 7;

/// How full an index gets before it doubles, in entries per bucket (of
/// [`SLOTS`]): at 5.5, about 5 % of the entries sit past their bucket.
const LOAD_NUMERATOR: usize = 11;
const LOAD_DENOMINATOR: usize = 2;

/// The tag of an empty slot; a hash's tag is never it.
const EMPTY: u8 = 0;

/// A count of entries past a bucket that reached this stays there for good:
/// lookups then always look on, which is slower but exact.
const SATURATED: u8 = u8::MAX;

#[repr(C, align(64))]
struct Bucket<T> {
    /// The tag of each slot, [`EMPTY`] if the slot is.
    tags: [u8; SLOTS],
    /// Entries placed after this bucket, which was full, by their hash's
    /// bucket or one before it.
    overflow: u8,
    slots: [MaybeUninit<T>; SLOTS],
}

impl<T> Bucket<T> {
    fn new() -> Self {
        Self {
            tags: [EMPTY; SLOTS],
            overflow: 0,
            slots: [const { MaybeUninit::uninit() }; SLOTS],
        }
    }

    /// The slots whose tag is `tag`, lowest first, as bits.
    fn matching(&self, tag: u8) -> u8 {
        let tags = u64::from_le_bytes([
            self.tags[0],
            self.tags[1],
            self.tags[2],
            self.tags[3],
            self.tags[4],
            self.tags[5],
            self.tags[6],
            0,
        ]);
        // Bytes of `tags ^ tag * 0x01..01` that are zero, exactly (no borrow
        // from a neighbour), then one bit per byte; byte 7 is masked out.
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        let differ = tags ^ (u64::from(tag) * 0x0101_0101_0101_0101);
        let zero = !(((differ & LOW7) + LOW7) | differ | LOW7) & 0x0080_8080_8080_8080;
        // Gathers the high bit of each byte into bits 0..7.
        ((zero.wrapping_mul(0x0002_0408_1020_4081)) >> 56) as u8
    }

    fn free_slot(&self) -> Option<usize> {
        self.tags.iter().position(|&tag| tag == EMPTY)
    }

    /// SAFETY: `slot`'s tag is not [`EMPTY`], so the slot holds a value.
    unsafe fn get(&self, slot: usize) -> &T {
        // SAFETY: per the caller, slot holds a value.
        unsafe { self.slots[slot].assume_init_ref() }
    }
}

/// Iterates over the set bits of a slot mask.
fn slots_of(mut mask: u8) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let slot = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(slot)
    })
}

fn tag_of(hash: u64) -> u8 {
    // The low byte; the bucket comes from the high bits (see `home`).
    (hash as u8).max(1)
}

pub(super) struct Index<T> {
    buckets: Box<[Bucket<T>]>,
    len: usize,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Self {
            buckets: Box::new([]),
            len: 0,
        }
    }
}

// SAFETY: an index is its entries plus bookkeeping; it shares them between
// threads exactly as a `Vec<T>` would.
unsafe impl<T: Send> Send for Index<T> {}
// SAFETY: as above; `&Index` hands out only `&T`.
unsafe impl<T: Sync> Sync for Index<T> {}

impl<T> Index<T> {
    /// An index that holds `capacity` entries before it grows.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        let buckets = capacity
            .saturating_mul(LOAD_DENOMINATOR)
            .div_ceil(LOAD_NUMERATOR);
        Self {
            buckets: (0..buckets).map(|_| Bucket::new()).collect(),
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn capacity(&self) -> usize {
        self.buckets.len() * LOAD_NUMERATOR / LOAD_DENOMINATOR
    }

    /// The bucket of `hash`: from its high bits, scaled to the bucket count
    /// (so the count need not be a power of two).
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize
    }

    fn next(&self, bucket: usize) -> usize {
        if bucket + 1 == self.buckets.len() {
            0
        } else {
            bucket + 1
        }
    }

    /// The `(bucket, slot)` of the first entry with this hash that `eq`
    /// accepts.
    fn position(&self, hash: u64, mut eq: impl FnMut(&T) -> bool) -> Option<(usize, usize)> {
        if self.len == 0 {
            return None;
        }
        let tag = tag_of(hash);
        let mut at = self.home(hash);
        // Every bucket at most once, whatever the counts say.
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[at];
            for slot in slots_of(bucket.matching(tag)) {
                // SAFETY: a matching tag is not EMPTY: the slot holds a value.
                if eq(unsafe { bucket.get(slot) }) {
                    return Some((at, slot));
                }
            }
            if bucket.overflow == 0 {
                return None;
            }
            at = self.next(at);
        }
        None
    }

    pub(super) fn find(&self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&T> {
        let (bucket, slot) = self.position(hash, eq)?;
        // SAFETY: `position` returns occupied slots.
        Some(unsafe { self.buckets[bucket].get(slot) })
    }

    /// The entries in the bucket of `hash` whose tag matches it: where a
    /// lookup of the hash looks first.
    pub(super) fn candidates(&self, hash: u64) -> impl Iterator<Item = &T> {
        let bucket = (!self.buckets.is_empty()).then(|| &self.buckets[self.home(hash)]);
        let mask = bucket.map_or(0, |bucket| bucket.matching(tag_of(hash)));
        // SAFETY: matching tags are not EMPTY: those slots hold values.
        slots_of(mask).filter_map(move |slot| bucket.map(|bucket| unsafe { bucket.get(slot) }))
    }

    /// Starts loading the bucket a lookup of `hash` reads first.
    pub(super) fn prefetch(&self, hash: u64) {
        if !self.buckets.is_empty() {
            prefetch(std::ptr::from_ref(&self.buckets[self.home(hash)]));
        }
    }

    /// Puts `value` in place of the entry `eq` accepts and returns that
    /// one, or gives `value` back if there is none.
    pub(super) fn replace(
        &mut self,
        hash: u64,
        eq: impl FnMut(&T) -> bool,
        value: T,
    ) -> Result<T, T> {
        let Some((bucket, slot)) = self.position(hash, eq) else {
            return Err(value);
        };
        let old = std::mem::replace(
            &mut self.buckets[bucket].slots[slot],
            MaybeUninit::new(value),
        );
        // SAFETY: `position` returns occupied slots.
        Ok(unsafe { old.assume_init() })
    }

    /// Takes out the entry `eq` accepts.
    pub(super) fn remove(&mut self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<T> {
        let (found, slot) = self.position(hash, eq)?;
        let bucket = &mut self.buckets[found];
        bucket.tags[slot] = EMPTY;
        // SAFETY: `position` returns occupied slots; its tag is now EMPTY,
        // so nothing reads it again.
        let value = unsafe { bucket.slots[slot].assume_init_read() };
        let mut at = self.home(hash);
        while at != found {
            let passed = &mut self.buckets[at].overflow;
            if *passed != SATURATED {
                *passed -= 1;
            }
            at = self.next(at);
        }
        self.len -= 1;
        Some(value)
    }

    /// Every entry, bucket after bucket.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.buckets.iter().flat_map(|bucket| {
            (0..SLOTS)
                .filter(|&slot| bucket.tags[slot] != EMPTY)
                // SAFETY: a slot whose tag is not EMPTY holds a value.
                .map(|slot| unsafe { bucket.get(slot) })
        })
    }

    /// Takes out every entry; the index is empty afterwards.
    pub(super) fn take_all(&mut self) -> Vec<T> {
        let mut values = Vec::with_capacity(self.len);
        for bucket in self.buckets.iter_mut() {
            for slot in 0..SLOTS {
                if std::mem::replace(&mut bucket.tags[slot], EMPTY) != EMPTY {
                    // SAFETY: the slot's tag was not EMPTY: it held a value,
                    // which nothing reads again.
                    values.push(unsafe { bucket.slots[slot].assume_init_read() });
                }
            }
            bucket.overflow = 0;
        }
        self.len = 0;
        values
    }

    /// A bitwise copy: the copy's entries are the same values as this
    /// index's, both held at once.
    ///
    /// # Safety
    ///
    /// The caller must make sure that what the two indexes hold is used as
    /// its owner allows (for records, that each is released once, when no
    /// index holds it any more).
    pub(super) unsafe fn alias(&self) -> Self {
        let buckets = self
            .buckets
            .iter()
            .map(|bucket| Bucket {
                tags: bucket.tags,
                overflow: bucket.overflow,
                // SAFETY: reading `MaybeUninit`s bitwise is always sound;
                // what the copies mean is the caller's contract.
                slots: unsafe { std::ptr::read(&bucket.slots) },
            })
            .collect();
        Self {
            buckets,
            len: self.len,
        }
    }
}

impl<T: TableEntry> Index<T> {
    /// Adds `value`, whose hash is `hash` and which the index does not hold,
    /// growing the index first if it is full.
    pub(super) fn insert_unique(&mut self, hash: u64, value: T) {
        if self.len >= self.capacity() {
            self.grow();
        }
        self.place(hash, value);
    }

    fn place(&mut self, hash: u64, value: T) {
        let tag = tag_of(hash);
        let mut at = self.home(hash);
        // The load limit leaves free slots, so some bucket has room.
        loop {
            let bucket = &mut self.buckets[at];
            if let Some(slot) = bucket.free_slot() {
                bucket.tags[slot] = tag;
                bucket.slots[slot] = MaybeUninit::new(value);
                self.len += 1;
                return;
            }
            if bucket.overflow != SATURATED {
                bucket.overflow += 1;
            }
            at = self.next(at);
        }
    }

    /// Moves every entry into an index with twice the buckets, hashing
    /// them with what each reads prefetched ahead (see [`super::table`]).
    fn grow(&mut self) {
        const PREFETCH_AHEAD: usize = 16;
        let values = self.take_all();
        let hashes: Vec<u64> = (0..values.len())
            .map(|at| {
                if let Some(ahead) = values.get(at + PREFETCH_AHEAD) {
                    ahead.prefetch_key();
                }
                values[at].table_hash()
            })
            .collect();
        *self = Self::with_capacity((2 * self.capacity()).max(values.len() + 1).max(SLOTS));
        for (hash, value) in hashes.into_iter().zip(values) {
            self.place(hash, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose hash the test chooses: collisions, shared buckets and
    /// shared tags on purpose.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Entry {
        key: u32,
        hash: u64,
    }

    impl TableEntry for Entry {
        fn table_hash(&self) -> u64 {
            self.hash
        }

        fn prefetch_key(&self) {}
    }

    fn find(index: &Index<Entry>, entry: Entry) -> Option<Entry> {
        index.find(entry.hash, |e| e.key == entry.key).copied()
    }

    /// Hashes that crowd a few buckets (every key's high bits in a narrow
    /// range) and repeat tags, so chains run past full buckets.
    fn crowded(key: u32) -> Entry {
        let bucket_bits = u64::from(key % 3) << 60;
        let tag = u64::from(key % 5);
        Entry {
            key,
            hash: bucket_bits | (u64::from(key) << 8) | tag,
        }
    }

    #[test]
    fn the_tag_matcher_finds_exactly_the_equal_bytes() {
        let mut bucket: Bucket<u64> = Bucket::new();
        bucket.tags = [1, 0x80, 1, 0x81, 0xff, 0x01, 0x7f];
        bucket.overflow = 1;
        assert_eq!(bucket.matching(1), 0b010_0101);
        assert_eq!(bucket.matching(0x80), 0b000_0010);
        assert_eq!(bucket.matching(0xff), 0b001_0000);
        assert_eq!(bucket.matching(0x7f), 0b100_0000);
        assert_eq!(bucket.matching(2), 0);
        // Every byte value against every position.
        for tag in 1..=u8::MAX {
            for position in 0..SLOTS {
                let mut bucket: Bucket<u64> = Bucket::new();
                bucket.tags[position] = tag;
                bucket.overflow = tag;
                assert_eq!(bucket.matching(tag), 1 << position, "{tag} at {position}");
                assert_eq!(bucket.matching(tag ^ 1), 0, "{tag} at {position}");
            }
        }
    }

    #[test]
    fn every_entry_is_found_through_collisions_growth_and_removals() {
        let mut index = Index::default();
        let mut held = std::collections::BTreeSet::new();
        for key in 0..3000 {
            index.insert_unique(crowded(key).hash, crowded(key));
            held.insert(key);
        }
        // Remove every third, then add some back and new ones.
        for key in (0..3000).step_by(3) {
            assert_eq!(
                index.remove(crowded(key).hash, |e| e.key == key),
                Some(crowded(key))
            );
            held.remove(&key);
        }
        for key in (0..600).step_by(3).chain(3000..3300) {
            index.insert_unique(crowded(key).hash, crowded(key));
            held.insert(key);
        }
        assert_eq!(index.len(), held.len());
        for key in 0..3400 {
            let want = held.contains(&key).then(|| crowded(key));
            assert_eq!(find(&index, crowded(key)), want, "key {key}");
        }
        let mut listed: Vec<u32> = index.iter().map(|e| e.key).collect();
        listed.sort_unstable();
        assert_eq!(listed, held.iter().copied().collect::<Vec<_>>());
    }

    #[test]
    fn a_lookup_of_an_absent_hash_stops_and_finds_nothing() {
        let mut index = Index::with_capacity(100);
        assert_eq!(find(&index, crowded(1)), None);
        for key in 0..100 {
            index.insert_unique(crowded(key).hash, crowded(key));
        }
        // Same bucket and tag as present ones, other keys.
        for key in 100..400 {
            assert_eq!(find(&index, crowded(key)), None);
        }
        // Removing everything leaves no count behind: lookups stop at once.
        for key in 0..100 {
            index.remove(crowded(key).hash, |e| e.key == key);
        }
        assert_eq!(index.len(), 0);
        assert!(index.buckets.iter().all(|b| b.overflow == 0));
        assert_eq!(index.iter().count(), 0);
    }

    #[test]
    fn saturated_counts_keep_lookups_exact() {
        // All in one bucket: the count before the last entries saturates.
        let same = |key: u32| Entry {
            key,
            hash: u64::from(key) << 8 | 7,
        };
        let mut index = Index::with_capacity(2000);
        for key in 0..2000 {
            index.insert_unique(same(key).hash & 0xffff, same(key));
        }
        let hash = |key: u32| same(key).hash & 0xffff;
        for key in 0..2000 {
            assert_eq!(index.find(hash(key), |e| e.key == key), Some(&same(key)));
        }
        for key in 0..1990 {
            assert!(index.remove(hash(key), |e| e.key == key).is_some());
        }
        for key in 1990..2000 {
            assert_eq!(index.find(hash(key), |e| e.key == key), Some(&same(key)));
        }
        assert_eq!(index.find(hash(5), |e| e.key == 5), None);
    }

    #[test]
    fn replace_keeps_the_slot_and_candidates_are_the_first_bucket() {
        let mut index = Index::with_capacity(10);
        let a = Entry { key: 1, hash: 42 };
        index.insert_unique(a.hash, a);
        let b = Entry { key: 2, hash: 42 };
        assert_eq!(index.replace(42, |e| e.key == 1, b), Ok(a));
        assert_eq!(index.replace(42, |e| e.key == 1, b), Err(b));
        assert_eq!(index.len(), 1);
        assert_eq!(index.candidates(42).collect::<Vec<_>>(), [&b]);
        assert_eq!(index.candidates(43).count(), 0);
        index.prefetch(42);
        // SAFETY: `Entry` is plain data; aliases of it own nothing.
        let copy = unsafe { index.alias() };
        assert_eq!(copy.find(42, |e| e.key == 2), Some(&b));
        assert_eq!(index.take_all(), [b]);
        assert_eq!(copy.len(), 1);
    }

    #[test]
    fn a_bucket_is_one_cache_line_for_eight_byte_entries() {
        assert_eq!(size_of::<Bucket<u64>>(), 64);
        assert_eq!(align_of::<Bucket<u64>>(), 64);
    }
}
