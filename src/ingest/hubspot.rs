//! The `hubspot` source: HubSpot webhook subscriptions.
//!
//! HubSpot POSTs a JSON array of up to 100 events, possibly out of order and with duplicates:
//! `[{"eventId":…,"subscriptionType":"contact.propertyChange","portalId":62515,"objectId":123,
//! "propertyName":"lifecyclestage","propertyValue":"salesqualifiedlead","occurredAt":1564113600000,
//! "attemptNumber":0,…}]`. Legacy subscription types name the object (`contact.creation`);
//! generic ones say `object.creation` with an `objectTypeId` (`0-1` = contact, `0-48` = call …).
//!
//! Authentication: `X-HubSpot-Signature-v3` = base64(HMAC-SHA256(client secret, method + URI +
//! body + `X-HubSpot-Request-Timestamp`)), the timestamp (ms) at most 5 minutes old; the URI is
//! the public one HubSpot called (`public_url`) with some percent-escapes decoded, as HubSpot's
//! documentation lists. With `legacy_signatures = true` the older `X-HubSpot-Signature` is
//! accepted too: v1 = hex(SHA-256(secret + body)), v2 = hex(SHA-256(secret + method + URI + body)).
//!
//! Mapping (a HubSpot lead is a contact; its key is `hubspot:{objectId}`):
//! - contact property changes → a patch `{property: value}` plus canonical aliases;
//! - contact creation and restore → an empty patch (the lead exists); deletion → `lead.deleted`;
//!   privacy deletion (GDPR) → `lead.forgotten`; merge → `lead.merged` for each merged-away id;
//! - an engagement (call, email, meeting, communication …) associated with a contact → an activity
//!   on that contact (`object.associationChange`, either direction; removals are ignored);
//! - events of companies, deals, tickets and other objects concern no lead: kept in
//!   `{prefix}.raw` and counted as ignored (a company's lifecycle stage would otherwise raise SLA
//!   alerts nobody can clear with a call on the contact).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use jiff::Timestamp;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::fields::Mapping;
use super::{
    FieldProblem, Handler, IngestError, MAX_BATCH, Parsed, Request, from_millis, hashed_id,
};
use crate::config::SourceConfig;
use crate::event::{Activity, Change, LeadEvent};

type HmacSha256 = hmac::Hmac<Sha256>;

/// How old `X-HubSpot-Request-Timestamp` may be (and how far ahead, for clock skew).
pub const TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// Canonical name → HubSpot contact property.
pub const DEFAULT_FIELDS: &[(&str, &str)] = &[
    ("stage", "lifecyclestage"),
    ("status", "hs_lead_status"),
    ("owner", "hubspot_owner_id"),
    ("score", "hubspotscore"),
    ("email", "email"),
    ("phone", "phone"),
    ("company", "company"),
    ("first_name", "firstname"),
    ("last_name", "lastname"),
    ("job_title", "jobtitle"),
    ("disposition_reason", "hs_lead_disqualification_reason"),
    ("employees", "numemployees"),
    ("annual_revenue", "annualrevenue"),
    ("industry", "industry"),
    ("region", "state"),
    ("country", "country"),
    ("lead_source", "hs_analytics_source"),
];

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

#[derive(Debug)]
pub struct HubspotSource {
    secrets: crate::config::PlainSecrets,
    public_url: String,
    legacy_signatures: bool,
    portal_ids: Vec<u64>,
    mapping: Mapping,
}

