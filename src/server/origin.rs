//! `TaggerGenerateContainerIDFromOriginInfo`: the container a payload's
//! origin belongs to, answered from what the host source knows.
//!
//! The Datadog Agent resolves in this order, and so do we
//! (`comp/core/tagger/impl/local_tagger.go`, `GenerateContainerIDFromOriginInfo`):
//! an explicit container ID is the answer as it is; else the process ID,
//! through its `/proc/PID/cgroup`; else the cgroup inode, through the cgroup
//! filesystem; else the external data's pod UID and container name, through
//! the store's pod and container entities. A step that finds nothing hands
//! over to the next. The local pod UID plays no part (nor in the Agent).
//!
//! Where the Agent differs:
//! - It answers INVALID_ARGUMENT when nothing resolves, and its handler
//!   crashes on a request that leaves a field out (it dereferences every
//!   optional field). We answer every request with the best answer or an
//!   empty container ID, never an error past authentication.
//! - Its external-data lookup searches the pod's init containers when the
//!   init flag is set and the others when not. Kubernetes requires a pod's
//!   container names to be unique across init, regular and ephemeral
//!   containers, so the name alone tells them apart; the host's files do not
//!   say which kind a container is, and the flag is not needed.
//!
//! Only the host source can answer (it reads the host's `/proc` and cgroup
//! filesystem, and its container entities carry their pod and name). The
//! other sources ([`OriginResolver::unsupported`]) answer an explicit
//! container ID as it is, anything else with an empty one, and say so at
//! debug level.
//!
//! Answers are cached ([`FOUND_TTL`], [`NOT_FOUND_TTL`], [`CACHE_CAPACITY`]).
//! The resolution itself is pure ([`resolve`] over a [`Lookups`]); reading
//! the files is the thin [`HostFiles`] layer, run on a blocking thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::host_source::cgroup;
use super::host_source::{KUBE_CONTAINER_NAME_TAG, POD_UID_TAG};
use super::hub::StoreHandle;
use super::stats::increment;
use super::store::PrefixFilter;
use crate::domain::{Entity, EntityId};
use crate::origin::{OriginInfo, OriginResult};

/// How long a found container is cached: the Datadog Agent's remote tagger
/// caches its answers for a minute.
pub(crate) const FOUND_TTL: Duration = Duration::from_secs(60);

/// How long "no container" is cached: one host scan interval, the time a
/// new container takes to reach the store, so a client asking too early
/// soon gets its answer.
pub(crate) const NOT_FOUND_TTL: Duration = Duration::from_secs(2);

/// Lookups cached at most; the soonest to expire goes first.
pub(crate) const CACHE_CAPACITY: usize = 4096;

/// The cgroup filesystem's index of containers is rebuilt when it is older
/// than this (the Agent refreshes its cgroup reader as often).
const CGROUP_INDEX_TTL: Duration = Duration::from_secs(1);

/// Directories of the cgroup filesystem indexed at most (a node has a few
/// thousand cgroups), and how deep.
const MAX_CGROUP_DIRS: usize = 65_536;
const MAX_CGROUP_DEPTH: usize = 32;

/// External data longer than this names nothing (a pod UID is 36
/// characters, a container name a DNS label of at most 63): not looked up,
/// so a request cannot make the cache hold megabytes.
const MAX_EXTERNAL_NAME_LEN: usize = 253;

/// The most of a `/proc/PID/cgroup` file read.
const MAX_CGROUP_FILE_LEN: u64 = 64 * 1024;

/// What an origin asks to look up, in the Agent's order; what the cache is
/// keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Lookup {
    pid: Option<u32>,
    inode: Option<u64>,
    /// Pod UID and container name, both given.
    pod_container: Option<(String, String)>,
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// It names its container.
    Given(String),
    /// It names nothing to look up.
    Nothing,
    Look(Lookup),
}

impl Plan {
    pub(crate) fn of(origin: &OriginInfo) -> Self {
        if let Some(id) = &origin.local.container_id {
            return Self::Given(id.clone());
        }
        let short = |text: &Option<String>| {
            text.clone()
                .filter(|text| text.len() <= MAX_EXTERNAL_NAME_LEN)
        };
        let external = &origin.external;
        let lookup = Lookup {
            pid: origin.local.process_id,
            inode: origin.local.cgroup_inode,
            pod_container: short(&external.pod_uid).zip(short(&external.container_name)),
        };
        if lookup.pid.is_none() && lookup.inode.is_none() && lookup.pod_container.is_none() {
            return Self::Nothing;
        }
        Self::Look(lookup)
    }
}

