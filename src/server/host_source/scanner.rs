//! The host scanner: one scan lists `/proc`, reads the processes due (see
//! [`HostScanner`]), and gathers them, the containers and pods their
//! cgroups name, and the host into entities.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use super::cgroup::ContainerRef;
use super::kubelet;
use super::pidfd::{self, Pidfd};
use super::procfs::{ESRCH, ProcessReader, Skip, list_pids, proc_is_ours, read_hostname};
use crate::domain::{Entity, EntityId};

/// The tag naming a container by its name in the pod spec, as the Agent
/// names it.
pub(crate) const KUBE_CONTAINER_NAME_TAG: &str = "kube_container_name:";

/// The tag naming the pod of a container (and the pod itself).
pub(crate) const POD_UID_TAG: &str = "pod_uid:";

/// A process that keeps its pid is re-read at least once in this many scans
/// of a [`HostScanner`] of `/`, so a change it makes without a new pid (an
/// exec, a new name, user or command line, a move to another cgroup) shows
/// within this many scan intervals.
pub const PROCESS_REFRESH_SCANS: u64 = 16;

/// What a scan skipped, by reason, and what it found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Processes found.
    pub processes: usize,
    /// Containers found (from the processes' cgroups).
    pub containers: usize,
    /// Kubernetes pods found (from the processes' cgroups).
    pub pods: usize,
    /// Processes that exited between listing and reading.
    pub vanished: usize,
    /// Files we were not allowed (or failed) to read.
    pub unreadable: usize,
    /// Files or cgroup lines in a format we do not understand.
    pub malformed: usize,
    /// Processes whose files this scan read (new, or due for a refresh);
    /// `read + reused == processes`.
    pub read: usize,
    /// Processes served from the scanner's memory, files not read.
    pub reused: usize,
    /// Of `read`, known processes re-read because their turn came (see
    /// [`PROCESS_REFRESH_SCANS`]).
    pub refreshed: usize,
    /// Of `read`, processes new at the previous scan, read once more in
    /// case it caught them between fork (or vfork) and exec, with their
    /// parent's name and command line.
    pub rechecked: usize,
    /// Of `read`, processes the scanner could not open a pidfd for (old
    /// kernel, out of file descriptors): not remembered, read every scan.
    pub untracked: usize,
}

impl ScanStats {
    /// Everything skipped, whatever the reason.
    pub fn skipped(&self) -> usize {
        self.vanished + self.unreadable + self.malformed
    }
}

/// Scans the host under `root` once (see [`HostScanner::scan`]).
#[cfg(feature = "test-kit")]
pub fn scan(root: &Path) -> (Vec<Entity>, ScanStats) {
    HostScanner::new(root).scan()
}

/// Scans the host under `root` (`/` for the real machine) again and again,
/// remembering what it read.
///
/// Under `/`, each process read is held by a pidfd, opened before its files
/// are read and checked alive after, so what is remembered belongs to that
/// very process and never to a later one that got its pid. A later scan
/// polls all the pidfds at once and serves a listed process that has not
/// exited from memory. It re-reads new pids, pids whose process exited (the
/// pid was reused, or it is a zombie), the processes new at the previous
/// scan (which may have caught them mid-exec), and the `ceil(known / 16)`
/// processes read longest ago plus any read [`PROCESS_REFRESH_SCANS`] scans
/// ago, so a process that changes without a new pid (exec, setuid, a
/// rewritten command line, another cgroup) is seen within 16 scans.
///
/// Under any other root (a fixture tree, or a host's `/proc` mounted
/// elsewhere, whose pids are another namespace's) every process is read
/// every scan.
#[derive(Debug)]
pub struct HostScanner {
    root: PathBuf,
    /// Whether `root/proc` is this process's own `/proc`, so its pids are
    /// ours to open pidfds for.
    tracks_processes: bool,
    /// The processes read and still alive at the last scan, by pid.
    known: HashMap<u32, KnownProcess>,
    /// Scans done, the clock of [`KnownProcess::read_at`].
    scans: u64,
    /// A pidfd failure is logged once per scanner, then only counted.
    warned_pidfd_failure: bool,
}

