//! The embedded Kafka: librdkafka's mock cluster, a real Kafka-protocol endpoint kept in memory.
//! It is not `Send`, so it lives on a thread of its own, driven through a channel.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

enum Command {
    BrokerDown,
    BrokerUp,
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>),
    Stop,
}

/// A running mock cluster with one broker. Dropping it stops the cluster.
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the embedded Kafka could not start: {0}")]
pub struct EmbeddedError(String);

/// The mock numbers its brokers from 1.
const BROKER: i32 = 1;

impl EmbeddedKafka {
    /// Starts the cluster and creates `topics` (`(name, partitions)`): the mock does not implement
    /// the CreateTopics admin API, so topics are made through its own.
    pub fn start(topics: &[(String, i32)]) -> Result<Self, EmbeddedError> {
        let topics = topics.to_vec();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (commands, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let mock = match MockCluster::new(1) {
                    Ok(mock) => mock,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for (name, partitions) in &topics {
                    if let Err(e) = mock.create_topic(name, *partitions, 1) {
                        let _ = ready_tx.send(Err(format!("creating topic {name}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(mock.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    let result = match cmd {
                        Command::BrokerDown => mock.broker_down(BROKER),
                        Command::BrokerUp => mock.broker_up(BROKER),
                        Command::RequestErrors(api, errors) => {
                            mock.request_errors(api, &errors);
                            Ok(())
                        }
                        Command::Stop => break,
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "embedded Kafka command failed");
                    }
                }
            })
            .map_err(|e| EmbeddedError(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| EmbeddedError("the mock cluster thread ended".into()))?
            .map_err(EmbeddedError)?;
        Ok(Self {
            bootstrap,
            commands,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT` of the broker.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Makes the broker refuse and drop connections (failure tests).
    pub fn broker_down(&self) {
        let _ = self.commands.send(Command::BrokerDown);
    }

    pub fn broker_up(&self) {
        let _ = self.commands.send(Command::BrokerUp);
    }

    /// The next requests of kind `api` fail with `errors`, one each, in order (failure tests).
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        let _ = self
            .commands
            .send(Command::RequestErrors(api, errors.to_vec()));
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
