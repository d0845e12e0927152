//! Our side by side with the Go yardstick (issue 20), in one run: each
//! round measures every row on both sides, Go first in even rounds, and
//! records the load average and `/proc/pressure/cpu`, since absolute
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
//! The files: [`yardstick`] finds or builds the yardstick, loads its
//! entities, runs rounds and prints them and the summary; each other file
//! holds rows, a [`Row`] each, listed in [`ROWS`]:
//! - [`mirror`]: `lookup` (single-call `tags(id, HIGH)` against the
//!   machine's dependent-load floor, idle and while a writer applies 10k
//!   events/s) and `apply` (a 100k snapshot into an empty mirror, decode
//!   excluded on both sides).
//! - [`wire`]: `sync` (initial syncs, every pairing of the servers and
//!   clients, against prost's decode of our snapshot) and `fanout` (the
//!   yardstick's 100 clients against both servers, live churn).
//!
//! Figures are printed, never asserted.

#[path = "../common/lookups.rs"]
mod lookups;
mod mirror;
#[path = "../snapshot_responses.rs"]
mod snapshot_responses;
mod wire;
mod yardstick;

use yardstick::{Entities, Figures, Line, Round, Settings, Yardstick};

/// The allocator the `remote-tagger` binary ships with.
#[global_allocator]
static ALLOCATOR: remote_tagger::alloc::Mimalloc = remote_tagger::alloc::Mimalloc;

/// One measure of the table: both sides' figures and how ours compares.
/// A row is built once (preparing its inputs, outside any timing) and
/// measured once per round on each side.
pub trait Row {
    /// Measures our side once.
    fn ours(&mut self) -> Figures;

    /// Measures Go's side once; `round` runs a yardstick command at most
    /// once per round for every row that reads its figures
    /// ([`Round::go_run`]).
    fn go(&mut self, round: &mut Round<'_>, go: &Yardstick) -> Result<Figures, String>;

    /// The table's lines from both sides' figures (Go's absent without the
    /// yardstick).
    fn lines(&self, ours: &Figures, go: Option<&Figures>) -> Vec<Line>;
}

/// Builds a row from the entities both sides hold.
pub type BuildRow = fn(&Entities) -> Box<dyn Row>;

/// The rows in table order, by the name `VS_GO_ROWS` selects them by. A
/// file of rows adds its entries here.
const ROWS: &[(&str, BuildRow)] = &[
    ("lookup", |entities| {
        Box::new(mirror::LookupRow::new(entities))
    }),
    ("apply", |entities| {
        Box::new(mirror::ApplyRow::new(entities))
    }),
    ("sync", |entities| Box::new(wire::SyncRow::new(entities))),
    ("fanout", |entities| {
        Box::new(wire::FanoutRow::new(entities))
    }),
];

fn main() {
    let settings = Settings::from_env();
    let (entities, go) = yardstick::prepare(&settings);
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
            go_figures = rows
                .iter_mut()
                .map(|(name, row)| round.go(name, row.as_mut()))
                .collect();
        }
        let ours: Vec<Figures> = rows.iter_mut().map(|(_, row)| row.ours()).collect();
        if !go_first {
            go_figures = rows
                .iter_mut()
                .map(|(name, row)| round.go(name, row.as_mut()))
                .collect();
        }
        let lines: Vec<Line> = rows
            .iter()
            .zip(ours.iter().zip(&go_figures))
            .flat_map(|((_, row), (ours, go))| row.lines(ours, go.as_ref()))
            .collect();
        round.print(&lines, go_first);
        history.push(lines);
    }
    yardstick::print_summary(&history);
}
