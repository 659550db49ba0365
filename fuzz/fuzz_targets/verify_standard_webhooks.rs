#![no_main]
//! `leadwatch_fuzz::verify_standard_webhooks` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::verify_standard_webhooks(data));
