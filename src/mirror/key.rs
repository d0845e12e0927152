//! How the mirror keys and hashes: the compact key of an entity id, and the
//! one fixed hasher every table of the mirror (both copies, the interner)
//! agrees on.

use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::fast::FixedState;

use crate::domain::{EntityId, KNOWN_PREFIXES, OTHER_PREFIX};

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
