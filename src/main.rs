//! The `leadwatch` command: parse the CLI, load the config, run. Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leadwatch::app::Config;
use leadwatch::bus::{Topics, embedded::EmbeddedKafka};

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
    /// Run a rules file over past events (one canonical JSON event per line) with a simulated
    /// clock: every alert as a JSON line on stdout, a scorecard (JSON) on stderr or to a file.
    Simulate {
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
    },
    /// Re-normalise one source's raw requests (`{prefix}.raw`) with the current configuration
    /// and produce the events again, marked as replayed (after a mapping was corrected).
    Replay {
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
                leadwatch::app::run_with_reloads(cfg, listener, shutdown_signal(), reload_signals())
                    .await
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
        Command::Simulate {
            rules,
            config,
            events,
            until,
            scorecard,
            partitions,
        } => simulate(
            rules.as_deref(),
            config.as_deref(),
            &events,
            until,
            partitions,
            scorecard.as_deref(),
        ),
        Command::Replay {
            config,
            source,
            from,
            until,
        } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(problems) => return print_problems(&problems),
            };
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(leadwatch::ingest::replay::replay(
                &cfg.kafka,
                &cfg.server,
                &cfg.sources,
                &source,
                from,
                until,
            )) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("leadwatch replay: {e:#}");
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
            match runtime.block_on(leadwatch::dispatch::dlq::replay(
                &cfg.kafka,
                cfg.dispatch_sections(),
                &sink,
            )) {
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

fn print_problems(problems: &leadwatch::conf::Problems) -> ExitCode {
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

/// One message per SIGHUP: read the rules file again.
fn reload_signals() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    rx
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

fn simulate(
    rules: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
    events: &std::path::Path,
    until: Option<jiff::Timestamp>,
    partitions: Option<u16>,
    scorecard: Option<&std::path::Path>,
) -> ExitCode {
    use leadwatch::simulate::{self, FileError};
    // The rules: `--rules`, or those `--config` names (with its sources' links into the CRM).
    let (rules, links, configured) = match (rules, config) {
        (Some(path), _) => match leadwatch::engine::rules::Rules::load(path) {
            Ok(rules) => (rules, Default::default(), None),
            Err(problems) => return print_problems(&problems),
        },
        (None, Some(path)) => match Config::load(path) {
            Ok(cfg) => (
                cfg.rules.clone(),
                cfg.source_links(),
                Some(cfg.kafka.partitions),
            ),
            Err(problems) => return print_problems(&problems),
        },
        (None, None) => {
            eprintln!("leadwatch simulate: name the rules with --rules FILE or --config FILE");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let partitions = partitions
        .map(i32::from)
        .or(configured)
        .unwrap_or(leadwatch::bus::DEFAULT_PARTITIONS);
    match simulate::run_files(rules, links, events, until, partitions, scorecard) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ FileError::Events { .. }) => {
            eprintln!("leadwatch simulate: {e}");
            ExitCode::from(66)
        }
        Err(e) => {
            eprintln!("leadwatch simulate: {e}");
            ExitCode::FAILURE
        }
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
