//! `simulate`'s files: the events file in (one canonical event per line), the alerts out on
//! stdout (one JSON line each, with `fired_at`), the scorecard to a file or stderr.

use std::io::BufRead;

use jiff::Timestamp;
use serde::Serialize;

use crate::alert::Alert;
use crate::engine::Engine;
use crate::engine::rules::Rules;
use crate::event::{Envelope, LeadEvent};
use crate::identity::IdentityConfig;

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// Reads events, one JSON object per line (blank lines skipped); bad lines are returned, not
/// fatal.
pub fn read_events(reader: impl BufRead) -> std::io::Result<(Vec<LeadEvent>, Vec<BadLine>)> {
    read_projected(reader, None)
}

/// As [`read_events`], keeping of each event's fields only those `keep` names (the fields no
/// rule reads skipped unread, so a quarter's export is neither copied nor held whole).
fn read_projected(
    reader: impl BufRead,
    keep: Option<&dyn Fn(&str) -> bool>,
) -> std::io::Result<(Vec<LeadEvent>, Vec<BadLine>)> {
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // One line of the events file: the canonical event (as on `{prefix}.events`, or as the
        // generic source takes it: `source` and `received_at` may be left out).
        let read = match keep {
            Some(keep) => Envelope::read_keeping(&line, keep),
            None => serde_json::from_str::<Envelope>(&line),
        };
        match read {
            Ok(l) => events.push(LeadEvent {
                id: l.id,
                source: l.source.unwrap_or_else(|| "simulate".into()),
                lead: l.lead,
                occurred_at: l.occurred_at,
                received_at: l.received_at.unwrap_or(l.occurred_at),
                change: l.change,
            }),
            Err(e) => bad.push(BadLine {
                line: i + 1,
                message: e.to_string(),
            }),
        }
    }
    Ok((events, bad))
}

/// An alert as `simulate` prints it: the delivered body plus when it fired.
#[derive(Debug, Serialize)]
pub struct Fired<'a> {
    #[serde(flatten)]
    pub alert: &'a Alert,
    pub fired_at: Timestamp,
}

/// Why `simulate` over files could not finish.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {}: {source}", path.display())]
    Events {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the alerts: {0}")]
    Alerts(#[source] std::io::Error),
    #[error("writing the scorecard to {}: {source}", path.display())]
    Scorecard {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `leadwatch simulate`: reads the events file, prints every alert as a JSON line on stdout
/// (with `fired_at`), names unreadable lines on stderr, and writes the scorecard to `scorecard`
/// (or stderr). Records of one person are joined as `identity` says. `links` are the sources'
/// link templates into the CRM, by source name.
pub fn run_files(
    rules: Rules,
    identity: &IdentityConfig,
    links: std::collections::HashMap<String, String>,
    events: &std::path::Path,
    until: Option<Timestamp>,
    partitions: i32,
    scorecard: Option<&std::path::Path>,
) -> Result<(), FileError> {
    use std::io::Write;
    let events_error = |source| FileError::Events {
        path: events.to_path_buf(),
        source,
    };
    // The events are applied in time order: no reorder window to wait in (the live engine's is
    // for events that arrive late), so each lead holds one copy of itself.
    let engine = Engine::new(std::sync::Arc::new(rules))
        .with_links(links)
        .with_reorder_window(std::time::Duration::ZERO);
    let file = std::fs::File::open(events).map_err(events_error)?;
    let projection = engine.projection();
    // The fields the join reads are kept for it (the engine drops them as it drops any other).
    let keep = |name: &str| projection.keeps(name) || identity.reads(name);
    let (read, bad) =
        read_projected(std::io::BufReader::new(file), Some(&keep)).map_err(events_error)?;
    for b in &bad {
        eprintln!("{}:{}: skipped: {}", events.display(), b.line, b.message);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    let card = super::run_joined(&engine, identity, read, until, partitions, |alert| {
        let line = Fired {
            alert,
            fired_at: alert.timestamp,
        };
        if failed.is_none()
            && let Err(e) = serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .and_then(|_| out.write_all(b"\n"))
        {
            failed = Some(e);
        }
    });
    if let Some(e) = failed.or_else(|| out.flush().err()) {
        return Err(FileError::Alerts(e));
    }
    let text = serde_json::to_string_pretty(&card).expect("scorecard serializes");
    match scorecard {
        Some(path) => std::fs::write(path, text + "\n").map_err(|source| FileError::Scorecard {
            path: path.to_path_buf(),
            source,
        }),
        None => {
            eprintln!("{text}");
            Ok(())
        }
    }
}
