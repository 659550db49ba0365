#![no_main]
//! `leadwatch_fuzz::redact_salesforce` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::redact_salesforce(data));
