//! The mirror's rows: `lookup` (issue 20 goal 1) and `apply` (goal 2).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use remote_tagger::domain::{Cardinality, Entity, EntityEvent};
use remote_tagger::mirror::{MirrorReader, MirrorWriter};
use remote_tagger::rng::SplitMix64;
use remote_tagger::wire::{EventEncoder, decode_event};

use crate::Row;
use crate::yardstick::{
    ENTITIES, Entities, Figures, GoFigures, Goal, Line, Ratio, Round, SEED, Yardstick, median,
    millis, nanos,
};

/// Lookups per timing sample, and the statistic: the median over samples
/// of their mean, as the yardstick's `lookup` mode does.
const LOOKUPS_PER_SAMPLE: usize = 1000;
/// Lookups timed per measurement, on each side (the yardstick's `--iters`).
const LOOKUPS: usize = 2_000_000;
/// The concurrent writer: 100-event batches every 10 ms, as the
/// yardstick's (`--writer-rate 10000 --writer-batch 100`).
const WRITER_BATCH: usize = 100;
const WRITER_PERIOD: Duration = Duration::from_millis(10);
/// The writer modifies the first this many entities, as the yardstick's.
const WRITER_ENTITIES: usize = 10_000;
/// The floor's buffer: far over what this machine's caches hold, about a
/// mirror's records plus the ids a caller looks up.
const FLOOR_BYTES: usize = 64 << 20;
/// Our server's response size, into which the staging row cuts a snapshot.
const RESPONSE_BYTES: usize = 64 * 1024;

/// This round's `go-tagger lookup` run, which reports both rows' Go
/// figures: the same entities, lookups and samples as ours.
fn go_lookup(round: &mut Round<'_>, go: &Yardstick) -> Result<GoFigures, String> {
    let (entities, iters, seed) = (ENTITIES.to_string(), LOOKUPS.to_string(), SEED.to_string());
    let batch = LOOKUPS_PER_SAMPLE.to_string();
    round.go_run(
        go,
        &[
            "lookup",
            "--entities",
            &entities,
            "--iters",
            &iters,
            "--batch",
            &batch,
            "--seed",
            &seed,
            "--hot",
            "0",
        ],
    )
}

/// Single-call `tags(id, HIGH)` over every id in the yardstick's random
/// order, against the machine's floor (one dependent random load), idle and
/// while a writer thread applies 10k events/s. Timed as the yardstick times
/// it: samples of 1000 calls, the median of their mean. Go's `Tag` returns
/// a new slice of the tags, ours a view of the record (`Tags`); the caller's
/// ids are `String`s scattered over the heap on both sides (Go's are its
/// mirror's keys), so each call may first miss the cache on the id it is
/// given. The `ids in cache` line packs the same ids in one text, read in
/// order.
pub struct LookupRow {
    entities: Vec<Entity>,
    ids: Vec<String>,
    packed: PackedIds,
    floor: Vec<usize>,
}

impl LookupRow {
    /// The row over `entities`, its ids and the floor's buffer made.
    pub fn new(entities: &Entities) -> Self {
        let ids = entities.lookup_order();
        Self {
            entities: entities.list.clone(),
            packed: PackedIds::new(&ids),
            ids,
            floor: pointer_chase(FLOOR_BYTES),
        }
    }

    /// The median per-lookup time over samples of the lookups `look_up`
    /// makes of ids `at..at + count` (of the lookup order, cycling).
    fn time(&self, mut look_up: impl FnMut(usize, usize)) -> f64 {
        let samples = LOOKUPS / LOOKUPS_PER_SAMPLE;
        let mut per_lookup = Vec::with_capacity(samples);
        let mut at = 0;
        for _ in 0..samples {
            let start = Instant::now();
            look_up(at, LOOKUPS_PER_SAMPLE);
            per_lookup.push(start.elapsed().as_nanos() as f64 / LOOKUPS_PER_SAMPLE as f64);
            at = (at + LOOKUPS_PER_SAMPLE) % self.ids.len();
        }
        median(&mut per_lookup)
    }

    fn floor_ns(&self) -> f64 {
        let mut hop = 0;
        let ns = self.time(|_, count| {
            for _ in 0..count {
                hop = self.floor[hop];
            }
        });
        black_box(hop);
        ns
    }

    fn lookups_ns(&self, reader: &MirrorReader) -> f64 {
        let ids = &self.ids;
        self.time(|at, count| {
            for k in at..at + count {
                black_box(reader.tags(&ids[k % ids.len()], Cardinality::High));
            }
        })
    }

    fn packed_lookups_ns(&self, reader: &MirrorReader) -> f64 {
        let mut next = self.packed.cycle();
        self.time(|_, count| {
            for id in next.by_ref().take(count) {
                black_box(reader.tags(id, Cardinality::High));
            }
        })
    }
}

