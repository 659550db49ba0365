//! A Marketo webhook body → a [`LeadEvent`]. The body is whatever template the admin wrote, so
//! `[sources.NAME.fields]` gives JSON pointers into it:
//! - `lead` (default `/leadId`): the Marketo lead id; the key is `marketo:{id}`;
//! - `id` (no default): a unique id of the call, for deduplication; without one the id is derived
//!   from the body and the time it arrived (Marketo does not retry, so nothing is lost);
//! - `occurred_at` (default `/occurred_at`): RFC 3339, Unix milliseconds, or a local date and
//!   time in the source's `time_zone`; else arrival time;
//! - `activity` (default `/activity`): when it holds a kind (`email`, `call` …) the call is an
//!   activity (by `activity_by`, default `/activity_by`) instead of a patch; Marketo's program
//!   email types (`Send Email`, `Email Delivered`) are `automated` activities;
//! - canonical names (default `/{name}`, e.g. `score` → `/score`): aliases added to the patch,
//!   which also holds every top-level member of the body under its own name.
//!
//! A form-encoded template (`leadId={{lead.Id}}&score={{lead.Lead Score}}`) is read as a flat
//! object of its fields, so the same pointers (`/leadId`) name them.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::config::MarketoConfig;
use crate::event::{Activity, Change, LeadEvent};
use crate::ingest::fields::{CANONICAL, Mapping};
use crate::ingest::{FieldProblem, IngestError, Parse, Parsed, hashed_id, json_body};

/// Where in a body each thing is, and the time zone of a local `occurred_at`.
#[derive(Debug)]
pub struct Mapper {
    lead: String,
    id: Option<String>,
    occurred_at: String,
    activity: String,
    activity_by: String,
    mapping: Mapping,
    /// Of an `occurred_at` without an offset.
    time_zone: jiff::tz::TimeZone,
}

impl Mapper {
    pub fn from_config(cfg: &MarketoConfig) -> Self {
        let MarketoConfig {
            fields, time_zone, ..
        } = cfg;
        let pointer = |key: &str, default: &str| {
            fields
                .get(key)
                .cloned()
                .unwrap_or_else(|| default.to_string())
        };
        let defaults: Vec<(String, String)> = CANONICAL
            .iter()
            .map(|(name, _)| (name.to_string(), format!("/{name}")))
            .collect();
        let defaults: Vec<(&str, &str)> = defaults
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        Self {
            // Checked when the config is loaded.
            time_zone: time_zone
                .as_deref()
                .and_then(|tz| jiff::tz::TimeZone::get(tz).ok())
                .unwrap_or(jiff::tz::TimeZone::UTC),
            lead: pointer("lead", "/leadId"),
            id: fields.get("id").filter(|p| !p.is_empty()).cloned(),
            occurred_at: pointer("occurred_at", "/occurred_at"),
            activity: pointer("activity", "/activity"),
            activity_by: pointer("activity_by", "/activity_by"),
            mapping: Mapping::new(&defaults, fields),
        }
    }
}

