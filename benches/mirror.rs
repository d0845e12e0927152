//! Mirror latency and throughput on the 100k-entity synthetic workload.
//!
//! Lookups walk every id in a seeded random order, so they pay the cache
//! misses of a real store rather than hitting a hot few entries.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use remote_tagger::domain::{Cardinality, Entity, EntityEvent, EntityId};
use remote_tagger::mirror::{MirrorReader, MirrorView, MirrorWriter};
use remote_tagger::rng::SplitMix64;
use remote_tagger::wire::{EventEncoder, decode_event};
use remote_tagger::workload::{Workload, WorkloadConfig};

#[path = "common/lookups.rs"]
mod lookups;
use lookups::{PackedIds, pointer_chase};

/// The allocator the `remote-tagger` binary ships with: with glibc's malloc,
/// freeing the events' strings (which `apply` and `replace_all` consume)
/// costs more than the mirror's own work (measured with perf).
#[global_allocator]
static ALLOCATOR: remote_tagger::alloc::Mimalloc = remote_tagger::alloc::Mimalloc;

const ENTITIES: usize = 100_000;
const SEED: u64 = 1;
/// Churn while reading: 100-event batches every 10 ms, 10k events/s.
const CHURN_BATCH: usize = 100;
const CHURN_PERIOD: Duration = Duration::from_millis(10);
const APPLY_BATCH: usize = 1000;

fn workload() -> Workload {
    Workload::new(WorkloadConfig {
        entities: ENTITIES,
        seed: SEED,
    })
}

/// Every id of the store, in a seeded Fisher-Yates order.
fn shuffled_ids(workload: &Workload) -> Vec<String> {
    let mut ids: Vec<String> = workload.store().keys().map(|id| id.to_string()).collect();
    let mut rng = SplitMix64::new(SEED);
    for i in (1..ids.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        ids.swap(i, j);
    }
    ids
}

/// Lookups per [`MirrorReader::view`] in the view benches: a batch of work,
/// like the metrics of a few received packets.
const LOOKUPS_PER_VIEW: u64 = 1000;

/// Times `lookups` lookups made by `look_up(view, count)`, in views of
/// [`LOOKUPS_PER_VIEW`] lookups (entering and leaving each is timed too).
fn in_views(
    reader: &MirrorReader,
    lookups: u64,
    mut look_up: impl FnMut(&MirrorView<'_>, usize),
) -> Duration {
    let start = Instant::now();
    let mut left = lookups;
    while left > 0 {
        let count = left.min(LOOKUPS_PER_VIEW);
        look_up(&reader.view(), count as usize);
        left -= count;
    }
    start.elapsed()
}

/// Lookups per id order: the bare lookup, the same with the caller's ids in
/// cache, lookups in a view (borrowed results, one by one and pipelined by
/// `tags_of`), and the lookup plus reading every tag's bytes (what a caller
/// does next, and where unique strings miss the cache).
fn bench_lookups(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    reader: &MirrorReader,
    ids: &[String],
) {
    let mut next = ids.iter().cycle();
    group.bench_function("tags_high", |b| {
        b.iter(|| reader.tags(next.next().unwrap(), Cardinality::High))
    });
    let packed = PackedIds::new(ids);
    let mut next_packed = packed.cycle();
    group.bench_function("tags_high_packed_ids", |b| {
        b.iter(|| reader.tags(next_packed.next().unwrap(), Cardinality::High))
    });
    group.bench_function("view_tags_high", |b| {
        b.iter_custom(|lookups| {
            in_views(reader, lookups, |view, count| {
                for id in next.by_ref().take(count) {
                    black_box(view.tags(id, Cardinality::High));
                }
            })
        })
    });
    group.bench_function("view_tags_of_high", |b| {
        b.iter_custom(|lookups| {
            in_views(reader, lookups, |view, count| {
                let ids = next.by_ref().take(count).map(String::as_str);
                for found in view.tags_of(ids, Cardinality::High) {
                    black_box(found);
                }
            })
        })
    });
    group.bench_function("view_tags_of_high_packed_ids", |b| {
        b.iter_custom(|lookups| {
            in_views(reader, lookups, |view, count| {
                let ids = next_packed.by_ref().take(count);
                for found in view.tags_of(ids, Cardinality::High) {
                    black_box(found);
                }
            })
        })
    });
    group.bench_function("tags_high_sum_lengths", |b| {
        b.iter(|| {
            let tags = reader.tags(next.next().unwrap(), Cardinality::High);
            tags.iter().map(str::len).sum::<usize>()
        })
    });
}

fn lookups(c: &mut Criterion) {
    let mut workload = workload();
    let ids = shuffled_ids(&workload);
    let mut writer = MirrorWriter::new();
    writer.replace_all(workload.snapshot());
    let reader = writer.reader();

    let mut group = c.benchmark_group("lookup_idle_writer");
    bench_lookups(&mut group, &reader, &ids);
    group.finish();

    // The writer thread applies paced churn batches for as long as the
    // group runs. (Ids it deletes read as empty afterwards, like in a real
    // consumer racing deletions.)
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut applied = 0usize;
            let mut deadline = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                writer.apply(workload.next_events(CHURN_BATCH));
                applied += CHURN_BATCH;
                deadline += CHURN_PERIOD;
                thread::sleep(deadline.saturating_duration_since(Instant::now()));
            }
            applied
        })
    };
    let started = Instant::now();
    let mut group = c.benchmark_group("lookup_churning_writer");
    bench_lookups(&mut group, &reader, &ids);
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let applied = churn.join().unwrap();
    eprintln!(
        "churn: {applied} events in {:.1} s ({:.0} events/s)",
        started.elapsed().as_secs_f64(),
        applied as f64 / started.elapsed().as_secs_f64()
    );
}

