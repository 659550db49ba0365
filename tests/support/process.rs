//! Brokers and daemons as separate processes, for crash and rebalance tests.

use leadwatch::clock::Clock;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Kafka-protocol broker in its own process.
pub struct BrokerProcess {
    pub bootstrap: String,
    child: Child,
}

impl BrokerProcess {
    /// `leadwatch dev-broker` (librdkafka's mock cluster) with the daemon's topics.
    pub fn dev_broker(prefix: &str, partitions: i32) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_leadwatch"))
            .args([
                "dev-broker",
                "--partitions",
                &partitions.to_string(),
                "--topic-prefix",
                prefix,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dev-broker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bootstrap = line
            .trim()
            .strip_prefix("bootstrap=")
            .unwrap_or_else(|| panic!("dev-broker said {line:?}"))
            .to_string();
        Self { bootstrap, child }
    }

    /// tansu (an Apache Kafka-compatible broker) in memory, from `LEADWATCH_TANSU`.
    pub fn tansu(tansu: &Path) -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        let bootstrap = format!("127.0.0.1:{port}");
        let deadline = Clock::system().instant() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&bootstrap).is_err() {
            assert!(Clock::system().instant() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { bootstrap, child }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon as a child process.
pub struct DaemonProcess {
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl DaemonProcess {
    /// Starts `leadwatch run` with `config` (its `listen` must be `127.0.0.1:{port}`).
    pub fn start(dir: &Path, name: &str, port: u16, config: &str, rules: &str) -> Self {
        std::fs::write(dir.join("rules.toml"), rules).unwrap();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_leadwatch"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn leadwatch");
        Self {
            port,
            log,
            child: Some(child),
        }
    }

    /// As [`DaemonProcess::start`], with `config`'s `listen` at `127.0.0.1:0`: the daemon binds
    /// a port the kernel picks and says which in its log. No other process can take that port
    /// between a test choosing it and the daemon binding it.
    pub async fn start_on_any_port(dir: &Path, name: &str, config: &str, rules: &str) -> Self {
        assert!(
            config.contains("listen = \"127.0.0.1:0\""),
            "the config must listen on 127.0.0.1:0"
        );
        let mut daemon = Self::start(dir, name, 0, config, rules);
        let deadline = Clock::system().instant() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&daemon.log).unwrap_or_default();
            let port = text
                .lines()
                .filter(|l| l.contains("listening"))
                .find_map(|l| {
                    let rest = &l[l.find("127.0.0.1:")? + "127.0.0.1:".len()..];
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse::<u16>().ok()
                });
            if let Some(port) = port {
                daemon.port = port;
                return daemon;
            }
            let exited = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Clock::system().instant() < deadline,
                "leadwatch {name} never said where it listens ({exited:?}); log:\n{}",
                daemon.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// kill -9.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM (once it serves, so its signal handlers are in place), and wait for a clean exit.
    pub fn terminate(mut self) {
        let deadline = Clock::system().instant() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Clock::system().instant() < deadline,
                "leadwatch never listened; log:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "leadwatch exited with {status:?}; log:\n{}",
                self.tail()
            );
        }
    }

    /// The last lines of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Its `/metrics`, as text; `None` while it does not answer.
    pub async fn try_metrics(&self) -> Option<String> {
        reqwest::get(self.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    async fn metrics(&self) -> String {
        self.try_metrics()
            .await
            .unwrap_or_else(|| panic!("leadwatch does not answer /metrics; log:\n{}", self.tail()))
    }

    /// The value of one metric line (name and labels exactly as exported). The test fails
    /// when there is none, naming what is exported: a renamed metric never reads as 0.
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        super::metric_in(&self.metrics().await, line_prefix)
    }

    /// As [`DaemonProcess::metric`], 0 for a series never counted; its family must be
    /// exported. See [`super::metric_or_zero_in`].
    pub async fn metric_or_zero(&self, line_prefix: &str) -> f64 {
        super::metric_or_zero_in(&self.metrics().await, line_prefix)
    }

    /// Waits until one metric line is exported and its value satisfies `holds` (a daemon not
    /// answering yet is waited for too); fails the test after `deadline`.
    pub async fn wait_for_metric(
        &self,
        what: &str,
        line_prefix: &str,
        deadline: Duration,
        holds: impl Fn(f64) -> bool,
    ) {
        super::wait_for_metric_in(what, line_prefix, deadline, holds, || self.try_metrics()).await
    }

    pub async fn ready(&self) -> bool {
        matches!(reqwest::get(self.url("/readyz")).await, Ok(r) if r.status() == 200)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
