//! HubSpot's request signatures, checked on the raw bytes before anything is parsed.
//!
//! `X-HubSpot-Signature-v3` = base64(HMAC-SHA256(client secret, method + URI + body +
//! `X-HubSpot-Request-Timestamp`)), the timestamp (ms) at most 5 minutes old; the URI is the
//! public one HubSpot called (`public_url`) with some percent-escapes decoded, as HubSpot's
//! documentation lists. With `legacy_signatures = true` the older `X-HubSpot-Signature` is
//! accepted too: v1 = hex(SHA-256(secret + body)), v2 = hex(SHA-256(secret + method + URI + body)).
//! Every secret of a rotating list is tried, in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::HubspotConfig;
use crate::conf::PlainSecrets;
use crate::ingest::{Head, IngestError, Request, Verify};

type HmacSha256 = hmac::Hmac<Sha256>;

/// How old `X-HubSpot-Request-Timestamp` may be (and how far ahead, for clock skew).
pub const TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// The percent-escapes HubSpot decodes in the URI before it signs (v3).
const V3_DECODED: &[(&str, char)] = &[
    ("%3A", ':'),
    ("%2F", '/'),
    ("%3F", '?'),
    ("%40", '@'),
    ("%21", '!'),
    ("%24", '$'),
    ("%27", '\''),
    ("%28", '('),
    ("%29", ')'),
    ("%2A", '*'),
    ("%2C", ','),
    ("%3B", ';'),
];

/// What a HubSpot request must be signed with.
#[derive(Debug)]
pub struct Credentials {
    secrets: PlainSecrets,
    public_url: String,
    legacy_signatures: bool,
}

impl Credentials {
    pub fn from_config(cfg: &HubspotConfig) -> Self {
        Self {
            secrets: cfg.secret.clone(),
            public_url: cfg.public_url.trim().to_string(),
            legacy_signatures: cfg.legacy_signatures,
        }
    }

    /// The URI HubSpot signed: the public URL, with the request's query if the URL has none.
    fn signed_uri(&self, req: &Request<'_>) -> String {
        let mut uri = self.public_url.clone();
        if !uri.contains('?')
            && let Some(q) = req.uri.query()
        {
            uri.push('?');
            uri.push_str(q);
        }
        uri
    }

    /// The v3 timestamp, there and within the tolerance (checked before the body is read too).
    fn v3_timestamp<'a>(&self, head: &Head<'a>) -> Result<&'a str, String> {
        let timestamp = head
            .headers
            .get("x-hubspot-request-timestamp")
            .and_then(|v| v.to_str().ok())
            .ok_or("missing header `X-HubSpot-Request-Timestamp`")?
            .trim();
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| "`X-HubSpot-Request-Timestamp` is not Unix milliseconds")?;
        let now = head.now.as_millisecond();
        // Saturating: the header is the sender's, and i64::MIN must not overflow.
        if now.saturating_sub(ts) > TOLERANCE_MS {
            return Err("`X-HubSpot-Request-Timestamp` is more than 5 minutes old".into());
        }
        if ts.saturating_sub(now) > TOLERANCE_MS {
            return Err("`X-HubSpot-Request-Timestamp` is more than 5 minutes ahead".into());
        }
        Ok(timestamp)
    }

    /// Which signature a request carries: v3, or with `legacy_signatures` v1 or v2.
    fn signature<'a>(&self, head: &Head<'a>) -> Result<Signature<'a>, String> {
        let header = |n: &str| head.headers.get(n).and_then(|v| v.to_str().ok());
        match (
            header("x-hubspot-signature-v3"),
            header("x-hubspot-signature"),
        ) {
            (Some(v3), _) => Ok(Signature::V3(v3)),
            (None, Some(legacy)) if self.legacy_signatures => Ok(Signature::Legacy(legacy)),
            _ => Err("missing header `X-HubSpot-Signature-v3`".into()),
        }
    }

    fn verify_v3(&self, req: &Request<'_>, signature: &str) -> Result<(), String> {
        let timestamp = self.v3_timestamp(&req.head())?;
        let given = BASE64
            .decode(signature.trim())
            .map_err(|_| "`X-HubSpot-Signature-v3` is not base64")?;
        let uri = decode_v3_uri(&self.signed_uri(req));
        let mut ok = false;
        for secret in &self.secrets.0 {
            let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(req.method.as_str().as_bytes());
            mac.update(uri.as_bytes());
            mac.update(req.body);
            mac.update(timestamp.as_bytes());
            // `verify_slice` compares in constant time; every secret is tried.
            ok |= mac.verify_slice(&given).is_ok();
        }
        if ok {
            Ok(())
        } else {
            Err("`X-HubSpot-Signature-v3` does not match the request".into())
        }
    }

    fn verify_legacy(&self, req: &Request<'_>, signature: &str) -> Result<(), String> {
        let version = req
            .headers
            .get("x-hubspot-signature-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("v1")
            .trim()
            .to_ascii_lowercase();
        let given = decode_hex(signature.trim()).ok_or("`X-HubSpot-Signature` is not hex")?;
        let uri = self.signed_uri(req);
        let mut ok = subtle::Choice::from(0u8);
        for secret in &self.secrets.0 {
            let mut h = Sha256::new();
            h.update(secret.as_bytes());
            match version.as_str() {
                "v1" => {}
                "v2" => {
                    h.update(req.method.as_str().as_bytes());
                    h.update(uri.as_bytes());
                }
                other => return Err(format!("unknown `X-HubSpot-Signature-Version` `{other}`")),
            }
            h.update(req.body);
            ok |= h.finalize().as_slice().ct_eq(&given);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err("`X-HubSpot-Signature` does not match the request".into())
        }
    }
}