/// The host's answers to each kind of lookup.
pub(crate) trait Lookups {
    /// The container of the process `pid`.
    fn container_of_pid(&self, pid: u32) -> Option<String>;
    /// The container of the cgroup whose directory has `inode`.
    fn container_of_inode(&self, inode: u64) -> Option<String>;
    /// The container named `name` in the pod `pod_uid`.
    fn container_in_pod(&self, pod_uid: &str, name: &str) -> Option<String>;
}

/// The first container the lookups find, in the Agent's order, and which
/// lookup found it; each lookup runs only if the ones before found nothing.
pub(crate) fn resolve(lookup: &Lookup, lookups: &impl Lookups) -> (Option<String>, OriginResult) {
    if let Some(id) = lookup.pid.and_then(|pid| lookups.container_of_pid(pid)) {
        return (Some(id), OriginResult::Pid);
    }
    if let Some(id) = lookup
        .inode
        .and_then(|inode| lookups.container_of_inode(inode))
    {
        return (Some(id), OriginResult::Inode);
    }
    if let Some(id) = lookup
        .pod_container
        .as_ref()
        .and_then(|(pod, name)| lookups.container_in_pod(pod, name))
    {
        return (Some(id), OriginResult::ExternalData);
    }
    (None, OriginResult::NotFound)
}

/// The container a `/proc/PID/cgroup` file's text names, read by the host
/// source's parser; `None` for a process outside any container.
pub fn container_in_cgroup_file(text: &str) -> Option<String> {
    cgroup::parse(text).container.map(|container| container.id)
}

/// The container named `name` in the pod `pod_uid`, among container
/// entities: the first (in the given order) tagged with both the pod's UID
/// and that `kube_container_name`, in any cardinality.
pub(crate) fn container_in_pod<'a>(
    containers: impl IntoIterator<Item = &'a Entity>,
    pod_uid: &str,
    name: &str,
) -> Option<String> {
    let pod_tag = format!("{POD_UID_TAG}{pod_uid}");
    let name_tag = format!("{KUBE_CONTAINER_NAME_TAG}{name}");
    containers
        .into_iter()
        .find(|entity| {
            let has = |wanted: &str| {
                [&entity.low, &entity.orchestrator, &entity.high]
                    .into_iter()
                    .flatten()
                    .any(|tag| tag == wanted)
            };
            has(&pod_tag) && has(&name_tag)
        })
        .map(|entity| entity.id.uid().to_owned())
}

/// Cgroup directory inode -> the container its path names, for the
/// containers' cgroups (and the cgroups nested in them) of a cgroup
/// filesystem; rebuilt when older than [`CGROUP_INDEX_TTL`].
#[derive(Debug, Default)]
struct CgroupIndex {
    built_at: Option<Instant>,
    containers: HashMap<u64, String>,
}

impl CgroupIndex {
    /// The container of `inode`, rebuilding the index with `build` first if
    /// it is stale at `now`.
    fn container_of(
        &mut self,
        inode: u64,
        now: Instant,
        build: impl FnOnce() -> HashMap<u64, String>,
    ) -> Option<String> {
        let fresh = self
            .built_at
            .is_some_and(|built| now.saturating_duration_since(built) < CGROUP_INDEX_TTL);
        if !fresh {
            self.containers = build();
            self.built_at = Some(now);
        }
        self.containers.get(&inode).cloned()
    }
}

/// The host's files under `root`, as the host source reads them: the
/// process's cgroup file at `root/proc/PID/cgroup` (its PID in the PID
/// namespace of that `proc`, as the host source's), the cgroup filesystem at
/// `root/sys/fs/cgroup`.
#[derive(Debug)]
struct HostFiles {
    root: PathBuf,
    cgroups: Mutex<CgroupIndex>,
}

impl HostFiles {
    fn container_of_pid(&self, pid: u32) -> Option<String> {
        let path = self.root.join("proc").join(pid.to_string()).join("cgroup");
        // A regular file (a fixture's, or /proc's of size 0): never a FIFO
        // that would block the thread.
        if !std::fs::metadata(&path).ok()?.is_file() {
            return None;
        }
        let mut text = String::new();
        std::fs::File::open(&path)
            .ok()?
            .take(MAX_CGROUP_FILE_LEN)
            .read_to_string(&mut text)
            .ok()?;
        container_in_cgroup_file(&text)
    }

