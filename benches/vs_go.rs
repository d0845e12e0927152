//! Our mirror side by side with the Go yardstick (issue 20), in one run:
//! each round measures every row on both sides, Go first in even rounds,
//! and records the load average and `/proc/pressure/cpu`, since absolute
//! figures on a shared machine swing 2x between runs while ratios measured
//! together hold.
//!
//! ```text
//! cargo bench --bench vs_go
//! VS_GO_ROUNDS=6 VS_GO_ROWS=lookup,apply GO_TAGGER_DIR=/work/go-tagger cargo bench --bench vs_go
//! VS_GO_SIDES=ours VS_GO_ROUNDS=1 VS_GO_ROWS=apply cargo bench --bench vs_go   # e.g. under callgrind
//! ```
//!
//! The yardstick is the Go implementation of the Datadog design in
//! `GO_TAGGER_DIR` (default `../shared/yardstick/go-tagger` next to this
//! repository). Its `bin/go-tagger` and `bin/godump` are used if built;
//! otherwise, with Go installed, the tree is copied under cargo's target
//! directory and built there (its README says how). Without Go the bench
//! says so, skips the Go side and measures ours on our own workload.
//!
//! Both sides hold the same entities: `godump` writes Go's 100k entities as
//! our `--entities` JSON, read here in Go's order.
//!
//! Rows (see [`rows`]): `lookup` (single-call `tags(id, HIGH)` against the
//! machine's dependent-load floor, idle and while a writer applies 10k
//! events/s) and `apply` (a 100k snapshot into an empty mirror, decode
//! excluded on both sides). The sync and fan-out rows of issue 20 come next:
//! a [`Row`] each, added to [`rows`].
//!
//! Figures are printed, never asserted.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use remote_tagger::domain::{Cardinality, Entity, EntityEvent, EntityId};
use remote_tagger::mirror::{MirrorReader, MirrorWriter};
use remote_tagger::rng::SplitMix64;
use remote_tagger::wire::{EventEncoder, decode_event};
use remote_tagger::workload::{Workload, WorkloadConfig};
use serde::Deserialize;

/// The allocator the `remote-tagger` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENTITIES: usize = 100_000;
const SEED: u64 = 1;
const DEFAULT_ROUNDS: usize = 5;
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
/// What the yardstick needs to build.
const GO_TOOLS: [&str; 4] = ["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"];

fn main() {
    let settings = Settings::from_env();
    let yardstick = Yardstick::find();
    let entities = match &yardstick {
        Ok(go) => {
            println!(
                "yardstick: {} ({})",
                go.go_tagger.display(),
                go_version().unwrap_or_else(|| "go version unknown".to_owned())
            );
            Entities::from_godump(go)
        }
        Err(why) => {
            println!("Go yardstick absent ({why}): its side is skipped, ours runs on our workload");
            Entities::ours()
        }
    };
    println!(
        "entities: {} {}, {} cores",
        entities.list.len(),
        entities.source,
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    let go = yardstick.ok().filter(|_| settings.go_side);
    if go.is_none() && !settings.go_side {
        println!("VS_GO_SIDES=ours: Go's side is not measured");
    }
    let mut rows: Vec<(&str, Box<dyn Row>)> = ROWS
        .iter()
        .filter(|(name, _)| settings.selects(name))
        .map(|&(name, build)| (name, build(&entities)))
        .collect();
    let mut history: Vec<Vec<Line>> = Vec::new();
    for number in 1..=settings.rounds {
        let mut round = Round::new(number, go.as_ref());
        let go_first = number % 2 == 0;
        let mut go_figures: Vec<Option<Figures>> = Vec::new();
        if go_first {
            go_figures = rows.iter_mut().map(|(name, row)| round.go(name, row.as_mut())).collect();
        }
        let ours: Vec<Figures> = rows.iter_mut().map(|(_, row)| row.ours()).collect();
        if !go_first {
            go_figures = rows.iter_mut().map(|(name, row)| round.go(name, row.as_mut())).collect();
        }
        let lines: Vec<Line> = rows
            .iter()
            .zip(ours.iter().zip(&go_figures))
            .flat_map(|((_, row), (ours, go))| row.lines(ours, go.as_ref()))
            .collect();
        round.print(&lines, go_first);
        history.push(lines);
    }
    print_summary(&history);
}

// ---------------------------------------------------------------- settings

struct Settings {
    rounds: usize,
    /// Row names to run (`VS_GO_ROWS`, comma-separated); all if empty.
    rows: Vec<String>,
    go_side: bool,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let rounds = var("VS_GO_ROUNDS").map_or(DEFAULT_ROUNDS, |value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("VS_GO_ROUNDS={value}: give a number of rounds"))
        });
        let rows = var("VS_GO_ROWS").map_or_else(Vec::new, |value| {
            value.split(',').map(|name| name.trim().to_owned()).collect()
        });
        let go_side = match var("VS_GO_SIDES").as_deref() {
            None | Some("both") => true,
            Some("ours") => false,
            Some(other) => panic!("VS_GO_SIDES={other}: give `both` or `ours`"),
        };
        Self {
            rounds,
            rows,
            go_side,
        }
    }

    fn selects(&self, row: &str) -> bool {
        self.rows.is_empty() || self.rows.iter().any(|name| name == row)
    }
}

