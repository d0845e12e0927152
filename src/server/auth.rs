//! Bearer-token authentication, as the Datadog Agent's IPC does it: clients
//! send `authorization: Bearer <token>` with the token of a shared file.
//!
//! The token never appears in logs or errors; comparisons take the same time
//! wherever the first differing byte is.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tonic::Status;
use tonic::metadata::MetadataMap;

use super::secret_file::read_or_create;

/// Length of a generated token: 32 random bytes in hex, like the Datadog Agent's.
pub const GENERATED_TOKEN_LEN: usize = 64;

/// Shorter tokens are refused: the Datadog Agent refuses them too, and a
/// short token is guessable.
pub const MIN_TOKEN_LEN: usize = 32;

/// `a == b` in time that depends only on the lengths, not on where the
/// contents differ. Lengths are not secret (tokens have a documented length).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |difference, (x, y)| difference | (x ^ y));
    // Keeps the optimizer from turning the fold into an early-exit loop.
    std::hint::black_box(difference) == 0
}

/// A token; its Debug form is redacted so it cannot leak through logs.
#[derive(Clone, PartialEq, Eq)]
struct Token(Box<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token file's contents are unusable. Describes the contents without
/// quoting them.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing but whitespace.
    #[error("it is empty")]
    Empty,
    /// Fewer characters (given) than [`MIN_TOKEN_LEN`].
    #[error("its token has {0} characters; at least {MIN_TOKEN_LEN} are required")]
    TooShort(usize),
    /// Characters an HTTP header or a token cannot hold.
    #[error("its token contains whitespace or control characters")]
    BadCharacters,
}

impl Token {
    /// The token of a file's contents: surrounding whitespace (a trailing
    /// newline from an editor or `echo`) is ignored.
    fn from_file_contents(contents: &[u8]) -> Result<Self, TokenError> {
        let token = contents.trim_ascii();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.iter().all(u8::is_ascii_graphic) {
            return Err(TokenError::BadCharacters);
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort(token.len()));
        }
        Ok(Self(token.into()))
    }
}

/// Checks the bearer token of every request.
#[derive(Debug)]
pub struct Authenticator {
    source: TokenSource,
}

#[derive(Debug)]
enum TokenSource {
    /// Re-read on every request, so a rotated token takes effect at once.
    /// The last good token stays in force while the file is unreadable or
    /// half-written (a rotation that truncates before it writes).
    File {
        path: PathBuf,
        last_good: Mutex<Token>,
    },
    Fixed(Token),
}

/// Why a token file cannot be used at startup.
#[derive(Debug, thiserror::Error)]
#[error("cannot use auth token file {}: {reason}", path.display())]
pub struct TokenFileError {
    /// The token file.
    pub path: PathBuf,
    /// What is wrong: the system's message or a [`TokenError`].
    pub reason: String,
}

impl Authenticator {
    /// Uses the token in `path`, creating the file with a fresh random
    /// 64-hex-character token (mode 0600, parent directories created) when
    /// it does not exist.
    pub fn from_token_file(path: impl Into<PathBuf>) -> Result<Self, TokenFileError> {
        let path = path.into();
        let error = |reason: String| TokenFileError {
            path: path.clone(),
            reason,
        };
        let (contents, created) =
            read_or_create(&path, generate_token).map_err(|e| error(e.to_string()))?;
        let token = Token::from_file_contents(&contents).map_err(|e| {
            error(format!(
                "{e} (write a token of 64 hex characters, or delete the file to have one generated)"
            ))
        })?;
        if created {
            tracing::info!(path = %path.display(), "created a new auth token file");
        }
        Ok(Self {
            source: TokenSource::File {
                path,
                last_good: Mutex::new(token),
            },
        })
    }

    /// A fixed token, for simulations and tests that have no token file.
    pub fn fixed(token: &str) -> Result<Self, TokenError> {
        Ok(Self {
            source: TokenSource::Fixed(Token::from_file_contents(token.as_bytes())?),
        })
    }

    /// The path of the token file, if the token comes from one.
    pub fn token_file(&self) -> Option<&Path> {
        match &self.source {
            TokenSource::File { path, .. } => Some(path),
            TokenSource::Fixed(_) => None,
        }
    }

    /// `Ok` when `metadata` carries `authorization: Bearer <the token>`.
    pub(crate) async fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let presented = bearer_token(metadata)?;
        let expected = self.current_token();
        if constant_time_eq(presented, &expected.0) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid auth token"))
        }
    }

    /// The token in force. The file is read with a blocking read, on
    /// purpose: a few dozen bytes on a local disk, once per request, cost less
    /// than `tokio::fs`'s hop to the blocking pool, and that hop completes on
    /// a real thread at a real-time moment, which made the turmoil
    /// simulations non-deterministic.
    fn current_token(&self) -> Token {
        match &self.source {
            TokenSource::Fixed(token) => token.clone(),
            TokenSource::File { path, last_good } => {
                let fresh = match std::fs::read(path) {
                    Ok(contents) => Token::from_file_contents(&contents).map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                let mut last_good = last_good.lock().unwrap_or_else(PoisonError::into_inner);
                match fresh {
                    Ok(token) => *last_good = token,
                    Err(reason) => tracing::warn!(
                        path = %path.display(),
                        "cannot use the auth token file ({reason}); still accepting the last good token"
                    ),
                }
                last_good.clone()
            }
        }
    }
}

