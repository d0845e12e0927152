//! Reading a host's `/proc` (and `/etc/passwd`) under a root directory: the
//! pids, a process's `status`, `cmdline` and `cgroup` files, the hostname.
//! A process is a moving target: a file of one that exited, or that we may
//! not read, is a [`Skip`], never fatal.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use super::cgroup::{self, ContainerRef};
use crate::domain::{Entity, EntityId};

/// Longest `cmdline` tag value, in bytes: command lines can be huge (JVMs),
/// and the tag is for recognising a process, not for reproducing it.
pub const CMDLINE_TAG_MAX_BYTES: usize = 256;

/// ESRCH: reading a file of a process that exited since it was opened.
pub(super) const ESRCH: i32 = 3;

/// Why one process was skipped.
pub(super) enum Skip {
    Vanished,
    Unreadable,
    Malformed,
}

impl From<io::Error> for Skip {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(ESRCH) {
            Self::Vanished
        } else {
            Self::Unreadable
        }
    }
}

/// Whether `proc_root` is the `/proc` of this process's pid namespace: its
/// `self` link names our own pid.
pub(super) fn proc_is_ours(proc_root: &Path) -> bool {
    std::fs::read_link(proc_root.join("self"))
        .ok()
        .and_then(|target| target.to_str()?.parse::<u32>().ok())
        == Some(std::process::id())
}

/// The numeric directories of `proc_root`, in order; `None` if it cannot be
/// listed.
pub(super) fn list_pids(proc_root: &Path) -> Option<Vec<u32>> {
    let entries = std::fs::read_dir(proc_root).ok()?;
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Some(pids)
}

/// uid -> user name, from a passwd file; empty if it cannot be read.
fn read_users(passwd: &Path) -> HashMap<u32, String> {
    let Ok(text) = std::fs::read_to_string(passwd) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

/// Reads whole files into one reused buffer. `/proc` files report a size of
/// 0, so sizing the buffer from their metadata first (as `fs::read` does)
/// would only add a syscall per file.
#[derive(Default)]
struct FileReader {
    buffer: Vec<u8>,
}

impl FileReader {
    fn read(&mut self, path: &Path) -> io::Result<&[u8]> {
        self.buffer.clear();
        std::fs::File::open(path)?.read_to_end(&mut self.buffer)?;
        Ok(&self.buffer)
    }

    fn read_text(&mut self, path: &Path) -> io::Result<Cow<'_, str>> {
        Ok(String::from_utf8_lossy(self.read(path)?))
    }
}

/// What one scan reads processes with.
pub(super) struct ProcessReader {
    proc_root: PathBuf,
    users: HashMap<u32, String>,
    files: FileReader,
}

impl ProcessReader {
    /// Reads the processes of `proc_root`, naming users from `passwd`.
    pub(super) fn new(proc_root: PathBuf, passwd: &Path) -> Self {
        Self {
            proc_root,
            users: read_users(passwd),
            files: FileReader::default(),
        }
    }

    /// One process's entity and the container it runs in, if any, from three
    /// files of `proc_root/PID`: `status` (name and uid), `cmdline` and
    /// `cgroup`, whose malformed lines it adds to `malformed_lines`.
    pub(super) fn read(
        &mut self,
        pid: u32,
        malformed_lines: &mut usize,
    ) -> Result<(Entity, Option<ContainerRef>), Skip> {
        let dir = self.proc_root.join(pid.to_string());
        let (name, uid) = {
            let status = self.files.read_text(&dir.join("status"))?;
            status_name(&status).zip(status_uid(&status))
        }
        .ok_or(Skip::Malformed)?;
        let cmdline = cmdline_text(self.files.read(&dir.join("cmdline"))?);
        let cgroup = cgroup::parse(&self.files.read_text(&dir.join("cgroup"))?);
        *malformed_lines += cgroup.malformed_lines;
        let container = cgroup.container;

        let id = EntityId::new("process", &pid.to_string()).map_err(|_| Skip::Malformed)?;
        let mut entity = Entity::new(id);
        entity.low.push(format!("process_name:{name}"));
        entity.low.push(match self.users.get(&uid) {
            Some(user) => format!("user:{user}"),
            None => format!("user:{uid}"),
        });
        entity.high.push(format!("pid:{pid}"));
        if !cmdline.is_empty() {
            entity.high.push(format!("cmdline:{cmdline}"));
        }
        if let Some(container) = &container {
            entity.high.push(format!("container_id:{}", container.id));
        }
        Ok((entity, container))
    }
}