// ---------------------------------------------------------------- the yardstick

/// The yardstick's binaries.
struct Yardstick {
    go_tagger: PathBuf,
    godump: PathBuf,
    /// Where the outputs of this run go (godump's JSON).
    scratch: PathBuf,
}

impl Yardstick {
    /// The built yardstick in `GO_TAGGER_DIR`, or a build of it under the
    /// target directory; why not, if neither can be had.
    fn find() -> Result<Self, String> {
        let dir = match std::env::var_os("GO_TAGGER_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/yardstick/go-tagger"),
        };
        if !dir.join("build.sh").is_file() {
            return Err(format!(
                "no yardstick at {} (set GO_TAGGER_DIR to its directory)",
                dir.display()
            ));
        }
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vs_go");
        std::fs::create_dir_all(&scratch)
            .map_err(|error| format!("cannot create {}: {error}", scratch.display()))?;
        let built = Self::at(&dir.join("bin"), &scratch);
        if built.is_ok() {
            return built;
        }
        let copy = scratch.join("go-tagger");
        if let Ok(built) = Self::at(&copy.join("bin"), &scratch) {
            return Ok(built);
        }
        if let Some(missing) = GO_TOOLS.iter().find(|tool| !on_path(tool)) {
            return Err(format!(
                "{} has no bin/go-tagger and bin/godump, and `{missing}` is not installed to build them (see its README.md)",
                dir.display()
            ));
        }
        println!(
            "building the yardstick from {} in {}",
            dir.display(),
            copy.display()
        );
        build_copy(&dir, &copy)?;
        Self::at(&copy.join("bin"), &scratch)
    }

    fn at(bin: &Path, scratch: &Path) -> Result<Self, String> {
        let (go_tagger, godump) = (bin.join("go-tagger"), bin.join("godump"));
        if let Some(missing) = [&go_tagger, &godump].iter().find(|path| !path.is_file()) {
            return Err(format!("{} is missing", missing.display()));
        }
        Ok(Self {
            go_tagger,
            godump,
            scratch: scratch.to_owned(),
        })
    }

    /// Runs `go-tagger ARGS` and returns its standard output.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        output_of(Command::new(&self.go_tagger).args(args))
    }
}

/// Copies the yardstick's sources to `copy` (its own tree may be read-only)
/// and builds both binaries there, as its README says.
fn build_copy(source: &Path, copy: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(copy);
    output_of(Command::new("cp").arg("-r").arg(source).arg(copy))?;
    // A read-only source tree copies read-only.
    output_of(Command::new("chmod").args(["-R", "u+w"]).arg(copy))?;
    output_of(Command::new("./build.sh").current_dir(copy))?;
    let gopath = format!("{}:/usr/share/gocode", copy.display());
    output_of(
        Command::new("go")
            .args(["build", "-o", "bin/godump", "godump"])
            .current_dir(copy)
            .env("GO111MODULE", "off")
            .env("GOPATH", gopath)
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0"),
    )?;
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
    })
}