/// Times `apply` on `batches` churn batches of [`APPLY_BATCH`] events.
/// Generating events is the workload's cost, not the store's: only `apply`
/// is timed, and the workload stays consistent with the store.
fn time_churn(
    workload: &mut Workload,
    batches: u64,
    mut apply: impl FnMut(Vec<EntityEvent>),
) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..batches {
        let events = workload.next_events(APPLY_BATCH);
        let start = Instant::now();
        apply(events);
        timed += start.elapsed();
    }
    timed
}

fn writes(c: &mut Criterion) {
    let mut group = c.benchmark_group("write");
    group.sample_size(10);

    let mut workload = workload();
    let snapshot = workload.snapshot();
    let mut writer = MirrorWriter::new();
    writer.replace_all(snapshot.clone());
    group.throughput(Throughput::Elements(APPLY_BATCH as u64));
    group.bench_function("apply_churn_1000", |b| {
        b.iter_custom(|batches| {
            time_churn(&mut workload, batches, |events| {
                black_box(writer.apply(events));
            })
        })
    });

    group.throughput(Throughput::Elements(snapshot.len() as u64));
    group.bench_function("replace_all_100k_into_empty", |b| {
        b.iter_custom(|rounds| {
            let mut timed = Duration::ZERO;
            for _ in 0..rounds {
                let mut empty = MirrorWriter::new();
                let entities = snapshot.clone();
                let start = Instant::now();
                black_box(empty.replace_all(entities));
                timed += start.elapsed();
            }
            timed
        })
    });
    // A resync after a reconnect: the snapshot mostly matches what is held.
    let mut resynced = MirrorWriter::new();
    resynced.replace_all(snapshot.clone());
    group.bench_function("replace_all_100k_resync", |b| {
        b.iter_custom(|rounds| {
            let mut timed = Duration::ZERO;
            for _ in 0..rounds {
                let entities = snapshot.clone();
                let start = Instant::now();
                black_box(resynced.replace_all(entities));
                timed += start.elapsed();
            }
            timed
        })
    });
    group.finish();
}

/// Mirrors in the fan-out bench: 16 of about 25 MB, far more than the
/// caches hold, like the end-to-end fan-out's clients in one process.
const FANOUT_MIRRORS: usize = 16;
/// Events per batch there: what the end-to-end fan-out sends per response
/// (2,000 events/s in 10 ms ticks).
const FANOUT_BATCH: usize = 20;

/// A client's side of fan-out without the network: the same small churn
/// batches, received encoded, decoded and applied by every one of many
/// full mirrors, so each apply starts from memory another mirror evicted.
fn fanout_apply(c: &mut Criterion) {
    let mut workload = workload();
    let snapshot = workload.snapshot();
    let mut mirrors: Vec<MirrorWriter> = (0..FANOUT_MIRRORS)
        .map(|_| {
            let mut mirror = MirrorWriter::new();
            mirror.replace_all(snapshot.clone());
            mirror
        })
        .collect();
    drop(snapshot);
    let mut group = c.benchmark_group("fanout_apply");
    group.sample_size(10);
    group.throughput(Throughput::Elements((FANOUT_BATCH * FANOUT_MIRRORS) as u64));
    group.bench_function("churn_20_into_16_mirrors", |b| {
        b.iter_custom(|batches| {
            let mut timed = Duration::ZERO;
            for _ in 0..batches {
                let mut encoder = EventEncoder::default();
                let encoded: Vec<Bytes> = workload
                    .next_events(FANOUT_BATCH)
                    .iter()
                    .map(|event| encoder.event(event, Cardinality::High))
                    .collect();
                let start = Instant::now();
                for mirror in &mut mirrors {
                    let events = encoded
                        .iter()
                        .map(|event| decode_event(event).expect("a valid event"));
                    black_box(mirror.apply(events));
                }
                timed += start.elapsed();
            }
            timed
        })
    });
    group.finish();
}