/// The process name of a `status` file's `Name:` line: the kernel writes
/// the same name as `comm` there, with `\n` and `\` escaped as `\n` and
/// `\\`. Unescaped and trimmed at the end like `comm` was, so the tag is
/// what reading `comm` gave.
fn status_name(status: &str) -> Option<String> {
    let escaped = status
        .lines()
        .find_map(|line| line.strip_prefix("Name:\t"))?;
    let mut name = String::with_capacity(escaped.len());
    let mut chars = escaped.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.next_if_eq(&'n').is_some() {
            name.push('\n');
        } else {
            if c == '\\' {
                chars.next_if_eq(&'\\');
            }
            name.push(c);
        }
    }
    name.truncate(name.trim_end().len());
    Some(name)
}

/// The real uid of a `status` file's `Uid:` line (real, effective, saved, fs).
fn status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The NUL-separated arguments joined by spaces, capped at
/// [`CMDLINE_TAG_MAX_BYTES`] on a character boundary.
fn cmdline_text(raw: &[u8]) -> String {
    let joined: Vec<u8> = raw
        .split(|&byte| byte == 0)
        .filter(|arg| !arg.is_empty())
        .collect::<Vec<_>>()
        .join(&b' ');
    let mut text = String::from_utf8_lossy(&joined).into_owned();
    if text.len() > CMDLINE_TAG_MAX_BYTES {
        let mut end = CMDLINE_TAG_MAX_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The host's entity, named by `proc/sys/kernel/hostname`.
pub(super) fn read_hostname(proc_root: &Path) -> Result<Entity, Skip> {
    let text = std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))?;
    let name = text.trim();
    let id = EntityId::new("host", name).map_err(|_| Skip::Malformed)?;
    let mut entity = Entity::new(id);
    entity.low.push(format!("host:{name}"));
    Ok(entity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdlines_are_joined_and_capped_on_a_character_boundary() {
        assert_eq!(
            cmdline_text(b"nginx\0-g\0daemon off;\0"),
            "nginx -g daemon off;"
        );
        assert_eq!(cmdline_text(b""), "");
        let long = "é".repeat(CMDLINE_TAG_MAX_BYTES);
        let capped = cmdline_text(long.as_bytes());
        assert!(capped.len() <= CMDLINE_TAG_MAX_BYTES && capped.len() >= CMDLINE_TAG_MAX_BYTES - 1);
        assert!(capped.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_real_uid_is_read_from_status() {
        assert_eq!(status_uid("Name:\tbash\nUid:\t1000\t0\t0\t0\n"), Some(1000));
        assert_eq!(status_uid("Name:\tbash\n"), None);
        assert_eq!(status_uid("Uid:\tabc\n"), None);
    }

    #[test]
    fn the_name_is_read_from_status_unescaped() {
        assert_eq!(
            status_name("Name:\tbash\nUid:\t0\t0\t0\t0\n").as_deref(),
            Some("bash")
        );
        assert_eq!(
            status_name("Name:\ta\\\\b\\nc d \n").as_deref(),
            Some("a\\b\nc d")
        );
        // A backslash before anything else is left as it is.
        assert_eq!(status_name("Name:\ta\\x\\\n").as_deref(), Some("a\\x\\"));
        assert_eq!(status_name("Uid:\t0\t0\t0\t0\n"), None);
    }

    /// The kernel escapes the name in `status` and not in `comm`: for a
    /// name holding both escaped characters, the two must still agree.
    #[test]
    fn the_status_name_of_a_thread_is_what_its_comm_says() {
        let tricky = "a\\b\nc d ";
        let (comm, status) = std::thread::Builder::new()
            .name(tricky.to_owned())
            .spawn(|| {
                let read = |file: &str| {
                    std::fs::read_to_string(format!("/proc/thread-self/{file}")).unwrap()
                };
                (read("comm"), read("status"))
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(comm, format!("{tricky}\n"), "the kernel kept the name");
        assert_eq!(status_name(&status).as_deref(), Some(comm.trim_end()));
    }
}
