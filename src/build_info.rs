//! What was built, for `--version`-like reports (a flare's `version.txt`,
//! the `remote_tagger_build_info` metric). Filled in by `build.rs`.

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `git describe --always --dirty --tags` at build time, or "unknown".
pub const GIT_DESCRIBE: &str = env!("REMOTE_TAGGER_GIT_DESCRIBE");
/// `rustc --version` of the compiler that built this, or "unknown".
pub const RUSTC_VERSION: &str = env!("REMOTE_TAGGER_RUSTC_VERSION");
/// The target triple built for.
pub const TARGET: &str = env!("REMOTE_TAGGER_BUILD_TARGET");

/// All of it, one fact a line.
pub fn report() -> String {
    format!(
        "remote-tagger {VERSION}\ngit: {GIT_DESCRIBE}\nrustc: {RUSTC_VERSION}\ntarget: {TARGET}\n"
    )
}