impl Row for LookupRow {
    fn ours(&mut self) -> Figures {
        let mut writer = MirrorWriter::new();
        writer.replace_all(self.entities.clone());
        let reader = writer.reader();
        // A warm-up pass, as the yardstick makes.
        for id in &self.ids {
            black_box(reader.tags(id, Cardinality::High));
        }
        let floor_before = self.floor_ns();
        let single = self.lookups_ns(&reader);
        let packed = self.packed_lookups_ns(&reader);
        let churn = Churn::new(&self.entities);
        let (with_writer, writer_rate) = while_writing(writer, churn, || self.lookups_ns(&reader));
        let floor_after = self.floor_ns();
        Figures::from([
            ("floor_ns", (floor_before + floor_after) / 2.0),
            ("single_ns", single),
            ("packed_ns", packed),
            ("writer_ns", with_writer),
            ("writer_events_per_s", writer_rate),
        ])
    }

    fn go(&mut self, round: &mut Round<'_>, go: &Yardstick) -> Result<Figures, String> {
        let figures = go_lookup(round, go)?;
        Ok(Figures::from([
            (
                "single_ns",
                figures.get("lookup single-threaded.median_ns")?,
            ),
            ("writer_ns", figures.get("lookup with writer.median_ns")?),
            (
                "writer_events_per_s",
                figures.get("lookup with writer.writer_events_per_s")?,
            ),
        ]))
    }

    fn lines(&self, ours: &Figures, go: Option<&Figures>) -> Vec<Line> {
        let floor = ours["floor_ns"];
        let go_ns = |key| go.map(|go| nanos(go[key]));
        let against_floor = |key, goal| {
            Some(Ratio {
                of: "ours/floor",
                value: ours[key] / floor,
                goal,
            })
        };
        vec![
            Line {
                measure: "floor: one dependent random load, 64 MiB".to_owned(),
                go: None,
                ours: nanos(floor),
                ratio: None,
            },
            Line {
                measure: "tags(id, HIGH), 100k random, median".to_owned(),
                go: go_ns("single_ns"),
                ours: nanos(ours["single_ns"]),
                ratio: against_floor("single_ns", Some(Goal::AtMost(1.2))),
            },
            Line {
                measure: "  the same, ids in cache".to_owned(),
                go: None,
                ours: nanos(ours["packed_ns"]),
                ratio: against_floor("packed_ns", None),
            },
            Line {
                measure: format!(
                    "  while a writer applies 10k events/s (Go {}, ours {:.0})",
                    go.map_or("-".to_owned(), |go| format!(
                        "{:.0}",
                        go["writer_events_per_s"]
                    )),
                    ours["writer_events_per_s"]
                ),
                go: go_ns("writer_ns"),
                ours: nanos(ours["writer_ns"]),
                ratio: against_floor("writer_ns", Some(Goal::AtMost(1.3))),
            },
            Line {
                measure: "  ours:Go, idle".to_owned(),
                go: None,
                ours: String::new(),
                ratio: go.map(|go| Ratio {
                    of: "ours/Go",
                    value: ours["single_ns"] / go["single_ns"],
                    goal: None,
                }),
            },
        ]
    }
}

/// The same ids in the same order, packed end to end in one string: walked
/// in order, the hardware prefetcher brings each id in before its lookup, as
/// when the caller has just read the id from the data it is tagging.
struct PackedIds {
    text: String,
    ends: Vec<usize>,
}

impl PackedIds {
    fn new(ids: &[String]) -> Self {
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

    fn cycle(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        let ids = starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.text[start..end]);
        ids.cycle()
    }
}

/// A buffer of `bytes` in which the first word of each cache line holds the
/// index of the next line's first word, the lines visited in a seeded
/// random cycle: following it is one dependent random load per hop.
fn pointer_chase(bytes: usize) -> Vec<usize> {
    const WORDS_PER_LINE: usize = 8;
    let lines = bytes / 64;
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = SplitMix64::new(SEED);
    for i in (1..lines).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut next = vec![0usize; lines * WORDS_PER_LINE];
    for (k, &line) in order.iter().enumerate() {
        next[line * WORDS_PER_LINE] = order[(k + 1) % lines] * WORDS_PER_LINE;
    }
    next
}

/// The yardstick's churn on the same entities: a random one of the first
/// [`WRITER_ENTITIES`] gets a new version tag and a third high tag
/// `churn_ts:<n>`. Go re-applies 100 batches made once; here each event
/// carries a new `n`, so every one changes its entity.
struct Churn {
    base: Vec<Entity>,
    rng: SplitMix64,
    stamp: u64,
}

impl Churn {
    fn new(entities: &[Entity]) -> Self {
        Self {
            base: entities.iter().take(WRITER_ENTITIES).cloned().collect(),
            rng: SplitMix64::new(SEED ^ 0x0063_6875_726e),
            stamp: 0,
        }
    }

    fn batch(&mut self) -> Vec<EntityEvent> {
        (0..WRITER_BATCH)
            .map(|_| {
                let mut entity = self.base[self.rng.below(self.base.len() as u64) as usize].clone();
                self.stamp += 1;
                entity.high.push(format!("churn_ts:{}", self.stamp));
                if let Some(version) = entity.standard.last_mut() {
                    *version = format!("version:1.{}.0", self.rng.below(8));
                }
                EntityEvent::Modified(entity)
            })
            .collect()
    }
}