    fn container_of_inode(&self, inode: u64, now: Instant) -> Option<String> {
        let cgroup_root = self.root.join("sys/fs/cgroup");
        self.cgroups
            .lock()
            .container_of(inode, now, || index_cgroups(&cgroup_root))
    }
}

/// Walks the cgroup filesystem at `cgroup_root` breadth first, without
/// following links, at most [`MAX_CGROUP_DIRS`] directories and
/// [`MAX_CGROUP_DEPTH`] deep: the inode of each directory whose path (from
/// the root, a v1 controller's directory included) names a container.
fn index_cgroups(cgroup_root: &Path) -> HashMap<u64, String> {
    let mut containers = HashMap::new();
    let mut pending = VecDeque::from([(cgroup_root.to_path_buf(), String::new(), 0)]);
    let mut visited = 0;
    while let Some((dir, path, depth)) = pending.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if visited == MAX_CGROUP_DIRS {
                tracing::debug!(
                    root = %cgroup_root.display(),
                    "origin detection: the cgroup filesystem has more than {MAX_CGROUP_DIRS} directories; indexed the first"
                );
                return containers;
            }
            // `DirEntry`'s type and metadata are the entry's own, not a link's target.
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let file_name = entry.file_name();
            let (Ok(metadata), Some(name)) = (entry.metadata(), file_name.to_str()) else {
                continue;
            };
            visited += 1;
            let path = format!("{path}/{name}");
            if let (Some(inode), Some(container)) =
                (inode_of(&metadata), cgroup::container_in_path(&path))
            {
                containers.insert(inode, container.id);
            }
            if depth + 1 < MAX_CGROUP_DEPTH {
                pending.push_back((entry.path(), path, depth + 1));
            }
        }
    }
    containers
}

#[cfg(unix)]
fn inode_of(metadata: &std::fs::Metadata) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Some(metadata.ino())
}

#[cfg(not(unix))]
fn inode_of(_: &std::fs::Metadata) -> Option<u64> {
    None
}

/// The host's files and the store at one moment: the lookups of one
/// resolution.
struct HostView<'a> {
    files: &'a HostFiles,
    store: &'a StoreHandle,
    now: Instant,
}

impl Lookups for HostView<'_> {
    fn container_of_pid(&self, pid: u32) -> Option<String> {
        self.files.container_of_pid(pid)
    }

    fn container_of_inode(&self, inode: u64) -> Option<String> {
        self.files.container_of_inode(inode, self.now)
    }

    fn container_in_pod(&self, pod_uid: &str, name: &str) -> Option<String> {
        // Most external data names a pod the store does not hold (another
        // node's, or gone): answered without going through the containers.
        let pod = EntityId::new("kubernetes_pod_uid", pod_uid).ok()?;
        self.store.entity(&pod)?;
        let containers = self
            .store
            .snapshot(&PrefixFilter::from_request(&["container_id".to_owned()]));
        container_in_pod(
            containers.entities.iter().map(|stored| stored.entity()),
            pod_uid,
            name,
        )
    }
}

/// An answer kept for a while.
#[derive(Debug)]
struct Cached {
    container_id: Option<String>,
    result: OriginResult,
    /// Its key in [`AnswerCache::expiries`].
    expiry: (Instant, u64),
}

/// Answers by lookup, at most [`CACHE_CAPACITY`], each for [`FOUND_TTL`] or
/// [`NOT_FOUND_TTL`]; when full, the answer soonest to expire makes room.
#[derive(Debug, Default)]
struct AnswerCache {
    answers: HashMap<Lookup, Cached>,
    /// When each answer expires (ties broken by insertion), to its lookup.
    expiries: BTreeMap<(Instant, u64), Lookup>,
    inserted: u64,
}

impl AnswerCache {
    fn get(&mut self, lookup: &Lookup, now: Instant) -> Option<(Option<String>, OriginResult)> {
        self.expire(now);
        let cached = self.answers.get(lookup)?;
        Some((cached.container_id.clone(), cached.result))
    }

