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

mod pidfd;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::entities_file::diff_entities;
use super::hub::StoreHandle;
use super::stats::add;
use crate::domain::{Entity, EntityEvent, EntityId};
use pidfd::Pidfd;

/// Longest `cmdline` tag value, in bytes: command lines can be huge (JVMs),
/// and the tag is for recognising a process, not for reproducing it.
pub const CMDLINE_TAG_MAX_BYTES: usize = 256;

/// A process that keeps its pid is re-read at least once in this many scans
/// of a [`HostScanner`] of `/`, so a change it makes without a new pid (an
/// exec, a new name, user or command line, a move to another cgroup) shows
/// within this many scan intervals.
pub const PROCESS_REFRESH_SCANS: u64 = 16;

/// Container ids in cgroup paths are 64 lowercase hex digits.
const CONTAINER_ID_LEN: usize = 64;

/// ESRCH: reading a file of a process that exited since it was opened.
const ESRCH: i32 = 3;

/// What a scan skipped, by reason, and what it found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub processes: usize,
    pub containers: usize,
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

/// Why one process was skipped.
enum Skip {
    Vanished,
    Unreadable,
    Malformed,
}

impl From<io::Error> for Skip {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(ESRCH) {
            Self::Vanished
        } else {
            Self::Unreadable
        }
    }
}

/// The container runtime a cgroup path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Docker,
    Containerd,
    CriO,
}

impl Runtime {
    fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
        }
    }
}

