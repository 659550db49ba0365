//! One JSON line per alert on stdout (logs go to stderr).

use std::io::Write;

use super::attempt::{Attempt, Delivered, DeliveryError};

pub fn deliver(a: &Attempt<'_>) -> Result<Delivered, DeliveryError> {
    let mut out = std::io::stdout().lock();
    out.write_all(a.body)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map(|_| Delivered::Sent)
        .map_err(|e| DeliveryError::retriable(format!("writing to stdout: {e}")))
}

/// One JSON line per alert on stdout.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {}
