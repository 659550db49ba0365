//! The `leadwatch` command: parse the CLI, load the config, run. Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leadwatch::bus::{Topics, embedded::EmbeddedKafka};
use leadwatch::config::Config;

/// Exit code for a configuration error (sysexits' EX_CONFIG is 78; we follow EX_USAGE, 64).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "leadwatch",
    version,
    about = "Holds sales and marketing to their lead-management rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration (and the rules it names); lists every problem, exits 64 if any.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Erase one lead's state (a data-protection request) and say what still holds it.
    Forget {
        #[arg(long, short)]
        config: PathBuf,
        /// The lead key, e.g. `hubspot:123`.
        #[arg(long)]
        lead: String,
    },
    /// Dead-lettered alerts (`{prefix}.alerts.dlq`).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Run a standalone embedded Kafka-protocol broker (in memory) for development and tests.
    DevBroker {
        /// Partitions of each topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Prefix of the topics to create.
        #[arg(long, default_value = "leadwatch")]
        topic_prefix: String,
        /// Pin the listening port. The mock cluster binds a random port, so this is refused.
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Re-send one sink's dead letters (those not replayed before) and say how many.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// The sink (`[sinks.NAME]`) whose dead letters to re-send.
        #[arg(long)]
        sink: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    leadwatch::telemetry::init_tracing();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} source(s), {} sink(s), rules from {})",
                    config.display(),
                    cfg.sources.len(),
                    cfg.sinks.len(),
                    cfg.rules_path.display()
                );
                ExitCode::SUCCESS
            }
            Err(problems) => print_problems(&problems),
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(problems) => return print_problems(&problems),
            };
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            let result = runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(cfg.server.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.server.listen))?;
                leadwatch::app::run(cfg, listener, shutdown_signal()).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("leadwatch: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Forget { config, lead } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(problems) => return print_problems(&problems),
            };
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(leadwatch::forget::forget(&cfg.kafka, &lead)) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("leadwatch forget: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dlq {
            action: DlqAction::Replay { config, sink },
        } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(problems) => return print_problems(&problems),
            };
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(leadwatch::dispatch::dlq::replay(&cfg, &sink)) {
                Ok(report) => {
                    println!("{report}");
                    if report.dead_again > 0 {
                        ExitCode::from(2)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("leadwatch dlq replay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DevBroker {
            partitions,
            topic_prefix,
            port,
        } => dev_broker(partitions, &topic_prefix, port),
    }
}

fn print_problems(problems: &leadwatch::config::Problems) -> ExitCode {
    for p in &problems.0 {
        eprintln!("{p}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Resolves on SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("leadwatch: second signal, exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn dev_broker(partitions: i32, prefix: &str, port: Option<u16>) -> ExitCode {
    use std::io::Write;
    if port.is_some() {
        eprintln!(
            "leadwatch dev-broker: --port is not supported: librdkafka's mock cluster binds a random \
             port; read it from the `bootstrap=` line instead"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if partitions < 1 {
        eprintln!("leadwatch dev-broker: --partitions must be at least 1");
        return ExitCode::from(EXIT_CONFIG);
    }
    let topics = Topics::new(prefix);
    let specs: Vec<(String, i32)> = topics
        .all()
        .iter()
        .map(|(t, _)| (t.to_string(), partitions))
        .collect();
    let kafka = match EmbeddedKafka::start(&specs) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("leadwatch dev-broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "bootstrap={}", kafka.bootstrap());
    let _ = out.flush();
    drop(out);
    tracing::warn!(
        bootstrap = kafka.bootstrap(),
        partitions,
        "dev broker running (in memory only); stop with SIGTERM"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(wait_for_signal());
    drop(kafka);
    ExitCode::SUCCESS
}
