//! The seed runner of the deterministic simulation suite.
//!
//! ```text
//! sim --seed N [--scenario NAME] [--tier pure|turmoil]
//! sim --seeds A..B [--scenario NAME] [--tier pure|turmoil] [--jobs J]
//! sim --list
//! ```
//!
//! One seed prints, as its last line,
//! `seed=N scenario=NAME trace=<16 hex digits> converged=true`; a sweep
//! (`A..B` is half-open) prints `seeds=COUNT failed=COUNT` last. Without
//! `--scenario`, the seed picks it (`seed % scenario count`), so a sweep
//! covers every scenario. Any invariant violation exits non-zero and prints
//! the command that replays it. Other tooling parses these lines: keep them.

mod pure;
mod turmoil_tier;

use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "sim", about = "Deterministic simulations of the remote tagger")]
struct Args {
    /// Run this one seed (twice, to check it replays identically, and its
    /// successor once, to check a different seed gives a different trace).
    #[arg(long, conflicts_with = "seeds", required_unless_present_any = ["seeds", "list"])]
    seed: Option<u64>,
    /// Sweep the seeds of this half-open range, e.g. `0..10000`.
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// The scenario; by default each seed picks one (`seed % count`).
    #[arg(long)]
    scenario: Option<String>,
    #[arg(long, value_enum, default_value_t = Tier::Pure)]
    tier: Tier,
    /// List the scenarios of both tiers.
    #[arg(long)]
    list: bool,
    /// Parallel workers of a sweep (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// In a sweep, run every K-th seed twice to check it replays identically.
    #[arg(long)]
    recheck_every: Option<u64>,
    /// Print one line per seed of a sweep.
    #[arg(long)]
    verbose: bool,
    /// With --seed: print the whole application-level trace (and, if a
    /// replay differs, where).
    #[arg(long)]
    trace: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tier {
    Pure,
    Turmoil,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Pure => "pure",
            Tier::Turmoil => "turmoil",
        }
    }

    fn scenarios(self) -> Vec<TierScenario> {
        match self {
            Tier::Pure => pure::scenarios(),
            Tier::Turmoil => turmoil_tier::scenarios(),
        }
    }

    fn run(self, scenario: &str, seed: u64) -> Result<SeedOutcome, String> {
        match self {
            Tier::Pure => pure::run(scenario, seed),
            Tier::Turmoil => turmoil_tier::run(scenario, seed),
        }
    }

    /// Replaying costs a whole run: cheap in the pure tier, not in turmoil.
    fn default_recheck_every(self) -> u64 {
        match self {
            Tier::Pure => 10,
            Tier::Turmoil => 25,
        }
    }
}

/// A scenario as `--list` shows it.
pub struct TierScenario {
    pub name: &'static str,
    pub description: &'static str,
}

impl TierScenario {
    /// Every scenario of a tier's enum, in its order.
    pub fn all<S: Copy>(
        scenarios: &[S],
        name: fn(S) -> &'static str,
        description: fn(S) -> &'static str,
    ) -> Vec<Self> {
        scenarios
            .iter()
            .map(|&scenario| Self {
                name: name(scenario),
                description: description(scenario),
            })
            .collect()
    }
}

/// What one passing seed produced.
#[derive(Debug, Clone)]
pub struct SeedOutcome {
    /// Stable hash of the application-level trace (events with simulated times).
    pub trace_hash: u64,
    /// The trace itself: events, faults and commands with simulated times.
    pub trace: Vec<String>,
    /// Simulated time the run covered.
    pub simulated: Duration,
    /// A human summary for `--verbose`.
    pub detail: String,
}

