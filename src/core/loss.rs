//! Why an attempt or a stream ended, typed: what the driver reports to the
//! core (`handle_connect_failed`, `handle_stream_closed`), what the core
//! announces ([`Event::ConnectionLost`](super::Event::ConnectionLost)) and
//! what a status keeps. An application tells a refused token from an outage
//! or a misbehaving server by matching; `Display` gives the one line an
//! operator reads.
//!
//! The core depends on no gRPC library: the driver translates its library's
//! errors into these types, with the library's words as the `detail` or
//! `message` of a variant that says what happened.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A gRPC status code (the numbers of gRPC's `codes.proto`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// 0: not an error; a stream that ends with it ended normally.
    Ok,
    /// 1: the call was cancelled, usually by the caller.
    Cancelled,
    /// 2: an error the server could not classify.
    Unknown,
    /// 3: the request was malformed.
    InvalidArgument,
    /// 4: the deadline passed before the call completed.
    DeadlineExceeded,
    /// 5: what the call names does not exist.
    NotFound,
    /// 6: what the call would create exists already.
    AlreadyExists,
    /// 7: the caller may not do this.
    PermissionDenied,
    /// 8: a limit was reached (memory, streams, or a client too slow to keep
    /// up).
    ResourceExhausted,
    /// 9: the server is not in a state to do this.
    FailedPrecondition,
    /// 10: aborted by a concurrent operation.
    Aborted,
    /// 11: an argument outside its valid range.
    OutOfRange,
    /// 12: the server does not implement this method.
    Unimplemented,
    /// 13: a server-side invariant broke.
    Internal,
    /// 14: the service is unavailable for now (e.g. shutting down): retry
    /// later.
    Unavailable,
    /// 15: data was lost or corrupted.
    DataLoss,
    /// 16: the request's credentials were missing or refused: the token.
    Unauthenticated,
}

impl StatusCode {
    const BY_NUMBER: [StatusCode; 17] = [
        Self::Ok,
        Self::Cancelled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The code of a gRPC status number; a number gRPC does not define is
    /// `Unknown`, as gRPC libraries read it.
    pub fn from_i32(number: i32) -> Self {
        usize::try_from(number)
            .ok()
            .and_then(|index| Self::BY_NUMBER.get(index).copied())
            .unwrap_or(Self::Unknown)
    }

    /// gRPC's number for this code.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// The code's canonical gRPC name in CamelCase (`Unauthenticated`), the
/// form error lines have always shown.
impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A gRPC status a server sent: its code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct GrpcStatus {
    /// The status code.
    pub code: StatusCode,
    /// The server's message, as sent.
    pub message: String,
}

/// Why a connection was lost: the attempt failed, or its stream ended.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LossReason {
    /// The attempt could not open its stream.
    #[error("connect failed: {0}")]
    ConnectFailed(ConnectError),
    /// The open stream ended.
    #[error("stream closed: {0}")]
    StreamClosed(StreamEnd),
    /// The stream was silent (not even a keep-alive) for `silent_for`, the
    /// receive timeout: the core dropped it.
    #[error("receive timeout: no message for {silent_for:?}")]
    ReceiveTimeout {
        /// How long it was silent: the configured receive timeout.
        silent_for: Duration,
    },
    /// The server broke the protocol: the core dropped the stream.
    #[error("protocol violation: {0}")]
    ProtocolViolation(ProtocolViolation),
}

/// Why an attempt could not open its stream.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the open with an error status:
    /// `Unauthenticated` is a refused token.
    #[error(transparent)]
    Refused(GrpcStatus),
    /// The connection could not be made or broke before the stream opened.
    #[error(transparent)]
    Transport(TransportError),
    /// The bearer token file could not be used (it is read for every
    /// attempt, so fixing the file fixes the next one).
    #[error(transparent)]
    AuthToken(AuthTokenError),
    /// A TLS file could not be used (read for every attempt too).
    #[error(transparent)]
    TlsFile(TlsFileError),
}

/// How an open stream ended.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamEnd {
    /// The server ended the stream without an error status.
    #[error("server ended the stream")]
    Finished,
    /// The server ended it with this status (`Unavailable` when it shuts
    /// down, `ResourceExhausted` when this client fell behind...).
    #[error(transparent)]
    Status(GrpcStatus),
    /// The connection under the stream broke.
    #[error(transparent)]
    Transport(TransportError),
}

/// A connection that could not be made, or broke: what kind of failure,
/// and the transport's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct TransportError {
    /// What kind of failure, for deciding what to do.
    pub kind: TransportErrorKind,
    /// One line, the transport's causes included.
    pub detail: String,
}

/// What an application decides on when a connection fails.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportErrorKind {
    /// Nothing accepted the connection: refused, reset, or no route to the
    /// target.
    Unreachable,
    /// The connect or the TLS handshake did not finish in time, or the
    /// connection stopped answering (an HTTP/2 PING went unanswered).
    TimedOut,
    /// The TLS handshake failed: the server's certificate is not trusted,
    /// or the server refused ours.
    Tls,
    /// Any other failure (an HTTP/2 protocol error, a broken pipe...).
    Other,
}

