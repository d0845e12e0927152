//! Shared defaults, in one place: the wire spec's constants that the
//! client, the server and the simulations all use, and where `remote-tagger
//! serve` and a client (the CLI, or an application embedding the library)
//! find each other with no flags.
//!
//! Everything here is a constant except the file locations below, which
//! read the environment, and say so.

use std::path::PathBuf;
use std::time::Duration;

/// The Datadog core agent's IPC port (its `cmd_port` default).
pub const PORT: u16 = 5001;

/// Where a client looks for a tagger, and where `serve` listens: the Datadog
/// core agent's IPC port on loopback.
pub const TARGET: &str = "127.0.0.1:5001";

/// The client's receive watchdog: no message (not even a keep-alive) for
/// this long drops the stream (wire spec sections 2 and 4).
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A server sends an empty response (a keep-alive) after this long without
/// a send (wire spec sections 3 and 4), well within [`RECEIVE_TIMEOUT`].
pub const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(9 * 60);

/// How long a server waits for one send to a subscriber before it drops the
/// stream (wire spec sections 3 and 4).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest gRPC message either side accepts (the Datadog default, wire
/// spec section 4).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Responses are cut at this many bytes of events, well within the spec's
/// bound of half the max message size. A 64 KiB response stays in a core's
/// cache from decryption to decoding, on both sides, where a 2 MiB one is
/// evicted between those passes over it. Medians of a 100k-entity sync in
/// one comparison: 152-160 ms with 64 or 128 KiB responses, 190-203 ms with
/// 2 MiB, 182-186 ms with 16, 32 or 256 KiB (BENCHMARKS.md, session 5).
pub const CHUNK_TARGET: usize = 64 * 1024;

/// Snapshots a server sends at once; further subscribers wait.
pub const MAX_CONCURRENT_SNAPSHOTS: usize = 3;

/// The reconnect backoff (wire spec sections 2 and 4, the Datadog Agent's): the
/// first delay is drawn around this interval...
pub const BACKOFF_INITIAL_INTERVAL: Duration = Duration::from_millis(500);
/// ...each failure multiplies the interval by this...
pub const BACKOFF_MULTIPLIER: f64 = 1.5;
/// ...up to this cap...
pub const BACKOFF_MAX_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// ...and each delay is drawn within this fraction of the interval (+-50 %).
pub const BACKOFF_RANDOMIZATION: f64 = 0.5;
/// How long a stream must stay up after its first good message before the
/// backoff goes back to its initial interval (see
/// [`BackoffConfig::reset_after`](crate::core::BackoffConfig::reset_after)).
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

/// The client's limit on a TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Limit on a one-off request (`fetch_entity`, `container_id_from_origin`),
/// connecting included: a server that takes the request and never answers
/// does not hold the caller forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The least time gRPC servers let pass between two PINGs of a client by
/// default: grpc-go's `keepalive.EnforcementPolicy.MinTime` (the Agent is
/// a grpc-go server), C-core's `grpc.http2.min_ping_interval_without_data_ms`.
/// A server that gets PINGs closer together, with no data or headers sent in
/// between, counts strikes, and on the third answers GOAWAY
/// `ENHANCE_YOUR_CALM` "too_many_pings" and closes the connection.
pub const GRPC_SERVER_MIN_PING_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The client's HTTP/2 PING interval. hyper sends a PING once this long has
/// passed without reading anything (a frame of the stream, or the last
/// PING's ACK), so two PINGs are always this long plus a round trip apart,
/// on the server's clock too: the second leaves after the first's ACK came
/// back. 5 minutes would do against grpc-go's strict check; the 10 s more
/// cover a server whose clock runs a little faster or whose check is not
/// strict.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration =
    GRPC_SERVER_MIN_PING_INTERVAL.saturating_add(Duration::from_secs(10));

/// How long a client's PING may go unanswered before the connection is
/// dropped.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The folder of the token and certificate files: `$REMOTE_TAGGER_HOME`,
/// else `$XDG_CONFIG_HOME/remote-tagger`, else `~/.config/remote-tagger`.
/// Reads the environment.
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

/// The bearer token file `serve` creates and clients read, in
/// [`config_dir`] (which reads the environment).
pub fn auth_token_file() -> PathBuf {
    config_dir().join("auth_token")
}

/// The certificate `serve` creates (certificate then key) and clients verify
/// against, in [`config_dir`] (which reads the environment).
pub fn cert_file() -> PathBuf {
    config_dir().join("ipc_cert.pem")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_port_on_loopback() {
        assert_eq!(TARGET, format!("127.0.0.1:{PORT}"));
    }
}