impl Parse for Mapper {
    /// The event of a body: a JSON object (or a form) made by the admin's template.
    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        let value = match json_body(body) {
            Ok(v) => v,
            Err(not_json) => form_body(body).ok_or(not_json)?,
        };
        let Value::Object(members) = &value else {
            return Err(IngestError::malformed(
                "the webhook template must make a JSON object",
            ));
        };
        let mut problems = Vec::new();
        let lead_value = at(&value, &self.lead);
        let lead = lead_value.as_ref().and_then(scalar);
        match (&lead, &lead_value) {
            (Some(_), _) => {}
            (None, Some(Value::Number(n))) => problems.push(FieldProblem::new(
                "lead",
                format!(
                    "`{n}` at `{}` is not a whole number of at most 64 bits: send the lead id as \
                     a string",
                    self.lead
                ),
            )),
            (None, _) => problems.push(FieldProblem::new(
                "lead",
                format!(
                    "no lead id at `{}` (set `fields.lead` to its JSON pointer)",
                    self.lead
                ),
            )),
        }
        let occurred_at = match at(&value, &self.occurred_at) {
            None | Some(Value::Null) => Some(received_at),
            Some(Value::String(s)) if s.trim().is_empty() => Some(received_at),
            Some(Value::String(s)) => {
                let s = s.trim();
                s.parse::<Timestamp>()
                    .ok()
                    // `2026-11-25 09:30:00` (Marketo's `{{system.dateTime}}`): local time in the
                    // source's `time_zone`.
                    .or_else(|| {
                        s.parse::<jiff::civil::DateTime>()
                            .ok()
                            .and_then(|local| local.to_zoned(self.time_zone.clone()).ok())
                            .map(|z| z.timestamp())
                    })
                    .or_else(|| {
                        problems.push(FieldProblem::new(
                            "occurred_at",
                            format!(
                                "`{s}` is not an RFC 3339 timestamp nor a local date and time \
                                 such as `2026-11-25 09:30:00`"
                            ),
                        ));
                        None
                    })
            }
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                .or_else(|| {
                    problems.push(FieldProblem::new("occurred_at", "is not Unix milliseconds"));
                    None
                }),
            Some(_) => {
                problems.push(FieldProblem::new(
                    "occurred_at",
                    "must be a timestamp string or Unix milliseconds",
                ));
                None
            }
        };
        let (Some(lead), Some(occurred_at)) = (lead, occurred_at) else {
            return Err(IngestError::Malformed(problems));
        };
        let id = match self
            .id
            .as_deref()
            .and_then(|p| at(&value, p))
            .as_ref()
            .and_then(scalar)
        {
            Some(id) => format!("marketo:{id}"),
            None => hashed_id(
                "marketo",
                &[
                    &lead,
                    &String::from_utf8_lossy(body),
                    &received_at.to_string(),
                ],
            ),
        };
        let change = match at(&value, &self.activity).as_ref().and_then(scalar) {
            Some(kind) => Change::Activity {
                activity: Activity {
                    automated: is_program_email(&kind),
                    kind: kind.to_lowercase(),
                    by: at(&value, &self.activity_by).as_ref().and_then(scalar),
                },
            },
            None => {
                let mut fields: Map<String, Value> = members.clone();
                self.mapping
                    .add_aliases(|pointer| value.pointer(pointer), &mut fields);
                Change::Updated { fields }
            }
        };
        Ok(Parsed {
            events: vec![LeadEvent {
                id,
                source: source.to_string(),
                lead: format!("marketo:{lead}"),
                occurred_at,
                received_at,
                change,
            }],
            ..Parsed::default()
        })
    }
}

/// Marketo's activity types for an email a program sent (`Send Email`, `Email Delivered`, as
/// its activity type list names them): `automated`. A rep's email through Sales Insight is
/// another type (`Send Sales Email`) and counts as theirs.
pub const PROGRAM_EMAILS: &[&str] = &["send email", "email delivered"];

fn is_program_email(kind: &str) -> bool {
    let kind = kind.split_whitespace().collect::<Vec<_>>().join(" ");
    PROGRAM_EMAILS.iter().any(|p| kind.eq_ignore_ascii_case(p))
}

