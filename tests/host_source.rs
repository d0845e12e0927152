//! The host source against fixture trees of `/proc` (cgroup v1 and v2
//! layouts, a vanished process, malformed files), against this machine's
//! real `/proc` (processes remembered between scans, exits, execs), and as a
//! running server source that follows changes.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::children::Children;
use common::host_fixtures::{copy_tree, fixture};
use common::{TestServer, within};
use remote_tagger::domain::{Entity, EntityId};
use remote_tagger::server::{HostScanner, PROCESS_REFRESH_SCANS, ScanStats, Source, scan_host};

const DOCKER_ID: &str = "3f4a0e2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
const POD_CONTAINER_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const POD_UID: &str = "1d3f2a9c-5b7e-4c1a-9f0e-2b6d8a4c3e1f";

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
            read: 4,
            reused: 0,
            refreshed: 0,
            rechecked: 0,
            untracked: 0,
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
            read: 5,
            reused: 0,
            refreshed: 0,
            rechecked: 0,
            untracked: 0,
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

fn find<'a>(entities: &'a [Entity], id: &str) -> Option<&'a Entity> {
    entities.iter().find(|e| e.id.as_str() == id)
}

fn process_ids(entities: &[Entity]) -> std::collections::HashSet<&str> {
    entities
        .iter()
        .filter(|e| e.id.prefix() == "process")
        .map(|e| e.id.as_str())
        .collect()
}

/// Whether the process `process://PID` has exited (a zombie, or reaped).
fn exited(id: &str) -> bool {
    let pid = id.trim_start_matches("process://");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_or(true, |status| status.contains("\nState:\tZ"))
}