/// What a cgroup path says about the container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerRef {
    id: String,
    /// Unknown for bare ids under kubepods (the cgroupfs driver names no runtime).
    runtime: Option<Runtime>,
    pod_uid: Option<String>,
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
    /// numeric uid when absent). Entities are sorted by id.
    pub fn scan(&mut self) -> (Vec<Entity>, ScanStats) {
        self.scans += 1;
        let mut stats = ScanStats::default();
        let proc_root = self.root.join("proc");
        let mut reader = ProcessReader {
            proc_root: proc_root.clone(),
            users: read_users(&self.root.join("etc/passwd")),
            files: FileReader::default(),
        };
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

        for pid in list_pids(&proc_root, &mut stats) {
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
        for container in containers.values() {
            for entity in container_entities(container) {
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
        let (entity, container) = reader.read(pid, stats)?;
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

/// Whether `proc_root` is the `/proc` of this process's pid namespace: its
/// `self` link names our own pid.
fn proc_is_ours(proc_root: &Path) -> bool {
    std::fs::read_link(proc_root.join("self"))
        .ok()
        .and_then(|target| target.to_str()?.parse::<u32>().ok())
        == Some(std::process::id())
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

/// The numeric directories of `proc_root`, in order.
fn list_pids(proc_root: &Path, stats: &mut ScanStats) -> Vec<u32> {
    let entries = match std::fs::read_dir(proc_root) {
        Ok(entries) => entries,
        Err(_) => {
            stats.unreadable += 1;
            return Vec::new();
        }
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// uid -> user name, from a passwd file; empty if it cannot be read.
fn read_users(passwd: &Path) -> HashMap<u32, String> {
    let Ok(text) = std::fs::read_to_string(passwd) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

/// Reads whole files into one reused buffer. `/proc` files report a size of
/// 0, so sizing the buffer from their metadata first (as `fs::read` does)
/// would only add a syscall per file.
#[derive(Default)]
struct FileReader {
    buffer: Vec<u8>,
}

impl FileReader {
    fn read(&mut self, path: &Path) -> io::Result<&[u8]> {
        self.buffer.clear();
        std::fs::File::open(path)?.read_to_end(&mut self.buffer)?;
        Ok(&self.buffer)
    }

    fn read_text(&mut self, path: &Path) -> io::Result<Cow<'_, str>> {
        Ok(String::from_utf8_lossy(self.read(path)?))
    }
}

/// What one scan reads processes with.
struct ProcessReader {
    proc_root: PathBuf,
    users: HashMap<u32, String>,
    files: FileReader,
}

impl ProcessReader {
    /// One process's entity and the container it runs in, if any, from three
    /// files of `proc_root/PID`: `status` (name and uid), `cmdline` and
    /// `cgroup`.
    fn read(
        &mut self,
        pid: u32,
        stats: &mut ScanStats,
    ) -> Result<(Entity, Option<ContainerRef>), Skip> {
        let dir = self.proc_root.join(pid.to_string());
        let (name, uid) = {
            let status = self.files.read_text(&dir.join("status"))?;
            status_name(&status).zip(status_uid(&status))
        }
        .ok_or(Skip::Malformed)?;
        let cmdline = cmdline_text(self.files.read(&dir.join("cmdline"))?);
        let container = container_of(&self.files.read_text(&dir.join("cgroup"))?, stats);

        let id = EntityId::new("process", &pid.to_string()).map_err(|_| Skip::Malformed)?;
        let mut entity = Entity::new(id);
        entity.low.push(format!("process_name:{name}"));
        entity.low.push(match self.users.get(&uid) {
            Some(user) => format!("user:{user}"),
            None => format!("user:{uid}"),
        });
        entity.high.push(format!("pid:{pid}"));
        if !cmdline.is_empty() {
            entity.high.push(format!("cmdline:{cmdline}"));
        }
        if let Some(container) = &container {
            entity.high.push(format!("container_id:{}", container.id));
        }
        Ok((entity, container))
    }
}

/// The process name of a `status` file's `Name:` line: the kernel writes
/// the same name as `comm` there, with `\n` and `\` escaped as `\n` and
/// `\\`. Unescaped and trimmed at the end like `comm` was, so the tag is
/// what reading `comm` gave.
fn status_name(status: &str) -> Option<String> {
    let escaped = status
        .lines()
        .find_map(|line| line.strip_prefix("Name:\t"))?;
    let mut name = String::with_capacity(escaped.len());
    let mut chars = escaped.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.next_if_eq(&'n').is_some() {
            name.push('\n');
        } else {
            if c == '\\' {
                chars.next_if_eq(&'\\');
            }
            name.push(c);
        }
    }
    name.truncate(name.trim_end().len());
    Some(name)
}

/// The real uid of a `status` file's `Uid:` line (real, effective, saved, fs).
fn status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The NUL-separated arguments joined by spaces, capped at
/// [`CMDLINE_TAG_MAX_BYTES`] on a character boundary.
fn cmdline_text(raw: &[u8]) -> String {
    let joined: Vec<u8> = raw
        .split(|&byte| byte == 0)
        .filter(|arg| !arg.is_empty())
        .collect::<Vec<_>>()
        .join(&b' ');
    let mut text = String::from_utf8_lossy(&joined).into_owned();
    if text.len() > CMDLINE_TAG_MAX_BYTES {
        let mut end = CMDLINE_TAG_MAX_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The container of a `/proc/PID/cgroup` file: the first line whose path
/// names one. Lines are `hierarchy:controllers:path` (cgroup v1 has one per
/// hierarchy, v2 the single `0::path`); malformed lines are counted.
fn container_of(cgroup: &str, stats: &mut ScanStats) -> Option<ContainerRef> {
    let mut found = None;
    for line in cgroup.lines().filter(|line| !line.is_empty()) {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next())
        else {
            stats.malformed += 1;
            continue;
        };
        if hierarchy.parse::<u32>().is_err() {
            stats.malformed += 1;
            continue;
        }
        if found.is_none() {
            found = container_in_path(path);
        }
    }
    found
}

/// Finds a container id in a cgroup path, the runtime that named it and the
/// pod it belongs to. Recognised layouts:
/// - Docker: `/docker/<id>`, `/system.slice/docker-<id>.scope`
/// - containerd: `.../cri-containerd-<id>.scope`
/// - CRI-O: `.../crio-<id>.scope`
/// - Kubernetes, cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>`
/// - Kubernetes, systemd driver:
///   `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`
fn container_in_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (position, id, runtime) =
        segments
            .iter()
            .enumerate()
            .rev()
            .find_map(|(position, segment)| {
                let (id, runtime) = container_segment(segment, segments[..position].last())?;
                Some((position, id, runtime))
            })?;
    let ancestors = &segments[..position];
    let in_kubepods = ancestors.iter().any(|s| s.starts_with("kubepods"));
    let pod_uid = in_kubepods
        .then(|| ancestors.iter().rev().find_map(|s| pod_uid_segment(s)))
        .flatten();
    Some(ContainerRef {
        id: id.to_owned(),
        runtime,
        pod_uid,
    })
}

/// A container id segment and its runtime, given the segment before it.
fn container_segment<'a>(
    segment: &'a str,
    parent: Option<&&str>,
) -> Option<(&'a str, Option<Runtime>)> {
    if is_container_id(segment) {
        let runtime = (parent == Some(&"docker")).then_some(Runtime::Docker);
        return Some((segment, runtime));
    }
    let unit = segment.strip_suffix(".scope")?;
    [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
    ]
    .into_iter()
    .find_map(|(prefix, runtime)| {
        let id = unit.strip_prefix(prefix)?;
        is_container_id(id).then_some((id, Some(runtime)))
    })
}

fn is_container_id(text: &str) -> bool {
    text.len() == CONTAINER_ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod UID of a `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid>.slice`
/// (systemd, dashes of the uid turned into underscores) segment.
fn pod_uid_segment(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = match segment.strip_prefix("pod") {
        Some(uid) => uid,
        None if segment.starts_with("kubepods") => segment.rsplit_once("-pod")?.1,
        None => return None,
    };
    let uid = uid.replace('_', "-");
    let looks_like_uid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    looks_like_uid.then_some(uid)
}

/// The container's entity, and its pod's when the path named one.
fn container_entities(container: &ContainerRef) -> Vec<Entity> {
    let Ok(id) = EntityId::new("container_id", &container.id) else {
        return Vec::new();
    };
    let mut entity = Entity::new(id);
    if let Some(runtime) = container.runtime {
        entity.low.push(format!("runtime:{}", runtime.as_str()));
    }
    entity.high.push(format!("container_id:{}", container.id));
    let mut entities = Vec::with_capacity(2);
    if let Some(uid) = &container.pod_uid {
        let pod_tag = format!("pod_uid:{uid}");
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

/// The host's entity, named by `proc/sys/kernel/hostname`.
fn read_hostname(proc_root: &Path) -> Result<Entity, Skip> {
    let text = std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))?;
    let name = text.trim();
    let id = EntityId::new("host", name).map_err(|_| Skip::Malformed)?;
    let mut entity = Entity::new(id);
    entity.low.push(format!("host:{name}"));
    Ok(entity)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a0e2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    const UID: &str = "1d3f2a9c-5b7e-4c1a-9f0e-2b6d8a4c3e1f";

    fn found(path: &str) -> Option<(String, Option<&'static str>, Option<String>)> {
        container_in_path(path).map(|c| (c.id, c.runtime.map(Runtime::as_str), c.pod_uid))
    }

    #[test]
    fn cgroup_layouts_of_each_runtime_are_recognised() {
        let uid_underscored = UID.replace('-', "_");
        let cases = [
            (format!("/docker/{ID}"), Some("docker"), None),
            (
                format!("/system.slice/docker-{ID}.scope"),
                Some("docker"),
                None,
            ),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                Some("containerd"),
                None,
            ),
            (format!("/crio-{ID}.scope"), Some("cri-o"), None),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                None,
                Some(UID.to_owned()),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_underscored}.slice/cri-containerd-{ID}.scope"
                ),
                Some("containerd"),
                Some(UID.to_owned()),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_underscored}.slice/crio-{ID}.scope"),
                Some("cri-o"),
                Some(UID.to_owned()),
            ),
        ];
        for (path, runtime, pod) in cases {
            assert_eq!(found(&path), Some((ID.to_owned(), runtime, pod)), "{path}");
        }
    }

    #[test]
    fn paths_without_a_container_name_none() {
        for path in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/docker.service",
            &format!("/system.slice/crio-conmon-{ID}.scope"),
            &format!("/docker/{}", &ID[..63]),
            "/kubepods/burstable/podnot-a-uid",
        ] {
            assert_eq!(found(path), None, "{path}");
        }
    }

    #[test]
    fn malformed_cgroup_lines_are_counted_and_skipped() {
        let mut stats = ScanStats::default();
        let text = format!("garbage\nx:cpu:/\n0::/docker/{ID}\n");
        let container = container_of(&text, &mut stats).unwrap();
        assert_eq!(container.id, ID);
        assert_eq!(stats.malformed, 2);
    }

    #[test]
    fn cmdlines_are_joined_and_capped_on_a_character_boundary() {
        assert_eq!(
            cmdline_text(b"nginx\0-g\0daemon off;\0"),
            "nginx -g daemon off;"
        );
        assert_eq!(cmdline_text(b""), "");
        let long = "é".repeat(CMDLINE_TAG_MAX_BYTES);
        let capped = cmdline_text(long.as_bytes());
        assert!(capped.len() <= CMDLINE_TAG_MAX_BYTES && capped.len() >= CMDLINE_TAG_MAX_BYTES - 1);
        assert!(capped.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_real_uid_is_read_from_status() {
        assert_eq!(status_uid("Name:\tbash\nUid:\t1000\t0\t0\t0\n"), Some(1000));
        assert_eq!(status_uid("Name:\tbash\n"), None);
        assert_eq!(status_uid("Uid:\tabc\n"), None);
    }

    #[test]
    fn the_name_is_read_from_status_unescaped() {
        assert_eq!(
            status_name("Name:\tbash\nUid:\t0\t0\t0\t0\n").as_deref(),
            Some("bash")
        );
        assert_eq!(
            status_name("Name:\ta\\\\b\\nc d \n").as_deref(),
            Some("a\\b\nc d")
        );
        // A backslash before anything else is left as it is.
        assert_eq!(status_name("Name:\ta\\x\\\n").as_deref(), Some("a\\x\\"));
        assert_eq!(status_name("Uid:\t0\t0\t0\t0\n"), None);
    }

    /// The kernel escapes the name in `status` and not in `comm`: for a
    /// name holding both escaped characters, the two must still agree.
    #[test]
    fn the_status_name_of_a_thread_is_what_its_comm_says() {
        let tricky = "a\\b\nc d ";
        let (comm, status) = std::thread::Builder::new()
            .name(tricky.to_owned())
            .spawn(|| {
                let read = |file: &str| {
                    std::fs::read_to_string(format!("/proc/thread-self/{file}")).unwrap()
                };
                (read("comm"), read("status"))
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(comm, format!("{tricky}\n"), "the kernel kept the name");
        assert_eq!(status_name(&status).as_deref(), Some(comm.trim_end()));
    }

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
