//! Process signals: SIGTERM/SIGINT stop (a second one exits at once), SIGHUP reloads.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on SIGTERM or SIGINT; a second one exits at once.
pub async fn shutdown() {
    stop().await;
    tokio::spawn(async {
        stop().await;
        eprintln!("leadwatch: second signal, exiting now");
        std::process::exit(130);
    });
}

/// One message per SIGHUP: read the rules file again.
pub fn reloads() -> tokio::sync::mpsc::UnboundedReceiver<()> {
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

/// Resolves on the next SIGTERM or SIGINT.
pub async fn stop() {
    on_stop().await
}

/// Listens for SIGTERM and SIGINT from this call on (inside a runtime); the future resolves on
/// the next one. For a process that must not die of a signal sent right after it said it was up.
pub fn on_stop() -> impl Future<Output = ()> {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
