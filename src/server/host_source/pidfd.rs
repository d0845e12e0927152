//! Pidfds: a process instance held open, so a scan can tell "the process it
//! read before" from "a new process that got the same pid". Linux only
//! (5.3+); elsewhere opening one fails and the scanner reads every process
//! every scan.

#[cfg(target_os = "linux")]
pub(super) use linux::{Pidfd, exited, raise_open_files_limit};
#[cfg(not(target_os = "linux"))]
pub(super) use other::{Pidfd, exited, raise_open_files_limit};

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

    /// One process instance. Unlike its pid, never taken by another process;
    /// closed on drop.
    #[derive(Debug)]
    pub struct Pidfd(OwnedFd);

    impl Pidfd {
        /// ESRCH when no process has `pid`; ENOSYS before Linux 5.3; EMFILE
        /// when out of descriptors.
        pub fn open(pid: u32) -> io::Result<Self> {
            let pid = libc::pid_t::try_from(pid)
                .map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
            let no_flags: libc::c_uint = 0;
            // SAFETY: pidfd_open takes a pid and flags by value and touches
            // no memory of ours.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, no_flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
            // SAFETY: the kernel just returned this descriptor (close-on-exec
            // always): it is open and nothing else owns it.
            Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
        }

        /// Whether the process still exists (running, or a zombie not yet
        /// reaped). EPERM (not ours to signal) means it exists too.
        pub fn is_alive(&self) -> io::Result<bool> {
            let existence_check: libc::c_int = 0;
            let no_flags: libc::c_uint = 0;
            // SAFETY: signal 0 sends nothing, the kernel only checks that the
            // process exists; the siginfo pointer may be null; the descriptor
            // is open for as long as `self` lives.
            let result = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.0.as_raw_fd(),
                    existence_check,
                    std::ptr::null::<libc::siginfo_t>(),
                    no_flags,
                )
            };
            if result == 0 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EPERM) => Ok(true),
                Some(libc::ESRCH) => Ok(false),
                _ => Err(error),
            }
        }
    }

    /// Which of `pidfds` belong to processes that have exited (zombies
    /// included), all in one `poll` (a pidfd turns readable when its process
    /// exits): a scan checks every known process, and one
    /// [`Pidfd::is_alive`] syscall each would cost as much as the rest of
    /// the scan.
    pub fn exited(pidfds: &[&Pidfd]) -> io::Result<Vec<bool>> {
        let mut polled: Vec<libc::pollfd> = pidfds
            .iter()
            .map(|pidfd| libc::pollfd {
                fd: pidfd.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let count = libc::nfds_t::try_from(polled.len()).map_err(io::Error::other)?;
        loop {
            // SAFETY: `polled` holds `count` initialised pollfds, which poll
            // reads and writes `revents` into; a timeout of 0 never blocks.
            if unsafe { libc::poll(polled.as_mut_ptr(), count, 0) } >= 0 {
                break;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        // Readable, or an error on the descriptor: not known to be alive.
        Ok(polled.iter().map(|polled| polled.revents != 0).collect())
    }

    /// Raises the soft limit on open files to the hard one, as Go's runtime
    /// does at start: the scanner holds a pidfd per process, and the usual
    /// soft limit of 1,024 is below the process count of a busy host.
    /// Logged; a failure only means fewer processes are cached.
    pub fn raise_open_files_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` into `limit`, which is valid
        // and exclusively borrowed for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            let error = io::Error::last_os_error();
            tracing::warn!(%error, "cannot read the open files limit");
            return;
        }
        if limit.rlim_cur >= limit.rlim_max {
            tracing::info!(
                open_files_limit = limit.rlim_cur,
                "open files limit already at its hard limit"
            );
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads `raised`, a valid `rlimit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            let error = io::Error::last_os_error();
            tracing::warn!(
                %error,
                from = limit.rlim_cur,
                to = raised.rlim_cur,
                "cannot raise the open files limit; processes beyond it are re-read every scan"
            );
            return;
        }
        tracing::info!(
            from = limit.rlim_cur,
            to = raised.rlim_cur,
            "raised the open files limit to its hard limit (one pidfd per process)"
        );
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::convert::Infallible;
    use std::io;

    /// Never made: there are no pidfds here.
    #[derive(Debug)]
    pub struct Pidfd(Infallible);

    impl Pidfd {
        pub fn open(_pid: u32) -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub fn is_alive(&self) -> io::Result<bool> {
            match self.0 {}
        }
    }

    /// There are no pidfds, so none has exited.
    pub fn exited(pidfds: &[&Pidfd]) -> io::Result<Vec<bool>> {
        Ok(vec![false; pidfds.len()])
    }

    /// Nothing to do without pidfds.
    pub fn raise_open_files_limit() {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_pidfd_follows_its_process_through_exit_and_reaping() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert!(pidfd.is_alive().unwrap());
        assert_eq!(exited(&[&pidfd]).unwrap(), [false]);

        child.kill().unwrap();
        // Until reaped, a zombie: still there for a signal, already exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while exited(&[&pidfd]).unwrap() != [true] {
            assert!(std::time::Instant::now() < deadline, "never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(pidfd.is_alive().unwrap());

        child.wait().unwrap();
        assert!(!pidfd.is_alive().unwrap());
        assert_eq!(exited(&[&pidfd]).unwrap(), [true]);
        assert_eq!(exited(&[]).unwrap(), Vec::<bool>::new());
    }

    #[test]
    fn no_pidfd_opens_for_a_pid_nobody_has() {
        // Above the largest pid_max Linux allows (2^22).
        let error = Pidfd::open(1 << 23).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ESRCH));
    }
}
