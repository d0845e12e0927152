#![no_main]
//! See `remote_tagger::fuzzing::core_transitions`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| remote_tagger::fuzzing::core_transitions(data));
