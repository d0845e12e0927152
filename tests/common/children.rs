//! Child processes that are killed and reaped when dropped, so a failed test
//! or an interrupted benchmark leaves none behind. Shared by the host source
//! tests and the sources benchmark (through `#[path]`).

use std::process::{Child, Command};

#[derive(Default)]
pub struct Children(Vec<Child>);

impl Children {
    /// Starts `command` and keeps it until [`Self::kill_all`] or drop.
    pub fn spawn(&mut self, command: &mut Command) -> &mut Child {
        let child = command.spawn().expect("a child process starts");
        self.0.push(child);
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Kills them all, then reaps them all (no zombies left).
    pub fn kill_all(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for mut child in self.0.drain(..) {
            let _ = child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}