    fn insert(
        &mut self,
        lookup: Lookup,
        container_id: Option<String>,
        result: OriginResult,
        now: Instant,
    ) {
        self.expire(now);
        if let Some(old) = self.answers.remove(&lookup) {
            self.expiries.remove(&old.expiry);
        }
        while self.answers.len() >= CACHE_CAPACITY {
            let Some((_, soonest)) = self.expiries.pop_first() else {
                break;
            };
            self.answers.remove(&soonest);
        }
        let ttl = if container_id.is_some() {
            FOUND_TTL
        } else {
            NOT_FOUND_TTL
        };
        self.inserted += 1;
        let expiry = (now + ttl, self.inserted);
        self.expiries.insert(expiry, lookup.clone());
        self.answers.insert(
            lookup,
            Cached {
                container_id,
                result,
                expiry,
            },
        );
    }

    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.expiries.first_entry() {
            if entry.key().0 > now {
                return;
            }
            self.answers.remove(&entry.remove());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.answers.len()
    }
}

/// How the server answers origin requests: from the host's files and the
/// store, or (other sources) not at all.
#[derive(Debug)]
pub struct OriginResolver {
    /// `None` for a source that cannot answer.
    files: Option<Arc<HostFiles>>,
    /// The source's name, for the logs.
    source: &'static str,
    answers: Mutex<AnswerCache>,
}

impl OriginResolver {
    /// Answers from the host whose `proc` and `sys/fs/cgroup` are under
    /// `root` (`/` for this machine), and the container entities the host
    /// source put in the store.
    pub fn host(root: impl Into<PathBuf>) -> Self {
        Self {
            files: Some(Arc::new(HostFiles {
                root: root.into(),
                cgroups: Mutex::default(),
            })),
            source: "host",
            answers: Mutex::default(),
        }
    }

    /// For a source that knows no processes, cgroups or pods of this host
    /// (`source` names it in the logs): explicit container IDs are answered
    /// as they are, anything else with an empty one.
    pub fn unsupported(source: &'static str) -> Self {
        Self {
            files: None,
            source,
            answers: Mutex::default(),
        }
    }

    /// The container of `origin`, empty when none is found; counted in the
    /// store's telemetry by how it was answered.
    pub(crate) async fn answer(&self, origin: &OriginInfo, store: &StoreHandle) -> String {
        let (container_id, result) = self.resolve(origin, store).await;
        increment(&store.telemetry().origin_requests[result.index()]);
        container_id.unwrap_or_default()
    }

    async fn resolve(
        &self,
        origin: &OriginInfo,
        store: &StoreHandle,
    ) -> (Option<String>, OriginResult) {
        let lookup = match Plan::of(origin) {
            Plan::Given(id) => return (Some(id), OriginResult::ContainerId),
            Plan::Nothing => return (None, OriginResult::Empty),
            Plan::Look(lookup) => lookup,
        };
        let Some(files) = &self.files else {
            tracing::debug!(
                source = self.source,
                ?lookup,
                "origin request: this source knows no processes, cgroups or pods of the host; answering no container"
            );
            return (None, OriginResult::Unsupported);
        };
        let now = Instant::now();
        if let Some(answer) = self.answers.lock().get(&lookup, now) {
            increment(&store.telemetry().origin_cache_hits);
            return answer;
        }
        // Files are read on a blocking thread, off the reactor.
        let (files, view_store, key) = (files.clone(), store.clone(), lookup.clone());
        let resolved = tokio::task::spawn_blocking(move || {
            let view = HostView {
                files: &files,
                store: &view_store,
                now,
            };
            resolve(&key, &view)
        })
        .await;
        let (container_id, result) = resolved.unwrap_or_else(|error| {
            tracing::warn!(%error, "origin lookup failed; answering no container");
            (None, OriginResult::NotFound)
        });
        tracing::debug!(
            ?lookup,
            container_id,
            result = result.as_str(),
            "origin resolved"
        );
        self.answers
            .lock()
            .insert(lookup, container_id.clone(), result, now);
        (container_id, result)
    }

    /// Answers cached now.
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.answers.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::domain::EntityEvent;
    use crate::origin::{ExternalData, LocalData};
    use crate::server::{Epoch, Store};

    const ID: &str = "3f4a0e2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    const UID: &str = "1d3f2a9c-5b7e-4c1a-9f0e-2b6d8a4c3e1f";

    /// Lookups answering from tables, recording what they were asked.
    #[derive(Default)]
    struct Table {
        pids: HashMap<u32, String>,
        inodes: HashMap<u64, String>,
        pods: HashMap<(String, String), String>,
        asked: RefCell<Vec<&'static str>>,
    }