/// A process read at an earlier scan, and the pidfd that proves it is the
/// same one.
#[derive(Debug)]
struct KnownProcess {
    pidfd: Pidfd,
    entity: Entity,
    container: Option<ContainerRef>,
    /// The scan that last read its files.
    read_at: u64,
    /// New at `read_at`: read again at the next scan (see
    /// [`ScanStats::rechecked`]).
    recheck: bool,
}

impl HostScanner {
    /// A scanner of `root` that has read nothing yet. It holds pidfds only
    /// when `root` is `/` and its `/proc` is this process's own.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let tracks_processes = root == Path::new("/") && proc_is_ours(&root.join("proc"));
        Self {
            root,
            tracks_processes,
            known: HashMap::new(),
            scans: 0,
            warned_pidfd_failure: false,
        }
    }

    /// The directory it reads `proc` and `etc/passwd` under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every process of `root/proc`, the containers and pods their cgroups
    /// name, and the host. User names come from `root/etc/passwd` (the
    /// numeric uid when absent), container names from the kubelet's log
    /// links under `root/var/log/containers`. Entities are sorted by id.
    pub fn scan(&mut self) -> (Vec<Entity>, ScanStats) {
        self.scans += 1;
        let mut stats = ScanStats::default();
        let proc_root = self.root.join("proc");
        let mut reader = ProcessReader::new(proc_root.clone(), &self.root.join("etc/passwd"));
        let exited = self.exited_known();
        let due = due_for_refresh(
            self.known.iter().map(|(&pid, known)| (pid, known.read_at)),
            self.scans,
        );
        // Refilled with the processes still there; dropping the rest closes
        // the pidfds of those gone.
        let capacity = self.known.len();
        let mut previous = std::mem::replace(&mut self.known, HashMap::with_capacity(capacity));
        let mut entities = BTreeMap::new();
        let mut containers = BTreeMap::new();

        let pids = list_pids(&proc_root).unwrap_or_else(|| {
            stats.unreadable += 1;
            Vec::new()
        });
        for pid in pids {
            // An exited process under a listed pid: the pid went to a new one.
            let cached = previous.remove(&pid).filter(|_| !exited.contains(&pid));
            match self.scan_process(pid, cached, due.contains(&pid), &mut reader, &mut stats) {
                Ok((entity, container)) => {
                    stats.processes += 1;
                    entities.insert(entity.id.clone(), entity);
                    if let Some(container) = container {
                        containers.entry(container.id.clone()).or_insert(container);
                    }
                }
                Err(Skip::Vanished) => stats.vanished += 1,
                Err(Skip::Unreadable) => stats.unreadable += 1,
                Err(Skip::Malformed) => stats.malformed += 1,
            }
        }
        let names = kubelet::container_names(&self.root);
        for container in containers.values() {
            let name = names.get(&container.id).map(String::as_str);
            for entity in container_entities(container, name) {
                if entity.id.prefix() == "container_id" {
                    stats.containers += 1;
                } else if !entities.contains_key(&entity.id) {
                    stats.pods += 1;
                }
                entities.insert(entity.id.clone(), entity);
            }
        }
        match read_hostname(&proc_root) {
            Ok(entity) => {
                entities.insert(entity.id.clone(), entity);
            }
            Err(Skip::Malformed) => stats.malformed += 1,
            Err(_) => stats.unreadable += 1,
        }
        (entities.into_values().collect(), stats)
    }

    /// One listed process: from memory when it was `cached` (alive) and is
    /// neither `due` nor to be rechecked, else read (and remembered when it
    /// can be tracked).
    fn scan_process(
        &mut self,
        pid: u32,
        cached: Option<KnownProcess>,
        due: bool,
        reader: &mut ProcessReader,
        stats: &mut ScanStats,
    ) -> Result<(Entity, Option<ContainerRef>), Skip> {
        let is_new = cached.is_none();
        let recheck = cached.as_ref().is_some_and(|known| known.recheck);
        // Past the early return below, a known process read is a refresh.
        let refresh = !is_new && !recheck;
        let mut untracked = false;
        let pidfd = match cached {
            Some(known) if !due && !recheck => {
                stats.reused += 1;
                let found = (known.entity.clone(), known.container.clone());
                self.known.insert(pid, known);
                return Ok(found);
            }
            Some(known) => Some(known.pidfd),
            None if self.tracks_processes => match Pidfd::open(pid) {
                Ok(pidfd) => Some(pidfd),
                Err(error) if error.raw_os_error() == Some(ESRCH) => return Err(Skip::Vanished),
                Err(error) => {
                    untracked = true;
                    self.warn_once(&error);
                    None
                }
            },
            None => None,
        };
        let (entity, container) = reader.read(pid, &mut stats.malformed)?;
        if let Some(pidfd) = pidfd {
            // Alive after the read: the files were this process's, not those
            // of a successor that took its pid meanwhile.
            match pidfd.is_alive() {
                Ok(true) => {
                    let known = KnownProcess {
                        pidfd,
                        entity: entity.clone(),
                        container: container.clone(),
                        read_at: self.scans,
                        // A first scan cannot tell starting processes from
                        // old ones: none is rechecked.
                        recheck: is_new && self.scans > 1,
                    };
                    self.known.insert(pid, known);
                }
                Ok(false) => return Err(Skip::Vanished),
                Err(error) => {
                    untracked = true;
                    self.warn_once(&error);
                }
            }
        }
        stats.read += 1;
        stats.refreshed += usize::from(refresh);
        stats.rechecked += usize::from(recheck);
        stats.untracked += usize::from(untracked);
        Ok((entity, container))
    }

    /// The known pids whose process has exited since it was read; all of
    /// them if that cannot be told (they are then read again, not trusted).
    fn exited_known(&mut self) -> HashSet<u32> {
        let (pids, pidfds): (Vec<u32>, Vec<&Pidfd>) = self
            .known
            .iter()
            .map(|(&pid, known)| (pid, &known.pidfd))
            .unzip();
        let exited = match pidfd::exited(&pidfds) {
            Ok(exited) => exited,
            Err(error) => {
                self.warn_once(&error);
                vec![true; pids.len()]
            }
        };
        pids.into_iter()
            .zip(exited)
            .filter_map(|(pid, exited)| exited.then_some(pid))
            .collect()
    }

    /// Logs the first pidfd failure of this scanner; the others are counted
    /// in [`ScanStats::untracked`] or [`ScanStats::read`].
    fn warn_once(&mut self, error: &io::Error) {
        if !self.warned_pidfd_failure {
            self.warned_pidfd_failure = true;
            tracing::warn!(
                %error,
                "host scan: a pidfd failed; the processes it concerns are re-read every scan"
            );
        }
    }
}

