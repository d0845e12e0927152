//! Compiles `proto/` with protox (pure Rust): building needs no system `protoc`.
//! Also keeps the encoded descriptor set (for gRPC server reflection) and the
//! build facts a flare reports (git describe, rustc version, target).

use std::path::PathBuf;
use std::process::Command;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/datadog/model/v1/model.proto",
        "proto/datadog/api/v1/api.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("tagger_descriptor_set.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(descriptors)?;
    // Our twin of the service (see the file's comment): its own compile,
    // since it redefines `datadog.api.v1.AgentSecure`, into its own
    // directory, reusing the model types generated above.
    let encoded_dir = out_dir.join("encoded");
    std::fs::create_dir_all(&encoded_dir)?;
    tonic_prost_build::configure()
        .build_transport(false)
        .extern_path(".datadog.model.v1", "crate::proto::model")
        .bytes(".datadog.api.v1.EncodedStreamTagsResponse.events")
        .out_dir(&encoded_dir)
        .compile_fds(protox::compile(
            ["proto/remote_tagger/encoded.proto"],
            ["proto"],
        )?)?;
    emit_build_info();
    Ok(())
}

/// `REMOTE_TAGGER_GIT_DESCRIBE`, `REMOTE_TAGGER_RUSTC_VERSION` and
/// `REMOTE_TAGGER_BUILD_TARGET` for `version.txt` in a flare; "unknown"
/// where a fact cannot be had (a build from a source tarball has no git).
/// Cargo also sets these in the environment of `cargo run` and `cargo test`,
/// so none may share a name with a flag's variable (`REMOTE_TAGGER_TARGET`
/// is `--target`'s).
fn emit_build_info() {
    let describe = command_output("git", &["describe", "--always", "--dirty", "--tags"]);
    println!(
        "cargo:rustc-env=REMOTE_TAGGER_GIT_DESCRIBE={}",
        describe.as_deref().unwrap_or("unknown")
    );
    // Rebuild the facts after a commit or checkout: the reflog of HEAD
    // changes on both (a worktree has its own).
    if let Some(reflog) = command_output("git", &["rev-parse", "--git-path", "logs/HEAD"])
        && std::path::Path::new(&reflog).exists()
    {
        println!("cargo:rerun-if-changed={reflog}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = command_output(&rustc, &["--version"]);
    println!(
        "cargo:rustc-env=REMOTE_TAGGER_RUSTC_VERSION={}",
        rustc_version.as_deref().unwrap_or("unknown")
    );
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=REMOTE_TAGGER_BUILD_TARGET={target}");
}

/// The trimmed standard output of a command that succeeded, else `None`.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
