//! `leadwatch replay`: one source's raw requests normalised again with the current mapping.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Outcome;

#[derive(clap::Args)]
pub struct Replay {
    #[arg(long, short)]
    config: PathBuf,
    /// The source name (`[sources.NAME]`).
    #[arg(long)]
    source: String,
    /// Only requests received at or after this instant (RFC 3339).
    #[arg(long)]
    from: Option<jiff::Timestamp>,
    /// Only requests received before this instant (RFC 3339).
    #[arg(long)]
    until: Option<jiff::Timestamp>,
}

impl Replay {
    pub fn run(self) -> Outcome {
        let cfg = super::load(&self.config)?;
        let report = super::block_on(
            "replay",
            crate::ingest::replay::replay(
                &cfg.kafka,
                &cfg.server,
                &cfg.sources,
                &self.source,
                self.from,
                self.until,
                &crate::clock::Clock::system(),
            ),
        )?;
        print!("{report}");
        Ok(ExitCode::SUCCESS)
    }
}
