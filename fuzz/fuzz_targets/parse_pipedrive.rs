#![no_main]
//! `leadwatch_fuzz::parse_pipedrive` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::parse_pipedrive(data));
