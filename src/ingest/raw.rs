//! Raw capture: every authentic request, secrets removed, goes to `{prefix}.raw` (keyed by the
//! source name) together with the events made from it, so a corrected mapping can be replayed
//! (`leadwatch replay`) and an unparseable payload is never silently lost.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Largest body kept whole: Kafka refuses messages over about 1 MB by default. A larger body is
/// cut and marked `truncated` (its events were still produced; it cannot be replayed).
pub const MAX_RAW_BODY: usize = 900_000;

/// The body as kept: text when it is UTF-8, base64 otherwise, cut so that its encoded form
/// (JSON escapes, base64) stays within [`MAX_RAW_BODY`] — a record Kafka refuses would turn
/// every retry of an authentic request into a 503.
fn kept_body(body: &[u8]) -> (Option<String>, Option<String>, bool) {
    let encoded = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => {
            // Less the two quotes.
            let escaped = serde_json::to_string(s).expect("strings serialize").len() - 2;
            (Some(s.to_string()), None, escaped)
        }
        Err(_) => {
            let b64 = BASE64.encode(b);
            let len = b64.len();
            (None, Some(b64), len)
        }
    };
    let utf8 = std::str::from_utf8(body).is_ok();
    let mut cut = body.len().min(MAX_RAW_BODY);
    loop {
        let mut end = cut;
        // Text is cut on a character boundary, so it stays text.
        while utf8 && end > 0 && end < body.len() && (body[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        let (text, b64, len) = encoded(&body[..end]);
        if len <= MAX_RAW_BODY || end == 0 {
            return (text, b64, end < body.len());
        }
        // Shrink in proportion to the overshoot (escapes at most 6×, base64 4/3).
        cut = (end as u64 * MAX_RAW_BODY as u64 / len as u64) as usize;
    }
}

/// Headers never kept, whatever the source.
const ALWAYS_SECRET: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "webhook-signature",
    "x-hubspot-signature",
    "x-hubspot-signature-v3",
];

/// Header names that look like they carry a credential.
fn looks_secret(name: &str) -> bool {
    [
        "auth",
        "signature",
        "secret",
        "token",
        "api-key",
        "apikey",
        "password",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// One captured request on `{prefix}.raw`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawRecord {
    /// The configured source name (also the Kafka key).
    pub source: String,
    /// The source's kind (`hubspot`, …), so a replay can tell a changed configuration.
    #[serde(default)]
    pub kind: String,
    pub received_at: Timestamp,
    /// Request headers, lowercase, credentials removed.
    pub headers: BTreeMap<String, String>,
    /// The body as text when it is UTF-8 …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// … otherwise base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body was longer than [`MAX_RAW_BODY`] and is cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Whether it was turned into events.
    pub parsed: bool,
    /// Why not, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// How many events it made (before deduplication).
    #[serde(default)]
    pub events: usize,
}

impl RawRecord {
    /// Captures a request; `secret_headers` are the source's own credential headers.
    pub fn capture(
        source: &str,
        kind: &str,
        received_at: Timestamp,
        headers: &HeaderMap,
        secret_headers: &[String],
        body: &[u8],
    ) -> Self {
        let kept = headers
            .iter()
            .filter(|(name, _)| {
                let n = name.as_str();
                !ALWAYS_SECRET.contains(&n)
                    && !looks_secret(n)
                    && !secret_headers.iter().any(|s| s.eq_ignore_ascii_case(n))
            })
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let (text, b64, truncated) = kept_body(body);
        Self {
            source: source.to_string(),
            kind: kind.to_string(),
            received_at,
            headers: kept,
            body: text,
            body_base64: b64,
            truncated,
            parsed: false,
            error: None,
            events: 0,
        }
    }

    /// The body bytes as captured (a cut body only up to its cut).
    pub fn body_bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.body, &self.body_base64) {
            (Some(text), _) => Ok(text.clone().into_bytes()),
            (None, Some(b64)) => BASE64
                .decode(b64)
                .map_err(|e| format!("body_base64 is not base64: {e}")),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// The captured headers as a map again.
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                map.append(name, value);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_the_raw_topic() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic cGQ6aHVudGVyMg==".parse().unwrap());
        h.insert("x-hubspot-signature-v3", "abc".parse().unwrap());
        h.insert("x-leadwatch-token", "hunter2".parse().unwrap());
        h.insert("x-custom-secret-header", "hunter2".parse().unwrap());
        h.insert("x-my-shared-key", "hunter2".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert(
            "x-hubspot-request-timestamp",
            "1700000000000".parse().unwrap(),
        );
        let r = RawRecord::capture(
            "mk",
            "marketo",
            Timestamp::UNIX_EPOCH,
            &h,
            &["X-My-Shared-Key".to_string()],
            b"{}",
        );
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("cGQ6"),
            "{text}"
        );
        assert!(!text.contains("abc"), "{text}");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-hubspot-request-timestamp"], "1700000000000");
    }

    #[test]
    fn bodies_round_trip_as_text_or_base64_and_huge_ones_are_cut() {
        let h = HeaderMap::new();
        let r = RawRecord::capture(
            "s",
            "generic",
            Timestamp::UNIX_EPOCH,
            &h,
            &[],
            b"<a>\xff</a>",
        );
        assert!(r.body.is_none());
        assert_eq!(r.body_bytes().unwrap(), b"<a>\xff</a>");
        let back: RawRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let big = vec![b'a'; MAX_RAW_BODY + 10];
        let r = RawRecord::capture("s", "generic", Timestamp::UNIX_EPOCH, &h, &[], &big);
        assert!(r.truncated);
        assert_eq!(r.body_bytes().unwrap().len(), MAX_RAW_BODY);
        // A body of characters JSON escapes (or of bytes base64 widens) is cut by its encoded
        // size, so the record stays under Kafka's 1 MB default however it was made.
        for body in [
            "\u{1}".repeat(300_000).into_bytes(),
            "é\"".repeat(300_000).into_bytes(),
            vec![0xff; 800_000],
            vec![0x80; 1_000_000],
        ] {
            let r = RawRecord::capture("s", "generic", Timestamp::UNIX_EPOCH, &h, &[], &body);
            let encoded = serde_json::to_vec(&r).unwrap().len();
            assert!(r.truncated && encoded < 1_000_000, "{encoded}");
            assert!(r.body_bytes().unwrap().len() > 100_000);
            assert!(body.starts_with(&r.body_bytes().unwrap()));
        }
    }
}
