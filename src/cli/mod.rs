//! The `leadwatch` command line: one file per subcommand, each a clap `Args` with a `run`.
//! `main.rs` only parses, calls [`Cli::run`] and exits with its code.
//!
//! Exit codes: 0 done; 1 failed; 2 `dlq replay` dead-lettered again; 64 bad configuration or
//! usage (every problem listed as `<file>:<key.path>: <message>`); 66 an unreadable input file.

mod check_config;
mod dev_broker;
mod dlq;
mod forget;
mod replay;
mod run;
mod signals;
mod simulate;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::Config;
use crate::conf::Problems;

/// Exit code for a configuration error (sysexits' EX_CONFIG is 78; we follow EX_USAGE, 64).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "leadwatch",
    version,
    about = "Holds sales and marketing to their lead-management rules"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(run::Run),
    /// Check a configuration (and the rules it names); lists every problem, exits 64 if any.
    CheckConfig(check_config::CheckConfig),
    /// Erase one lead's state (a data-protection request) and say what still holds it.
    Forget(forget::Forget),
    /// Run a rules file over past events (one canonical JSON event per line) with a simulated
    /// clock: every alert as a JSON line on stdout, a scorecard (JSON) on stderr or to a file.
    Simulate(simulate::Simulate),
    /// Re-normalise one source's raw requests (`{prefix}.raw`) with the current configuration
    /// and produce the events again, marked as replayed (after a mapping was corrected).
    Replay(replay::Replay),
    /// Dead-lettered alerts (`{prefix}.alerts.dlq`).
    Dlq {
        #[command(subcommand)]
        action: dlq::DlqAction,
    },
    /// Run a standalone embedded Kafka-protocol broker (in memory) for development and tests.
    DevBroker(dev_broker::DevBroker),
}

impl Cli {
    /// Runs the subcommand; its exit code.
    pub fn run(self) -> ExitCode {
        let outcome = match self.command {
            Command::Run(c) => c.run(),
            Command::CheckConfig(c) => c.run(),
            Command::Forget(c) => c.run(),
            Command::Simulate(c) => c.run(),
            Command::Replay(c) => c.run(),
            Command::Dlq { action } => action.run(),
            Command::DevBroker(c) => c.run(),
        };
        outcome.unwrap_or_else(|code| code)
    }
}

/// What a subcommand ends with: its exit code, or (as `Err`) the code of a failure it has
/// already reported on stderr.
type Outcome = Result<ExitCode, ExitCode>;

/// Loads and checks the configuration; on problems, prints every one and gives exit code 64.
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|problems| print_problems(&problems))
}

/// Prints every problem, one per line; exit code 64.
fn print_problems(problems: &Problems) -> ExitCode {
    for p in &problems.0 {
        eprintln!("{p}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Runs `work` on a runtime of its own; an error is printed as `leadwatch {what}: {error}`
/// (with its causes) and exits 1.
fn block_on<T>(what: &str, work: impl Future<Output = anyhow::Result<T>>) -> Result<T, ExitCode> {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(work).map_err(|e| {
        eprintln!("leadwatch {what}: {e:#}");
        ExitCode::FAILURE
    })
}
