#![no_main]
//! `leadwatch_fuzz::restore_partition` (see `fuzz/harness.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| leadwatch_fuzz::restore_partition(data));