/// Runs `measure` while another thread applies `churn` to `writer` in
/// batches every [`WRITER_PERIOD`]; returns its result and the writer's
/// events per second.
fn while_writing<R>(
    mut writer: MirrorWriter,
    mut churn: Churn,
    measure: impl FnOnce() -> R,
) -> (R, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let thread = {
        let (stop, applied) = (Arc::clone(&stop), Arc::clone(&applied));
        thread::spawn(move || {
            let mut deadline = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                writer.apply(churn.batch());
                applied.fetch_add(WRITER_BATCH as u64, Ordering::Relaxed);
                deadline += WRITER_PERIOD;
                thread::sleep(deadline.saturating_duration_since(Instant::now()));
            }
        })
    };
    // Let the writer settle into its pace, as the yardstick does.
    thread::sleep(Duration::from_millis(50));
    let result = measure();
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("the writer thread");
    let rate = applied.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (result, rate)
}

// ---------------------------------------------------------------- apply

/// A 100k-entity snapshot applied to an empty mirror, decode excluded on
/// both sides, until the mirror is readable. Go's timed region (its
/// `lookup` mode's `apply_ms`): per 2 MiB response already unmarshalled,
/// converting its events and `ProcessEvents` (a map insert each, under the
/// write lock). Ours:
/// - `replace_all`: the call, from the owned entities (which it consumes and
///   frees) to the published mirror and the sorted diff it returns;
/// - staging: per 64 KiB response, `stage` of its events already decoded in
///   place (and dropping them), then `commit_staged`, as a sync does.
pub struct ApplyRow {
    entities: Vec<Entity>,
    /// The snapshot encoded, in responses of about [`RESPONSE_BYTES`].
    responses: Vec<Vec<Bytes>>,
}

impl ApplyRow {
    /// The row over `entities`, encoded in responses for the staging.
    pub fn new(entities: &Entities) -> Self {
        let mut encoder = EventEncoder::with_block_size(RESPONSE_BYTES);
        let mut responses = vec![Vec::new()];
        let mut filled = 0;
        for entity in &entities.list {
            let event = encoder.event(&EntityEvent::Added(entity.clone()), Cardinality::High);
            if filled + event.len() > RESPONSE_BYTES && filled > 0 {
                responses.push(Vec::new());
                filled = 0;
            }
            filled += event.len();
            responses.last_mut().expect("one response").push(event);
        }
        Self {
            entities: entities.list.clone(),
            responses,
        }
    }

    fn replace_all_ms(&self) -> f64 {
        let mut mirror = MirrorWriter::new();
        let entities = self.entities.clone();
        let start = Instant::now();
        black_box(mirror.replace_all(entities));
        start.elapsed().as_secs_f64() * 1e3
    }

    fn staging_ms(&self) -> f64 {
        let mut mirror = MirrorWriter::new();
        let mut timed = Duration::ZERO;
        for response in &self.responses {
            let events: Vec<_> = response
                .iter()
                .map(|event| decode_event(event).expect("a valid event"))
                .collect();
            let start = Instant::now();
            mirror.stage(events);
            timed += start.elapsed();
        }
        let start = Instant::now();
        black_box(mirror.commit_staged());
        (timed + start.elapsed()).as_secs_f64() * 1e3
    }
}

impl Row for ApplyRow {
    fn ours(&mut self) -> Figures {
        Figures::from([
            ("replace_all_ms", self.replace_all_ms()),
            ("staging_ms", self.staging_ms()),
        ])
    }

    fn go(&mut self, round: &mut Round<'_>, go: &Yardstick) -> Result<Figures, String> {
        let figures = go_lookup(round, go)?;
        Ok(Figures::from([
            ("apply_ms", figures.get("snapshot apply.apply_ms")?),
            ("decode_ms", figures.get("snapshot apply.decode_ms")?),
        ]))
    }

    fn lines(&self, ours: &Figures, go: Option<&Figures>) -> Vec<Line> {
        let entities = self.entities.len();
        let speed_up = |key| {
            go.map(|go| Ratio {
                of: "Go time/ours",
                value: go["apply_ms"] / ours[key],
                goal: Some(Goal::AtLeast(1.5)),
            })
        };
        vec![
            Line {
                measure: format!("snapshot apply of {entities} into empty, decode excluded"),
                go: go.map(|go| millis(go["apply_ms"])),
                ours: millis(ours["replace_all_ms"]),
                ratio: speed_up("replace_all_ms"),
            },
            Line {
                measure: "  ours staging decoded 64 KiB responses + commit".to_owned(),
                go: None,
                ours: millis(ours["staging_ms"]),
                ratio: speed_up("staging_ms"),
            },
            Line {
                measure: "  (Go's decode, not in the apply)".to_owned(),
                go: go.map(|go| millis(go["decode_ms"])),
                ours: String::new(),
                ratio: None,
            },
        ]
    }
}
