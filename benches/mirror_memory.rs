//! Memory per entity of the mirror holding the 100k-entity workload, against
//! the same entities in a plain `HashMap<String, [Vec<String>; 4]>`.
//!
//! A counting global allocator tracks live bytes as requested from the
//! allocator (malloc's own per-block overhead, typically 8-16 bytes, comes on
//! top: the allocation counts are printed so it can be estimated). A separate
//! bench target so the counting does not slow the latency benches.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};

use remote_tagger::domain::{Entity, EntityId};
use remote_tagger::mirror::MirrorWriter;
use remote_tagger::workload::{Workload, WorkloadConfig};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` unchanged and only updates
// counters on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(block, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let moved = unsafe { System.realloc(block, layout, new_size) };
        if !moved.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes and blocks `build` leaves behind, as long as its value lives.
fn measure<T>(build: impl FnOnce() -> T) -> (T, isize, isize) {
    let (bytes, blocks) = (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    );
    let value = build();
    (
        value,
        LIVE_BYTES.load(Ordering::Relaxed) - bytes,
        LIVE_BLOCKS.load(Ordering::Relaxed) - blocks,
    )
}

fn report(what: &str, entities: usize, bytes: isize, blocks: isize) {
    println!(
        "{what:<34} {:>6.1} MB  {:>7.1} bytes/entity  {:>5.2} allocations/entity",
        bytes as f64 / 1e6,
        bytes as f64 / entities as f64,
        blocks as f64 / entities as f64,
    );
}

/// The straightforward layout: owned strings, exact capacities.
fn plain(snapshot: &[Entity]) -> HashMap<String, [Vec<String>; 4]> {
    snapshot
        .iter()
        .map(|e| {
            let lists = [&e.low, &e.orchestrator, &e.high, &e.standard].map(|list| list.to_vec());
            (e.id.to_string(), lists)
        })
        .collect()
}

fn main() {
    let mut workload = Workload::new(WorkloadConfig {
        entities: 100_000,
        seed: 1,
    });
    let snapshot = workload.snapshot();
    let entities = snapshot.len();
    let tags: usize = snapshot
        .iter()
        .map(|e| e.low.len() + e.orchestrator.len() + e.high.len() + e.standard.len())
        .sum();
    println!(
        "{entities} entities, {:.1} tags/entity",
        tags as f64 / entities as f64
    );

    let (plain, plain_bytes, plain_blocks) = measure(|| plain(&snapshot));
    report(
        "plain HashMap<String, [Vec<String>; 4]>",
        entities,
        plain_bytes,
        plain_blocks,
    );
    drop(plain);

    // Ids are `Arc`s the mirror keeps from its input: give it fresh ones, so
    // their bytes count against the mirror like the plain map's `String`s.
    let (mut writer, mirror_bytes, mirror_blocks) = measure(|| {
        let fresh_ids = snapshot
            .iter()
            .map(|e| Entity {
                id: EntityId::parse(e.id.as_str()).expect("workload ids are valid"),
                ..e.clone()
            })
            .collect();
        let mut writer = MirrorWriter::new();
        writer.replace_all(fresh_ids);
        writer
    });
    report(
        "mirror after replace_all",
        entities,
        mirror_bytes,
        mirror_blocks,
    );
    println!(
        "mirror / plain: {:.1} %  ({} interned strings)",
        100.0 * mirror_bytes as f64 / plain_bytes as f64,
        writer.interned_strings()
    );
    drop(snapshot);

    let (_, churn_bytes, churn_blocks) = measure(|| {
        for _ in 0..100 {
            writer.apply(workload.next_events(1000));
        }
    });
    println!(
        "after 100k churn events: {} entities, {:+.1} MB, {:+} allocations, {} interned strings",
        writer.len(),
        churn_bytes as f64 / 1e6,
        churn_blocks,
        writer.interned_strings()
    );
}
