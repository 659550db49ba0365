//! `leadwatch run`: the daemon, until SIGTERM or SIGINT; SIGHUP reads the rules again.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Outcome, signals};

#[derive(clap::Args)]
pub struct Run {
    #[arg(long, short)]
    config: PathBuf,
}

impl Run {
    pub fn run(self) -> Outcome {
        let cfg = super::load(&self.config)?;
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let result = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(cfg.server.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.server.listen))?;
            crate::app::run_with_reloads(cfg, listener, signals::shutdown(), signals::reloads())
                .await
        });
        match result {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("leadwatch: {e:#}");
                Err(ExitCode::FAILURE)
            }
        }
    }
}