    impl Lookups for Table {
        fn container_of_pid(&self, pid: u32) -> Option<String> {
            self.asked.borrow_mut().push("pid");
            self.pids.get(&pid).cloned()
        }

        fn container_of_inode(&self, inode: u64) -> Option<String> {
            self.asked.borrow_mut().push("inode");
            self.inodes.get(&inode).cloned()
        }

        fn container_in_pod(&self, pod_uid: &str, name: &str) -> Option<String> {
            self.asked.borrow_mut().push("pod");
            self.pods
                .get(&(pod_uid.to_owned(), name.to_owned()))
                .cloned()
        }
    }

    fn origin(pid: u32, inode: u64, pod: &str, name: &str) -> OriginInfo {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        OriginInfo {
            local: LocalData {
                process_id: (pid != 0).then_some(pid),
                container_id: None,
                cgroup_inode: (inode != 0).then_some(inode),
                pod_uid: None,
            },
            external: ExternalData {
                init: false,
                container_name: text(name),
                pod_uid: text(pod),
            },
        }
    }

    fn lookup_of(origin: &OriginInfo) -> Lookup {
        match Plan::of(origin) {
            Plan::Look(lookup) => lookup,
            other => panic!("{origin:?} planned {other:?}"),
        }
    }

    #[test]
    fn resolution_goes_pid_then_inode_then_external_data_each_only_if_needed() {
        let table = Table {
            pids: HashMap::from([(10, "by-pid".to_owned())]),
            inodes: HashMap::from([(20, "by-inode".to_owned())]),
            pods: HashMap::from([(("pod".to_owned(), "app".to_owned()), "by-pod".to_owned())]),
            ..Table::default()
        };
        let cases = [
            (
                (10, 20, "pod", "app"),
                Some("by-pid"),
                OriginResult::Pid,
                &["pid"][..],
            ),
            (
                (11, 20, "pod", "app"),
                Some("by-inode"),
                OriginResult::Inode,
                &["pid", "inode"],
            ),
            (
                (0, 21, "pod", "app"),
                Some("by-pod"),
                OriginResult::ExternalData,
                &["inode", "pod"],
            ),
            (
                (11, 21, "pod", "web"),
                None,
                OriginResult::NotFound,
                &["pid", "inode", "pod"],
            ),
            (
                (0, 0, "pod", "app"),
                Some("by-pod"),
                OriginResult::ExternalData,
                &["pod"],
            ),
        ];
        for ((pid, inode, pod, name), found, result, asked) in cases {
            table.asked.borrow_mut().clear();
            let resolved = resolve(&lookup_of(&origin(pid, inode, pod, name)), &table);
            assert_eq!(
                resolved,
                (found.map(str::to_owned), result),
                "{pid} {inode} {pod} {name}"
            );
            assert_eq!(*table.asked.borrow(), asked, "{pid} {inode} {pod} {name}");
        }
    }

    #[test]
    fn a_named_container_wins_and_zeros_or_half_external_data_name_nothing() {
        let mut named = origin(10, 20, "pod", "app");
        named.local.container_id = Some("given".to_owned());
        assert_eq!(Plan::of(&named), Plan::Given("given".to_owned()));
        assert_eq!(Plan::of(&OriginInfo::default()), Plan::Nothing);
        // The Agent needs both halves of the external data; so do we.
        assert_eq!(Plan::of(&origin(0, 0, "pod", "")), Plan::Nothing);
        assert_eq!(Plan::of(&origin(0, 0, "", "app")), Plan::Nothing);
        let long = "x".repeat(MAX_EXTERNAL_NAME_LEN + 1);
        assert_eq!(Plan::of(&origin(0, 0, &long, "app")), Plan::Nothing);
        let lookup = lookup_of(&origin(7, 0, &long, "app"));
        assert_eq!((lookup.pid, lookup.pod_container), (Some(7), None));
    }

