//! `leadwatch dev-broker`: a standalone in-memory Kafka-protocol broker with the daemon's topics.

use std::io::Write;
use std::process::ExitCode;

use super::{EXIT_CONFIG, Outcome, signals};
use crate::bus::{Topics, embedded::EmbeddedKafka};

#[derive(clap::Args)]
pub struct DevBroker {
    /// Partitions of each topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Prefix of the topics to create.
    #[arg(long, default_value = "leadwatch")]
    topic_prefix: String,
    /// Pin the listening port. The mock cluster binds a random port, so this is refused.
    #[arg(long)]
    port: Option<u16>,
}

impl DevBroker {
    pub fn run(self) -> Outcome {
        let usage = |message: &str| {
            eprintln!("leadwatch dev-broker: {message}");
            ExitCode::from(EXIT_CONFIG)
        };
        if self.port.is_some() {
            return Err(usage(
                "--port is not supported: librdkafka's mock cluster binds a random port; read it \
                 from the `bootstrap=` line instead",
            ));
        }
        if self.partitions < 1 {
            return Err(usage("--partitions must be at least 1"));
        }
        let topics = Topics::new(&self.topic_prefix);
        let specs: Vec<(String, i32)> = topics
            .all()
            .iter()
            .map(|(t, _)| (t.to_string(), self.partitions))
            .collect();
        let kafka = EmbeddedKafka::start(&specs).map_err(|e| {
            eprintln!("leadwatch dev-broker: {e}");
            ExitCode::FAILURE
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Listening before the line that says where to connect: a SIGTERM sent as soon as it is
        // read stops the broker cleanly rather than killing it.
        let stop = {
            let _in_runtime = runtime.enter();
            signals::on_stop()
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "bootstrap={}", kafka.bootstrap());
        let _ = out.flush();
        drop(out);
        tracing::warn!(
            bootstrap = kafka.bootstrap(),
            partitions = self.partitions,
            "dev broker running (in memory only); stop with SIGTERM"
        );
        runtime.block_on(stop);
        drop(kafka);
        Ok(ExitCode::SUCCESS)
    }
}