impl HubspotSource {
    pub fn from_config(cfg: &SourceConfig) -> Self {
        let SourceConfig::Hubspot {
            secret,
            public_url,
            legacy_signatures,
            portal_ids,
            fields,
            ..
        } = cfg
        else {
            unreachable!("a hubspot source is built from hubspot settings");
        };
        Self {
            secrets: secret.clone(),
            public_url: public_url.trim().to_string(),
            legacy_signatures: *legacy_signatures,
            portal_ids: portal_ids.clone(),
            mapping: Mapping::new(DEFAULT_FIELDS, fields),
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

    fn verify_v3(&self, req: &Request<'_>, signature: &str) -> Result<(), String> {
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        let timestamp = header("x-hubspot-request-timestamp")
            .ok_or("missing header `X-HubSpot-Request-Timestamp`")?
            .trim();
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| "`X-HubSpot-Request-Timestamp` is not Unix milliseconds")?;
        let now = req.now.as_millisecond();
        // Saturating: the header is the sender's, and i64::MIN must not overflow.
        if now.saturating_sub(ts) > TOLERANCE_MS {
            return Err("`X-HubSpot-Request-Timestamp` is more than 5 minutes old".into());
        }
        if ts.saturating_sub(now) > TOLERANCE_MS {
            return Err("`X-HubSpot-Request-Timestamp` is more than 5 minutes ahead".into());
        }
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

impl Handler for HubspotSource {
    fn kind(&self) -> &'static str {
        "hubspot"
    }

    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        let result = match (
            header("x-hubspot-signature-v3"),
            header("x-hubspot-signature"),
        ) {
            (Some(v3), _) => self.verify_v3(req, v3),
            (None, Some(legacy)) if self.legacy_signatures => self.verify_legacy(req, legacy),
            _ => Err("missing header `X-HubSpot-Signature-v3`".into()),
        };
        result.map_err(IngestError::Unauthorized)
    }

    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| IngestError::malformed(format!("not valid JSON: {e}")))?;
        let Value::Array(items) = value else {
            return Err(IngestError::malformed(
                "HubSpot sends a JSON array of events",
            ));
        };
        if items.len() > MAX_BATCH {
            return Err(IngestError::TooManyEvents(items.len()));
        }
        let mut parsed = Parsed::default();
        let mut problems = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match self.event(source, item, received_at) {
                Ok(Outcome::Events(mut events)) => parsed.events.append(&mut events),
                Ok(Outcome::Ignored) => parsed.ignored += 1,
                Ok(Outcome::Forbidden) => parsed.forbidden += 1,
                Err(ps) => problems.extend(ps.into_iter().map(|p| FieldProblem {
                    field: if p.field.is_empty() {
                        format!("[{i}]")
                    } else {
                        format!("[{i}].{}", p.field)
                    },
                    message: p.message,
                })),
            }
        }
        if problems.is_empty() {
            Ok(parsed)
        } else {
            Err(IngestError::Malformed(problems))
        }
    }
}

/// What one HubSpot event means.
enum Outcome {
    Events(Vec<LeadEvent>),
    Ignored,
    Forbidden,
}

/// The object type of a HubSpot type id (`0-1`) or name (`contact`, `CALL`).
fn object_type(id_or_name: &str) -> Option<&'static str> {
    Some(match id_or_name.to_ascii_lowercase().as_str() {
        "0-1" | "contact" | "contacts" => "contact",
        "0-2" | "company" | "companies" => "company",
        "0-3" | "deal" | "deals" => "deal",
        "0-5" | "ticket" | "tickets" => "ticket",
        "0-136" | "lead" | "leads" => "lead",
        "0-48" | "call" | "calls" => "call",
        "0-49" | "email" | "emails" => "email",
        "0-47" | "meeting" | "meetings" | "meeting_event" => "meeting",
        "0-18" | "communication" | "communications" => "communication",
        "0-46" | "note" | "notes" => "note",
        "0-27" | "task" | "tasks" => "task",
        "0-116" | "postal_mail" => "postal_mail",
        _ => return None,
    })
}

/// The activity kind of an engagement type: the engine counts call, email, meeting and sms as
/// touches by default. Communications are SMS, WhatsApp and LinkedIn messages.
fn activity_kind(object: &str) -> Option<&'static str> {
    Some(match object {
        "call" => "call",
        "email" => "email",
        "meeting" => "meeting",
        "communication" => "sms",
        "note" => "note",
        "task" => "task",
        "postal_mail" => "postal_mail",
        _ => return None,
    })
}

/// An id as HubSpot writes it: a number (or, defensively, a string of digits).
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
            Some(s.clone())
        }
        _ => None,
    }
}

