//! The flare: a diagnostic archive for support, and its upload the way the
//! Datadog Agent sends its own flares.
//!
//! What goes in the archive is the caller's choice (the CLI's `flare`
//! command collects the mirror, a metrics scrape, the effective
//! configuration, the build and recent logs); this module writes it as a
//! tar.gz and sends it ([`send`]).

mod send;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub use send::{FlareReceipt, FlareSendError, FlareUpload, SUPPORT_PATH, send};

/// One file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlareFile {
    /// Name inside the archive's top folder (`tagger-list.json`).
    pub name: String,
    /// The file's bytes.
    pub contents: Vec<u8>,
}

impl FlareFile {
    /// A file named `name` inside the archive's top folder.
    pub fn new(name: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            contents: contents.into(),
        }
    }
}

/// Writes `files` as a tar.gz at `path`, each under the folder `top` (so
/// unpacking several flares side by side does not mix them).
///
/// The archive holds every tag, log line and setting: it is created mode
/// 0600 and only if nothing is at `path` yet, so it never overwrites a file
/// nor writes through a link planted at a predictable path in a shared
/// temporary folder. The files inside are mode 0600 too. If writing fails,
/// the partial archive is removed.
pub fn write_archive(path: &Path, top: &str, files: &[FlareFile]) -> std::io::Result<()> {
    let file = crate::server::secret_file::private_file_options().open(path)?;
    write_tar_gz(file, top, files).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

fn write_tar_gz(file: std::fs::File, top: &str, files: &[FlareFile]) -> std::io::Result<()> {
    let encoder = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut archive = tar::Builder::new(encoder);
    let modified = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    for file in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.contents.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(modified);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(
            &mut header,
            format!("{top}/{}", file.name),
            file.contents.as_slice(),
        )?;
    }
    archive.into_inner()?.finish()?.flush()
}

/// The last 5 characters of an API key (surrounding whitespace ignored):
/// as much of it as the Datadog Agent ever shows.
pub fn api_key_tail(key: &str) -> &str {
    let key = key.trim();
    let start = key
        .char_indices()
        .rev()
        .nth(4)
        .map_or(0, |(index, _)| index);
    &key[start..]
}

/// An API key as a flare may show it: its last 5 characters, the rest
/// masked. A key of 5 characters or fewer is masked whole: its "tail" would
/// be all of it.
pub fn redact_api_key(key: &str) -> String {
    let key = key.trim();
    let tail = api_key_tail(key);
    let hidden = key[..key.len() - tail.len()].chars().count();
    if hidden == 0 {
        return "*".repeat(tail.chars().count());
    }
    format!("{}{tail}", "*".repeat(hidden))
}

/// The last `max_bytes` of the file at `path`, starting at a line boundary
/// (the first, partial line of the window is dropped).
pub fn log_tail(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max_bytes).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    if start == 0 {
        return Ok(text.into_owned());
    }
    Ok(match text.split_once('\n') {
        Some((_partial, rest)) => rest.to_owned(),
        None => String::new(),
    })
}

/// This machine's name, or "unknown" (the Agent's fallback too).
pub fn hostname() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_show_only_their_last_five_characters() {
        assert_eq!(
            redact_api_key("0123456789abcdef0123456789abcdef"),
            "***************************bcdef"
        );
        assert_eq!(redact_api_key(" abcdefg\n"), "**cdefg");
        assert_eq!(redact_api_key("abcde"), "*****");
        assert_eq!(redact_api_key(""), "");
        // Characters, not bytes.
        assert_eq!(api_key_tail("ключ-1234é"), "1234é");
        assert_eq!(redact_api_key("ключ-1234é"), "*****1234é");
    }

    #[test]
    fn log_tails_start_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(
            log_tail(&path, 1000).unwrap(),
            "first line\nsecond line\nthird\n"
        );
        assert_eq!(log_tail(&path, 15).unwrap(), "third\n");
    }

    #[test]
    fn archives_hold_every_file_under_the_top_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flare.tar.gz");
        let files = [
            FlareFile::new("a.txt", "alpha"),
            FlareFile::new("b.json", "{}"),
        ];
        write_archive(&path, "top", &files).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&path).unwrap(),
        ));
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut contents = String::new();
            entry.read_to_string(&mut contents).unwrap();
            found.push((name, contents));
        }
        assert_eq!(
            found,
            [
                ("top/a.txt".to_owned(), "alpha".to_owned()),
                ("top/b.json".to_owned(), "{}".to_owned())
            ]
        );
    }
}