fn go_version() -> Option<String> {
    output_of(Command::new("go").arg("version"))
        .ok()
        .map(|text| text.trim().to_owned())
}

/// The standard output of `command`, or one line saying why there is none.
fn output_of(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|error| format!("cannot run {shown}: {error}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(format!("{shown} failed ({}): {last}", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// ---------------------------------------------------------------- entities

/// The entities both sides hold, in the order Go applies them.
struct Entities {
    list: Vec<Entity>,
    source: &'static str,
}

/// One element of godump's JSON (the `--entities` file format).
#[derive(Deserialize)]
struct JsonEntity {
    id: String,
    low: Vec<String>,
    orchestrator: Vec<String>,
    high: Vec<String>,
    standard: Vec<String>,
}

impl Entities {
    fn from_godump(go: &Yardstick) -> Self {
        let file = go.scratch.join("go-workload.json");
        let entities = ENTITIES.to_string();
        let seed = SEED.to_string();
        output_of(Command::new(&go.godump).args([
            "--entities",
            &entities,
            "--seed",
            &seed,
            "--out",
            file.to_str().expect("a UTF-8 target directory"),
        ]))
        .unwrap_or_else(|why| panic!("godump: {why}"));
        let text = std::fs::read(&file).unwrap_or_else(|error| {
            panic!("cannot read {}: {error}", file.display());
        });
        let parsed: Vec<JsonEntity> = serde_json::from_slice(&text)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        let list = parsed
            .into_iter()
            .map(|json| Entity {
                id: EntityId::parse(&json.id).expect("godump writes valid ids"),
                low: json.low,
                orchestrator: json.orchestrator,
                high: json.high,
                standard: json.standard,
            })
            .collect();
        Self {
            list,
            source: "of Go's workload (godump), in Go's order",
        }
    }

    fn ours() -> Self {
        let workload = Workload::new(WorkloadConfig {
            entities: ENTITIES,
            seed: SEED,
        });
        Self {
            list: workload.snapshot(),
            source: "of our workload",
        }
    }

    /// The ids in the yardstick's lookup order: sorted, then shuffled by
    /// SplitMix64 (the same draws as Go's), each its own `String` allocated
    /// in entity order, as Go's ids are its mirror's keys.
    fn lookup_order(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.list.iter().map(|e| e.id.to_string()).collect();
        ids.sort_unstable();
        let mut rng = SplitMix64::new(SEED);
        for i in (1..ids.len()).rev() {
            let k = (rng.next_u64() % (i as u64 + 1)) as usize;
            ids.swap(i, k);
        }
        ids
    }
}

// ---------------------------------------------------------------- rounds and rows

/// Named figures of one side of one row in one round.
type Figures = BTreeMap<&'static str, f64>;

/// One measure of the table: both sides' figures and how ours compares.
/// Rows built on the yardstick add the figures Go reports; the rows of
/// issue 20 still to come (sync, fan-out) are one implementation each.
trait Row {
    /// Measures our side once.
    fn ours(&mut self) -> Figures;

    /// Measures Go's side once (see [`Round::go_lookup`] for figures one
    /// yardstick process reports for several rows).
    fn go(&mut self, round: &mut Round<'_>, go: &Yardstick) -> Result<Figures, String>;

    /// The table's lines from both sides' figures (Go's absent without the
    /// yardstick).
    fn lines(&self, ours: &Figures, go: Option<&Figures>) -> Vec<Line>;
}

/// The rows in table order, by the name `VS_GO_ROWS` selects them by.
/// Building one prepares its inputs (outside any timing).
type BuildRow = fn(&Entities) -> Box<dyn Row>;
const ROWS: [(&str, BuildRow); 2] = [
    ("lookup", |entities| Box::new(LookupRow::new(entities))),
    ("apply", |entities| Box::new(ApplyRow::new(entities))),
];

/// One line of a round's table.
struct Line {
    measure: String,
    go: Option<String>,
    ours: String,
    /// What is compared, its value, and the goal it is held to.
    ratio: Option<Ratio>,
}

struct Ratio {
    of: &'static str,
    value: f64,
    goal: Option<Goal>,
}

#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Self::AtMost(bound) => value <= bound,
            Self::AtLeast(bound) => value >= bound,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AtMost(bound) => write!(f, "<= {bound}"),
            Self::AtLeast(bound) => write!(f, ">= {bound}"),
        }
    }
}

