#![no_main]
//! `leadwatch_fuzz::auth_shared_secrets` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::auth_shared_secrets(data));
