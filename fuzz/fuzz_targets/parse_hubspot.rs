#![no_main]
//! `leadwatch_fuzz::parse_hubspot` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::parse_hubspot(data));
