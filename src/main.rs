//! The `leadwatch` command: parse the command line, run the subcommand ([`leadwatch::cli`]),
//! exit with its code.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc rather than glibc's malloc: for the same allocations (many small, long-lived ones
/// per lead, made from several threads) it keeps fewer pages resident.
/// `scripts/bench-memory.sh --leads 200000`: 798 MB resident (glibc), 774 MB (glibc with
/// `MALLOC_ARENA_MAX=2`), 746 MB (mimalloc), 726 MB (jemalloc); one run each.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = leadwatch::cli::Cli::parse();
    leadwatch::telemetry::init_tracing();
    cli.run()
}
