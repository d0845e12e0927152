//! Ctrl-C and SIGTERM: every command ends at once on either, with the exit
//! code shells expect (128 + the signal's number); `serve` shuts down
//! gracefully instead and `demo` prints its summary (see
//! [`super::server_commands`]).
//!
//! The handlers are installed before a command starts, and even when the
//! process was started with SIGINT ignored (a script's background job), as
//! the Datadog Agent's do (Go's `signal.Notify` replaces an ignored
//! disposition too): a command that ignored Ctrl-C ran on until its wait
//! expired.

/// A signal that ends a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: a service manager or `kill`.
    Terminate,
}

impl Interruption {
    /// 128 + the signal's number, as a shell reports a command it killed.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

/// Listens for SIGINT and SIGTERM from its creation on.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; must be called within the runtime.
    pub fn listen() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| format!("cannot listen for {name}: {e}"))
            };
            Ok(Self {
                interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
                terminate: listen(SignalKind::terminate(), "SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal received (one that arrived since the last call
    /// included).
    pub async fn recv(&mut self) -> Interruption {
        #[cfg(unix)]
        {
            // `None` only once the runtime shuts down: nothing to report then.
            tokio::select! {
                biased;
                Some(()) = self.interrupt.recv() => Interruption::Interrupt,
                Some(()) = self.terminate.recv() => Interruption::Terminate,
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => Interruption::Interrupt,
                Err(_) => std::future::pending().await,
            }
        }
    }
}
