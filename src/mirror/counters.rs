//! Query telemetry (`tagger_queries{cardinality,status}`) without a shared
//! hot counter: each reader counts into its own cache-line-aligned block,
//! registered with the mirror and summed only when telemetry asks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::Cardinality;

/// The `status` label of `tagger_queries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueryStatus {
    /// The entity was found and had tags at that cardinality.
    Success,
    /// No tags: an unknown entity, or none at that cardinality.
    EmptyTags,
}

impl QueryStatus {
    /// Every status, in label order.
    pub const ALL: [QueryStatus; 2] = [Self::Success, Self::EmptyTags];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::EmptyTags => "empty_tags",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn cardinality_index(cardinality: Cardinality) -> usize {
    cardinality as usize
}

type Grid<T> = [[T; QueryStatus::ALL.len()]; Cardinality::ALL.len()];

/// Query counts per cardinality and status, summed over every reader the
/// mirror has had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryCounts {
    counts: Grid<u64>,
}

impl QueryCounts {
    /// Queries of `cardinality` that ended with `status`.
    pub fn get(&self, cardinality: Cardinality, status: QueryStatus) -> u64 {
        self.counts[cardinality_index(cardinality)][status.index()]
    }

    /// Every `(cardinality, status, count)`, zeros included, in label order.
    pub fn iter(&self) -> impl Iterator<Item = (Cardinality, QueryStatus, u64)> + '_ {
        Cardinality::ALL.into_iter().flat_map(move |cardinality| {
            QueryStatus::ALL
                .into_iter()
                .map(move |status| (cardinality, status, self.get(cardinality, status)))
        })
    }

    fn add(&mut self, block: &CounterBlock) {
        for (sums, row) in self.counts.iter_mut().zip(&block.counts) {
            for (sum, count) in sums.iter_mut().zip(row) {
                *sum += count.load(Ordering::Relaxed);
            }
        }
    }
}

/// One reader's counts, aligned to its own cache lines (128 bytes covers
/// adjacent-line prefetching) so readers on different cores never share one.
#[repr(align(128))]
#[derive(Default)]
struct CounterBlock {
    counts: Grid<AtomicU64>,
}

#[derive(Default)]
struct Registry {
    live: Vec<Arc<CounterBlock>>,
    /// Counts of readers already dropped: the totals are monotonic.
    retired: QueryCounts,
}

/// The mirror-wide set of reader counters.
#[derive(Clone, Default)]
pub(super) struct QueryCounterRegistry(Arc<Mutex<Registry>>);

impl QueryCounterRegistry {
    pub(super) fn register(&self) -> QueryCounter {
        let block = Arc::new(CounterBlock::default());
        self.lock().live.push(Arc::clone(&block));
        QueryCounter {
            block,
            registry: self.clone(),
        }
    }

    pub(super) fn totals(&self) -> QueryCounts {
        let registry = self.lock();
        let mut totals = registry.retired.clone();
        for block in &registry.live {
            totals.add(block);
        }
        totals
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Counters stay meaningful even if a thread panicked while holding
        // the lock: every update under it is a single push, remove or add.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One reader's counter. Owned by a single (`!Sync`) reader, so it is the only
/// writer of its block.
pub(super) struct QueryCounter {
    block: Arc<CounterBlock>,
    registry: QueryCounterRegistry,
}

impl QueryCounter {
    pub(super) fn registry(&self) -> &QueryCounterRegistry {
        &self.registry
    }

    pub(super) fn count(&self, cardinality: Cardinality, empty: bool) {
        let status = if empty {
            QueryStatus::EmptyTags
        } else {
            QueryStatus::Success
        };
        let counter = &self.block.counts[cardinality_index(cardinality)][status.index()];
        // A load and a store rather than `fetch_add`: this reader is the
        // block's only writer, so no increment can be lost, and a plain store
        // avoids a locked read-modify-write on every query. Telemetry may
        // read a value one query old, which it tolerates.
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

impl Drop for QueryCounter {
    fn drop(&mut self) {
        let mut registry = self.registry.lock();
        registry
            .live
            .retain(|block| !Arc::ptr_eq(block, &self.block));
        registry.retired.add(&self.block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_live_and_dropped_readers() {
        let registry = QueryCounterRegistry::default();
        let a = registry.register();
        let b = registry.register();
        a.count(Cardinality::High, false);
        a.count(Cardinality::High, false);
        b.count(Cardinality::High, true);
        b.count(Cardinality::Low, false);
        drop(b);
        let totals = registry.totals();
        assert_eq!(totals.get(Cardinality::High, QueryStatus::Success), 2);
        assert_eq!(totals.get(Cardinality::High, QueryStatus::EmptyTags), 1);
        assert_eq!(totals.get(Cardinality::Low, QueryStatus::Success), 1);
        assert_eq!(
            totals.get(Cardinality::Orchestrator, QueryStatus::Success),
            0
        );
        assert_eq!(totals.iter().map(|(_, _, n)| n).sum::<u64>(), 4);
        assert_eq!(
            registry.lock().live.len(),
            1,
            "the dropped reader is unregistered"
        );
        assert!(std::mem::align_of::<CounterBlock>() >= 128);
    }
}