/// What one round shares between its rows: the machine's state, and the
/// yardstick's `lookup` run, which reports the lookup and the apply rows'
/// figures at once.
struct Round<'y> {
    number: usize,
    go: Option<&'y Yardstick>,
    started: MachineState,
    go_lookup: Option<Result<BTreeMap<String, f64>, String>>,
}

/// The load average and CPU pressure at one moment.
struct MachineState {
    load: String,
    pressure: String,
}

impl MachineState {
    fn now() -> Self {
        let read = |path| std::fs::read_to_string(path).unwrap_or_else(|_| "n/a".to_owned());
        let load = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        // "some avg10=.. avg60=.. avg300=.. total=..": the first two averages.
        let pressure = read("/proc/pressure/cpu")
            .lines()
            .next()
            .map(|some| some.split_whitespace().skip(1).take(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Self { load, pressure }
    }
}

impl std::fmt::Display for MachineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "load {}, cpu pressure some {}", self.load, self.pressure)
    }
}

impl<'y> Round<'y> {
    fn new(number: usize, go: Option<&'y Yardstick>) -> Self {
        Self {
            number,
            go,
            started: MachineState::now(),
            go_lookup: None,
        }
    }

    /// Go's side of `row`, `None` without the yardstick; a failed run is
    /// reported and counts as none.
    fn go(&mut self, name: &str, row: &mut dyn Row) -> Option<Figures> {
        let go = self.go?;
        match row.go(self, go) {
            Ok(figures) => Some(figures),
            Err(why) => {
                println!("round {}: Go's {name} row failed: {why}", self.number);
                None
            }
        }
    }

    /// The figures of this round's `go-tagger lookup` run (`key=value`
    /// pairs by line prefix, see [`parse_go_lookup`]), run on first use.
    fn go_lookup(&mut self, go: &Yardstick) -> Result<BTreeMap<String, f64>, String> {
        self.go_lookup
            .get_or_insert_with(|| {
                let (entities, iters, seed) =
                    (ENTITIES.to_string(), LOOKUPS.to_string(), SEED.to_string());
                let batch = LOOKUPS_PER_SAMPLE.to_string();
                go.run(&[
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
                ])
                .map(|output| parse_go_lookup(&output))
            })
            .clone()
    }

    fn print(&self, lines: &[Line], go_first: bool) {
        let order = if go_first { "Go first" } else { "ours first" };
        println!(
            "\n== round {} ({order}); at start: {}; at end: {}",
            self.number,
            self.started,
            MachineState::now()
        );
        println!(
            "{:<58} {:>14} {:>14}  ratio",
            "measure", "Go", "ours"
        );
        for line in lines {
            let go = line.go.as_deref().unwrap_or("-");
            let ratio = line.ratio.as_ref().map_or(String::new(), |ratio| {
                let goal = ratio.goal.map_or(String::new(), |goal| {
                    let verdict = if goal.met(ratio.value) { "met" } else { "MISSED" };
                    format!(" (goal {goal}: {verdict})")
                });
                format!("{} {:.2}{goal}", ratio.of, ratio.value)
            });
            println!("{:<58} {go:>14} {:>14}  {ratio}", line.measure, line.ours);
        }
    }
}

