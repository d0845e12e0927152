//! Encoding and decoding `StreamTagsEvent`s: the server encodes each event
//! once for all its subscribers, every client decodes what it receives. On
//! the 100k-entity snapshot, against prost's generated code for the same
//! bytes, and the server's whole snapshot path (its store's entities, each
//! its own allocation, encoded into response-sized chunks) and the client's
//! (decoding each chunk's events in place and staging them in a mirror,
//! then committing).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use remote_tagger::domain::{Cardinality, EntityEvent};
use remote_tagger::mirror::MirrorWriter;
use remote_tagger::proto::model::StreamTagsEvent;
use remote_tagger::server::{Chunker, Epoch, PrefixFilter, ServiceConfig, SnapshotChunks, Store};
use remote_tagger::wire::{EventEncoder, decode_event};
use remote_tagger::workload::{Workload, WorkloadConfig};

/// The allocator the `remote-tagger` binary ships with.
#[global_allocator]
static ALLOCATOR: remote_tagger::alloc::Mimalloc = remote_tagger::alloc::Mimalloc;

const ENTITIES: usize = 100_000;
/// The block size a server encodes snapshots into.
const SNAPSHOT_BLOCK: usize = 64 * 1024;

fn snapshot_events() -> Vec<EntityEvent> {
    let workload = Workload::new(WorkloadConfig {
        entities: ENTITIES,
        seed: 1,
    });
    workload
        .snapshot()
        .into_iter()
        .map(EntityEvent::Added)
        .collect()
}

fn wire(c: &mut Criterion) {
    let events = snapshot_events();
    let encoded: Vec<Bytes> = {
        let mut encoder = EventEncoder::with_block_size(SNAPSHOT_BLOCK);
        events
            .iter()
            .map(|event| encoder.event(event, Cardinality::High))
            .collect()
    };
    let bytes: usize = encoded.iter().map(Bytes::len).sum();
    eprintln!("{} events, {bytes} bytes encoded", encoded.len());

    let mut group = c.benchmark_group("wire_100k_snapshot");
    group.sample_size(10);
    group.throughput(Throughput::Elements(encoded.len() as u64));
    group.bench_function("encode", |b| {
        b.iter(|| {
            let mut encoder = EventEncoder::with_block_size(SNAPSHOT_BLOCK);
            for event in &events {
                black_box(encoder.event(event, Cardinality::High));
            }
        })
    });
    group.bench_function("decode_in_place", |b| {
        b.iter(|| {
            for event in &encoded {
                black_box(decode_event(event).expect("a valid event"));
            }
        })
    });
    group.bench_function("decode_prost", |b| {
        b.iter(|| {
            for event in &encoded {
                black_box(StreamTagsEvent::decode(event.as_ref()).expect("a valid event"));
            }
        })
    });
    // The client's share of a sync, without TLS and HTTP/2: per response
    // (as the server cuts them), decode its events and stage them; commit at
    // the end.
    let budget = ServiceConfig::default().chunk_budget();
    let mut chunker = Chunker::new(budget);
    let mut responses: Vec<Vec<Bytes>> = encoded
        .iter()
        .filter_map(|event| chunker.push(event.clone()))
        .collect();
    responses.push(chunker.take());
    group.bench_function("client_decode_and_stage", |b| {
        b.iter(|| {
            let mut mirror = MirrorWriter::new();
            for response in &responses {
                let events = response
                    .iter()
                    .map(|event| decode_event(event).expect("a valid event"));
                mirror.stage(events.collect::<Vec<_>>());
            }
            mirror.commit_staged().len()
        })
    });
    let mut store = Store::new(Epoch::from_seed(1), 0);
    store.apply(events);
    group.bench_function("server_snapshot_chunks", |b| {
        b.iter(|| {
            let snapshot = store.snapshot(&PrefixFilter::all());
            let chunks = SnapshotChunks::new(snapshot, Cardinality::High, budget);
            chunks.map(|chunk| chunk.events.len()).sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