impl HubspotSource {
    fn event(
        &self,
        source: &str,
        item: &Value,
        received_at: Timestamp,
    ) -> Result<Outcome, Vec<FieldProblem>> {
        let Value::Object(obj) = item else {
            return Err(vec![FieldProblem::new(
                "",
                "an event must be a JSON object",
            )]);
        };
        let mut problems = Vec::new();
        let subscription = match obj.get("subscriptionType").and_then(Value::as_str) {
            Some(s) => s,
            None => {
                problems.push(FieldProblem::new("subscriptionType", "is required"));
                ""
            }
        };
        let occurred_at = match obj.get("occurredAt").and_then(Value::as_i64) {
            Some(ms) => from_millis(ms).or_else(|| {
                problems.push(FieldProblem::new("occurredAt", "is out of range"));
                None
            }),
            None => {
                problems.push(FieldProblem::new(
                    "occurredAt",
                    "is required: Unix milliseconds",
                ));
                None
            }
        };
        let portal = id_of(obj.get("portalId"));
        if !self.portal_ids.is_empty() && portal.is_none() {
            problems.push(FieldProblem::new(
                "portalId",
                "is required when `portal_ids` is configured",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let occurred_at = occurred_at.expect("checked above");
        if let Some(p) = &portal
            && !self.portal_ids.is_empty()
            && !self.portal_ids.iter().any(|a| a.to_string() == *p)
        {
            return Ok(Outcome::Forbidden);
        }
        let portal = portal.unwrap_or_default();

        let (object, action) = match subscription.split_once('.') {
            Some(("object", action)) => (
                obj.get("objectTypeId")
                    .and_then(Value::as_str)
                    .and_then(object_type),
                action,
            ),
            Some((object, action)) => (object_type(object), action),
            None => return Ok(Outcome::Ignored),
        };
        let event_id = obj
            .get("eventId")
            .map(|v| v.to_string())
            .unwrap_or_default();
        let occurred = occurred_at.as_millisecond().to_string();
        let make = |lead: &str, change: Change, extra: &[&str]| {
            let mut parts = vec![portal.as_str(), subscription, lead, &event_id, &occurred];
            parts.extend_from_slice(extra);
            LeadEvent {
                id: hashed_id("hubspot", &parts),
                source: source.to_string(),
                lead: format!("hubspot:{lead}"),
                occurred_at,
                received_at,
                change,
            }
        };

        if action == "associationChange" {
            return Ok(self.association(obj, &make));
        }
        if object != Some("contact") {
            return Ok(Outcome::Ignored);
        }
        let Some(object_id) = id_of(obj.get("objectId")) else {
            return Err(vec![FieldProblem::new(
                "objectId",
                "is required: the contact's id",
            )]);
        };
        let event = match action {
            "creation" | "restore" => make(&object_id, Change::Updated { fields: Map::new() }, &[]),
            "deletion" => make(&object_id, Change::Deleted {}, &[]),
            "privacyDeletion" => make(&object_id, Change::Forgotten {}, &[]),
            "propertyChange" => {
                let Some(property) = obj.get("propertyName").and_then(Value::as_str) else {
                    return Err(vec![FieldProblem::new(
                        "propertyName",
                        "is required for a property change",
                    )]);
                };
                let value = obj.get("propertyValue").cloned().unwrap_or(Value::Null);
                let mut vendor = Map::new();
                vendor.insert(property.to_string(), value);
                let mut fields = vendor.clone();
                self.mapping.add_aliases_from(&vendor, &mut fields);
                make(&object_id, Change::Updated { fields }, &[property])
            }
            "merge" => return Ok(merge(obj, &object_id, &make)),
            _ => return Ok(Outcome::Ignored),
        };
        Ok(Outcome::Events(vec![event]))
    }

    /// An engagement associated with a contact is an activity on the contact.
    fn association(
        &self,
        obj: &Map<String, Value>,
        make: &dyn Fn(&str, Change, &[&str]) -> LeadEvent,
    ) -> Outcome {
        if obj.get("associationRemoved").and_then(Value::as_bool) == Some(true) {
            return Outcome::Ignored;
        }
        let named = obj
            .get("associationType")
            .and_then(Value::as_str)
            .and_then(|t| t.split_once("_TO_"));
        let side = |type_key: &str, fallback: Option<&str>| {
            obj.get(type_key)
                .and_then(Value::as_str)
                .and_then(object_type)
                .or_else(|| fallback.and_then(object_type))
        };
        let from = side("fromObjectTypeId", named.map(|n| n.0));
        let to = side("toObjectTypeId", named.map(|n| n.1));
        let (from_id, to_id) = (id_of(obj.get("fromObjectId")), id_of(obj.get("toObjectId")));
        let (contact, engagement, kind) = match (from, to, from_id, to_id) {
            (Some("contact"), Some(other), Some(c), Some(e))
            | (Some(other), Some("contact"), Some(e), Some(c)) => match activity_kind(other) {
                Some(kind) => (c, e, kind),
                None => return Outcome::Ignored,
            },
            _ => return Outcome::Ignored,
        };
        // Both directions of one association make the same id: one activity.
        let mut event = make(
            &contact,
            Change::Activity {
                activity: Activity {
                    kind: kind.to_string(),
                    by: None,
                },
            },
            &[],
        );
        event.id = hashed_id("hubspot", &["engagement", kind, &engagement, &contact]);
        Outcome::Events(vec![event])
    }
}

/// The contacts merged away become `lead.merged` into the one that remains.
fn merge(
    obj: &Map<String, Value>,
    object_id: &str,
    make: &dyn Fn(&str, Change, &[&str]) -> LeadEvent,
) -> Outcome {
    let primary = id_of(obj.get("primaryObjectId")).unwrap_or_else(|| object_id.to_string());
    let into = id_of(obj.get("newObjectId")).unwrap_or_else(|| primary.clone());
    let mut losers: Vec<String> = obj
        .get("mergedObjectIds")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(|v| id_of(Some(v))).collect())
        .unwrap_or_default();
    if into != primary {
        losers.push(primary);
    }
    losers.retain(|l| *l != into);
    losers.sort();
    losers.dedup();
    if losers.is_empty() {
        return Outcome::Ignored;
    }
    Outcome::Events(
        losers
            .iter()
            .map(|l| {
                make(
                    l,
                    Change::Merged {
                        into: format!("hubspot:{into}"),
                    },
                    &[l],
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::tests::{fixture, json_value};
    use serde_json::json;

    /// HubSpot's documentation and SDK examples use this client secret.
    const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";

    fn source(extra: &str) -> HubspotSource {
        let text = format!(
            "kind = \"hubspot\"\nsecret = [\"other-secret\", \"{SECRET}\"]\npublic_url = \"https://www.example.com/webhook_uri\"\n{extra}"
        );
        let cfg: SourceConfig = toml_source(&text);
        HubspotSource::from_config(&cfg)
    }

    fn toml_source(text: &str) -> SourceConfig {
        crate::ingest::tests::source_config(text)
    }

    fn check(
        s: &HubspotSource,
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
            "../../tests/fixtures/hubspot/v1_contact_creation.http"
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
        wrong.secrets = crate::config::PlainSecrets(vec!["not-the-secret".into()]);
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
        let s = HubspotSource {
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

    fn now() -> Timestamp {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    fn fixture_events(name: &str, s: &HubspotSource) -> Parsed {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/hubspot/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let (_, _, _, body) = fixture(&text);
        s.parse("hs", &body, now()).unwrap()
    }

    #[test]
    fn a_sales_ready_contact_becomes_patches_with_canonical_aliases() {
        let parsed = fixture_events("contact_sales_ready.http", &source(""));
        assert_eq!(parsed.ignored, 1, "the company event concerns no lead");
        let mut fields = Map::new();
        for e in &parsed.events {
            assert_eq!(e.lead, "hubspot:1551");
            assert_eq!(e.source, "hs");
            if let Change::Updated { fields: f } = &e.change {
                fields.extend(f.clone());
            }
        }
        assert_eq!(fields["lifecyclestage"], json!("salesqualifiedlead"));
        assert_eq!(fields["stage"], json!("salesqualifiedlead"));
        assert_eq!(fields["hubspot_owner_id"], json!("7001"));
        assert_eq!(fields["owner"], json!("7001"));
        // HubSpot sends every property as a string; canonical numbers are numbers.
        assert_eq!(fields["hubspotscore"], json!("85"));
        assert_eq!(fields["score"], json!(85));
        // Ids are stable: the same body gives the same ids.
        let again = fixture_events("contact_sales_ready.http", &source(""));
        let ids: Vec<_> = parsed.events.iter().map(|e| &e.id).collect();
        let ids2: Vec<_> = again.events.iter().map(|e| &e.id).collect();
        assert_eq!(ids, ids2);
    }

    #[test]
    fn a_call_associated_with_a_contact_is_a_touch_once() {
        let parsed = fixture_events("call_engagement.http", &source(""));
        // Both directions of the association and a removed one: one activity.
        let activities: Vec<&LeadEvent> = parsed.events.iter().collect();
        assert_eq!(activities.len(), 2, "{activities:?}");
        assert_eq!(activities[0].id, activities[1].id);
        assert_eq!(activities[0].lead, "hubspot:1551");
        assert_eq!(
            activities[0].change,
            Change::Activity {
                activity: Activity {
                    kind: "call".into(),
                    by: None
                }
            }
        );
        assert_eq!(parsed.ignored, 2, "the call's creation and the removal");
    }

    #[test]
    fn deletion_merge_and_privacy_deletion() {
        let body = json!([
            {"eventId":1,"subscriptionType":"contact.deletion","portalId":1,"objectId":5,"occurredAt":1_700_000_000_000u64},
            {"eventId":2,"subscriptionType":"contact.privacyDeletion","portalId":1,"objectId":6,"occurredAt":1_700_000_000_000u64},
            {"eventId":3,"subscriptionType":"contact.merge","portalId":1,"objectId":7,"primaryObjectId":7,"mergedObjectIds":[8,9],"newObjectId":10,"occurredAt":1_700_000_000_000u64}
        ]);
        let parsed = source("")
            .parse("hs", body.to_string().as_bytes(), now())
            .unwrap();
        let got: Vec<(&str, &Change)> = parsed
            .events
            .iter()
            .map(|e| (e.lead.as_str(), &e.change))
            .collect();
        let into = || Change::Merged {
            into: "hubspot:10".into(),
        };
        assert_eq!(
            got,
            [
                ("hubspot:5", &Change::Deleted {}),
                ("hubspot:6", &Change::Forgotten {}),
                ("hubspot:7", &into()),
                ("hubspot:8", &into()),
                ("hubspot:9", &into()),
            ]
        );
    }

    /// HubSpot's ids are hashes of what identifies each event (its portal, subscription, object,
    /// `eventId`, time and what else tells two events of one delivery apart); an engagement's is
    /// a hash of the association alone, so both directions are one touch. The engine recognises
    /// HubSpot's retries (for up to a day) by them: derived any other way after an upgrade,
    /// those retries would be applied again. Literals computed once, one per path; do not update
    /// them, undo the change.
    #[test]
    fn event_ids_are_pinned() {
        let at = 1_700_000_000_000u64;
        let body = json!([
            {"eventId":11,"subscriptionType":"contact.propertyChange","portalId":62515,"objectId":1551,"propertyName":"lifecyclestage","propertyValue":"salesqualifiedlead","occurredAt":at},
            {"eventId":12,"subscriptionType":"contact.creation","portalId":62515,"objectId":1551,"occurredAt":at},
            {"eventId":13,"subscriptionType":"object.restore","objectTypeId":"0-1","portalId":62515,"objectId":1551,"occurredAt":at},
            {"eventId":14,"subscriptionType":"contact.deletion","portalId":62515,"objectId":1551,"occurredAt":at},
            {"eventId":15,"subscriptionType":"contact.privacyDeletion","portalId":62515,"objectId":1551,"occurredAt":at},
            {"eventId":16,"subscriptionType":"contact.merge","portalId":62515,"objectId":1551,"primaryObjectId":1551,"mergedObjectIds":[1552],"newObjectId":1551,"occurredAt":at},
            // Without an `eventId` or a portal (only when `portal_ids` is not configured).
            {"subscriptionType":"contact.creation","objectId":1553,"occurredAt":at},
            // A call associated with the contact, in both directions: one id.
            {"eventId":17,"subscriptionType":"object.associationChange","portalId":62515,"associationType":"CONTACT_TO_CALL","fromObjectTypeId":"0-1","fromObjectId":1551,"toObjectTypeId":"0-48","toObjectId":9001,"occurredAt":at},
            {"eventId":18,"subscriptionType":"object.associationChange","portalId":62515,"associationType":"CALL_TO_CONTACT","fromObjectTypeId":"0-48","fromObjectId":9001,"toObjectTypeId":"0-1","toObjectId":1551,"occurredAt":at}
        ]);
        let parsed = source("")
            .parse("hs", body.to_string().as_bytes(), now())
            .unwrap();
        let ids: Vec<(&str, &str)> = parsed
            .events
            .iter()
            .map(|e| (e.lead.as_str(), e.id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                // property change
                ("hubspot:1551", "hubspot:3b2d504bd19f5e9f9f48505056d17a19"),
                // creation
                ("hubspot:1551", "hubspot:6620cbde04d36f060d75afb7125ace06"),
                // restore
                ("hubspot:1551", "hubspot:edf82f23cdce0a4b0f4004d92c704f49"),
                // deletion
                ("hubspot:1551", "hubspot:ffc97f35831631a477a4997e2d2b87db"),
                // privacy deletion
                ("hubspot:1551", "hubspot:6b0b87c4f9bc6eb9e6cb074828370c8c"),
                // merged away
                ("hubspot:1552", "hubspot:04484716c822bec7e5f14a9d2d353d49"),
                // no eventId, no portal
                ("hubspot:1553", "hubspot:5726f5d3b4287fe4a56c29020409e8ff"),
                // the call, contact to call
                ("hubspot:1551", "hubspot:34ae95601486c39c7dc9873c170bb32e"),
                // the call, call to contact
                ("hubspot:1551", "hubspot:34ae95601486c39c7dc9873c170bb32e"),
            ]
        );
    }

    #[test]
    fn a_portal_not_allowed_is_forbidden() {
        let s = source("portal_ids = [62515]");
        let body = json!([
            {"eventId":1,"subscriptionType":"contact.creation","portalId":62515,"objectId":5,"occurredAt":1_700_000_000_000u64},
            {"eventId":2,"subscriptionType":"contact.creation","portalId":999,"objectId":6,"occurredAt":1_700_000_000_000u64}
        ]);
        let parsed = s.parse("hs", body.to_string().as_bytes(), now()).unwrap();
        assert_eq!((parsed.events.len(), parsed.forbidden), (1, 1));
    }

    #[test]
    fn malformed_batches_name_each_problem() {
        let s = source("");
        let Err(IngestError::Malformed(ps)) = s.parse("hs", b"[{\"x\":1},2]", now()) else {
            panic!("expected malformed");
        };
        let fields: Vec<&str> = ps.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["[0].subscriptionType", "[0].occurredAt", "[1]"]);
        assert!(matches!(
            s.parse("hs", b"{\"not\":\"an array\"}", now()),
            Err(IngestError::Malformed(_))
        ));
        assert!(matches!(
            s.parse("hs", b"[{", now()),
            Err(IngestError::Malformed(_))
        ));
        let one = json!({"eventId":1,"subscriptionType":"contact.creation","portalId":1,"objectId":5,"occurredAt":1});
        let many = Value::Array(vec![one; 101]);
        assert!(matches!(
            s.parse("hs", many.to_string().as_bytes(), now()),
            Err(IngestError::TooManyEvents(101))
        ));
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
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = source("portal_ids = [1]").parse("hs", &body, now());
        }

        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            let body = serde_json::to_vec(&Value::Array(vec![value])).unwrap();
            let _ = source("").parse("hs", &body, now());
        }

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