/// Waits until process `pid` runs the program `name`: `spawn` returns once
/// the exec has begun, and for a moment after that the kernel still shows
/// the parent's name.
fn wait_for_exec(pid: u32, name: &str) {
    let comm = format!("/proc/{pid}/comm");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&comm).unwrap() != format!("{name}\n") {
        assert!(Instant::now() < deadline, "{pid} never exec'd {name}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn process_name<'a>(entities: &'a [Entity], id: &str) -> Option<&'a str> {
    find(entities, id)
        .unwrap_or_else(|| panic!("{id} not found"))
        .low
        .iter()
        .find_map(|tag| tag.strip_prefix("process_name:"))
}

/// A shell that becomes `sleep 30` under the same pid when told to.
fn shell_that_execs_sleep(children: &mut Children) -> (u32, std::process::ChildStdin) {
    let shell = children.spawn(
        Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(Stdio::piped()),
    );
    let stdin = shell.stdin.take().expect("a piped stdin");
    let pid = shell.id();
    wait_for_exec(pid, "sh");
    (pid, stdin)
}

fn exec_now(pid: u32, mut stdin: std::process::ChildStdin) {
    writeln!(stdin, "exec now").unwrap();
    wait_for_exec(pid, "sleep");
}

#[test]
fn the_real_proc_is_read_once_per_process_then_served_from_memory() {
    let mut children = Children::default();
    let child = children
        .spawn(Command::new("sleep").arg("30").stdin(Stdio::null()))
        .id();
    wait_for_exec(child, "sleep");
    let child_id = format!("process://{child}");
    let mut scanner = HostScanner::new("/");

    let (first, cold) = scanner.scan();
    let child_entity = find(&first, &child_id)
        .unwrap_or_else(|| panic!("{child_id} not found"))
        .clone();
    assert!(child_entity.low.contains(&"process_name:sleep".to_owned()));
    assert!(child_entity.high.contains(&"cmdline:sleep 30".to_owned()));
    // A new scanner reads everything, and holds a pidfd for each process.
    assert_eq!(
        (
            cold.read,
            cold.reused,
            cold.refreshed,
            cold.rechecked,
            cold.untracked
        ),
        (cold.processes, 0, 0, 0, 0),
        "{cold:?}"
    );

    let (second, warm) = scanner.scan();
    assert_eq!(find(&second, &child_id), Some(&child_entity));
    assert_eq!(warm.reused + warm.read, warm.processes, "{warm:?}");
    // Only the refresh share of what the first scan knew is re-read (a
    // first scan has no new processes to recheck); a process listed by both
    // scans, not refreshed and still running (exited ones, zombies of other
    // tests included, are read again) comes from memory.
    assert_eq!(warm.rechecked, 0);
    assert!(
        warm.refreshed <= cold.processes.div_ceil(PROCESS_REFRESH_SCANS as usize),
        "{warm:?}"
    );
    let in_both = process_ids(&first)
        .intersection(&process_ids(&second))
        .filter(|id| !exited(id))
        .count();
    assert!(
        in_both > 1 && warm.reused >= in_both - warm.refreshed,
        "{in_both} in both: {warm:?}"
    );

    children.kill_all();
    let (third, _) = scanner.scan();
    assert_eq!(find(&third, &child_id), None, "the reaped child is gone");
}

#[test]
fn a_process_that_execs_is_seen_within_the_refresh_bound() {
    let mut children = Children::default();
    let (pid, stdin) = shell_that_execs_sleep(&mut children);
    let id = format!("process://{pid}");
    let mut scanner = HostScanner::new("/");
    assert_eq!(process_name(&scanner.scan().0, &id), Some("sh"));

    exec_now(pid, stdin);
    for scans_since_exec in 1..=PROCESS_REFRESH_SCANS {
        let (entities, stats) = scanner.scan();
        assert_eq!(stats.reused + stats.read, stats.processes, "{stats:?}");
        match process_name(&entities, &id) {
            Some("sleep") => return,
            Some("sh") => {}
            other => panic!("scan {scans_since_exec}: name {other:?}"),
        }
    }
    panic!("still named sh {PROCESS_REFRESH_SCANS} scans after its exec");
}

#[test]
fn a_process_new_at_one_scan_is_read_again_at_the_next() {
    let mut scanner = HostScanner::new("/");
    scanner.scan();
    let mut children = Children::default();
    let (pid, stdin) = shell_that_execs_sleep(&mut children);
    let id = format!("process://{pid}");
    let (entities, _) = scanner.scan();
    assert_eq!(process_name(&entities, &id), Some("sh"));

    // As if the last scan had caught it between fork and exec.
    exec_now(pid, stdin);
    let (entities, stats) = scanner.scan();
    assert_eq!(process_name(&entities, &id), Some("sleep"));
    assert!(stats.rechecked >= 1, "{stats:?}");
}

#[test]
fn a_process_that_exited_is_read_again_not_served_from_memory() {
    let mut children = Children::default();
    let pid = children
        .spawn(Command::new("sleep").arg("30").stdin(Stdio::null()))
        .id();
    wait_for_exec(pid, "sleep");
    let id = format!("process://{pid}");
    let mut scanner = HostScanner::new("/");
    let (entities, _) = scanner.scan();
    assert!(
        find(&entities, &id)
            .unwrap()
            .high
            .contains(&"cmdline:sleep 30".to_owned())
    );

    // Killed and not reaped: a zombie, still listed under its pid, its
    // command line gone. An exited process is never taken from memory.
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    assert!(killed.unwrap().success());
    // Wait for state Z, not just an empty cmdline: the kernel drops the
    // command line before it marks the process exited (and wakes pidfds).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_zombie(pid) {
        assert!(Instant::now() < deadline, "{pid} never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (entities, _) = scanner.scan();
    let zombie = find(&entities, &id).expect("a zombie is still listed");
    assert_eq!(zombie.high, [format!("pid:{pid}")], "{zombie:?}");
    assert_eq!(process_name(&entities, &id), Some("sleep"));
}

#[test]
fn a_fixture_root_is_read_whole_at_every_scan() {
    let root = tempfile::tempdir().unwrap();
    copy_tree(&fixture("host-cgroup-v2"), root.path());
    let mut scanner = HostScanner::new(root.path());
    scanner.scan();
    // Its pids are not this machine's: nothing is remembered, a change shows
    // at the next scan.
    std::fs::write(
        root.path().join("proc/1/status"),
        "Name:\tinit\nUid:\t0\t0\t0\t0\n",
    )
    .unwrap();
    let (entities, stats) = scanner.scan();
    assert_eq!((stats.read, stats.reused), (5, 0), "{stats:?}");
    assert_eq!(
        find(&entities, "process://1"),
        Some(&process(1, "init", "root", "/sbin/init", None))
    );
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

/// Whether `/proc/PID/stat` says the process is a zombie (state `Z`, after
/// the command name, which may hold spaces and parentheses).
fn is_zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, after_name) = stat.rsplit_once(')').unwrap();
    after_name.trim_start().starts_with('Z')
}
