#![no_main]
//! `leadwatch_fuzz::auth_hubspot` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::auth_hubspot(data));