/// The token of an `authorization: Bearer <token>` header (scheme matched
/// case-insensitively, like the Datadog Agent does).
fn bearer_token(metadata: &MetadataMap) -> Result<&[u8], Status> {
    let missing = || {
        Status::unauthenticated(
            "missing auth token (send metadata \"authorization: Bearer <token>\")",
        )
    };
    let value = metadata.get("authorization").ok_or_else(missing)?;
    let value = value.as_encoded_bytes();
    let space = value.iter().position(|&b| b == b' ').ok_or_else(missing)?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Status::unauthenticated(
            "unsupported authorization scheme (expected \"Bearer <token>\")",
        ));
    }
    Ok(token.trim_ascii())
}

fn generate_token() -> Result<Vec<u8>, getrandom::Error> {
    let mut bytes = [0u8; GENERATED_TOKEN_LEN / 2];
    getrandom::getrandom(&mut bytes)?;
    Ok(bytes
        .iter()
        .flat_map(|byte| {
            let hex = b"0123456789abcdef";
            [hex[usize::from(byte >> 4)], hex[usize::from(byte & 0xf)]]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"xbcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdex"));
        assert!(!constant_time_eq(b"abcdef", b"abcde"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn token_contents_are_validated_without_quoting_them() {
        let good = "a".repeat(64);
        assert!(Token::from_file_contents(format!("{good}\n").as_bytes()).is_ok());
        assert_eq!(Token::from_file_contents(b" \n"), Err(TokenError::Empty));
        assert_eq!(
            Token::from_file_contents(b"short"),
            Err(TokenError::TooShort(5))
        );
        let with_space = format!("{} {}", "a".repeat(20), "b".repeat(20));
        assert_eq!(
            Token::from_file_contents(with_space.as_bytes()),
            Err(TokenError::BadCharacters)
        );
        assert_eq!(
            format!("{:?}", Token(good.as_bytes().into())),
            "Token(<redacted>)"
        );
    }

    #[test]
    fn generated_tokens_are_64_random_hex_characters() {
        let a = generate_token().unwrap();
        assert_eq!(a.len(), GENERATED_TOKEN_LEN);
        assert!(
            a.iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, generate_token().unwrap());
    }

    fn metadata(authorization: Option<&str>) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Some(value) = authorization {
            metadata.insert("authorization", MetadataValue::try_from(value).unwrap());
        }
        metadata
    }

    #[tokio::test]
    async fn checks_the_bearer_token() {
        let token = "0123456789abcdef".repeat(4);
        let auth = Authenticator::fixed(&token).unwrap();
        assert!(
            auth.check(&metadata(Some(&format!("Bearer {token}"))))
                .await
                .is_ok()
        );
        // Datadog's Rust client writes the scheme in lower case; any case goes.
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let header = format!("{scheme} {token}");
            assert!(
                auth.check(&metadata(Some(&header))).await.is_ok(),
                "{header}"
            );
        }
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic abc"),
            Some(&format!("Basic {token}")),
            Some(&format!("Bearer {token}x")),
        ] {
            let status = auth.check(&metadata(bad)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!status.message().contains(&token));
        }
    }

    /// Editors and `echo` add newlines, Windows tools CRLF: the file's
    /// surrounding whitespace is not part of the token.
    #[tokio::test]
    async fn a_token_file_with_surrounding_whitespace_holds_the_bare_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth_token");
        let token = "c".repeat(64);
        std::fs::write(&path, format!(" \t{token}\r\n\n")).unwrap();
        let auth = Authenticator::from_token_file(&path).unwrap();
        let bearer = |token: &str| metadata(Some(&format!("Bearer {token}")));
        assert!(auth.check(&bearer(&token)).await.is_ok());
        assert!(auth.check(&bearer(&format!("x{token}"))).await.is_err());
    }

    #[tokio::test]
    async fn token_file_rotation_takes_effect_and_bad_rewrites_keep_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth_token");
        let auth = Authenticator::from_token_file(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        let bearer = |token: &str| metadata(Some(&format!("Bearer {token}")));
        assert!(auth.check(&bearer(&first)).await.is_ok());

        let second = "b".repeat(64);
        std::fs::write(&path, &second).unwrap();
        assert!(auth.check(&bearer(&first)).await.is_err());
        assert!(auth.check(&bearer(&second)).await.is_ok());

        std::fs::write(&path, "").unwrap();
        assert!(auth.check(&bearer(&second)).await.is_ok());
    }

    #[test]
    fn an_unusable_token_file_is_reported_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth_token");
        std::fs::write(&path, "secretsecret").unwrap();
        let message = Authenticator::from_token_file(&path)
            .unwrap_err()
            .to_string();
        assert!(message.contains("auth_token"), "{message}");
        assert!(message.contains("12 characters"), "{message}");
        assert!(!message.contains("secretsecret"), "{message}");
    }
}
