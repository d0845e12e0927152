//! A server's text reaches a person's terminal escaped: entity ids, tags
//! and error messages with newlines, NUL, ANSI escape sequences or
//! bidirectional controls forge no row and drive no terminal in the
//! `list`, `get` and `watch` output, progress and error lines. `--json`
//! output is JSON's own, byte for byte.

mod common;

use std::time::Duration;

use common::binary::{Running, command};
use common::plain_datadog::{PlainDatadog, Script};
use remote_tagger::domain::{Entity, EntityId};

/// An id that forges a table row and recolours the terminal.
const HOSTILE_ID: &str = "container_id://evil\n+ container_id://forged \x1b[31mred";
const HOSTILE_TAGS: [&str; 5] = [
    "title:\x1b]0;owned\x07",
    "nul:\0end",
    "clear:\x1b[2J\r",
    "bidi:\u{202e}txt.exe",
    "ok:café-日本",
];
/// The same, as the human output shows them.
const SHOWN_ID: &str = r"container_id://evil\n+ container_id://forged \x1b[31mred";
const SHOWN_TAGS: [&str; 5] = [
    r"title:\x1b]0;owned\x07",
    r"nul:\0end",
    r"clear:\x1b[2J\r",
    r"bidi:\u{202e}txt.exe",
    "ok:café-日本",
];

fn hostile_server() -> PlainDatadog {
    let mut entity = Entity::new(EntityId::parse(HOSTILE_ID).unwrap());
    entity.low = HOSTILE_TAGS.map(str::to_owned).to_vec();
    PlainDatadog::start(Script::Serving {
        entities: vec![entity],
    })
}

/// `args` against `server`, run to its end: (success, stdout, stderr).
fn run(server: &PlainDatadog, args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().unwrap();
    let output = command(home.path(), args)
        .args(server.client_args())
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (
        output.status.success(),
        text(output.stdout),
        text(output.stderr),
    )
}

/// No character that drives a terminal, but the newlines ending lines.
fn assert_inert(text: &str) {
    let driving = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    assert!(
        !text.chars().any(driving),
        "raw control characters in {text:?}"
    );
}

#[test]
fn list_shows_a_hostile_entity_as_one_escaped_row() {
    let server = hostile_server();
    let (ok, stdout, stderr) = run(&server, &["list", "--settle-ms", "200"]);
    assert!(ok, "{stderr}");
    assert_inert(&stdout);
    assert_inert(&stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "header, one row, count: {stdout}");
    assert_eq!(
        lines[1],
        format!("{SHOWN_ID}  {}", SHOWN_TAGS.join(" ")),
        "{stdout}"
    );
}

#[test]
fn list_json_carries_the_text_as_it_is() {
    let server = hostile_server();
    let (ok, stdout, stderr) = run(&server, &["list", "--json", "--settle-ms", "200"]);
    assert!(ok, "{stderr}");
    let expected =
        serde_json::json!({"entities": {HOSTILE_ID: {"tags": {"remote": HOSTILE_TAGS}}}});
    let mut expected = serde_json::to_string_pretty(&expected).unwrap();
    expected.push('\n');
    assert_eq!(stdout, expected);
}

#[test]
fn get_shows_one_escaped_tag_a_line_and_json_as_it_is() {
    let server = hostile_server();
    let (ok, stdout, stderr) = run(&server, &["get", HOSTILE_ID]);
    assert!(ok, "{stderr}");
    assert_inert(&stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), SHOWN_TAGS);
    let (ok, stdout, _) = run(&server, &["get", "--json", HOSTILE_ID]);
    assert!(ok);
    assert_eq!(stdout, format!("{}\n", serde_json::json!(HOSTILE_TAGS)));
}

#[test]
fn watch_shows_a_hostile_change_as_one_escaped_line() {
    let server = hostile_server();
    let home = tempfile::tempdir().unwrap();
    let mut watch = command(home.path(), &["watch"]);
    watch.args(server.client_args());
    let mut watch = Running::start(&mut watch);
    let line = watch.wait_for_stdout("+ ");
    assert_eq!(line, format!("+ {SHOWN_ID} {}", SHOWN_TAGS.join(" ")));
    watch.signal(libc::SIGINT);
    watch.exit_within(Duration::from_secs(10)).unwrap();
    assert_inert(&watch.stdout_after_exit());
    assert_inert(&watch.stderr_after_exit());
}

/// A gRPC status message is the server's text too: in progress and error
/// lines it is escaped, and an error stays one line.
#[test]
fn a_hostile_error_message_stays_one_escaped_line() {
    let server = PlainDatadog::start(Script::Failing {
        message: "boom\nremote-tagger: synced: 0 entities\x1b[2J".to_owned(),
    });
    let shown = r"boom\nremote-tagger: synced: 0 entities\x1b[2J";
    let (ok, _, stderr) = run(&server, &["get", "container_id://abc"]);
    assert!(!ok);
    assert_inert(&stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(shown), "{stderr}");

    let (ok, _, stderr) = run(&server, &["list", "--wait-secs", "1"]);
    assert!(!ok);
    assert_inert(&stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("remote-tagger: error: not synced") && last.contains(shown),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("retrying") && line.contains(shown)),
        "{stderr}"
    );
}
