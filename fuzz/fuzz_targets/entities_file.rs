#![no_main]
//! See `remote_tagger::fuzzing::entities_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| remote_tagger::fuzzing::entities_file(data));