/// The bearer token file, and why it could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct AuthTokenError {
    /// The token file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: AuthTokenProblem,
}

/// What is wrong with a token file.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthTokenProblem {
    /// It could not be read; `message` is the system's.
    Unreadable {
        /// The I/O error's kind (`NotFound`, `PermissionDenied`...).
        kind: std::io::ErrorKind,
        /// The system's message.
        message: String,
    },
    /// It holds nothing but whitespace.
    Empty,
    /// It holds characters an HTTP header cannot carry.
    NotAHeaderValue,
}

impl AuthTokenError {
    fn describe(&self) -> String {
        let path = self.path.display();
        match &self.problem {
            AuthTokenProblem::Unreadable { message, .. } => {
                format!("cannot read auth token file {path}: {message}")
            }
            AuthTokenProblem::Empty => format!("auth token file {path} is empty"),
            AuthTokenProblem::NotAHeaderValue => {
                "the auth token holds characters not allowed in a header".to_owned()
            }
        }
    }
}

/// A TLS file the client reads (its trust file or its certificate file),
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct TlsFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: TlsFileProblem,
}

/// What is wrong with a TLS file.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFileProblem {
    /// It could not be read; `message` is the system's.
    #[error("cannot read certificates: {message}")]
    Unreadable {
        /// The I/O error's kind (`NotFound`, `PermissionDenied`...).
        kind: std::io::ErrorKind,
        /// The system's message.
        message: String,
    },
    /// It is not valid PEM.
    #[error("malformed PEM: {message}")]
    MalformedPem {
        /// The PEM parser's reason.
        message: String,
    },
    /// It is PEM but holds no `CERTIFICATE` block.
    #[error("holds no PEM certificate")]
    NoCertificate,
    /// A certificate file to present holds no key after its certificate.
    #[error("holds no PEM private key after its certificate")]
    NoPrivateKey,
    /// Its certificates cannot serve to verify servers; `message` is the
    /// TLS library's.
    #[error("{message}")]
    UnusableTrust {
        /// The TLS library's reason.
        message: String,
    },
    /// Its certificate and key cannot be presented to servers.
    #[error("its certificate and key are not usable as a client certificate: {message}")]
    UnusableClientCertificate {
        /// The TLS library's reason.
        message: String,
    },
}

/// How the server broke the protocol.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// It resumed the stream from an epoch the mirror never synced from.
    #[error("resumed epoch {epoch:?} we never synced from")]
    ResumedUnknownEpoch {
        /// The epoch it claimed.
        epoch: String,
    },
    /// Its epoch changed while it sent a snapshot.
    #[error("epoch changed mid-snapshot from {from:?} to {to:?}")]
    EpochChangedMidSnapshot {
        /// The epoch the snapshot started in.
        from: String,
        /// The epoch it changed to.
        to: String,
    },
    /// Its epoch changed on a synced stream.
    #[error("epoch changed mid-stream from {from:?} to {to:?}")]
    EpochChangedMidStream {
        /// The epoch the stream synced in.
        from: String,
        /// The epoch it changed to.
        to: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip_their_numbers_and_unknown_numbers_are_unknown() {
        for (number, code) in StatusCode::BY_NUMBER.iter().enumerate() {
            assert_eq!(StatusCode::from_i32(number as i32), *code);
            assert_eq!(code.as_i32(), number as i32);
        }
        assert_eq!(StatusCode::from_i32(16), StatusCode::Unauthenticated);
        assert_eq!(StatusCode::from_i32(17), StatusCode::Unknown);
        assert_eq!(StatusCode::from_i32(-1), StatusCode::Unknown);
    }

    /// Operators, logs and the simulations' traces have read these lines
    /// since reasons were strings: the types keep them.
    #[test]
    fn reasons_display_as_one_line_with_their_kind_first() {
        let refused = LossReason::ConnectFailed(ConnectError::Refused(GrpcStatus {
            code: StatusCode::Unauthenticated,
            message: "invalid auth token".into(),
        }));
        assert_eq!(
            refused.to_string(),
            "connect failed: Unauthenticated: invalid auth token"
        );
        let finished = LossReason::StreamClosed(StreamEnd::Finished);
        assert_eq!(
            finished.to_string(),
            "stream closed: server ended the stream"
        );
        let silent = LossReason::ReceiveTimeout {
            silent_for: Duration::from_secs(600),
        };
        assert_eq!(silent.to_string(), "receive timeout: no message for 600s");
        let violation = LossReason::ProtocolViolation(ProtocolViolation::EpochChangedMidStream {
            from: "a".into(),
            to: "b".into(),
        });
        assert_eq!(
            violation.to_string(),
            "protocol violation: epoch changed mid-stream from \"a\" to \"b\""
        );
        let token = AuthTokenError {
            path: "/t/auth_token".into(),
            problem: AuthTokenProblem::Empty,
        };
        assert_eq!(token.to_string(), "auth token file /t/auth_token is empty");
        let tls = TlsFileError {
            path: "/t/ipc_cert.pem".into(),
            problem: TlsFileProblem::NoPrivateKey,
        };
        assert_eq!(
            tls.to_string(),
            "/t/ipc_cert.pem: holds no PEM private key after its certificate"
        );
    }
}
