//! The fuzz harnesses: one function per cargo-fuzz target of `fuzz/`.
//!
//! They live in the library, not in the fuzz crate, so that the targets are
//! one-liners and `tests/fuzz_corpus.rs` replays every committed corpus file
//! through exactly the same code under a plain `cargo test` (no cargo-fuzz,
//! no nightly). Each takes the fuzzer's bytes and panics on the first broken
//! invariant, which is how libFuzzer recognises a finding.
//!
//! Only built with the `fuzzing` feature (it brings `arbitrary`).

mod client;
mod server;

pub use client::{CoreScenario, core_transitions, decode_response};
pub use server::{ServerScenario, entities_file, server_request};
