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
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
