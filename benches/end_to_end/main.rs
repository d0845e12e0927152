//! End-to-end benchmarks of the tagger server and client together: the
//! initial sync, resume versus resync after a disconnect, fan-out of live
//! churn to many mirrors, and the server's memory with a stalled subscriber.
//!
//! Everything runs in this one process on a multi-thread tokio runtime, over
//! real loopback TCP with TLS (the server's generated certificate, verified by
//! the clients) and a bearer token, on the 100k-entity synthetic workload.
//! These are not criterion benches: the scenarios are seconds long, stateful
//! and concurrent, so each prints its own figures and a summary table ends
//! the run.
//!
//!     cargo bench --bench end_to_end                # every scenario
//!     cargo bench --bench end_to_end -- fanout      # those whose name contains "fanout"
//!     cargo bench --bench end_to_end -- "fanout 100"  # only the 100-client fan-out
//!
//! Scenarios, one file each: `sync`, `resume`, `fanout`, `stalled`,
//! `never-reading`; `support` holds what they share (the server and client
//! fixtures of `tests/common`, the churn), `report` the measuring and the
//! summary. Correctness is checked (entity counts, mirror contents,
//! delivered events) and reported; timings never fail the run.

/// The tests' fixtures: a server in a temporary directory, its clients, the
/// raw stalled stream's channel set up as Datadog's Rust client's, raw
/// HTTP/2 connections that send a request and never read again.
#[path = "../../tests/common/mod.rs"]
mod common;
mod fanout;
mod never_reading;
mod report;
mod resume;
#[path = "../snapshot_responses.rs"]
mod snapshot_responses;
mod stalled;
mod support;
mod sync;

/// The allocator the `remote-tagger` binary ships with (glibc's malloc
/// spends a third of a sync consolidating freed chunks).
#[global_allocator]
static ALLOCATOR: remote_tagger::alloc::Mimalloc = remote_tagger::alloc::Mimalloc;

fn main() {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let selected = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!(
        "end-to-end benches: {} cores, load average {}, cpu pressure {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        report::read_trimmed("/proc/loadavg"),
        report::read_trimmed("/proc/pressure/cpu")
            .lines()
            .next()
            .unwrap_or("n/a")
    );
    let mut rows = Vec::new();
    runtime.block_on(async {
        if selected("sync") {
            rows.extend(sync::initial_sync().await);
        }
        if selected("resume") {
            rows.extend(resume::resume_versus_resync().await);
        }
        for (clients, rounds) in fanout::FANOUT_RUNS {
            if selected(&format!("fanout {clients} clients")) {
                rows.extend(fanout::fan_out(clients, rounds).await);
            }
        }
        if selected("stalled") {
            rows.extend(stalled::stalled_subscriber().await);
        }
        if selected("never-reading") {
            rows.extend(never_reading::sync_past_never_reading_streams().await);
        }
    });
    report::print_summary(&rows);
}
