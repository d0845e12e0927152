//! Lookup ids packed end to end, shared by the `mirror` and `vs_go`
//! benches.

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
