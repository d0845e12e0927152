//! `remote-tagger origin` end to end: `serve` of a host source on a fixture
//! root in one process, `origin` in another, as `remote-tagger origin --pid
//! $$` is run in a shell.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::binary::{BINARY, Running, command};
use common::host_fixtures::{copy_tree, fixture};
use common::plain_datadog::{PlainDatadog, Script};

const CRIO_APP: &str = "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
const CRIO_POD_UID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const CRIO_APP_CGROUP: &str = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c9e6679_7425_40de_944b_e07fc1f90ae7.slice/crio-5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f.scope";

/// `serve` with `args` and its home, and the address it reports.
fn serve(home: &Path, args: &[&str]) -> (Running, String) {
    let mut server = Running::start(&mut command(
        home,
        &[&["serve", "--listen", "127.0.0.1:0"], args].concat(),
    ));
    let address = server.wait_for_listen_address();
    (server, address)
}

/// Its standard output, once it succeeded.
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A shell that puts itself in the CRI-O fixture's app container (its
/// `proc/$$/cgroup` under the host root says so) and execs `origin --pid
/// $$`: the process asks for its own container.
fn origin_of_the_shell(
    home: &Path,
    root: &Path,
    address: &str,
    extra: &[&str],
) -> std::process::Output {
    let script = r#"root=$1 binary=$2; shift 2
mkdir -p "$root/proc/$$" && printf '%s\n' "$CGROUP" > "$root/proc/$$/cgroup" &&
exec "$binary" origin --pid $$ "$@""#;
    Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(root)
        .arg(BINARY)
        .env("CGROUP", CRIO_APP_CGROUP)
        .env("REMOTE_TAGGER_HOME", home)
        .env("REMOTE_TAGGER_TARGET", address)
        .args(extra)
        .output()
        .expect("sh runs")
}

#[test]
fn origin_of_its_own_pid_prints_its_container_then_the_containers_tags() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("host");
    copy_tree(&fixture("host-kubelet-crio"), &root);
    let (_server, address) = serve(
        home.path(),
        &["--source", "host", "--host-root", root.to_str().unwrap()],
    );

    let human = origin_of_the_shell(home.path(), &root, &address, &[]);
    assert_eq!(
        succeeded(&human),
        format!(
            "{CRIO_APP}\nruntime:cri-o\nkube_container_name:app\npod_uid:{CRIO_POD_UID}\ncontainer_id:{CRIO_APP}\n"
        )
    );

    let json = origin_of_the_shell(
        home.path(),
        &root,
        &address,
        &["--json", "--cardinality", "low"],
    );
    let json: serde_json::Value = serde_json::from_str(&succeeded(&json)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"container_id": CRIO_APP, "tags": ["runtime:cri-o", "kube_container_name:app"]})
    );

    let by_name = command(
        home.path(),
        &[
            "origin",
            "--pod-uid",
            CRIO_POD_UID,
            "--container-name",
            "app",
            "--target",
            &address,
        ],
    )
    .output()
    .unwrap();
    assert!(succeeded(&by_name).starts_with(&format!("{CRIO_APP}\n")));
}

/// A source without a host answers no container: one line naming the
/// server, exit 1, and the server says why at debug level.
#[test]
fn no_container_is_one_clear_line_and_the_server_says_why_at_debug_level() {
    let home = tempfile::tempdir().unwrap();
    let (mut server, address) = serve(
        home.path(),
        &["--source", "workload", "--log-level", "remote_tagger=debug"],
    );
    let pid = std::process::id().to_string();
    let output = command(
        home.path(),
        &["origin", "--pid", &pid, "--target", &address],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&address) && stderr.contains("no container"),
        "{stderr}"
    );
    server.wait_for_stderr("this source knows no processes, cgroups or pods of the host");
}

/// Against a server shaped like a plain Datadog Agent, whose handler
/// dereferences every field: our request carries them all, so a named
/// container is answered and the Agent's own error comes back as one line.
#[test]
fn a_plain_datadog_agent_gets_every_field_and_its_error_is_shown() {
    let container = "container_id://0123abc";
    let server = PlainDatadog::start(Script::Serving {
        entities: vec![common::entity(
            container,
            &["env:prod"],
            &[],
            &["container_id:0123abc"],
        )],
    });
    let home = tempfile::tempdir().unwrap();
    let client_args = server.client_args();
    let run = |origin: &[&str]| {
        let args: Vec<&str> = ["origin"]
            .iter()
            .copied()
            .chain(origin.iter().copied())
            .chain(client_args.iter().map(String::as_str))
            .collect();
        command(home.path(), &args).output().unwrap()
    };
    let named = run(&["--container-id", "0123abc"]);
    assert_eq!(
        succeeded(&named),
        "0123abc\nenv:prod\ncontainer_id:0123abc\n"
    );

    // The answer comes from the server: shown escaped, as every server text.
    let hostile = run(&["--container-id", "ab\u{1b}[2Jc\nforged"]);
    assert_eq!(succeeded(&hostile), "ab\\x1b[2Jc\\nforged\n");

    let unresolved = run(&["--pid", "1"]);
    assert_eq!(unresolved.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unresolved.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("unable to resolve container ID"),
        "{stderr}"
    );
    assert!(!stderr.contains("nil pointer"), "{stderr}");
}
