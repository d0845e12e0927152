//! The host source against fixture trees of `/proc` (cgroup v1 and v2
//! layouts, a vanished process, malformed files), against this machine's
//! real `/proc`, and as a running server source that follows changes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestServer, within};
use remote_tagger::domain::{Entity, EntityId};
use remote_tagger::server::{ScanStats, Source, scan_host};

const DOCKER_ID: &str = "3f4a0e2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
const POD_CONTAINER_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const POD_UID: &str = "1d3f2a9c-5b7e-4c1a-9f0e-2b6d8a4c3e1f";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn entity(id: &str, low: &[&str], orchestrator: &[&str], high: &[&str]) -> Entity {
    let tags = |list: &[&str]| list.iter().map(|t| t.to_string()).collect();
    Entity {
        id: EntityId::parse(id).unwrap(),
        low: tags(low),
        orchestrator: tags(orchestrator),
        high: tags(high),
        standard: Vec::new(),
    }
}

fn process(pid: u32, name: &str, user: &str, cmdline: &str, container: Option<&str>) -> Entity {
    let mut high = vec![format!("pid:{pid}")];
    if !cmdline.is_empty() {
        high.push(format!("cmdline:{cmdline}"));
    }
    if let Some(id) = container {
        high.push(format!("container_id:{id}"));
    }
    let high: Vec<&str> = high.iter().map(String::as_str).collect();
    entity(
        &format!("process://{pid}"),
        &[&format!("process_name:{name}"), &format!("user:{user}")],
        &[],
        &high,
    )
}

fn container(id: &str, runtime: Option<&str>, pod_uid: Option<&str>) -> Entity {
    let runtime = runtime.map(|r| format!("runtime:{r}"));
    let pod = pod_uid.map(|uid| format!("pod_uid:{uid}"));
    entity(
        &format!("container_id://{id}"),
        runtime
            .as_slice()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        pod.as_slice()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        &[&format!("container_id:{id}")],
    )
}

fn pod(uid: &str) -> Entity {
    entity(
        &format!("kubernetes_pod_uid://{uid}"),
        &[],
        &[&format!("pod_uid:{uid}")],
        &[],
    )
}

fn host(name: &str) -> Entity {
    entity(
        &format!("host://{name}"),
        &[&format!("host:{name}")],
        &[],
        &[],
    )
}

#[test]
fn cgroup_v1_tree_docker_and_kubepods_cgroupfs() {
    let (entities, stats) = scan_host(&fixture("host-cgroup-v1"));
    let capped_java = format!("java -jar {}", "x".repeat(256 - "java -jar ".len()));
    assert_eq!(
        entities,
        [
            container(DOCKER_ID, Some("docker"), None),
            // The cgroupfs driver names no runtime.
            container(POD_CONTAINER_ID, None, Some(POD_UID)),
            host("node-v1"),
            pod(POD_UID),
            process(1, "systemd", "root", "/sbin/init splash", None),
            process(
                100,
                "nginx",
                "www-data",
                "nginx: worker process",
                Some(DOCKER_ID)
            ),
            // A kernel thread: no command line.
            process(2, "kthreadd", "root", "", None),
            // uid 1000 is not in the passwd file.
            process(200, "java", "1000", &capped_java, Some(POD_CONTAINER_ID)),
        ]
    );
    assert_eq!(
        stats,
        ScanStats {
            processes: 4,
            containers: 2,
            pods: 1,
            vanished: 1,
            unreadable: 0,
            malformed: 0,
        }
    );
}

#[test]
fn cgroup_v2_tree_docker_and_kubepods_systemd() {
    let (entities, stats) = scan_host(&fixture("host-cgroup-v2"));
    assert_eq!(
        entities,
        [
            container(DOCKER_ID, Some("docker"), None),
            container(POD_CONTAINER_ID, Some("containerd"), Some(POD_UID)),
            host("node-v2"),
            pod(POD_UID),
            process(1, "systemd", "root", "/sbin/init", None),
            process(
                50,
                "redis-server",
                "www-data",
                "redis-server *:6379",
                Some(DOCKER_ID)
            ),
            process(60, "pause", "root", "/pause", Some(POD_CONTAINER_ID)),
            process(61, "app", "root", "/app", Some(POD_CONTAINER_ID)),
            // Its cgroup file has a malformed line: counted, the rest kept.
            process(80, "weird-cgroup", "root", "w", None),
        ]
    );
    // Process 70 has no Uid line; process 80 one malformed cgroup line.
    assert_eq!(
        stats,
        ScanStats {
            processes: 5,
            containers: 2,
            pods: 1,
            vanished: 0,
            unreadable: 0,
            malformed: 2,
        }
    );
}

#[test]
fn a_missing_root_is_skipped_not_fatal() {
    let (entities, stats) = scan_host(Path::new("/nonexistent/remote-tagger-root"));
    assert!(entities.is_empty());
    assert_eq!(stats.processes, 0);
    assert!(stats.skipped() > 0);
}

#[test]
fn the_real_proc_holds_this_test_process_and_the_host() {
    let (entities, stats) = scan_host(Path::new("/"));
    let own_id = format!("process://{}", std::process::id());
    let own = entities
        .iter()
        .find(|e| e.id.as_str() == own_id)
        .unwrap_or_else(|| panic!("{own_id} not found among {} entities", entities.len()));
    assert!(own.high.contains(&format!("pid:{}", std::process::id())));
    assert!(own.low.iter().any(|t| t.starts_with("process_name:")));
    assert!(entities.iter().any(|e| e.id.prefix() == "host"));
    assert!(stats.processes >= 1);
}

/// Copies a fixture tree, so a test can change it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn the_running_source_follows_processes_coming_and_going() {
    let root = tempfile::tempdir().unwrap();
    copy_tree(&fixture("host-cgroup-v2"), root.path());
    let source = Source::Host {
        root: root.path().to_owned(),
        interval: Duration::from_millis(20),
    };
    let server = TestServer::start(|config| config.source = source).await;
    let id = |text: &str| EntityId::parse(text).unwrap();
    assert!(server.store.entity(&id("process://50")).is_some());

    // The docker container's only process exits, a new process starts.
    let proc_dir = root.path().join("proc");
    std::fs::remove_dir_all(proc_dir.join("50")).unwrap();
    copy_tree(&proc_dir.join("1"), &proc_dir.join("7"));
    within("the rescan", async {
        while server.store.entity(&id("process://7")).is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(server.store.entity(&id("process://50")).is_none());
    assert!(
        server
            .store
            .entity(&id(&format!("container_id://{DOCKER_ID}")))
            .is_none(),
        "a container without processes is gone"
    );
    // Process 70 (no Uid line) is skipped at every scan.
    assert!(server.store.stats().source_skipped >= 1);
    server.stop().await;
}
