//! `leadwatch check-config`: the configuration and the rules it names, every problem at once.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Outcome;

#[derive(clap::Args)]
pub struct CheckConfig {
    #[arg(long, short)]
    config: PathBuf,
}

impl CheckConfig {
    pub fn run(self) -> Outcome {
        let cfg = super::load(&self.config)?;
        println!(
            "{}: ok ({} source(s), {} sink(s), rules from {})",
            self.config.display(),
            cfg.sources.len(),
            cfg.sinks.len(),
            cfg.rules_path.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}
