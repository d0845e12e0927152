//! The `remote-tagger` binary as a child process: its output read line by
//! line as it comes, signals sent to it, its exit awaited with a bound.
//! Killed and reaped when dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::PATIENCE;

pub const BINARY: &str = env!("CARGO_BIN_EXE_remote-tagger");

/// The binary with `args` and its own empty home (default token and
/// certificate files), not yet started.
pub fn command(home: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).env("REMOTE_TAGGER_HOME", home);
    command
}

/// Makes the child start with SIGINT ignored, as a non-interactive shell
/// starts a background job (`remote-tagger list &` in a script), which is
/// how a command was seen to ignore Ctrl-C for tens of seconds.
pub fn ignoring_sigint(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and only
    // calls signal(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        })
    }
}

pub struct Running {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

/// One output stream: the lines read so far, and the rest as they come.
struct Lines {
    seen: Vec<String>,
    receiver: mpsc::Receiver<String>,
}

impl Lines {
    fn read(pipe: impl Read + Send + 'static) -> Self {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Self {
            seen: Vec::new(),
            receiver,
        }
    }

    fn wait_for(&mut self, needle: &str, name: &str) -> String {
        if let Some(line) = self.seen.iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.receiver.recv_timeout(left) else {
                panic!(
                    "no line with {needle:?} on {name}; it printed:\n{}",
                    self.seen.join("\n")
                );
            };
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Everything printed, up to the end of the pipe (the child's exit).
    fn all(&mut self, name: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.seen.join("\n"),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name} is still open"),
            }
        }
    }
}

impl Running {
    pub fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let stdout = Lines::read(child.stdout.take().unwrap());
        let stderr = Lines::read(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Reads stderr up to the first line containing `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str) -> String {
        self.stderr.wait_for(needle, "stderr")
    }

    /// Reads a `serve`'s stderr up to its "N entities on ADDRESS" line: the
    /// address it listens on.
    pub fn wait_for_listen_address(&mut self) -> String {
        let line = self.wait_for_stderr(" entities on ");
        let (_, rest) = line.split_once(" entities on ").unwrap();
        rest.split_whitespace().next().unwrap().to_owned()
    }

    /// Reads stdout up to the first line containing `needle`.
    pub fn wait_for_stdout(&mut self, needle: &str) -> String {
        self.stdout.wait_for(needle, "stdout")
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with the pid of a child not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
    }

    /// Waits up to `patience` for the exit: its status and how long it
    /// took, or `None` if it is still running.
    pub fn exit_within(&mut self, patience: Duration) -> Option<(ExitStatus, Duration)> {
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, began.elapsed()));
            }
            if began.elapsed() > patience {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// All of stdout, once the child has exited.
    pub fn stdout_after_exit(&mut self) -> String {
        self.stdout.all("stdout")
    }

    /// All of stderr, once the child has exited.
    pub fn stderr_after_exit(&mut self) -> String {
        self.stderr.all("stderr")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