/// A form-encoded template (`leadId={{lead.Id}}&email={{lead.Email Address}}`, Marketo's
/// "Form/Url" request encoding) as a flat JSON object of strings, so the same pointers
/// (`/leadId`) name its fields. `None` when the body is not one.
fn form_body(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty() || text.starts_with(['{', '[', '"']) || !text.contains('=') {
        return None;
    }
    let members: Map<String, Value> = url::form_urlencoded::parse(text.as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    (!members.is_empty()).then_some(Value::Object(members))
}

/// The text of a scalar (Marketo tokens are strings or bare numbers). A number only when it is
/// a whole one of at most 64 bits: a longer one was rounded on parsing, so two leads would share
/// the key of its rounded text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn at(body: &Value, pointer: &str) -> Option<Value> {
    if pointer.is_empty() {
        return None;
    }
    body.pointer(pointer).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::marketo::tests::{now, source};
    use crate::ingest::testing::fixture_file;
    use crate::ingest::{Handler, Request};
    use serde_json::json;

    #[test]
    fn a_form_encoded_template_is_read_by_the_same_pointers_and_garbage_is_malformed() {
        let s = source("");
        let body = b"leadId=318581&email=ann%40example.com&score=92&stage=MQL&owner=Bob+Rep";
        let parsed = s.parse("mk", body, now()).unwrap();
        let e = &parsed.events[0];
        assert_eq!(e.lead, "marketo:318581");
        let Change::Updated { fields } = &e.change else {
            panic!("{e:?}")
        };
        assert_eq!(fields["email"], json!("ann@example.com"));
        assert_eq!(fields["score"], json!(92));
        assert_eq!(fields["owner"], json!("Bob Rep"));
        // Neither JSON nor a form: 400 with the JSON error, never a guess.
        for bad in [&b"{\"leadId\": 1"[..], b"just text", b"", b"\xff\xfe="] {
            assert!(
                matches!(s.parse("mk", bad, now()), Err(IngestError::Malformed(p)) if p[0].message.contains("not valid JSON")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_suggested_template_becomes_a_patch_with_numbers() {
        let (_, _, headers, body) = fixture_file("marketo", "lead_mql.http");
        let s = source("id = \"/eventId\"");
        let method = http::Method::POST;
        let uri: http::Uri = "/webhooks/mk".parse().unwrap();
        let req = |headers: &http::HeaderMap| {
            s.authenticate(&Request {
                method: &method,
                uri: &uri,
                headers,
                body: &body,
                path_secret: None,
                now: now(),
            })
        };
        assert!(req(&headers).is_ok());
        let mut wrong = headers.clone();
        wrong.insert("x-leadwatch-token", "guess".parse().unwrap());
        assert!(matches!(req(&wrong), Err(IngestError::Unauthorized(_))));
        assert!(matches!(
            req(&http::HeaderMap::new()),
            Err(IngestError::Unauthorized(m)) if m.contains("missing")
        ));

        let parsed = s.parse("mk", &body, now()).unwrap();
        let e = &parsed.events[0];
        assert_eq!(e.lead, "marketo:318581");
        assert_eq!(e.id, "marketo:mkto-318581-1764064800");
        let Change::Updated { fields } = &e.change else {
            panic!("{e:?}")
        };
        assert_eq!(
            fields["score"],
            json!(92),
            "a number, though the token is a string"
        );
        assert_eq!(fields["stage"], json!("sales_ready"));
        assert_eq!(fields["Lead Source Detail"], json!("Webinar 11/2026"));
        assert_eq!(
            e.occurred_at,
            "2026-11-25T09:20:00Z".parse::<Timestamp>().unwrap()
        );
    }

    /// The Salesforce lead id the template passes on (a member `sfdcLeadId`, Marketo's API
    /// name of the synced id) reaches the event under its own name, where `[identity]`'s default key (`marketo` →
    /// `sfdcLeadId`) reads it, in a JSON template and a form alike.
    #[test]
    fn the_salesforce_lead_id_of_the_template_reaches_the_patch() {
        let s = source("");
        for body in [
            &br#"{"leadId": 318581, "sfdcLeadId": "00Q5e00000AbCdE", "email": "ann@example.com"}"#
                [..],
            b"leadId=318581&sfdcLeadId=00Q5e00000AbCdE&email=ann%40example.com",
        ] {
            let parsed = s.parse("mk", body, now()).unwrap();
            let Change::Updated { fields } = &parsed.events[0].change else {
                panic!("{parsed:?}")
            };
            assert_eq!(fields["sfdcLeadId"], json!("00Q5e00000AbCdE"));
            assert_eq!(fields["email"], json!("ann@example.com"));
        }
    }

    /// An email a Marketo program sent (the activity types `Send Email`, `Email Delivered`, as
    /// a campaign's webhook passes them on) is an `automated` activity; a rep's sales email or
    /// call is not.
    #[test]
    fn program_emails_are_automated_activities() {
        let s = source("");
        let automated = |kind: &str| {
            let body =
                json!({"leadId": 318581, "activity": kind, "activity_by": "dana@ourco.example"});
            match &s
                .parse("mk", body.to_string().as_bytes(), now())
                .unwrap()
                .events[0]
                .change
            {
                Change::Activity { activity } => activity.automated,
                other => panic!("{other:?}"),
            }
        };
        for program in [
            "Send Email",
            "Email Delivered",
            "email  delivered",
            " SEND EMAIL ",
        ] {
            assert!(automated(program), "{program}");
        }
        for person in ["Send Sales Email", "email", "Call", "Sales Email Delivered"] {
            assert!(!automated(person), "{person}");
        }
    }

    #[test]
    fn pointers_are_configurable_and_activities_are_recognised() {
        let s = source(
            "lead = \"/lead/id\"\nemail = \"/lead/mail\"\nscore = \"\"\nactivity = \"/what\"",
        );
        let body = json!({"lead": {"id": 7, "mail": "a@b.example"}, "score": "5", "what": "Email"});
        let parsed = s.parse("mk", body.to_string().as_bytes(), now()).unwrap();
        assert_eq!(parsed.events[0].lead, "marketo:7");
        assert!(
            matches!(&parsed.events[0].change, Change::Activity { activity } if activity.kind == "email")
        );
        let body = json!({"lead": {"id": "7", "mail": "a@b.example"}, "score": "5"});
        let parsed = s.parse("mk", body.to_string().as_bytes(), now()).unwrap();
        let Change::Updated { fields } = &parsed.events[0].change else {
            panic!()
        };
        assert_eq!(fields["email"], json!("a@b.example"));
        assert_eq!(
            fields["score"],
            json!("5"),
            "the default alias is off: only the vendor's own field"
        );
        // The id is derived from the body and its arrival: another arrival is another event.
        let later = s
            .parse(
                "mk",
                body.to_string().as_bytes(),
                now() + jiff::SignedDuration::from_secs(1),
            )
            .unwrap();
        assert_ne!(later.events[0].id, parsed.events[0].id);
    }

    /// Marketo does not retry, but a replay from the raw topic parses the same body with the
    /// same arrival time again: the engine recognises it by this id. With a configured `id`
    /// pointer the id is the body's; without one (or when the body lacks it) a hash of the
    /// lead, the body and its arrival. Derived any other way after an upgrade, a replay would
    /// apply those events again. Literals; do not update them, undo the change.
    #[test]
    fn event_ids_are_pinned() {
        let ids = |s: &crate::ingest::marketo::MarketoSource, body: &[u8]| {
            let e = &s.parse("mk", body, now()).unwrap().events[0];
            (e.lead.clone(), e.id.clone())
        };
        let pair = |lead: &str, id: &str| (lead.to_string(), id.to_string());
        let with_id = source("id = \"/eventId\"");
        assert_eq!(
            ids(&with_id, br#"{"leadId":318581,"eventId":" mkto-1 "}"#),
            pair("marketo:318581", "marketo:mkto-1")
        );
        assert_eq!(
            ids(&with_id, br#"{"leadId":"318581","eventId":77}"#),
            pair("marketo:318581", "marketo:77")
        );
        // Configured, but not in this body: the hash.
        assert_eq!(
            ids(&with_id, br#"{"leadId":318581}"#),
            pair("marketo:318581", "marketo:edcdd16f84ee2c1e004a55f6746b5eac")
        );
        let without = source("");
        assert_eq!(
            ids(&without, br#"{"leadId":318581,"eventId":"mkto-1"}"#),
            pair("marketo:318581", "marketo:a82e6078b1c0cc0b6660a34d30d4df57")
        );
        // A form-encoded template: the hash is of the body as it came.
        assert_eq!(
            ids(&without, b"leadId=318581&score=92"),
            pair("marketo:318581", "marketo:633e1c6d7df540e5192787f3721b5a99")
        );
    }

    #[test]
    fn a_body_without_a_lead_id_is_malformed() {
        let s = source("");
        let Err(IngestError::Malformed(ps)) = s.parse("mk", br#"{"email":"x"}"#, now()) else {
            panic!()
        };
        assert_eq!(ps[0].field, "lead");
        assert!(matches!(
            s.parse("mk", b"[1]", now()),
            Err(IngestError::Malformed(_))
        ));
        assert!(matches!(
            s.parse("mk", br#"{"leadId":1,"occurred_at":"tuesday"}"#, now()),
            Err(IngestError::Malformed(_))
        ));
    }

    /// Found by fuzzing: a lead id beyond 64 bits was rounded to a float and keyed by its text
    /// (`marketo:4.4444444444444444e+23`), the same key for neighbouring ids.
    #[test]
    fn a_lead_id_beyond_64_bits_is_named_not_rounded() {
        let s = source("");
        let Err(IngestError::Malformed(ps)) =
            s.parse("mk", br#"{"leadId":444444444444444444444444}"#, now())
        else {
            panic!()
        };
        assert_eq!(ps[0].field, "lead");
        assert!(ps[0].message.contains("as a string"), "{}", ps[0].message);
        let parsed = s
            .parse("mk", br#"{"leadId":"444444444444444444444445"}"#, now())
            .unwrap();
        assert_eq!(parsed.events[0].lead, "marketo:444444444444444444444445");
    }

    #[test]
    fn a_local_date_and_time_is_read_in_the_sources_zone() {
        let body = br#"{"leadId":1,"occurred_at":"2026-11-25 09:30:00"}"#;
        let utc = source("").parse("mk", body, now()).unwrap();
        assert_eq!(
            utc.events[0].occurred_at,
            "2026-11-25T09:30:00Z".parse::<Timestamp>().unwrap()
        );
        let mut chicago = source("");
        chicago.map.time_zone = jiff::tz::TimeZone::get("America/Chicago").unwrap();
        let local = chicago.parse("mk", body, now()).unwrap();
        assert_eq!(
            local.events[0].occurred_at,
            "2026-11-25T15:30:00Z".parse::<Timestamp>().unwrap()
        );
    }
}
