//! The `leadwatch` command: parse the command line, run the subcommand ([`leadwatch::cli`]),
//! exit with its code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = leadwatch::cli::Cli::parse();
    leadwatch::telemetry::init_tracing();
    cli.run()
}