    #[test]
    fn a_container_is_found_in_its_pod_by_name_in_any_tag_list() {
        let container = |id: &str, pod: &str, name: &str, in_high: bool| {
            let mut entity = Entity::new(EntityId::new("container_id", id).unwrap());
            entity.orchestrator.push(format!("{POD_UID_TAG}{pod}"));
            let name_tag = format!("{KUBE_CONTAINER_NAME_TAG}{name}");
            if in_high {
                entity.high.push(name_tag);
            } else {
                entity.low.push(name_tag);
            }
            entity
        };
        let containers = [
            container("a", UID, "sidecar", false),
            container("b", "other-pod", "app", false),
            container("c", UID, "app", true),
        ];
        assert_eq!(
            container_in_pod(&containers, UID, "app").as_deref(),
            Some("c")
        );
        assert_eq!(
            container_in_pod(&containers, UID, "sidecar").as_deref(),
            Some("a")
        );
        assert_eq!(container_in_pod(&containers, UID, "side"), None);
        assert_eq!(container_in_pod(&containers, "nope", "app"), None);
    }

    #[test]
    fn answers_expire_found_after_a_minute_and_not_found_after_two_seconds() {
        let mut cache = AnswerCache::default();
        let start = Instant::now();
        let (found, missing) = (
            lookup_of(&origin(1, 0, "", "")),
            lookup_of(&origin(2, 0, "", "")),
        );
        cache.insert(
            found.clone(),
            Some("c".to_owned()),
            OriginResult::Pid,
            start,
        );
        cache.insert(missing.clone(), None, OriginResult::NotFound, start);
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(
            cache.get(&missing, at(1)),
            Some((None, OriginResult::NotFound))
        );
        assert_eq!(cache.get(&missing, at(2)), None);
        assert_eq!(
            cache.get(&found, at(59)),
            Some((Some("c".to_owned()), OriginResult::Pid))
        );
        assert_eq!(cache.get(&found, at(60)), None);
        assert_eq!(cache.len(), 0);
        assert!(cache.expiries.is_empty());
    }

    #[test]
    fn a_full_cache_drops_the_answer_soonest_to_expire() {
        let mut cache = AnswerCache::default();
        let start = Instant::now();
        let pid = |n: u32| lookup_of(&origin(n, 0, "", ""));
        // A not-found answer expires first, though inserted last.
        for n in 1..CACHE_CAPACITY as u32 {
            cache.insert(pid(n), Some(format!("c{n}")), OriginResult::Pid, start);
        }
        let last = CACHE_CAPACITY as u32;
        cache.insert(pid(last), None, OriginResult::NotFound, start);
        assert_eq!(cache.len(), CACHE_CAPACITY);
        cache.insert(
            pid(u32::MAX),
            Some("new".to_owned()),
            OriginResult::Pid,
            start,
        );
        assert_eq!(cache.len(), CACHE_CAPACITY);
        assert_eq!(cache.get(&pid(last), start), None);
        // Then the oldest of the others.
        cache.insert(
            pid(u32::MAX - 1),
            Some("newer".to_owned()),
            OriginResult::Pid,
            start,
        );
        assert_eq!(cache.get(&pid(1), start), None);
        assert!(cache.get(&pid(2), start).is_some());
        // Answering a lookup again replaces its answer.
        cache.insert(pid(2), None, OriginResult::NotFound, start);
        assert_eq!(
            cache.get(&pid(2), start),
            Some((None, OriginResult::NotFound))
        );
        assert_eq!(
            (cache.len(), cache.expiries.len()),
            (CACHE_CAPACITY, CACHE_CAPACITY)
        );
    }

    #[test]
    fn the_cgroup_index_is_rebuilt_once_it_is_a_second_old() {
        let mut index = CgroupIndex::default();
        let start = Instant::now();
        let builds = RefCell::new(0);
        let build = || {
            *builds.borrow_mut() += 1;
            HashMap::from([(5, "c".to_owned())])
        };
        assert_eq!(index.container_of(5, start, build).as_deref(), Some("c"));
        assert_eq!(
            index.container_of(6, start + Duration::from_millis(999), build),
            None
        );
        assert_eq!(*builds.borrow(), 1);
        assert_eq!(index.container_of(6, start + CGROUP_INDEX_TTL, build), None);
        assert_eq!(*builds.borrow(), 2);
    }

    /// This machine's `/proc`: this process and init resolve to what their
    /// cgroup files say through the host source's parser (on a machine
    /// outside any container: no container, both ways).
    #[test]
    fn on_the_real_proc_a_pid_resolves_as_its_cgroup_file_says() {
        let files = HostFiles {
            root: PathBuf::from("/"),
            cgroups: Mutex::default(),
        };
        for (pid, file) in [
            (std::process::id(), "/proc/self/cgroup"),
            (1, "/proc/1/cgroup"),
        ] {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            assert_eq!(
                files.container_of_pid(pid),
                container_in_cgroup_file(&text),
                "{file}"
            );
        }
        assert_eq!(files.container_of_pid(u32::MAX), None);
    }

