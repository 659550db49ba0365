#![no_main]
//! `leadwatch_fuzz::decode_dead_letter` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::decode_dead_letter(data));
