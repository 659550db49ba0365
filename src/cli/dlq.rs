//! `leadwatch dlq replay`: re-send one sink's dead letters.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Outcome;

#[derive(clap::Subcommand)]
pub enum DlqAction {
    /// Re-send one sink's dead letters (those not replayed before) and say how many.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// The sink (`[sinks.NAME]`) whose dead letters to re-send.
        #[arg(long)]
        sink: String,
    },
}

impl DlqAction {
    pub fn run(self) -> Outcome {
        let DlqAction::Replay { config, sink } = self;
        let cfg = super::load(&config)?;
        let report = super::block_on(
            "dlq replay",
            crate::dispatch::dlq::replay(
                &cfg.kafka,
                cfg.dispatch_sections(),
                &sink,
                &crate::clock::Clock::system(),
            ),
        )?;
        println!("{report}");
        // Exit 2 when some went to the dead letters again, so a script notices.
        Ok(if report.dead_again > 0 {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        })
    }
}
