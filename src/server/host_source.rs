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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::entities_file::diff_entities;
use super::hub::StoreHandle;
use super::stats::add;
use crate::domain::{Entity, EntityEvent, EntityId};

/// Longest `cmdline` tag value, in bytes: command lines can be huge (JVMs),
/// and the tag is for recognising a process, not for reproducing it.
pub const CMDLINE_TAG_MAX_BYTES: usize = 256;

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

/// Scans the host under `root` (`/` for the real machine): every process of
/// `root/proc`, the containers and pods their cgroups name, and the host.
/// User names come from `root/etc/passwd` (the numeric uid when absent).
/// Entities are sorted by id.
pub fn scan(root: &Path) -> (Vec<Entity>, ScanStats) {
    let mut stats = ScanStats::default();
    let proc_root = root.join("proc");
    let users = read_users(&root.join("etc/passwd"));
    let mut entities = BTreeMap::new();
    let mut containers = BTreeMap::new();

    let mut reader = FileReader::default();
    for pid in list_pids(&proc_root, &mut stats) {
        let dir = proc_root.join(pid.to_string());
        match read_process(&dir, pid, &users, &mut reader, &mut stats) {
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

/// One process's entity and the container it runs in, if any.
fn read_process(
    dir: &Path,
    pid: u32,
    users: &HashMap<u32, String>,
    reader: &mut FileReader,
    stats: &mut ScanStats,
) -> Result<(Entity, Option<ContainerRef>), Skip> {
    let comm = reader.read_text(&dir.join("comm"))?.trim_end().to_owned();
    let uid = status_uid(&reader.read_text(&dir.join("status"))?).ok_or(Skip::Malformed)?;
    let cmdline = cmdline_text(reader.read(&dir.join("cmdline"))?);
    let container = container_of(&reader.read_text(&dir.join("cgroup"))?, stats);

    let id = EntityId::new("process", &pid.to_string()).map_err(|_| Skip::Malformed)?;
    let mut entity = Entity::new(id);
    entity.low.push(format!("process_name:{comm}"));
    entity.low.push(match users.get(&uid) {
        Some(name) => format!("user:{name}"),
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

/// The running host source: the last scan, to diff the next one against.
#[derive(Debug)]
pub(crate) struct HostSource {
    root: PathBuf,
    interval: Duration,
    current: BTreeMap<EntityId, Entity>,
}

impl HostSource {
    /// Scans once; returns the source and the ADDED events of what it found.
    pub fn new(root: PathBuf, interval: Duration) -> (Self, Vec<EntityEvent>) {
        let (entities, stats) = scan(&root);
        log_scan(&root, &stats);
        let current: BTreeMap<_, _> = entities.into_iter().map(|e| (e.id.clone(), e)).collect();
        let initial = current.values().cloned().map(EntityEvent::Added).collect();
        (
            Self {
                root,
                interval,
                current,
            },
            initial,
        )
    }

    /// Re-scans every interval and applies the differences to `store`, forever.
    pub async fn run(mut self, store: StoreHandle) -> Infallible {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and `new` just scanned.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let root = self.root.clone();
            // Reading thousands of small files blocks: keep it off the reactor.
            let Ok((entities, stats)) = tokio::task::spawn_blocking(move || scan(&root)).await
            else {
                continue;
            };
            add(&store.telemetry().source_skipped, stats.skipped());
            let next: BTreeMap<_, _> = entities.into_iter().map(|e| (e.id.clone(), e)).collect();
            let events = diff_entities(&self.current, &next);
            self.current = next;
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
}
