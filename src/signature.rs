//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>), used both to verify what
//! the `generic` source receives and to sign what the `webhook` sink sends.
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`, HMAC-SHA256 with the
//! secret's decoded bytes; the header holds space-separated `v1,<base64>` entries so secrets can
//! rotate (a sender signs with both, a receiver accepts either). A receiver computes one MAC per
//! secret and looks at the first [`MAX_SIGNATURES`] entries only: a header listing thousands
//! costs no more than one listing two.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Accepted distance between a request's `webhook-timestamp` and our clock, both ways.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// The most entries of `webhook-signature` looked at.
pub const MAX_SIGNATURES: usize = 8;

/// A signing secret, `whsec_` followed by base64 of the key bytes. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a signing secret must start with `whsec_`")]
    MissingPrefix,
    #[error("the part after `whsec_` is not valid base64")]
    NotBase64,
    #[error("the secret is empty")]
    Empty,
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s.strip_prefix("whsec_").ok_or(SecretError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(key))
    }
}

impl WebhookSecret {
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }
}

/// The headers a signed request carries: `webhook-id`, `webhook-timestamp` (seconds) and
/// `webhook-signature`, one `v1,…` entry per secret (several while rotating).
pub fn headers<'a>(
    secrets: impl IntoIterator<Item = &'a WebhookSecret>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let signature = secrets
        .into_iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ");
    [
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ]
}

/// The three headers a Standard Webhooks request carries.
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("header `webhook-timestamp` is not a Unix timestamp in seconds")]
    BadTimestamp,
    #[error("`webhook-timestamp` is more than {0} s in the past")]
    TooOld(i64),
    #[error("`webhook-timestamp` is more than {0} s in the future")]
    TooNew(i64),
    #[error(
        "no signature among the first {MAX_SIGNATURES} of `webhook-signature` matches the body"
    )]
    NoMatch,
}

/// What can be checked before the body arrives: the three headers are there and the timestamp
/// is within the tolerance. `now` is Unix seconds.
pub fn check_headers(
    headers: &SignedHeaders<'_>,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    verified_headers(headers, now, tolerance_secs).map(|_| ())
}

/// The id, timestamp and signature entries of checked headers.
fn verified_headers<'a>(
    headers: &SignedHeaders<'a>,
    now: i64,
    tolerance_secs: i64,
) -> Result<(&'a str, i64, &'a str), VerifyError> {
    let id = headers.id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let ts_raw = headers
        .timestamp
        .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let sigs = headers
        .signature
        .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let ts: i64 = ts_raw
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    // Saturating: the timestamp is the sender's, and i64::MIN must not overflow.
    if ts < now.saturating_sub(tolerance_secs) {
        return Err(VerifyError::TooOld(tolerance_secs));
    }
    if ts > now.saturating_add(tolerance_secs) {
        return Err(VerifyError::TooNew(tolerance_secs));
    }
    Ok((id, ts, sigs))
}

/// Verifies the raw body against the headers, accepting a match with any of `secrets`.
/// `now` is Unix seconds (passed in so tests pin the clock).
pub fn verify(
    secrets: &[WebhookSecret],
    headers: &SignedHeaders<'_>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let (id, ts, sigs) = verified_headers(headers, now, tolerance_secs)?;
    // Only the first few entries: a sender lists one per secret it rotates through.
    let candidates: Vec<Vec<u8>> = sigs
        .split(' ')
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| BASE64.decode(b64).ok())
        .collect();
    // One MAC per secret, whatever the header lists; each candidate is compared with it in
    // constant time, and every comparison is made whether or not an earlier one matched.
    let mut found = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = secret.mac(id, ts, body).finalize().into_bytes();
        for candidate in &candidates {
            found |= expected.as_slice().ct_eq(candidate.as_slice());
        }
    }
    if bool::from(found) {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// One or more signing secrets (`secret = "whsec_…"` or `secret = ["whsec_new", "whsec_old"]`).
#[derive(Clone)]
pub struct Secrets(pub Vec<WebhookSecret>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets(<{} redacted>)", self.0.len())
    }
}

impl<'de> serde::Deserialize<'de> for Secrets {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = crate::conf::secret_list(de, "expected a `whsec_…` string or a list of them")?;
        raw.iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<WebhookSecret>().map_err(|e| {
                    let which = if raw.len() > 1 {
                        format!("secret #{}: ", i + 1)
                    } else {
                        String::new()
                    };
                    serde::de::Error::custom(format!("{which}{e}"))
                })
            })
            .collect::<Result<_, _>>()
            .map(Secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vector published with the Standard Webhooks specification.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn secret() -> WebhookSecret {
        SECRET.parse().unwrap()
    }

    fn headers<'a>(ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(ID),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn signs_the_published_vector() {
        assert_eq!(secret().sign(ID, TS, BODY), SIG);
    }

    #[test]
    fn verifies_the_published_vector() {
        let ts = TS.to_string();
        assert_eq!(
            verify(&[secret()], &headers(&ts, SIG), BODY, TS, 300),
            Ok(())
        );
    }

    #[test]
    fn rejects_a_tampered_body() {
        let ts = TS.to_string();
        let tampered = br#"{"email":"test@example.com","username":"test_userX"}"#;
        assert_eq!(
            verify(&[secret()], &headers(&ts, SIG), tampered, TS, 300),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn accepts_either_of_two_signatures_and_either_of_two_secrets() {
        let ts = TS.to_string();
        let other: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let both = format!("{} {}", other.sign(ID, TS, BODY), SIG);
        // The receiver knows only the old secret; the sender signed with both.
        assert_eq!(
            verify(&[secret()], &headers(&ts, &both), BODY, TS, 300),
            Ok(())
        );
        // The receiver rotated: it accepts the new and the old secret at once.
        let only_new = other.sign(ID, TS, BODY);
        assert_eq!(
            verify(
                &[secret(), other.clone()],
                &headers(&ts, &only_new),
                BODY,
                TS,
                300
            ),
            Ok(())
        );
        // A secret it does not hold is refused.
        assert_eq!(
            verify(&[secret()], &headers(&ts, &only_new), BODY, TS, 300),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn tolerance_edges_both_ways() {
        let ts = TS.to_string();
        let h = headers(&ts, SIG);
        assert_eq!(verify(&[secret()], &h, BODY, TS + 300, 300), Ok(()));
        assert_eq!(verify(&[secret()], &h, BODY, TS - 300, 300), Ok(()));
        assert_eq!(
            verify(&[secret()], &h, BODY, TS + 301, 300),
            Err(VerifyError::TooOld(300))
        );
        assert_eq!(
            verify(&[secret()], &h, BODY, TS - 301, 300),
            Err(VerifyError::TooNew(300))
        );
    }

    #[test]
    fn missing_headers_and_garbage_are_named() {
        let ts = TS.to_string();
        let mut h = headers(&ts, SIG);
        h.signature = None;
        assert_eq!(
            verify(&[secret()], &h, BODY, TS, 300),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        let h = headers("yesterday", SIG);
        assert_eq!(
            verify(&[secret()], &h, BODY, TS, 300),
            Err(VerifyError::BadTimestamp)
        );
        let h = headers(&ts, "v1,not-base64!! v2,abc");
        assert_eq!(
            verify(&[secret()], &h, BODY, TS, 300),
            Err(VerifyError::NoMatch)
        );
    }

    /// A sender signs with one key per secret it rotates through: a handful. A header listing
    /// thousands costs one MAC per secret all the same, and only the first
    /// [`MAX_SIGNATURES`] entries are looked at.
    #[test]
    fn only_the_first_few_signatures_are_considered() {
        let ts = TS.to_string();
        let junk = |n: usize| vec!["v1,AAAA"; n].join(" ");
        let late = format!("{} {SIG}", junk(MAX_SIGNATURES));
        assert_eq!(
            verify(&[secret()], &headers(&ts, &late), BODY, TS, 300),
            Err(VerifyError::NoMatch)
        );
        let last_considered = format!("{} {SIG}", junk(MAX_SIGNATURES - 1));
        assert_eq!(
            verify(&[secret()], &headers(&ts, &last_considered), BODY, TS, 300),
            Ok(())
        );
        // Entries of other versions and empty ones (double spaces) count as entries too.
        let other_versions = format!("{} {SIG}", ["v1a,xyz"; MAX_SIGNATURES].join("  "));
        assert_eq!(
            verify(&[secret()], &headers(&ts, &other_versions), BODY, TS, 300),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn secrets_are_parsed_strictly_and_never_printed() {
        assert_eq!(
            "C2FV".parse::<WebhookSecret>(),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            "whsec_***".parse::<WebhookSecret>(),
            Err(SecretError::NotBase64)
        );
        assert_eq!("whsec_".parse::<WebhookSecret>(), Err(SecretError::Empty));
        assert!(!format!("{:?}", secret()).contains("C2FV"));
    }
}
