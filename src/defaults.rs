//! Shared defaults, so `remote-tagger serve` and a client (the CLI, or an
//! application embedding the library) find each other with no flags.

use std::path::PathBuf;

/// Where a client looks for a tagger, and where `serve` listens: the Datadog
/// core agent's IPC port on loopback.
pub const TARGET: &str = "127.0.0.1:5001";

/// The folder of the token and certificate files: `$REMOTE_TAGGER_HOME`,
/// else `$XDG_CONFIG_HOME/remote-tagger`, else `~/.config/remote-tagger`.
pub fn config_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("REMOTE_TAGGER_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(xdg).join("remote-tagger");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".config").join("remote-tagger"),
        None => PathBuf::from(".remote-tagger"),
    }
}

/// The bearer token file `serve` creates and clients read.
pub fn auth_token_file() -> PathBuf {
    config_dir().join("auth_token")
}

/// The certificate `serve` creates (certificate then key) and clients verify
/// against.
pub fn cert_file() -> PathBuf {
    config_dir().join("ipc_cert.pem")
}