/// The signature header a request carries.
enum Signature<'a> {
    V3(&'a str),
    Legacy(&'a str),
}

impl Verify for Credentials {
    /// A signature header is there, and a v3 timestamp in time: checked before the body is read.
    fn authenticate_head(&self, head: &Head<'_>) -> Result<(), IngestError> {
        let checked = match self.signature(head) {
            Ok(Signature::V3(_)) => self.v3_timestamp(head).map(|_| ()),
            Ok(Signature::Legacy(_)) => Ok(()),
            Err(e) => Err(e),
        };
        checked.map_err(IngestError::Unauthorized)
    }

    /// Checks the signature of a request: v3, or with `legacy_signatures` v1 or v2. One MAC
    /// (v3) or hash (v1, v2) per secret: each header holds one signature.
    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        let result = match self.signature(&req.head()) {
            Ok(Signature::V3(v3)) => self.verify_v3(req, v3),
            Ok(Signature::Legacy(legacy)) => self.verify_legacy(req, legacy),
            Err(e) => Err(e),
        };
        result.map_err(IngestError::Unauthorized)
    }
}

/// Decodes the escapes HubSpot decodes (in either case of hex digit); others stay as they are.
pub fn decode_v3_uri(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3);
        match escape.and_then(|e| {
            V3_DECODED
                .iter()
                .find(|(enc, _)| enc.eq_ignore_ascii_case(e))
        }) {
            Some((_, c)) => {
                out.push(*c);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::hubspot::config::{EXAMPLE_SECRET as SECRET, example};
    use crate::ingest::testing::fixture;
    use jiff::Timestamp;

    fn source(extra: &str) -> Credentials {
        Credentials::from_config(&example(extra))
    }

    fn check(
        s: &Credentials,
        method: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), IngestError> {
        let method: http::Method = method.parse().unwrap();
        let uri: http::Uri = "/webhooks/hs".parse().unwrap();
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        s.authenticate(&Request {
            method: &method,
            uri: &uri,
            headers: &map,
            body,
            path_secret: None,
            now: Timestamp::from_millisecond(now_ms).unwrap(),
        })
    }

    #[test]
    fn hubspots_published_v1_example_verifies() {
        let (_, _, headers, body) = fixture(include_str!(
            "../../../tests/fixtures/hubspot/v1_contact_creation.http"
        ));
        let s = source("legacy_signatures = true");
        let h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(check(&s, "POST", &h, &body, 1_564_113_600_000).is_ok());
        // The same with a byte changed does not.
        let mut tampered = body.clone();
        tampered[20] ^= 1;
        assert!(matches!(
            check(&s, "POST", &h, &tampered, 0),
            Err(IngestError::Unauthorized(_))
        ));
        // Legacy signatures are refused unless configured.
        assert!(matches!(
            check(&source(""), "POST", &h, &body, 0),
            Err(IngestError::Unauthorized(m)) if m.contains("v3")
        ));
    }

    #[test]
    fn hubspots_published_v2_examples_verify() {
        let s = source("legacy_signatures = true");
        let v2 = |sig: &'static str| {
            [
                ("x-hubspot-signature-version", "v2"),
                ("x-hubspot-signature", sig),
            ]
        };
        let get = v2("eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e");
        assert!(check(&s, "GET", &get, b"", 0).is_ok());
        let post = v2("9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900");
        let body = br#"{"example_field":"example_value"}"#;
        assert!(check(&s, "POST", &post, body, 0).is_ok());
        assert!(check(&s, "PUT", &post, body, 0).is_err());
        // The example from HubSpot's Python SDK.
        let sdk = v2("4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383");
        assert!(check(&s, "POST", &sdk, b"{'example_field':'example_value'}", 0).is_ok());
    }

    #[test]
    fn hubspots_published_v3_example_verifies_within_five_minutes_only() {
        // From HubSpot's Python SDK tests: POST, that URL, that body, timestamp 15000000.
        let s = source("");
        let body = b"{'example_field':'example_value'}";
        let h = [
            (
                "x-hubspot-signature-v3",
                "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw=",
            ),
            ("x-hubspot-request-timestamp", "15000000"),
        ];
        assert!(check(&s, "POST", &h, body, 15_000_000).is_ok());
        assert!(check(&s, "POST", &h, body, 15_000_000 + TOLERANCE_MS).is_ok());
        let stale = check(&s, "POST", &h, body, 15_000_000 + TOLERANCE_MS + 1);
        assert!(matches!(stale, Err(IngestError::Unauthorized(m)) if m.contains("5 minutes old")));
        let ahead = check(&s, "POST", &h, body, 15_000_000 - TOLERANCE_MS - 1);
        assert!(
            matches!(ahead, Err(IngestError::Unauthorized(m)) if m.contains("5 minutes ahead"))
        );
        // Another body, or a secret we do not hold, does not verify.
        assert!(check(&s, "POST", &h, b"{}", 15_000_000).is_err());
        let other = source("").secrets;
        assert_eq!(other.0.len(), 2);
        let mut wrong = source("");
        wrong.secrets = PlainSecrets(vec!["not-the-secret".into()]);
        assert!(check(&wrong, "POST", &h, body, 15_000_000).is_err());
        // Without the header there is nothing to check.
        assert!(matches!(
            check(&s, "POST", &[], body, 15_000_000),
            Err(IngestError::Unauthorized(m)) if m.contains("missing")
        ));
    }

    #[test]
    fn the_v3_uri_is_decoded_as_hubspot_does() {
        assert_eq!(
            decode_v3_uri("https://h.example/a%3Ab%2fc%3Fd%40e%21%24%27%28%29%2A%2C%3B?q=%20%3d"),
            "https://h.example/a:b/c?d@e!$'()*,;?q=%20%3d"
        );
        assert_eq!(decode_v3_uri("%"), "%");
        assert_eq!(decode_v3_uri("%3"), "%3");
        // The signature covers the decoded form: signing the decoded URI verifies the request
        // HubSpot made to the encoded one.
        let s = Credentials {
            public_url: "https://hooks.example.com/webhooks/hs%3Aeu"
                .parse()
                .unwrap(),
            ..source("")
        };
        let ts = "1700000000000";
        let body = b"[]";
        let mut mac = HmacSha256::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(b"POSThttps://hooks.example.com/webhooks/hs:eu?x=1[]1700000000000");
        let sig = BASE64.encode(mac.finalize().into_bytes());
        let method: http::Method = "POST".parse().unwrap();
        let uri: http::Uri = "/webhooks/hs?x=1".parse().unwrap();
        let mut map = http::HeaderMap::new();
        map.insert("x-hubspot-signature-v3", sig.parse().unwrap());
        map.insert("x-hubspot-request-timestamp", ts.parse().unwrap());
        let req = Request {
            method: &method,
            uri: &uri,
            headers: &map,
            body,
            path_secret: None,
            now: Timestamp::from_millisecond(1_700_000_000_000).unwrap(),
        };
        assert!(s.authenticate(&req).is_ok());
    }

    /// Saved as proptest seed `cc 6205ff06…` of `arbitrary_signature_headers_never_panic`, shrunk
    /// to `ts = "-9223372036854775808"`, `sig = ""`, `now_ms = 253402207200001`. Its generator
    /// has changed since (`now_ms` now stops at 2.5e14), so the seed no longer makes this case.
    /// That `now_ms` is 1 ms past the last millisecond a `Timestamp` is made from
    /// (9999-12-30T22:00:00Z): the case failed in the test's own reading of the clock, which no
    /// clock can show. Kept at that last millisecond it is what the property is about: the
    /// oldest timestamp a header can say, read at the end of time, is a difference that does not
    /// fit an i64, and must neither panic nor wrap into "in time".
    #[test]
    fn a_timestamp_of_i64_min_at_the_end_of_time_is_refused_without_overflow() {
        let last_ms = 253_402_207_200_000;
        assert!(Timestamp::from_millisecond(last_ms + 1).is_err());
        let (ts, sig, now_ms) = (i64::MIN.to_string(), "", last_ms);
        let h = [
            ("x-hubspot-signature-v3", sig),
            ("x-hubspot-request-timestamp", ts.as_str()),
        ];
        let checked = check(&source(""), "POST", &h, b"[]", now_ms);
        assert!(checked.is_err());
        assert!(
            matches!(&checked, Err(IngestError::Unauthorized(m)) if m.contains("5 minutes old")),
            "{checked:?}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_signature_headers_never_panic(
            ts in proptest::prop_oneof![
                proptest::strategy::Just(i64::MIN.to_string()),
                proptest::strategy::Just(i64::MAX.to_string()),
                proptest::strategy::Strategy::prop_map(proptest::num::i64::ANY, |n| n.to_string()),
                "[ -~]{0,24}",
            ],
            sig in "[ -~]{0,64}",
            now_ms in -300_000_000_000_000i64..250_000_000_000_000,
        ) {
            let h = [("x-hubspot-signature-v3", sig.as_str()), ("x-hubspot-request-timestamp", ts.as_str())];
            proptest::prop_assert!(check(&source(""), "POST", &h, b"[]", now_ms).is_err());
        }
    }
}