/// The known pids to re-read this scan, given each one's `read_at` scan: the
/// `ceil(known / PROCESS_REFRESH_SCANS)` read longest ago (ties by pid, so a
/// steady set is walked round robin), and any read
/// [`PROCESS_REFRESH_SCANS`] or more scans ago, which only happens when exits
/// shrank the share.
fn due_for_refresh(known: impl Iterator<Item = (u32, u64)>, scan: u64) -> HashSet<u32> {
    let mut by_age: Vec<(u64, u32)> = known.map(|(pid, read_at)| (read_at, pid)).collect();
    let share = by_age.len().div_ceil(PROCESS_REFRESH_SCANS as usize);
    let Some(last_of_share) = share.checked_sub(1) else {
        return HashSet::new();
    };
    let (oldest, last, rest) = by_age.select_nth_unstable(last_of_share);
    let overdue = rest
        .iter()
        .filter(|(read_at, _)| scan.saturating_sub(*read_at) >= PROCESS_REFRESH_SCANS);
    oldest
        .iter()
        .chain([&*last])
        .chain(overdue)
        .map(|&(_, pid)| pid)
        .collect()
}

/// The container's entity, and its pod's when the path named one. `name`
/// is its name in the pod spec (the Agent's `kube_container_name` tag),
/// when the kubelet's log links tell it.
fn container_entities(container: &ContainerRef, name: Option<&str>) -> Vec<Entity> {
    let Ok(id) = EntityId::new("container_id", &container.id) else {
        return Vec::new();
    };
    let mut entity = Entity::new(id);
    if let Some(runtime) = container.runtime {
        entity.low.push(format!("runtime:{}", runtime.as_str()));
    }
    if let Some(name) = name {
        entity.low.push(format!("{KUBE_CONTAINER_NAME_TAG}{name}"));
    }
    entity.high.push(format!("container_id:{}", container.id));
    let mut entities = Vec::with_capacity(2);
    if let Some(uid) = &container.pod_uid {
        let pod_tag = format!("{POD_UID_TAG}{uid}");
        entity.orchestrator.push(pod_tag.clone());
        if let Ok(pod_id) = EntityId::new("kubernetes_pod_uid", uid) {
            let mut pod = Entity::new(pod_id);
            pod.orchestrator.push(pod_tag);
            entities.push(pod);
        }
    }
    entities.push(entity);
    entities
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays scans of a changing set of processes and returns the longest
    /// run of scans any process went without a read.
    fn longest_wait(scans: u64, mut change: impl FnMut(u64, &mut HashMap<u32, u64>)) -> u64 {
        let mut read_at: HashMap<u32, u64> = (1..=100).map(|pid| (pid, 0)).collect();
        let mut longest = 0;
        for scan in 1..=scans {
            let due = due_for_refresh(read_at.iter().map(|(&pid, &at)| (pid, at)), scan);
            let share = read_at.len().div_ceil(PROCESS_REFRESH_SCANS as usize);
            assert!(due.len() >= share, "scan {scan}: {} due", due.len());
            for pid in due {
                let last = read_at.insert(pid, scan).unwrap();
                longest = longest.max(scan - last);
            }
            change(scan, &mut read_at);
            for at in read_at.values() {
                longest = longest.max(scan - at);
            }
        }
        longest
    }

    #[test]
    fn a_steady_set_is_refreshed_round_robin_one_sixteenth_at_a_time() {
        let mut read_at: HashMap<u32, u64> = (1..=100).map(|pid| (pid, 0)).collect();
        for scan in 1..=7 {
            let due = due_for_refresh(read_at.iter().map(|(&pid, &at)| (pid, at)), scan);
            let start = (scan as u32 - 1) * 7 + 1;
            assert_eq!(due, (start..start + 7).collect(), "scan {scan}");
            for pid in due {
                read_at.insert(pid, scan);
            }
        }
        let steady = longest_wait(100, |_, _| {});
        assert!(steady <= PROCESS_REFRESH_SCANS, "{steady}");
        assert!(due_for_refresh(std::iter::empty(), 1).is_empty());
    }

    #[test]
    fn processes_coming_and_going_still_wait_at_most_sixteen_scans() {
        let mut next_pid = 101;
        // Ten new processes per scan, each read when it appears.
        let growing = longest_wait(100, |scan, read_at| {
            for _ in 0..10 {
                read_at.insert(next_pid, scan);
                next_pid += 1;
            }
        });
        assert!(growing <= PROCESS_REFRESH_SCANS, "{growing}");
        // Every process just refreshed exits at once: the share shrinks
        // faster than the old ones are reached.
        let shrinking = longest_wait(100, |scan, read_at| read_at.retain(|_, at| *at != scan));
        assert!(shrinking <= PROCESS_REFRESH_SCANS, "{shrinking}");
    }
}
