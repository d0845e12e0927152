//! Secret files (auth token, TLS certificate and key) that the server creates
//! on first start and reuses afterwards, so that clients on the same machine
//! can read them.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

/// Reads `path`, or, when it does not exist, creates it with the contents
/// `generate` makes, readable and writable by the owner only (mode 0600),
/// creating missing parent directories (mode 0700). Returns the contents and
/// whether this call created the file.
///
/// The file is created exclusively: when another process creates it first,
/// its contents win and are returned, so two servers starting together end
/// up sharing one secret.
pub(crate) fn read_or_create<E>(
    path: &Path,
    generate: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<(Vec<u8>, bool), ReadOrCreateError<E>> {
    match fs::read(path) {
        Ok(contents) => return Ok((contents, false)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(ReadOrCreateError::Read(error)),
    }
    let contents = generate().map_err(ReadOrCreateError::Generate)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_dir_builder()
            .create(parent)
            .map_err(ReadOrCreateError::CreateDir)?;
    }
    match private_file_options().open(path) {
        Ok(mut file) => {
            file.write_all(&contents)
                .and_then(|()| file.sync_all())
                .map_err(ReadOrCreateError::Write)?;
            Ok((contents, true))
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => fs::read(path)
            .map(|contents| (contents, false))
            .map_err(ReadOrCreateError::Read),
        Err(error) => Err(ReadOrCreateError::Write(error)),
    }
}

/// What went wrong in [`read_or_create`].
#[derive(Debug)]
pub(crate) enum ReadOrCreateError<E> {
    Read(io::Error),
    Generate(E),
    CreateDir(io::Error),
    Write(io::Error),
}

impl<E: std::fmt::Display> std::fmt::Display for ReadOrCreateError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(error) => write!(f, "cannot read it: {error}"),
            Self::Generate(error) => write!(f, "cannot generate its contents: {error}"),
            Self::CreateDir(error) => write!(f, "cannot create its directory: {error}"),
            Self::Write(error) => write!(f, "cannot create it: {error}"),
        }
    }
}

/// Options that create a new file readable and writable by its owner only
/// (with that mode from the start), failing if anything, even a dangling
/// link, is at the path.
#[cfg(unix)]
pub(crate) fn private_file_options() -> fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    options
}

#[cfg(not(unix))]
pub(crate) fn private_file_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    options
}

#[cfg(unix)]
fn private_dir_builder() -> fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
}

#[cfg(not(unix))]
fn private_dir_builder() -> fs::DirBuilder {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/secret");
        let (contents, created) =
            read_or_create(&path, || Ok::<_, io::Error>(b"one".to_vec())).unwrap();
        assert_eq!((contents.as_slice(), created), (&b"one"[..], true));
        let (contents, created) = read_or_create(&path, || -> Result<Vec<u8>, io::Error> {
            panic!("must not regenerate an existing file")
        })
        .unwrap();
        assert_eq!((contents.as_slice(), created), (&b"one"[..], false));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn generation_errors_create_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let result = read_or_create(&path, || Err::<Vec<u8>, _>("no entropy"));
        assert!(matches!(
            result,
            Err(ReadOrCreateError::Generate("no entropy"))
        ));
        assert!(!path.exists());
    }
}
