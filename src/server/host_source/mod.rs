//! The host source: the machine's processes, containers, pods and the host
//! itself, read from `/proc` the way the Datadog Agent's process and
//! container collectors do (no container runtime API needed), re-scanned on
//! an interval and diffed into events.
//!
//! Every path is taken under a root directory (`/` for the real machine) so
//! fixture trees stand in for `/proc` and `/etc/passwd` in tests. A process
//! is a moving target: one that exits mid-read, a file we may not read or a
//! line we do not understand is skipped and counted in [`ScanStats`], never
//! fatal.
//!
//! Reading a process costs three `/proc/PID` files, tens of microseconds of
//! syscalls: a [`HostScanner`] remembers the processes it read, by pidfd, and
//! re-reads only new ones and a rotating share of the others.
//!
//! Its parts: [`scanner`] (what one scan reads and remembers), [`procfs`]
//! (the `/proc` files), [`cgroup`] (the container a cgroup file names; pure,
//! for whoever else needs to tell a process's container) and [`pidfd`].

pub(crate) mod cgroup;
mod pidfd;
mod procfs;
mod scanner;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::hub::StoreHandle;
use super::stats::add;
use crate::domain::{Entity, EntityEvent, EntityId, diff_entities};

pub use procfs::CMDLINE_TAG_MAX_BYTES;
pub use scanner::{HostScanner, ScanStats};
#[cfg(feature = "test-kit")]
pub use scanner::{PROCESS_REFRESH_SCANS, scan};

/// The running host source: the scanner, and its last scan to diff the next
/// one against.
#[derive(Debug)]
pub(crate) struct HostSource {
    scanner: HostScanner,
    interval: Duration,
    current: BTreeMap<EntityId, Entity>,
}

impl HostSource {
    /// Scans once; returns the source and the ADDED events of what it found.
    pub fn new(root: PathBuf, interval: Duration) -> (Self, Vec<EntityEvent>) {
        pidfd::raise_open_files_limit();
        let mut scanner = HostScanner::new(root);
        let (entities, stats) = scanner.scan();
        log_scan(scanner.root(), &stats);
        let current: BTreeMap<_, _> = entities.into_iter().map(|e| (e.id.clone(), e)).collect();
        let initial = current.values().cloned().map(EntityEvent::Added).collect();
        (
            Self {
                scanner,
                interval,
                current,
            },
            initial,
        )
    }

    /// Re-scans every interval and applies the differences to `store`, forever.
    pub async fn run(self, store: StoreHandle) -> Infallible {
        let Self {
            mut scanner,
            interval,
            mut current,
        } = self;
        let root = scanner.root().to_owned();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and `new` just scanned.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            // Reading files blocks: keep it off the reactor. The scanner goes
            // to the blocking thread and comes back with the scan.
            let scanned = tokio::task::spawn_blocking(move || {
                let scan = scanner.scan();
                (scanner, scan)
            })
            .await;
            let (entities, stats) = match scanned {
                Ok((kept, scan)) => {
                    scanner = kept;
                    scan
                }
                Err(error) => {
                    tracing::error!(%error, "host scan failed; starting over with a new scanner");
                    scanner = HostScanner::new(root.clone());
                    continue;
                }
            };
            add(&store.telemetry().source_skipped, stats.skipped());
            let next: BTreeMap<_, _> = entities.into_iter().map(|e| (e.id.clone(), e)).collect();
            let events = diff_entities(&current, &next);
            current = next;
            if !events.is_empty() {
                store.apply(events);
            }
        }
    }
}

fn log_scan(root: &Path, stats: &ScanStats) {
    tracing::info!(
        root = %root.display(),
        processes = stats.processes,
        containers = stats.containers,
        pods = stats.pods,
        vanished = stats.vanished,
        unreadable = stats.unreadable,
        malformed = stats.malformed,
        untracked = stats.untracked,
        "host scan"
    );
}
