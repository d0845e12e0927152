//! What every row needs: the Go yardstick (found or built), the entities
//! both sides hold, rounds that record the machine's load and interleave
//! the sides, and the printing of each round's table and of the summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use remote_tagger::domain::{Entity, EntityId};
use remote_tagger::rng::SplitMix64;
use remote_tagger::workload::{Workload, WorkloadConfig};
use serde::Deserialize;

use crate::Row;

/// Entities each side holds: the yardstick's default.
pub const ENTITIES: usize = 100_000;
/// The seed of both sides' entities and random orders.
pub const SEED: u64 = 1;
const DEFAULT_ROUNDS: usize = 5;
/// What the yardstick needs to build.
const GO_TOOLS: [&str; 4] = ["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"];

// ---------------------------------------------------------------- settings

/// What `VS_GO_ROUNDS`, `VS_GO_ROWS` and `VS_GO_SIDES` ask for.
pub struct Settings {
    /// Rounds to run (`VS_GO_ROUNDS`).
    pub rounds: usize,
    /// Row names to run (`VS_GO_ROWS`, comma-separated); all if empty.
    rows: Vec<String>,
    /// Whether Go's side is measured (`VS_GO_SIDES=both`, the default).
    go_side: bool,
}

impl Settings {
    /// The settings from the environment; a malformed one stops the bench
    /// with a line naming the variable.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let rounds = var("VS_GO_ROUNDS").map_or(DEFAULT_ROUNDS, |value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("VS_GO_ROUNDS={value}: give a number of rounds"))
        });
        let rows = var("VS_GO_ROWS").map_or_else(Vec::new, |value| {
            value
                .split(',')
                .map(|name| name.trim().to_owned())
                .collect()
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

    /// Whether the row named `row` runs.
    pub fn selects(&self, row: &str) -> bool {
        self.rows.is_empty() || self.rows.iter().any(|name| name == row)
    }
}

/// Finds the yardstick and loads the entities both sides hold (Go's,
/// through `godump`, or ours without the yardstick), saying which; the
/// yardstick is returned if Go's side is measured.
pub fn prepare(settings: &Settings) -> (Entities, Option<Yardstick>) {
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
    if !settings.go_side {
        println!("VS_GO_SIDES=ours: Go's side is not measured");
    }
    (entities, yardstick.ok().filter(|_| settings.go_side))
}

// ---------------------------------------------------------------- the yardstick

/// The yardstick's binaries.
pub struct Yardstick {
    /// `bin/go-tagger`: `serve`, `sync`, `lookup`, `fanout`.
    pub go_tagger: PathBuf,
    godump: PathBuf,
    /// Where the outputs of this run go (godump's JSON; certificates...).
    pub scratch: PathBuf,
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

    /// Runs `go-tagger ARGS` to its end and returns its standard output.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        output_of(Command::new(&self.go_tagger).args(args))
    }

    /// Runs `go-tagger ARGS` to its end and returns the figures it printed
    /// (see [`GoFigures`]); [`Round::go_run`] runs it once per round.
    pub fn figures(&self, args: &[&str]) -> Result<GoFigures, String> {
        self.run(args).map(|output| GoFigures::parse(&output))
    }

    /// A `go-tagger ARGS` command, for one that runs alongside (a server).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.go_tagger);
        command.args(args);
        command
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
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn go_version() -> Option<String> {
    output_of(Command::new("go").arg("version"))
        .ok()
        .map(|text| text.trim().to_owned())
}

/// The standard output of `command`, or one line saying why there is none.
pub fn output_of(command: &mut Command) -> Result<String, String> {
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
pub struct Entities {
    /// The entities.
    pub list: Vec<Entity>,
    /// Where they come from, for the output.
    pub source: &'static str,
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
    pub fn lookup_order(&self) -> Vec<String> {
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

// ---------------------------------------------------------------- rounds and lines

/// Named figures of one side of one row in one round.
pub type Figures = BTreeMap<&'static str, f64>;

/// One line of a round's table.
pub struct Line {
    /// What is measured; the summary keys its ratios by it.
    pub measure: String,
    /// Go's figure, shown as is (`None`: `-`).
    pub go: Option<String>,
    /// Our figure, shown as is.
    pub ours: String,
    /// What is compared, its value, and the goal it is held to.
    pub ratio: Option<Ratio>,
}

/// A ratio a line reports, and the goal it is held to if any.
pub struct Ratio {
    /// What is divided by what (`ours/Go`...).
    pub of: &'static str,
    /// The ratio.
    pub value: f64,
    /// The goal of the issue it is held to.
    pub goal: Option<Goal>,
}

/// A bound a ratio should keep.
#[derive(Clone, Copy)]
pub enum Goal {
    /// The ratio is this or less.
    AtMost(f64),
    /// The ratio is this or more.
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
/// yardstick runs made so far (one run can report several rows' figures:
/// `go-tagger lookup` reports the lookup and the apply rows').
pub struct Round<'y> {
    number: usize,
    go: Option<&'y Yardstick>,
    started: MachineState,
    go_runs: BTreeMap<Vec<String>, Result<GoFigures, String>>,
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
            .map(|some| {
                some.split_whitespace()
                    .skip(1)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
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
    /// Round `number`, its machine state read now.
    pub fn new(number: usize, go: Option<&'y Yardstick>) -> Self {
        Self {
            number,
            go,
            started: MachineState::now(),
            go_runs: BTreeMap::new(),
        }
    }

    /// Go's side of `row`, `None` without the yardstick; a failed run is
    /// reported and counts as none.
    pub fn go(&mut self, name: &str, row: &mut dyn Row) -> Option<Figures> {
        let go = self.go?;
        match row.go(self, go) {
            Ok(figures) => Some(figures),
            Err(why) => {
                println!("round {}: Go's {name} row failed: {why}", self.number);
                None
            }
        }
    }

    /// The figures of this round's `go-tagger ARGS` run, made on first use
    /// (see [`GoFigures`]).
    pub fn go_run(&mut self, go: &Yardstick, args: &[&str]) -> Result<GoFigures, String> {
        let key: Vec<String> = args.iter().map(|&arg| arg.to_owned()).collect();
        self.go_runs
            .entry(key)
            .or_insert_with(|| go.figures(args))
            .clone()
    }

    /// Prints the round's table, with the machine's state at its start and
    /// now.
    pub fn print(&self, lines: &[Line], go_first: bool) {
        let order = if go_first { "Go first" } else { "ours first" };
        println!(
            "\n== round {} ({order}); at start: {}; at end: {}",
            self.number,
            self.started,
            MachineState::now()
        );
        println!("{:<58} {:>14} {:>14}  ratio", "measure", "Go", "ours");
        for line in lines {
            let go = line.go.as_deref().unwrap_or("-");
            let ratio = line.ratio.as_ref().map_or(String::new(), |ratio| {
                let goal = ratio.goal.map_or(String::new(), |goal| {
                    let verdict = if goal.met(ratio.value) {
                        "met"
                    } else {
                        "MISSED"
                    };
                    format!(" (goal {goal}: {verdict})")
                });
                format!("{} {:.2}{goal}", ratio.of, ratio.value)
            });
            println!("{:<58} {go:>14} {:>14}  {ratio}", line.measure, line.ours);
        }
    }
}

/// The `key=value` figures a `go-tagger` command printed, each keyed
/// `<line label>.<key>`, the label being what precedes the line's first
/// `(`, `:` or `key=value` (`snapshot apply.apply_ms`, `lookup
/// single-threaded.median_ns`; `.sync_ms` for a line of pairs only).
#[derive(Clone, Debug)]
pub struct GoFigures(BTreeMap<String, f64>);

impl GoFigures {
    /// The figures of a command's standard output.
    pub fn parse(output: &str) -> Self {
        let mut figures = BTreeMap::new();
        for line in output.lines() {
            let label_end = line
                .find(['(', ':'])
                .into_iter()
                .chain(
                    line.find('=')
                        .map(|eq| line[..eq].rfind(' ').map_or(0, |space| space)),
                )
                .min()
                .unwrap_or(line.len());
            let label = line[..label_end].trim();
            for pair in line.split_whitespace() {
                if let Some((key, value)) = pair.split_once('=')
                    && let Ok(value) = value.parse::<f64>()
                {
                    figures.insert(format!("{label}.{key}"), value);
                }
            }
        }
        Self(figures)
    }

    /// The figure `key` (see [`GoFigures`]), which the command must have
    /// printed.
    pub fn get(&self, key: &str) -> Result<f64, String> {
        self.0
            .get(key)
            .copied()
            .ok_or_else(|| format!("go-tagger printed no {key}"))
    }
}

/// Prints each ratio round by round, and how many rounds met its goal.
pub fn print_summary(history: &[Vec<Line>]) {
    println!(
        "\n== summary over {} rounds (ratio per round)",
        history.len()
    );
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

/// A figure in nanoseconds, as a table shows it.
pub fn nanos(value: f64) -> String {
    format!("{value:.1} ns")
}

/// A figure in milliseconds, as a table shows it.
pub fn millis(value: f64) -> String {
    format!("{value:.1} ms")
}

/// The median; sorts `values`.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}
