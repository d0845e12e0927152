//! What the `mirror` and `vs_go` benches' lookups share: ids packed end to
//! end, and the machine's floor, a chain of dependent random loads.

use remote_tagger::rng::SplitMix64;

/// The same ids in the same order, packed end to end in one string: walked
/// in order, the hardware prefetcher brings each id in before its lookup, as
/// when the caller has just read the id from the data it is tagging. With
/// `Vec<String>` ids, each lookup first misses the cache on the caller's
/// own id string, a miss that is not the mirror's.
pub struct PackedIds {
    text: String,
    ends: Vec<usize>,
}

impl PackedIds {
    /// The ids, in order, in one string.
    pub fn new(ids: &[String]) -> Self {
        let mut text = String::new();
        let ends = ids
            .iter()
            .map(|id| {
                text.push_str(id);
                text.len()
            })
            .collect();
        Self { text, ends }
    }

    /// The ids in order, over and over.
    pub fn cycle(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        let ids = starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.text[start..end]);
        ids.cycle()
    }
}

/// A buffer of `bytes` in which the first word of each cache line holds the
/// index of the next line's first word, the lines visited in a random cycle
/// drawn from `seed`: following it is one dependent random load per hop.
pub fn pointer_chase(bytes: usize, seed: u64) -> Vec<usize> {
    const WORDS_PER_LINE: usize = 8;
    let lines = bytes / 64;
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..lines).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut next = vec![0usize; lines * WORDS_PER_LINE];
    for (k, &line) in order.iter().enumerate() {
        next[line * WORDS_PER_LINE] = order[(k + 1) % lines] * WORDS_PER_LINE;
    }
    next
}
