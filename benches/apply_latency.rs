//! How long each batch applied to a 100k-entity mirror takes, over a long
//! churn: the median says what a batch costs, the tail shows the rare ones
//! that hold a batch up (a table growing, the interner sweeping). Criterion
//! reports means and medians, so this is a plain binary that prints the
//! distribution.
//!
//!     cargo bench --bench apply_latency

use std::time::{Duration, Instant};

use remote_tagger::mirror::MirrorWriter;
use remote_tagger::workload::{Workload, WorkloadConfig};

/// The allocator the `remote-tagger` binary ships with.
#[global_allocator]
static ALLOCATOR: remote_tagger::alloc::Mimalloc = remote_tagger::alloc::Mimalloc;

const ENTITIES: usize = 100_000;
/// What the end-to-end fan-out sends per response.
const BATCH: usize = 20;
/// 600k events: long enough for the record tables to fill with tombstones
/// and grow, and for the interner to sweep.
const BATCHES: usize = 30_000;

fn main() {
    let mut workload = Workload::new(WorkloadConfig {
        entities: ENTITIES,
        seed: 1,
    });
    let mut writer = MirrorWriter::new();
    writer.replace_all(workload.snapshot());
    let mut times: Vec<Duration> = (0..BATCHES)
        .map(|_| {
            let events = workload.next_events(BATCH);
            let start = Instant::now();
            writer.apply(events);
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let total: Duration = times.iter().sum();
    println!(
        "{BATCHES} batches of {BATCH} events into a {ENTITIES}-entity mirror: {:.0} events/s",
        (BATCHES * BATCH) as f64 / total.as_secs_f64()
    );
    println!(
        "per batch: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    let slowest: Vec<Duration> = times.iter().rev().take(5).copied().collect();
    println!("slowest five: {slowest:?}");
}
