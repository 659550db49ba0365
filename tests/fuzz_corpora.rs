//! The fuzz corpora, replayed: every file of `fuzz/corpus/<target>/` runs through the very
//! harness function its `cargo fuzz` target runs (`fuzz/harness.rs`), so what fuzzing found and
//! kept stays checked by the suite on the stable toolchain, without cargo-fuzz. Fuzzing itself
//! is `scripts/fuzz.sh` (README "Development").
//!
//! Inputs that still make a harness fail are kept apart in `fuzz/crashes/<target>/`, replayed by
//! the ignored test below: whoever fixes one turns it on (and moves the input into the corpus).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `fuzz/{folder}/<target>/` through its target's harness; every input that
/// fails is named (with its panic), not just the first.
fn replay(folder: &str) -> usize {
    let mut ran = 0;
    let mut failed = Vec::new();
    for (target, harness) in harness::TARGETS {
        for file in files(&fuzz_dir().join(folder).join(target)) {
            let input = std::fs::read(&file).expect("a corpus file reads");
            ran += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| harness(&input))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!("{}: {message}", file.display()));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {ran} inputs fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
    ran
}

#[test]
fn every_corpus_input_passes_its_harness() {
    let ran = replay("corpus");
    assert!(ran > 0, "no corpus found under {}", fuzz_dir().display());
}

/// Every target has a corpus of its own (a new target needs its seeds), and every corpus folder
/// is a target's (a renamed target leaves none behind unreplayed).
#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let targets: Vec<&str> = harness::TARGETS.iter().map(|(name, _)| *name).collect();
    for target in &targets {
        assert!(
            !files(&fuzz_dir().join("corpus").join(target)).is_empty(),
            "fuzz/corpus/{target}/ is empty"
        );
    }
    for folder in ["corpus", "crashes"] {
        for entry in std::fs::read_dir(fuzz_dir().join(folder))
            .into_iter()
            .flatten()
        {
            let name = entry.expect("a directory entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                targets.contains(&name.as_ref()),
                "fuzz/{folder}/{name}/ belongs to no target of fuzz/harness.rs"
            );
        }
    }
}

/// The inputs fuzzing found that still fail (see the module doc): fix the code, move the input
/// into `fuzz/corpus/<target>/`, and remove it here.
#[test]
#[ignore = "known crashes found by fuzzing, not fixed yet (fuzz/crashes/)"]
fn known_crashes_pass_their_harness() {
    replay("crashes");
}
