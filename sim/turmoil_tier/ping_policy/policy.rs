//! grpc-go's server-side HTTP/2 PING policy as a pure state machine (times
//! are inputs): what a Datadog Agent, a grpc-go server with the default
//! `keepalive.EnforcementPolicy`, does with each PING of a client.
//!
//! Read from grpc/grpc-go `internal/transport/http2_server.go` (commit
//! 32559e2175a5c793c47df0b214775affde5ac35e): `handlePing`, the constants
//! `maxPingStrikes = 2` and `defaultPingTimeout = 2 * time.Hour`, the
//! `resetPingStrikes` flag that `writeHeaderLocked`, `WriteStatus` and each
//! DATA frame write (`onEachWrite`) set, and `kep.MinTime` defaulting to
//! `defaultKeepalivePolicyMinTime` (5 minutes; `PermitWithoutStream` false).
//! In order, for a PING that is not an ACK:
//! 1. the ACK is queued, and whatever happens `lastPingAt` becomes now;
//! 2. if the server sent data or headers since the last PING, the strikes
//!    go back to 0 and nothing else is checked;
//! 3. otherwise the PING is a strike if it comes less than `MinTime` after
//!    the last one (2 hours when no stream is open); the first PING of a
//!    connection never is (`lastPingAt` is Go's zero time);
//! 4. more than 2 strikes: GOAWAY `ENHANCE_YOUR_CALM` with debug data
//!    "too_many_pings", and the connection is closed.

use std::time::Duration;

/// `defaultKeepalivePolicyMinTime`.
pub const MIN_TIME: Duration = Duration::from_secs(5 * 60);
/// `defaultPingTimeout`: the spacing required while no stream is open.
pub const MIN_TIME_WITHOUT_STREAMS: Duration = Duration::from_secs(2 * 60 * 60);
/// `maxPingStrikes`: the strikes tolerated; one more closes the connection.
pub const MAX_PING_STRIKES: u8 = 2;

/// What the server does with one PING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Too early: the strikes so far (at most [`MAX_PING_STRIKES`]).
    Strike(u8),
    /// One strike too many: GOAWAY "too_many_pings" and close.
    TooManyPings,
}

/// The policy's state for one connection.
#[derive(Debug, Clone)]
pub struct PingPolicy {
    min_time: Duration,
    /// When the last PING came, on any clock that only moves forward.
    last_ping_at: Option<Duration>,
    strikes: u8,
    /// Set when the server sends DATA or HEADERS (`resetPingStrikes`).
    reset_strikes: bool,
}

impl Default for PingPolicy {
    /// grpc-go's defaults.
    fn default() -> Self {
        Self {
            min_time: MIN_TIME,
            last_ping_at: None,
            strikes: 0,
            reset_strikes: false,
        }
    }
}

impl PingPolicy {
    /// The server wrote a DATA or HEADERS frame (trailers included).
    pub fn server_sent_data_or_headers(&mut self) {
        self.reset_strikes = true;
    }

    /// A client PING (not an ACK) arriving at `now`, with `open_streams`
    /// streams open on the connection.
    pub fn client_ping(&mut self, now: Duration, open_streams: usize) -> Verdict {
        let last = self.last_ping_at.replace(now);
        if std::mem::take(&mut self.reset_strikes) {
            self.strikes = 0;
            return Verdict::Allowed;
        }
        let min_time = if open_streams == 0 {
            MIN_TIME_WITHOUT_STREAMS
        } else {
            self.min_time
        };
        // A strike is Go's `lastPingAt.Add(min).After(now)`: strictly sooner.
        if last.is_none_or(|last| last + min_time <= now) {
            return Verdict::Allowed;
        }
        self.strikes += 1;
        if self.strikes > MAX_PING_STRIKES {
            Verdict::TooManyPings
        } else {
            Verdict::Strike(self.strikes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn minutes(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn the_third_early_ping_without_data_closes_the_connection() {
        let mut policy = PingPolicy::default();
        // The first PING of a connection is never early.
        assert_eq!(policy.client_ping(SECOND, 1), Verdict::Allowed);
        assert_eq!(policy.client_ping(21 * SECOND, 1), Verdict::Strike(1));
        assert_eq!(policy.client_ping(41 * SECOND, 1), Verdict::Strike(2));
        assert_eq!(policy.client_ping(61 * SECOND, 1), Verdict::TooManyPings);
    }

    #[test]
    fn min_time_apart_is_allowed_and_a_hair_less_is_a_strike() {
        let mut policy = PingPolicy::default();
        assert_eq!(policy.client_ping(minutes(1), 1), Verdict::Allowed);
        // Exactly MinTime later: `last + MinTime > now` is false.
        assert_eq!(policy.client_ping(minutes(6), 1), Verdict::Allowed);
        let early = minutes(11) - Duration::from_millis(1);
        assert_eq!(policy.client_ping(early, 1), Verdict::Strike(1));
        // Strikes only reset on data; spacing alone does not forgive.
        assert_eq!(policy.client_ping(minutes(30), 1), Verdict::Allowed);
        let early = minutes(31);
        assert_eq!(policy.client_ping(early, 1), Verdict::Strike(2));
    }

    #[test]
    fn data_or_headers_from_the_server_forgive_the_next_ping_and_reset_strikes() {
        let mut policy = PingPolicy::default();
        policy.client_ping(SECOND, 1);
        assert_eq!(policy.client_ping(2 * SECOND, 1), Verdict::Strike(1));
        assert_eq!(policy.client_ping(3 * SECOND, 1), Verdict::Strike(2));
        policy.server_sent_data_or_headers();
        assert_eq!(policy.client_ping(4 * SECOND, 1), Verdict::Allowed);
        // The flag is spent by one PING; counting starts over from 0.
        assert_eq!(policy.client_ping(5 * SECOND, 1), Verdict::Strike(1));
        assert_eq!(policy.client_ping(6 * SECOND, 1), Verdict::Strike(2));
        assert_eq!(policy.client_ping(7 * SECOND, 1), Verdict::TooManyPings);
    }

    #[test]
    fn without_an_open_stream_pings_must_be_two_hours_apart() {
        let mut policy = PingPolicy::default();
        assert_eq!(policy.client_ping(minutes(1), 0), Verdict::Allowed);
        assert_eq!(policy.client_ping(minutes(61), 0), Verdict::Strike(1));
        // With a stream open, the same spacing is fine.
        assert_eq!(policy.client_ping(minutes(121), 1), Verdict::Allowed);
        assert_eq!(policy.client_ping(minutes(240), 0), Verdict::Strike(2));
        assert_eq!(policy.client_ping(minutes(362), 0), Verdict::Allowed);
    }

    #[test]
    fn every_ping_moves_the_last_ping_time_even_a_forgiven_or_struck_one() {
        let mut policy = PingPolicy::default();
        policy.client_ping(minutes(0), 1);
        policy.server_sent_data_or_headers();
        // Forgiven, but it still counts as the last PING...
        assert_eq!(policy.client_ping(minutes(1), 1), Verdict::Allowed);
        // ...so 5 minutes after the first is early.
        assert_eq!(policy.client_ping(minutes(5), 1), Verdict::Strike(1));
        // A struck PING moves it too.
        assert_eq!(policy.client_ping(minutes(9), 1), Verdict::Strike(2));
        assert_eq!(policy.client_ping(minutes(14), 1), Verdict::Allowed);
    }
}
