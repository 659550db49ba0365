//! `leadwatch forget`: erase one lead's state on request and say what still holds it.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Outcome;

#[derive(clap::Args)]
pub struct Forget {
    #[arg(long, short)]
    config: PathBuf,
    /// The lead key, e.g. `hubspot:123`.
    #[arg(long)]
    lead: String,
}

impl Forget {
    pub fn run(self) -> Outcome {
        let cfg = super::load(&self.config)?;
        let report = super::block_on(
            "forget",
            crate::forget::forget(&cfg.kafka, &self.lead, &crate::clock::Clock::system()),
        )?;
        print!("{report}");
        Ok(ExitCode::SUCCESS)
    }
}
