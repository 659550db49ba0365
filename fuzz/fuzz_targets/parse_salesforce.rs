#![no_main]
//! `leadwatch_fuzz::parse_salesforce` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::parse_salesforce(data));