    #[test]
    fn a_cgroup_tree_is_indexed_by_inode_without_following_links() {
        use std::os::unix::fs::MetadataExt as _;
        let root = tempfile::tempdir().unwrap();
        let cgroups = root.path().join("sys/fs/cgroup");
        let scope = cgroups.join(format!("system.slice/docker-{ID}.scope"));
        let nested = scope.join("init.scope");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::create_dir_all(cgroups.join("user.slice")).unwrap();
        // A loop of links, which a walk that followed them would not leave.
        std::os::unix::fs::symlink(&cgroups, cgroups.join("user.slice/loop")).unwrap();
        std::os::unix::fs::symlink(&scope, cgroups.join(format!("docker-{ID}.scope"))).unwrap();
        let inode = |path: &Path| std::fs::metadata(path).unwrap().ino();
        let index = index_cgroups(&cgroups);
        assert_eq!(
            index,
            HashMap::from([
                (inode(&scope), ID.to_owned()),
                (inode(&nested), ID.to_owned())
            ])
        );
        assert!(index_cgroups(&root.path().join("missing")).is_empty());
    }

    fn container_entity(id: &str, pod: &str, name: &str) -> EntityEvent {
        let mut entity = Entity::new(EntityId::new("container_id", id).unwrap());
        entity.orchestrator.push(format!("{POD_UID_TAG}{pod}"));
        entity.low.push(format!("{KUBE_CONTAINER_NAME_TAG}{name}"));
        EntityEvent::Added(entity)
    }

    fn pod_entity(uid: &str) -> EntityEvent {
        EntityEvent::Added(Entity::new(
            EntityId::new("kubernetes_pod_uid", uid).unwrap(),
        ))
    }

    /// Answers are counted by result; a container that reaches the store
    /// after a "not found" is found once that answer expired, and a found
    /// one is served from the cache meanwhile.
    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_counted_and_refreshed_when_they_expire() {
        let store = StoreHandle::new(Store::new(Epoch::from_seed(1), 10));
        let resolver = OriginResolver::host("/nonexistent/remote-tagger-root");
        let app = origin(0, 0, UID, "app");
        assert_eq!(resolver.answer(&app, &store).await, "");
        store.apply([pod_entity(UID), container_entity(ID, UID, "app")]);
        assert_eq!(
            resolver.answer(&app, &store).await,
            "",
            "still the cached answer"
        );
        tokio::time::advance(NOT_FOUND_TTL).await;
        assert_eq!(resolver.answer(&app, &store).await, ID);
        store.apply([EntityEvent::Deleted(
            EntityId::new("container_id", ID).unwrap(),
        )]);
        tokio::time::advance(FOUND_TTL - Duration::from_secs(1)).await;
        assert_eq!(
            resolver.answer(&app, &store).await,
            ID,
            "cached for a minute"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(resolver.answer(&app, &store).await, "");

        let mut named = OriginInfo::default();
        named.local.container_id = Some("given".to_owned());
        assert_eq!(resolver.answer(&named, &store).await, "given");
        assert_eq!(resolver.answer(&OriginInfo::default(), &store).await, "");
        assert_eq!(
            resolver
                .answer(&origin(u32::MAX, u64::MAX, "", ""), &store)
                .await,
            ""
        );
        let unsupported = OriginResolver::unsupported("workload");
        assert_eq!(unsupported.answer(&app, &store).await, "");
        assert_eq!(unsupported.answer(&named, &store).await, "given");
        assert_eq!(unsupported.cached(), 0);

        let stats = store.stats();
        let counts: Vec<(&str, u64)> = OriginResult::ALL
            .into_iter()
            .map(|result| (result.as_str(), stats.origin_requests.get(result)))
            .collect();
        assert_eq!(
            counts,
            [
                ("container_id", 2),
                ("pid", 0),
                ("inode", 0),
                ("external_data", 2),
                ("not_found", 4),
                ("empty", 1),
                ("unsupported", 1),
            ]
        );
        assert_eq!(stats.origin_cache_hits, 2);
        assert_eq!(resolver.cached(), 2);
    }
}