/// How a lookup of one popular id scales when another thread looks it up
/// too: with `tags()`, both threads take and release a refcount on the same
/// record, and its cache line moves between the cores; a view's borrowed
/// results write nothing. Each group runs with the other thread making the
/// same kind of lookup as fast as it can, after a baseline with no other
/// thread.
fn hot_id_lookups(c: &mut Criterion) {
    let workload = workload();
    let mut writer = MirrorWriter::new();
    writer.replace_all(workload.snapshot());
    let reader = writer.reader();
    let hot = shuffled_ids(&workload).swap_remove(0);
    let mut group = c.benchmark_group("hot_id");
    group.bench_function("tags_high_alone", |b| {
        b.iter(|| reader.tags(&hot, Cardinality::High))
    });
    group.bench_function("view_tags_high_alone", |b| {
        b.iter_custom(|lookups| {
            in_views(&reader, lookups, |view, count| {
                for _ in 0..count {
                    black_box(view.tags(&hot, Cardinality::High));
                }
            })
        })
    });
    for per_view in [false, true] {
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            let other = reader.clone();
            let (stop, hot) = (&stop, hot.as_str());
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if per_view {
                        let view = other.view();
                        for _ in 0..LOOKUPS_PER_VIEW {
                            black_box(view.tags(hot, Cardinality::High));
                        }
                    } else {
                        for _ in 0..LOOKUPS_PER_VIEW {
                            black_box(other.tags(hot, Cardinality::High));
                        }
                    }
                }
            });
            if per_view {
                group.bench_function("view_tags_high_two_threads", |b| {
                    b.iter_custom(|lookups| {
                        in_views(&reader, lookups, |view, count| {
                            for _ in 0..count {
                                black_box(view.tags(hot, Cardinality::High));
                            }
                        })
                    })
                });
            } else {
                group.bench_function("tags_high_two_threads", |b| {
                    b.iter(|| reader.tags(hot, Cardinality::High))
                });
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    group.finish();
}

/// The machine's floor for a random lookup: one dependent load from a
/// random place in a buffer (a cyclic pointer chase, one cache line per hop).
/// 64 MiB is about the size of a 100k-entity mirror's records plus the ids a
/// caller looks up: a lookup that misses the cache for the record it must
/// compare cannot be faster than one such load. The smaller sizes show
/// where the caches end.
fn memory_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("machine");
    for mib in [4, 16, 64] {
        let next = pointer_chase(mib * 1024 * 1024, SEED);
        let mut at = 0;
        group.bench_function(format!("dependent_load_random_{mib}MiB"), |b| {
            b.iter(|| {
                at = next[at];
                at
            })
        });
    }
    group.finish();
}

/// What a plain single-threaded `std` hash map does on the same workload,
/// ids and churn, as a reference for the mirror's figures: no second copy,
/// no interning, no readers to keep consistent. A lookup clones the `Arc`
/// of the entity's low + orchestrator + high tags (like `tags()` handing
/// out a refcounted view); apply inserts or removes the owned events.
fn plain_map(c: &mut Criterion) {
    let mut workload = workload();
    let ids = shuffled_ids(&workload);
    let by_id: HashMap<String, Arc<[String]>, foldhash::fast::RandomState> = workload
        .store()
        .iter()
        .map(|(id, entity)| {
            let tags = entity
                .low
                .iter()
                .chain(&entity.orchestrator)
                .chain(&entity.high);
            (id.to_string(), tags.cloned().collect())
        })
        .collect();
    let mut group = c.benchmark_group("plain_map");
    let mut next = ids.iter().cycle();
    group.bench_function("get_high", |b| {
        b.iter(|| by_id.get(next.next().unwrap().as_str()).cloned())
    });
    let packed = PackedIds::new(&ids);
    let mut next_packed = packed.cycle();
    group.bench_function("get_high_packed_ids", |b| {
        b.iter(|| by_id.get(next_packed.next().unwrap()).cloned())
    });
    drop(by_id);

    let mut entities: HashMap<EntityId, Entity, foldhash::fast::RandomState> = workload
        .snapshot()
        .into_iter()
        .map(|entity| (entity.id.clone(), entity))
        .collect();
    group.sample_size(10);
    group.throughput(Throughput::Elements(APPLY_BATCH as u64));
    group.bench_function("apply_churn_1000", |b| {
        b.iter_custom(|batches| {
            time_churn(&mut workload, batches, |events| {
                for event in events {
                    match event {
                        EntityEvent::Added(entity) | EntityEvent::Modified(entity) => {
                            black_box(entities.insert(entity.id.clone(), entity));
                        }
                        EntityEvent::Deleted(id) => {
                            black_box(entities.remove(&id));
                        }
                    }
                }
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    lookups,
    hot_id_lookups,
    writes,
    fanout_apply,
    memory_latency,
    plain_map
);
criterion_main!(benches);