/// One finished seed.
struct SeedReport {
    seed: u64,
    scenario: &'static str,
    wall: Duration,
    result: Result<SeedOutcome, String>,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not a range like 0..1000"))?;
    let parse = |n: &str| {
        n.parse::<u64>()
            .map_err(|e| format!("{n:?} in {text:?}: {e}"))
    };
    let range = parse(start)?..parse(end)?;
    if range.is_empty() {
        return Err(format!("{text:?} holds no seed"));
    }
    Ok(range)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for tier in [Tier::Pure, Tier::Turmoil] {
            for scenario in tier.scenarios() {
                println!(
                    "{:<8} {:<20} {}",
                    tier.name(),
                    scenario.name,
                    scenario.description
                );
            }
        }
        return ExitCode::SUCCESS;
    }
    let scenarios = args.tier.scenarios();
    if let Some(name) = &args.scenario
        && !scenarios.iter().any(|s| s.name == name)
    {
        eprintln!("no {} scenario {name:?}; see --list", args.tier.name());
        return ExitCode::from(2);
    }
    let pick = |seed: u64| -> &'static str {
        match &args.scenario {
            Some(name) => {
                scenarios
                    .iter()
                    .find(|s| s.name == name)
                    .expect("checked above")
                    .name
            }
            None => scenarios[(seed % scenarios.len() as u64) as usize].name,
        }
    };
    match (args.seed, args.seeds.clone()) {
        (Some(seed), _) => run_one(args.tier, pick(seed), seed, args.trace),
        (None, Some(range)) => sweep(&args, range, &pick),
        (None, None) => unreachable!("clap requires --seed, --seeds or --list"),
    }
}

/// The command that replays one seed exactly.
fn replay_command(tier: Tier, scenario: &str, seed: u64) -> String {
    format!(
        "cargo run --release --features sim --bin sim -- --seed {seed} --scenario {scenario} --tier {}",
        tier.name()
    )
}

/// Runs a seed, turning a panic into a failure (no panic is an invariant).
fn run_guarded(tier: Tier, scenario: &str, seed: u64) -> Result<SeedOutcome, String> {
    catch_unwind(AssertUnwindSafe(|| tier.run(scenario, seed))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Err(format!("panicked: {message}"))
    })
}

/// What a failed seed prints: the seed, the violation, the replay command last.
fn failure_text(tier: Tier, scenario: &str, seed: u64, what: &str) -> String {
    format!(
        "FAILED seed={seed} scenario={scenario} tier={}\n{what}\nreplay: {}",
        tier.name(),
        replay_command(tier, scenario, seed)
    )
}

fn fail(tier: Tier, scenario: &str, seed: u64, what: &str) -> ExitCode {
    println!("{}", failure_text(tier, scenario, seed, what));
    ExitCode::FAILURE
}

fn run_one(tier: Tier, scenario: &'static str, seed: u64, print_trace: bool) -> ExitCode {
    let started = Instant::now();
    let first = match run_guarded(tier, scenario, seed) {
        Ok(outcome) => outcome,
        Err(what) => return fail(tier, scenario, seed, &what),
    };
    let wall = started.elapsed();
    let again = match run_guarded(tier, scenario, seed) {
        Ok(outcome) => outcome,
        Err(what) => return fail(tier, scenario, seed, &format!("on replay: {what}")),
    };
    if print_trace {
        first.trace.iter().for_each(|line| println!("{line}"));
    }
    if again.trace_hash != first.trace_hash {
        let diverged = first
            .trace
            .iter()
            .zip(&again.trace)
            .position(|(a, b)| a != b)
            .unwrap_or(first.trace.len().min(again.trace.len()));
        let what = format!(
            "not deterministic: trace {:016x}, then {:016x} on replay; they diverge at line {diverged}:\n  first:  {}\n  replay: {}",
            first.trace_hash,
            again.trace_hash,
            first.trace.get(diverged).map_or("(end)", String::as_str),
            again.trace.get(diverged).map_or("(end)", String::as_str),
        );
        return fail(tier, scenario, seed, &what);
    }
    let next = seed.wrapping_add(1);
    match run_guarded(tier, scenario, next) {
        Ok(other) if other.trace_hash == first.trace_hash => {
            let what = format!(
                "seeds {seed} and {next} gave the same trace {:016x}",
                first.trace_hash
            );
            return fail(tier, scenario, seed, &what);
        }
        Ok(_) => {}
        Err(what) => return fail(tier, scenario, next, &what),
    }
    println!("{}", first.detail);
    println!(
        "simulated {:.1}s in {:.3}s wall ({:.0} simulated seconds per wall second)",
        first.simulated.as_secs_f64(),
        wall.as_secs_f64(),
        first.simulated.as_secs_f64() / wall.as_secs_f64()
    );
    println!(
        "seed={seed} scenario={scenario} trace={:016x} converged=true",
        first.trace_hash
    );
    ExitCode::SUCCESS
}

