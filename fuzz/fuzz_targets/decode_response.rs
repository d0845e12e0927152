#![no_main]
//! See `remote_tagger::fuzzing::decode_response`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| remote_tagger::fuzzing::decode_response(data));
