#![no_main]
//! `leadwatch_fuzz::decode_rotation` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::decode_rotation(data));