/// `go-tagger lookup`'s figures, keyed `<first word of the line>.<key>`
/// (`lookup.median_ns` is the first lookup line's, `snapshot.apply_ms`...):
/// the line tags `lookup single-threaded` and `lookup with writer` become
/// `single` and `writer`.
fn parse_go_lookup(output: &str) -> BTreeMap<String, f64> {
    let mut figures = BTreeMap::new();
    for line in output.lines() {
        let tag = if line.starts_with("lookup single-threaded (random") {
            "single"
        } else if line.starts_with("lookup with writer (random") {
            "writer"
        } else if line.starts_with("snapshot apply") {
            "snapshot"
        } else if line.starts_with("mirror:") {
            "mirror"
        } else {
            continue;
        };
        for pair in line.split_whitespace() {
            if let Some((key, value)) = pair.split_once('=')
                && let Ok(value) = value.parse::<f64>()
            {
                figures.insert(format!("{tag}.{key}"), value);
            }
        }
    }
    figures
}

/// A figure Go's output must have had.
fn go_figure(figures: &BTreeMap<String, f64>, key: &str) -> Result<f64, String> {
    figures
        .get(key)
        .copied()
        .ok_or_else(|| format!("`go-tagger lookup` printed no {key}"))
}

fn print_summary(history: &[Vec<Line>]) {
    println!("\n== summary over {} rounds (ratio per round)", history.len());
    let Some(first) = history.first() else { return };
    for (at, line) in first.iter().enumerate() {
        let Some(ratio) = &line.ratio else { continue };
        let values: Vec<f64> = history
            .iter()
            .filter_map(|lines| lines.get(at)?.ratio.as_ref().map(|ratio| ratio.value))
            .collect();
        let shown: Vec<String> = values.iter().map(|value| format!("{value:.2}")).collect();
        let goal = ratio.goal.map_or(String::new(), |goal| {
            let met = values.iter().filter(|&&value| goal.met(value)).count();
            format!("; goal {goal} met in {met} of {}", values.len())
        });
        println!(
            "{:<58} {} {}{goal}",
            line.measure,
            ratio.of,
            shown.join(", ")
        );
    }
}

fn nanos(value: f64) -> String {
    format!("{value:.1} ns")
}

fn millis(value: f64) -> String {
    format!("{value:.1} ms")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

// ---------------------------------------------------------------- lookup

/// Single-call `tags(id, HIGH)` over every id in the yardstick's random
/// order, against the machine's floor (one dependent random load), idle and
/// while a writer thread applies 10k events/s. Timed as the yardstick times
/// it: samples of 1000 calls, the median of their mean. Go's `Tag` returns
/// a new slice of the tags, ours a view of the record (`Tags`); the caller's
/// ids are `String`s scattered over the heap on both sides (Go's are its
/// mirror's keys), so each call may first miss the cache on the id it is
/// given. The `ids in cache` line packs the same ids in one text, read in
/// order.
struct LookupRow {
    entities: Vec<Entity>,
    ids: Vec<String>,
    packed: PackedIds,
    floor: Vec<usize>,
}

impl LookupRow {
    fn new(entities: &Entities) -> Self {
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
        let figures = round.go_lookup(go)?;
        Ok(Figures::from([
            ("single_ns", go_figure(&figures, "single.median_ns")?),
            ("writer_ns", go_figure(&figures, "writer.median_ns")?),
            (
                "writer_events_per_s",
                go_figure(&figures, "writer.writer_events_per_s")?,
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
                    go.map_or("-".to_owned(), |go| format!("{:.0}", go["writer_events_per_s"])),
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
            rng: SplitMix64::new(SEED ^ 0x6368_7572_6e),
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
fn while_writing<R>(mut writer: MirrorWriter, mut churn: Churn, measure: impl FnOnce() -> R) -> (R, f64) {
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
struct ApplyRow {
    entities: Vec<Entity>,
    /// The snapshot encoded, in responses of about [`RESPONSE_BYTES`].
    responses: Vec<Vec<Bytes>>,
}

impl ApplyRow {
    fn new(entities: &Entities) -> Self {
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
        let figures = round.go_lookup(go)?;
        Ok(Figures::from([
            ("apply_ms", go_figure(&figures, "snapshot.apply_ms")?),
            ("decode_ms", go_figure(&figures, "snapshot.decode_ms")?),
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
