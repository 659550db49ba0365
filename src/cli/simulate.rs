//! `leadwatch simulate`: a rules file over past events with a simulated clock, each person's
//! records joined as its `[identity]` says.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{EXIT_CONFIG, Outcome};
use crate::simulate::{self, FileError};

#[derive(clap::Args)]
pub struct Simulate {
    /// The rules file to test.
    #[arg(long, required_unless_present = "config")]
    rules: Option<PathBuf>,
    /// A daemon configuration: its rules file (unless --rules names another) and its sources'
    /// links into the CRM, so the alerts are exactly what the daemon would send.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Past events, JSON lines, any order (applied by `occurred_at`).
    #[arg(long)]
    events: PathBuf,
    /// Stop here (RFC 3339): later events are not applied; deadlines up to it fire. Default:
    /// the last event's time.
    #[arg(long)]
    until: Option<jiff::Timestamp>,
    /// Write the scorecard here instead of stderr.
    #[arg(long)]
    scorecard: Option<PathBuf>,
    /// Partitions of the events topic, for the pools' round-robin (kept per partition, as
    /// the daemon does). Default: `kafka.partitions` of --config, else 6.
    #[arg(long)]
    partitions: Option<u16>,
}

impl Simulate {
    pub fn run(self) -> Outcome {
        // The rules: `--rules`, or those `--config` names (with its sources' links into the CRM).
        let (rules, links, configured) = match (&self.rules, &self.config) {
            (Some(path), _) => (
                crate::app::config::load_rules(path).map_err(|p| super::print_problems(&p))?,
                Default::default(),
                None,
            ),
            (None, Some(path)) => {
                let cfg = super::load(path)?;
                (
                    crate::app::config::RulesFile {
                        rules: cfg.rules.clone(),
                        identity: cfg.identity.clone(),
                    },
                    cfg.source_links(),
                    Some(cfg.kafka.partitions),
                )
            }
            (None, None) => {
                eprintln!("leadwatch simulate: name the rules with --rules FILE or --config FILE");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        };
        let partitions = self
            .partitions
            .map(i32::from)
            .or(configured)
            .unwrap_or(crate::bus::DEFAULT_PARTITIONS);
        match simulate::run_files(
            rules.rules,
            &rules.identity,
            links,
            &self.events,
            self.until,
            partitions,
            self.scorecard.as_deref(),
        ) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("leadwatch simulate: {e}");
                // 66 (EX_NOINPUT) when the events cannot be read.
                Err(match e {
                    FileError::Events { .. } => ExitCode::from(66),
                    _ => ExitCode::FAILURE,
                })
            }
        }
    }
}
