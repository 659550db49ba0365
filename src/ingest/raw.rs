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

/// Largest raw record as produced, whatever the request: the body is cut to what its headers
/// and the rest leave of this. Below librdkafka's default `message.max.bytes` (1,000,000) with
/// room for the key and framing; the configuration refuses a smaller `message.max.bytes`.
pub const MAX_RAW_RECORD: usize = 960_000;

/// Largest `error` kept with an unparsed record: its `problems` may quote a sender's values.
pub const MAX_RAW_ERROR: usize = 16 * 1024;

/// The body as kept: text when it is UTF-8, base64 otherwise, cut so that its encoded form
/// (JSON escapes, base64) stays within `max` bytes — a record Kafka refuses would turn every
/// retry of an authentic request into a 503.
fn kept_body(body: &[u8], max: usize) -> (Option<String>, Option<String>, bool) {
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
    let mut cut = body.len().min(max);
    loop {
        let mut end = cut;
        // Text is cut on a character boundary, so it stays text.
        while utf8 && end > 0 && end < body.len() && (body[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        let (text, b64, len) = encoded(&body[..end]);
        if len <= max || end == 0 {
            return (text, b64, end < body.len());
        }
        // Shrink in proportion to the overshoot (escapes at most 6×, base64 4/3).
        cut = (end as u64 * max as u64 / len as u64) as usize;
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
        let mut record = Self {
            source: source.to_string(),
            kind: kind.to_string(),
            received_at,
            headers: kept,
            body: None,
            body_base64: None,
            truncated: true,
            parsed: true,
            error: None,
            events: usize::MAX,
        };
        // What the record takes besides its body, at its largest (an error, the most events,
        // the body's key and quotes).
        let rest = serde_json::to_vec(&record).map_or(MAX_RAW_RECORD, |v| v.len());
        let room = MAX_RAW_RECORD.saturating_sub(rest + MAX_RAW_ERROR + 32);
        let (text, b64, truncated) = kept_body(body, room.min(MAX_RAW_BODY));
        record.body = text;
        record.body_base64 = b64;
        record.truncated = truncated;
        record.parsed = false;
        record.events = 0;
        record
    }

    /// Keeps why a request could not be parsed: its JSON answer, or (when quoting the
    /// sender's values made that larger than [`MAX_RAW_ERROR`]) its `error` and the start of
    /// its `message`, marked `"cut": true`.
    pub fn set_error(&mut self, error: serde_json::Value) {
        let len = serde_json::to_vec(&error).map_or(usize::MAX, |v| v.len());
        if len <= MAX_RAW_ERROR {
            self.error = Some(error);
            return;
        }
        let mut message = error["message"].as_str().unwrap_or_default().to_string();
        let mut end = message.len().min(1024);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        self.error = Some(serde_json::json!({
            "error": error["error"],
            "message": message,
            "cut": true,
        }));
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
    use http::HeaderValue;

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

    /// Headers (up to `server.max_header_bytes`) and the error of an unparsed request take
    /// their room from the body: the record as a whole fits Kafka, whatever the request held.
    #[test]
    fn the_whole_record_fits_whatever_the_headers_and_the_error_hold() {
        let mut h = HeaderMap::new();
        for i in 0..100 {
            let value = HeaderValue::from_bytes(&[b'"'; 300]).unwrap();
            h.insert(
                http::HeaderName::from_bytes(format!("x-quote-{i}").as_bytes()).unwrap(),
                value,
            );
        }
        let body = "\u{1}".repeat(1_000_000).into_bytes();
        let mut r = RawRecord::capture("s", "generic", Timestamp::UNIX_EPOCH, &h, &[], &body);
        r.set_error(serde_json::json!({
            "error": "malformed", "message": "m".repeat(50_000),
            "problems": [{"field": "type", "message": "x".repeat(500_000)}],
        }));
        r.events = 100;
        let encoded = serde_json::to_vec(&r).unwrap().len();
        assert!(encoded <= MAX_RAW_RECORD, "{encoded}");
        assert!(r.truncated && r.body_bytes().unwrap().len() > 100_000);
        assert_eq!(r.error.as_ref().unwrap()["cut"], true);
        assert_eq!(r.error.as_ref().unwrap()["error"], "malformed");
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