fn sweep(args: &Args, range: Range<u64>, pick: &(dyn Fn(u64) -> &'static str + Sync)) -> ExitCode {
    let tier = args.tier;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let recheck_every = args
        .recheck_every
        .unwrap_or(tier.default_recheck_every())
        .max(1);
    let next = AtomicU64::new(range.start);
    let reports = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= range.end {
                        return;
                    }
                    let report = run_seed(
                        tier,
                        pick(seed),
                        seed,
                        (seed - range.start).is_multiple_of(recheck_every),
                    );
                    if args.verbose || report.result.is_err() {
                        print_report(tier, &report);
                    }
                    reports
                        .lock()
                        .expect("no worker panics holding it")
                        .push(report);
                }
            });
        }
    });
    let wall = started.elapsed();
    let mut reports = reports.into_inner().expect("no worker panics holding it");
    reports.sort_by_key(|r| r.seed);
    let mut failed: usize = reports.iter().filter(|r| r.result.is_err()).count();
    // Different seeds must give different traces: find any two that do not.
    let mut seen: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
    for report in &reports {
        let Ok(outcome) = &report.result else {
            continue;
        };
        if let Some((other, other_scenario)) =
            seen.insert(outcome.trace_hash, (report.seed, report.scenario))
        {
            failed += 1;
            let what = format!(
                "seeds {other} ({other_scenario}) and {} gave the same trace {:016x}",
                report.seed, outcome.trace_hash
            );
            println!(
                "{}",
                failure_text(tier, report.scenario, report.seed, &what)
            );
        }
    }
    let seed_wall: Duration = reports.iter().map(|r| r.wall).sum();
    let simulated: Duration = reports
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .map(|o| o.simulated)
        .sum();
    let count = reports.len();
    println!(
        "tier={} wall={:.1}s jobs={jobs} per_seed={:.2}ms simulated={:.0}s sim_per_wall={:.0}",
        tier.name(),
        wall.as_secs_f64(),
        seed_wall.as_secs_f64() * 1000.0 / count as f64,
        simulated.as_secs_f64(),
        simulated.as_secs_f64() / seed_wall.as_secs_f64()
    );
    println!("seeds={count} failed={failed}");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one seed of a sweep, and again when `recheck` to check determinism.
fn run_seed(tier: Tier, scenario: &'static str, seed: u64, recheck: bool) -> SeedReport {
    let started = Instant::now();
    let mut result = run_guarded(tier, scenario, seed);
    let wall = started.elapsed();
    if recheck && let Ok(first) = &result {
        result = match run_guarded(tier, scenario, seed) {
            Ok(again) if again.trace_hash == first.trace_hash => result,
            Ok(again) => Err(format!(
                "not deterministic: trace {:016x}, then {:016x} on replay",
                first.trace_hash, again.trace_hash
            )),
            Err(what) => Err(format!("on replay: {what}")),
        };
    }
    SeedReport {
        seed,
        scenario,
        wall,
        result,
    }
}

fn print_report(tier: Tier, report: &SeedReport) {
    // One print per report: workers print concurrently.
    let text = match &report.result {
        Ok(outcome) => format!(
            "seed={} scenario={} trace={:016x} converged=true ({:.1} ms: {})",
            report.seed,
            report.scenario,
            outcome.trace_hash,
            report.wall.as_secs_f64() * 1000.0,
            outcome.detail
        ),
        Err(what) => failure_text(tier, report.scenario, report.seed, what),
    };
    println!("{text}");
}
