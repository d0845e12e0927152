//! Parsing `/proc/PID/cgroup`: the container, runtime and pod a process runs
//! in, found in its cgroup paths the way the Datadog Agent's container
//! collector finds them (no container runtime API needed). Pure: text in,
//! what it names out; [`parse`] is the entry point for a cgroup file,
//! [`container_in_path`] for one cgroup's path.

/// Container ids in cgroup paths are 64 lowercase hex digits.
const CONTAINER_ID_LEN: usize = 64;

/// The container runtime a cgroup path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    Docker,
    Containerd,
    CriO,
}

impl Runtime {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
        }
    }
}

/// What a cgroup path says about the container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerRef {
    /// The container id: 64 hex digits.
    pub(crate) id: String,
    /// Unknown for bare ids under kubepods (the cgroupfs driver names no runtime).
    pub(crate) runtime: Option<Runtime>,
    /// The pod's UID, when the path is under `kubepods` and names one.
    pub(crate) pod_uid: Option<String>,
}

/// What a `/proc/PID/cgroup` file says about the container its process runs
/// in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupFile {
    /// The container named by the first line that names one; `None` for a
    /// process outside any container.
    pub(crate) container: Option<ContainerRef>,
    /// Lines that are not `hierarchy:controllers:path` with a numeric
    /// hierarchy (skipped).
    pub(crate) malformed_lines: usize,
}

/// Parses the text of a `/proc/PID/cgroup` file: the container of the first
/// line whose path names one. Lines are `hierarchy:controllers:path` (cgroup
/// v1 has one per hierarchy, v2 the single `0::path`); malformed lines are
/// counted, never fatal. Reads no file: the caller brings the text, from
/// `/proc` or a fixture.
pub(crate) fn parse(cgroup_file: &str) -> CgroupFile {
    let mut parsed = CgroupFile::default();
    for line in cgroup_file.lines().filter(|line| !line.is_empty()) {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next())
        else {
            parsed.malformed_lines += 1;
            continue;
        };
        if hierarchy.parse::<u32>().is_err() {
            parsed.malformed_lines += 1;
            continue;
        }
        if parsed.container.is_none() {
            parsed.container = container_in_path(path);
        }
    }
    parsed
}

/// Finds a container id in a cgroup path, the runtime that named it and the
/// pod it belongs to. Recognised layouts:
/// - Docker: `/docker/<id>`, `/system.slice/docker-<id>.scope`
/// - containerd: `.../cri-containerd-<id>.scope`
/// - CRI-O: `.../crio-<id>.scope`
/// - Kubernetes, cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>`
/// - Kubernetes, systemd driver:
///   `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`
pub(crate) fn container_in_path(path: &str) -> Option<ContainerRef> {
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

/// Whether `text` is a container id: 64 hex digits.
pub(crate) fn is_container_id(text: &str) -> bool {
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
        let text = format!("garbage\nx:cpu:/\n0::/docker/{ID}\n");
        let parsed = parse(&text);
        let container = parsed.container.unwrap();
        assert_eq!(container.id, ID);
        assert_eq!(parsed.malformed_lines, 2);
    }
}
