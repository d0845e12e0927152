#![no_main]
//! See `remote_tagger::fuzzing::server_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| remote_tagger::fuzzing::server_request(data));
