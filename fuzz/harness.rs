//! The fuzz harness: one function per fuzz target, each taking the fuzzer's bytes and driving one
//! entry point the way the daemon does, asserting what must hold (never a panic; and where it is
//! cheap, more: a parsed event's keys pass the key checks and it reads back as the engine reads
//! it, a decoded record re-encodes to one that decodes to the same value, a deadline the engine
//! asks to be woken at moves on once it is ticked …).
//!
//! Both the `cargo fuzz` targets (`fuzz/fuzz_targets/*.rs`, through this file as the
//! `leadwatch_fuzz` library) and the suite (`tests/fuzz_corpora.rs`, which includes this file
//! by path) run these very functions: the suite replays every file of `fuzz/corpus/<target>/`
//! through [`TARGETS`].
//!
//! Inputs are bytes as the daemon receives or reads them: a body for the parsers, a record for
//! the decoders. The authentication targets take a request in the text form of
//! `tests/fixtures/` (request line, headers, a blank line, the body: see [`request`]); the
//! restore target takes records as lines of `key<TAB>value` (see [`records`]).
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use jiff::{SignedDuration, Timestamp};

use leadwatch::alert::{Alert, split_lead_key};
use leadwatch::dispatch::backlog::{Backlog, LeadBacklog};
use leadwatch::dispatch::dlq::DeadLetter;
use leadwatch::dispatch::ledger::{LeadDeliveries, Ledger};
use leadwatch::dispatch::sinks::{Attempt, crm, slack, teams};
use leadwatch::dispatch::template::{Style, Templates};
use leadwatch::engine::partition::ROTATION_KEY;
use leadwatch::engine::rules::Rules;
use leadwatch::engine::step::{Input, Records, Write};
use leadwatch::engine::{Engine, LeadState, PartitionState};
use leadwatch::event::LeadEvent;
use leadwatch::ingest::raw::RawRecord;
use leadwatch::ingest::{MAX_KEY_LEN, Parsed, Request, ServerConfig, Source, SourceConfig};
use leadwatch::signature::{self, SignedHeaders, WebhookSecret};

/// A harness function: the fuzzer's bytes in, a panic when a property does not hold.
pub type Harness = fn(&[u8]);

/// Every target: its name (the folder of its corpus, the name of its `cargo fuzz` target) and
/// its harness function.
pub const TARGETS: &[(&str, Harness)] = &[
    ("parse_generic", parse_generic),
    ("parse_hubspot", parse_hubspot),
    ("parse_salesforce", parse_salesforce),
    ("parse_marketo", parse_marketo),
    ("parse_pipedrive", parse_pipedrive),
    ("redact_salesforce", redact_salesforce),
    ("verify_standard_webhooks", verify_standard_webhooks),
    ("auth_hubspot", auth_hubspot),
    ("auth_shared_secrets", auth_shared_secrets),
    ("decode_event", decode_event),
    ("decode_alert", decode_alert),
    ("decode_lead_state", decode_lead_state),
    ("decode_rotation", decode_rotation),
    ("restore_partition", restore_partition),
    ("decode_backlog", decode_backlog),
    ("decode_ledger", decode_ledger),
    ("decode_dead_letter", decode_dead_letter),
    ("decode_raw_record", decode_raw_record),
];

/// The secret of the generic source (and the Standard Webhooks target), and a second one, as
/// while rotating.
pub const GENERIC_SECRETS: [&str; 2] = [
    "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
];
/// HubSpot's documented client secret (after another, as while rotating) and target URL.
pub const HUBSPOT_SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
pub const HUBSPOT_PUBLIC_URL: &str = "https://www.example.com/webhook_uri";

/// "Now" for every target: the time the seeds were signed at (webhook timestamps are checked
/// against it), and when ingest received the bodies.
pub fn now() -> Timestamp {
    "2026-11-25T10:00:00Z".parse().expect("a timestamp")
}

/// A source as `Source::from_config` builds it from `[sources.NAME]` (TOML, `kind` included).
fn source(name: &str, toml: &str) -> Source {
    let value: serde_json::Value = config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .build()
        .expect("the harness's source config reads")
        .try_deserialize()
        .expect("the harness's source config is a table");
    let cfg: SourceConfig =
        serde_json::from_value(value).expect("the harness's source config is valid");
    assert!(cfg.problems().is_empty(), "{name}: {:?}", cfg.problems());
    Source::from_config(name, &cfg, &ServerConfig::default())
}

static GENERIC: LazyLock<Source> = LazyLock::new(|| {
    source(
        "web",
        &format!(
            "kind = \"generic\"\nsecret = [\"{}\", \"{}\"]",
            GENERIC_SECRETS[0], GENERIC_SECRETS[1]
        ),
    )
});
static HUBSPOT: LazyLock<Source> = LazyLock::new(|| {
    source(
        "hs",
        &format!(
            "kind = \"hubspot\"\nsecret = [\"other-secret\", \"{HUBSPOT_SECRET}\"]\n\
             public_url = \"{HUBSPOT_PUBLIC_URL}\"\nlegacy_signatures = true\n\
             portal_ids = [62515]"
        ),
    )
});
static SALESFORCE: LazyLock<Source> = LazyLock::new(|| {
    source(
        "sf",
        "kind = \"salesforce\"\norganization_ids = [\"00D5g000004Xq2R\"]\n\
         username = \"sf\"\npassword = \"s3cret\"",
    )
});
static SALESFORCE_PATH_SECRET: LazyLock<Source> = LazyLock::new(|| {
    source(
        "sf",
        "kind = \"salesforce\"\norganization_ids = [\"00D5g000004Xq2REAS\"]\n\
         path_secret = [\"p4th-new\", \"p4th-old\"]",
    )
});
static SALESFORCE_ORG_ONLY: LazyLock<Source> = LazyLock::new(|| {
    source(
        "sf",
        "kind = \"salesforce\"\norganization_ids = [\"00D5g000004Xq2R\"]\n\
         allow_unauthenticated = true",
    )
});
static MARKETO: LazyLock<Source> = LazyLock::new(|| {
    source(
        "mk",
        "kind = \"marketo\"\nheader = \"X-Leadwatch-Token\"\nsecret = [\"t0k3n-new\", \"t0k3n-old\"]",
    )
});
static MARKETO_ZONED: LazyLock<Source> = LazyLock::new(|| {
    source(
        "mk",
        "kind = \"marketo\"\nheader = \"X-Leadwatch-Token\"\nsecret = \"t0k3n\"\n\
         time_zone = \"America/Chicago\"\n[fields]\nlead = \"/lead/id\"\nemail = \"/lead/email\"",
    )
});
static PIPEDRIVE: LazyLock<Source> = LazyLock::new(|| {
    source(
        "pd",
        "kind = \"pipedrive\"\nusername = \"pd\"\npassword = [\"s3cret\", \"old\"]",
    )
});
static PIPEDRIVE_BY_DEAL: LazyLock<Source> = LazyLock::new(|| {
    source(
        "pd",
        "kind = \"pipedrive\"\nusername = \"pd\"\npassword = \"s3cret\"\nowner_from = \"deal\"",
    )
});

/// The engine with the rules leadwatch ships (`config/rules.toml`: pools, escalation ladders,
/// close-out rules).
static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let rules = Rules::parse(include_str!("../config/rules.toml")).expect("the shipped rules");
    Engine::new(Arc::new(rules))
});

static TEMPLATES: LazyLock<Templates> =
    LazyLock::new(|| Templates::new(&[]).expect("the default templates compile"));

// ---------------------------------------------------------------------------------------------
// Ingest: each vendor's parser, as `receive` and `leadwatch replay` call it.

/// What every parse that succeeds must give: keys the key checks pass, the source's name on
/// every event, and events that read back from `{prefix}.events` as the engine reads them.
fn check_parsed(source: &Source, parsed: &Parsed) {
    for e in &parsed.events {
        for (what, key) in [("lead", &e.lead), ("id", &e.id)] {
            assert!(
                !key.trim().is_empty() && key.len() <= MAX_KEY_LEN,
                "{what} {key:?}: a key the key checks refuse"
            );
            assert!(
                !key.chars().any(char::is_control),
                "{what} {key:?}: a control character in a key"
            );
        }
        assert_eq!(e.source, source.name, "an event of another source");
        let record = serde_json::to_vec(e).expect("an event serializes");
        let read: LeadEvent = serde_json::from_slice(&record)
            .unwrap_or_else(|err| panic!("the engine cannot read the event {e:?} back: {err}"));
        assert_eq!(&read, e, "the event reads back as another");
    }
}

/// Parses `body` through `source` as ingest does once a request is authentic.
fn parse_with(source: &Source, body: &[u8]) {
    if let Ok(parsed) = source.parse(body, now()) {
        check_parsed(source, &parsed);
    }
}

pub fn parse_generic(body: &[u8]) {
    parse_with(&GENERIC, body);
}

pub fn parse_hubspot(body: &[u8]) {
    parse_with(&HUBSPOT, body);
}

pub fn parse_salesforce(body: &[u8]) {
    parse_with(&SALESFORCE, body);
    // Whether an unparseable body is kept reads its org id out of it.
    let _ = SALESFORCE_ORG_ONLY.handler.authentic_unparsed(body);
}

pub fn parse_marketo(body: &[u8]) {
    parse_with(&MARKETO, body);
    parse_with(&MARKETO_ZONED, body);
}

pub fn parse_pipedrive(body: &[u8]) {
    parse_with(&PIPEDRIVE, body);
    parse_with(&PIPEDRIVE_BY_DEAL, body);
}

/// The Salesforce session-id redaction, before a message is kept in `{prefix}.raw`: it never
/// panics; what it gives back is redacted for good (redacting it again changes nothing).
pub fn redact_salesforce(body: &[u8]) {
    let Some(redacted) = SALESFORCE.handler.redact_body(body) else {
        return;
    };
    assert!(
        body.windows(9).any(|w| w == b"SessionId"),
        "redacted a body that names no SessionId"
    );
    if let Some(again) = SALESFORCE.handler.redact_body(&redacted) {
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&redacted),
            "a redacted body changes when it is redacted again"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication.

/// A request in the text form of `tests/fixtures/`: `METHOD URI` (anything else: `POST /`),
/// `Name: value` header lines (those that are no header are skipped), a blank line, the body
/// (one final newline is not part of it). Without a blank line it is all head.
pub struct Req {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Req {
    /// The `SECRET` of `/webhooks/NAME/SECRET`.
    pub fn path_secret(&self) -> Option<&str> {
        let mut segments = self.uri.path().strip_prefix("/webhooks/")?.split('/');
        let _name = segments.next()?;
        let secret = segments.next()?;
        segments.next().is_none().then_some(secret)
    }

    /// What a handler sees of the request (`body` may be another body).
    pub fn view<'a>(&'a self, body: &'a [u8]) -> Request<'a> {
        Request {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            body,
            path_secret: self.path_secret(),
            now: now(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn request(data: &[u8]) -> Req {
    let find = |needle: &[u8]| data.windows(needle.len()).position(|w| w == needle);
    let (head, body) = match (find(b"\r\n\r\n"), find(b"\n\n")) {
        (Some(crlf), Some(lf)) if lf < crlf => (&data[..lf], &data[lf + 2..]),
        (Some(crlf), _) => (&data[..crlf], &data[crlf + 4..]),
        (None, Some(lf)) => (&data[..lf], &data[lf + 2..]),
        (None, None) => (data, &[][..]),
    };
    let body = body.strip_suffix(b"\n").unwrap_or(body).to_vec();
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut request_line = lines
        .next()
        .unwrap_or_default()
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty());
    let method = request_line
        .next()
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or(Method::POST);
    let uri = request_line
        .next()
        .and_then(|u| Uri::try_from(u).ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    Req {
        method,
        uri,
        headers,
        body,
    }
}

/// The body with one more byte: no signature of the body may hold for it.
fn tampered(body: &[u8]) -> Vec<u8> {
    let mut other = body.to_vec();
    other.push(b'x');
    other
}

/// The Standard Webhooks check (`signature::verify`, as the generic source calls it, and that
/// source's `authenticate`): they agree; a request that passes carries, in `webhook-signature`,
/// the signature one of the secrets makes of exactly its id, timestamp and body; the same
/// headers over another body fail.
pub fn verify_standard_webhooks(data: &[u8]) {
    let req = request(data);
    let secrets: Vec<WebhookSecret> = GENERIC_SECRETS
        .iter()
        .map(|s| s.parse().expect("a whsec_ secret"))
        .collect();
    let signed = SignedHeaders {
        id: req.header("webhook-id"),
        timestamp: req.header("webhook-timestamp"),
        signature: req.header("webhook-signature"),
    };
    let verified = signature::verify(
        &secrets,
        &signed,
        &req.body,
        now().as_second(),
        signature::DEFAULT_TOLERANCE_SECS,
    );
    let authenticated = GENERIC.handler.authenticate(&req.view(&req.body));
    assert_eq!(
        verified.is_ok(),
        authenticated.is_ok(),
        "the generic source and signature::verify disagree: {verified:?} / {authenticated:?}"
    );
    if verified.is_ok() {
        let (id, ts) = (
            signed.id.unwrap_or_default(),
            signed.timestamp.unwrap_or_default(),
        );
        let ts: i64 = ts.trim().parse().expect("a verified timestamp is a number");
        let expected: BTreeSet<String> =
            secrets.iter().map(|s| s.sign(id, ts, &req.body)).collect();
        let given = signed.signature.unwrap_or_default();
        assert!(
            given.split(' ').any(|entry| expected.contains(entry)),
            "verified without a signature of the body: {given:?}"
        );
        let other = tampered(&req.body);
        assert!(
            GENERIC.handler.authenticate(&req.view(&other)).is_err(),
            "the signature of one body verified another"
        );
    }
    // What `receive` does next with an authentic request.
    if authenticated.is_ok() {
        parse_with(&GENERIC, &req.body);
    }
}

/// HubSpot's signatures (v3, and v1/v2 with `legacy_signatures`) through the source's
/// `authenticate`: never a panic, and a signature holds for its own body only.
pub fn auth_hubspot(data: &[u8]) {
    let req = request(data);
    if HUBSPOT.handler.authenticate(&req.view(&req.body)).is_ok() {
        let other = tampered(&req.body);
        assert!(
            HUBSPOT.handler.authenticate(&req.view(&other)).is_err(),
            "the signature of one body verified another"
        );
        parse_with(&HUBSPOT, &req.body);
    }
}

/// Marketo's header secret, Pipedrive's basic auth and Salesforce's basic auth, path secret and
/// org id, each through its source's `authenticate`: never a panic, and a request passes only
/// with the configured credential in it.
pub fn auth_shared_secrets(data: &[u8]) {
    let req = request(data);
    let view = req.view(&req.body);
    let basic = || {
        leadwatch::ingest::auth::basic_credentials(&req.headers)
            .map(|(user, password)| format!("{user}:{password}"))
    };
    if MARKETO.handler.authenticate(&view).is_ok() {
        let token = req.header("x-leadwatch-token").unwrap_or_default();
        assert!(
            ["t0k3n-new", "t0k3n-old"].contains(&token),
            "Marketo authenticated with {token:?}"
        );
    }
    if PIPEDRIVE.handler.authenticate(&view).is_ok() {
        let given = basic();
        assert!(
            matches!(given.as_deref(), Some("pd:s3cret" | "pd:old")),
            "Pipedrive authenticated with {given:?}"
        );
    }
    if SALESFORCE.handler.authenticate(&view).is_ok() {
        let given = basic();
        assert_eq!(
            given.as_deref(),
            Some("sf:s3cret"),
            "Salesforce authenticated with {given:?}"
        );
    }
    if SALESFORCE_PATH_SECRET.handler.authenticate(&view).is_ok() {
        let given = req.path_secret();
        assert!(
            matches!(given, Some("p4th-new" | "p4th-old")),
            "Salesforce authenticated with the path secret {given:?}"
        );
    }
    // Without a secret, only the org id in the body tells.
    let _ = SALESFORCE_ORG_ONLY.handler.authentic_unparsed(&req.body);
}

// ---------------------------------------------------------------------------------------------
// Records: what each reader of a topic does with whatever bytes it finds there.

/// `value` re-encoded decodes to the same value.
fn round_trips<T>(value: &T, what: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let record = serde_json::to_vec(value).unwrap_or_else(|e| panic!("{what} serializes: {e}"));
    let again: T = serde_json::from_slice(&record).unwrap_or_else(|e| {
        panic!(
            "{what} re-encoded does not decode: {e}\n{}",
            String::from_utf8_lossy(&record)
        )
    });
    assert_eq!(&again, value, "{what} re-encoded decodes to another value");
}

/// What a step asks the shell to write reads back: each alert as the dispatcher reads it, each
/// state as a restore reads it.
fn check_writes(writes: &[Write<'_>]) {
    for write in writes {
        match write {
            Write::Lead(w) => {
                for record in w.alert_records() {
                    let alert: Alert = serde_json::from_slice(&record)
                        .unwrap_or_else(|e| panic!("the engine wrote an unreadable alert: {e}"));
                    check_alert(&alert, &record);
                }
                if let Some(record) = w.state_record() {
                    let state = LeadState::decode(&record).unwrap_or_else(|| {
                        panic!(
                            "the engine wrote a state it cannot read back: {}",
                            String::from_utf8_lossy(&record)
                        )
                    });
                    assert_eq!(
                        state.encode(),
                        record,
                        "a written state reads back as another"
                    );
                }
            }
            Write::Rotation(record) => {
                let mut p = PartitionState::default();
                let records = Records::from([(ROTATION_KEY.to_string(), record.clone())]);
                let step = p.step(&ENGINE, Input::Restore(records), now());
                assert!(
                    step.diagnostics.is_empty(),
                    "the engine wrote a rotation it cannot read back: {:?}",
                    step.diagnostics
                );
            }
        }
    }
}

/// How many times the harness wakes a partition at the deadline it names.
const WAKES: usize = 12;

/// Drives a partition as the engine's shell does from `start`: read to its end, then woken at
/// each deadline it names (a deadline already past wakes it at once), a sweep after. Every step's
/// writes read back; a partition woken at its deadline names a later one (else the shell would
/// spin).
fn drive(p: &mut PartitionState, start: Timestamp) {
    let step = p.step(&ENGINE, Input::End, start);
    check_writes(&step.writes);
    let mut wake = step.wake;
    let mut now = start;
    let step = p.step(&ENGINE, Input::Tick, now);
    check_writes(&step.writes);
    wake = step.wake.or(wake);
    for _ in 0..WAKES {
        let Some(at) = wake else { break };
        now = now.max(at);
        let step = p.step(&ENGINE, Input::Tick, now);
        check_writes(&step.writes);
        if let Some(next) = step.wake {
            assert!(
                next > now,
                "woken at {now} for its deadline {at}, the partition asks to be woken at {next} \
                 again"
            );
        }
        wake = step.wake;
    }
    // A year on, every reorder window is closed and retention has had its say.
    if let Ok(later) = now.checked_add(SignedDuration::from_hours(24 * 366)) {
        let step = p.step(&ENGINE, Input::Sweep, later);
        check_writes(&step.writes);
    }
}

/// A `{prefix}.events` record as the engine's shell decodes it (serde_json), then stepped into a
/// partition of the shipped rules and driven through its deadlines.
pub fn decode_event(record: &[u8]) {
    let Ok(event) = serde_json::from_slice::<LeadEvent>(record) else {
        return;
    };
    round_trips(&event, "an event");
    let mut p = PartitionState::default();
    let step = p.step(&ENGINE, Input::Event(&event), now());
    check_writes(&step.writes);
    // The same event again is a duplicate.
    let step = p.step(&ENGINE, Input::Event(&event), now());
    check_writes(&step.writes);
    drive(&mut p, now());
}

/// What a sink does with an alert before any request: render its message in every style, the
/// chat payloads, the CRM task's description and record id.
fn check_alert(alert: &Alert, body: &[u8]) {
    let _ = (
        alert.id(),
        alert.object_id(),
        split_lead_key(&alert.data.lead),
    );
    let body = Bytes::copy_from_slice(body);
    for style in [Style::Slack, Style::Teams, Style::Plain] {
        let message = TEMPLATES.render(alert, None, style);
        let attempt = Attempt {
            alert,
            body: &body,
            attempt: 1,
            maybe_attempted: false,
            message: &message,
        };
        match style {
            Style::Slack => drop(slack::payload(&attempt)),
            Style::Teams => drop(teams::payload(&attempt)),
            Style::Plain => {
                let _ = crm::task_description(&attempt);
                let _ = crm::record_id(&attempt, "salesforce", "Salesforce");
                let _ = crm::record_id(&attempt, "hubspot", "HubSpot");
                let _ = crm::task_owner(&attempt, None, |id| id.starts_with("005"));
            }
        }
    }
}

/// A `{prefix}.alerts` record as the dispatcher decodes it (serde_json), re-encoded, and made
/// into each sink's message.
pub fn decode_alert(record: &[u8]) {
    let Ok(alert) = serde_json::from_slice::<Alert>(record) else {
        return;
    };
    round_trips(&alert, "an alert");
    check_alert(&alert, record);
}

/// One lead's `{prefix}.state` record (the versioned format, or the JSON of earlier builds):
/// `LeadState::decode_with_generation`, re-encoded by the same generation, then restored into a
/// partition (as the lead `hubspot:1551`) and driven through its deadlines.
pub fn decode_lead_state(record: &[u8]) {
    if let Some((generation, state)) = LeadState::decode_with_generation(record) {
        let encoded = state.encode_with(generation);
        let again = LeadState::decode_with_generation(&encoded).expect("an encoded state decodes");
        assert_eq!(
            again,
            (generation, state),
            "a state re-encoded decodes to another"
        );
    }
    let records = Records::from([("hubspot:1551".to_string(), record.to_vec())]);
    restore(records);
}

/// The partition's rotation record (`ROTATION_KEY` in `{prefix}.state`), restored beside a lead
/// whose alerts pick from a pool.
pub fn decode_rotation(record: &[u8]) {
    let records = Records::from([(ROTATION_KEY.to_string(), record.to_vec())]);
    let mut p = PartitionState::default();
    let step = p.step(&ENGINE, Input::Restore(records), now());
    check_writes(&step.writes);
    for event in POOL_EVENTS.iter() {
        let step = p.step(&ENGINE, Input::Event(event), now());
        check_writes(&step.writes);
    }
    drive(&mut p, now());
}

/// Events that make a sales-ready lead nobody touches: its escalations pick from the pools.
static POOL_EVENTS: LazyLock<Vec<LeadEvent>> = LazyLock::new(|| {
    let event = |id: &str, lead: &str| -> LeadEvent {
        serde_json::from_value(serde_json::json!({
            "id": id, "source": "web", "lead": lead,
            "occurred_at": "2026-11-25T09:00:00Z", "received_at": "2026-11-25T09:00:01Z",
            "type": "lead.updated",
            "fields": {"stage": "sales_ready", "owner": "alice@example.com", "score": 90,
                       "region": "emea", "email": "x@example.com"}
        }))
        .expect("a pool event")
    };
    vec![event("p-1", "web:pool-1"), event("p-2", "web:pool-2")]
});

/// The records of a partition of `{prefix}.state`: one per line, `key<TAB>value`; a line
/// without a tab is the value of the key `lead-N` (N its line number).
pub fn records(data: &[u8]) -> Records {
    let mut records = Records::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        match line.iter().position(|&b| b == b'\t') {
            Some(tab) => records.insert(
                String::from_utf8_lossy(&line[..tab]).into_owned(),
                line[tab + 1..].to_vec(),
            ),
            None => records.insert(format!("lead-{i}"), line.to_vec()),
        };
    }
    records
}

/// A restore (`PartitionState::step` with `Input::Restore`) from these records, the partition
/// then driven through its deadlines: never a panic; every record not read is counted.
fn restore(records: Records) {
    let total = records.len();
    let readable = records
        .iter()
        .filter(|(key, value)| {
            if key.as_str() == ROTATION_KEY {
                serde_json::from_slice::<std::collections::BTreeMap<String, u64>>(value).is_ok()
            } else {
                LeadState::decode(value).is_some()
            }
        })
        .count();
    let mut p = PartitionState::default();
    let step = p.step(&ENGINE, Input::Restore(records), now());
    let counted: usize = step
        .diagnostics
        .iter()
        .map(|d| match d {
            leadwatch::engine::step::Diagnostic::Unreadable { keys } => keys.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(
        counted,
        total - readable,
        "records not read back are not all counted"
    );
    check_writes(&step.writes);
    drive(&mut p, now());
}

/// What a changelog's snapshot of one record names as unreadable (it is dead-lettered): its
/// key when it could not be read, nothing else.
fn named_if_unreadable(key: &str, readable: bool) -> Vec<String> {
    if readable {
        Vec::new()
    } else {
        vec![key.to_string()]
    }
}

/// A partition restored from arbitrary records ([`records`]).
pub fn restore_partition(data: &[u8]) {
    restore(records(data));
}

/// One lead's `{prefix}.alerts.retry` record, read back as a partition's backlog is
/// (`Backlog::from_snapshot`), then its due entries taken as the retry loop does, each entry's
/// alert read as `deliver` reads it.
pub fn decode_backlog(record: &[u8]) {
    let lead = "hubspot:1551";
    let decoded = leadwatch::stamp::read(record)
        .and_then(|(_, body)| serde_json::from_slice::<LeadBacklog>(body).ok());
    if let Some(entry) = &decoded {
        round_trips(entry, "a backlog entry");
    }
    let snapshot = HashMap::from([(lead.to_string(), record.to_vec())]);
    let (backlog, unreadable) = Backlog::from_snapshot(snapshot, 7);
    assert_eq!(unreadable, named_if_unreadable(lead, decoded.is_some()));
    let distinct: BTreeSet<(&str, &str)> = decoded
        .iter()
        .flat_map(|e| &e.pending)
        .map(|p| (p.alert_id.as_str(), p.sink.as_str()))
        .collect();
    assert_eq!(backlog.len(), distinct.len(), "entries lost in the backlog");
    let kept = backlog.serialize_lead(lead);
    if !distinct.is_empty() {
        let (generation, body) = leadwatch::stamp::read(&kept).expect("a kept backlog is stamped");
        assert_eq!(
            generation, 7,
            "written with the generation it was restored for"
        );
        let again: LeadBacklog = serde_json::from_slice(body).expect("a kept backlog decodes");
        assert_eq!(again.pending.len(), distinct.len());
    }
    let _ = (backlog.next_due(), backlog.per_sink());
    let _ = backlog.pull_forward("crm", now());
    let far = Timestamp::MAX;
    for (_, pending) in backlog.take_due(far) {
        if let Ok(alert) = serde_json::from_slice::<Alert>(pending.body.as_bytes()) {
            check_alert(&alert, pending.body.as_bytes());
        }
    }
}

/// One lead's `{prefix}.delivered` record, read back as a partition's ledger is
/// (`Ledger::from_snapshot`) and asked what each alert has reached.
pub fn decode_ledger(record: &[u8]) {
    let lead = "hubspot:1551";
    let decoded = leadwatch::stamp::read(record)
        .and_then(|(_, body)| serde_json::from_slice::<LeadDeliveries>(body).ok());
    if let Some(entry) = &decoded {
        round_trips(entry, "a ledger entry");
    }
    let snapshot = HashMap::from([(lead.to_string(), record.to_vec())]);
    let (ledger, unreadable) = Ledger::from_snapshot(snapshot, 7);
    assert_eq!(unreadable, named_if_unreadable(lead, decoded.is_some()));
    for (alert_id, delivery) in decoded.iter().flat_map(|d| &d.alerts) {
        assert_eq!(ledger.delivered(lead, alert_id), delivery.sinks);
        let settled = ledger.settled(lead, alert_id);
        assert!(settled.is_superset(&delivery.sinks));
    }
    let _ = ledger.delivered("other", "x");
}

/// A `{prefix}.alerts.dlq` record as `leadwatch dlq replay` reads it: the letter, then its alert
/// re-encoded and read as the alert it re-sends.
pub fn decode_dead_letter(record: &[u8]) {
    let Ok(letter) = serde_json::from_slice::<DeadLetter>(record) else {
        return;
    };
    round_trips(&letter, "a dead letter");
    let body = serde_json::to_vec(&letter.alert).expect("a letter's alert serializes");
    if let Ok(alert) = serde_json::from_slice::<Alert>(&body) {
        check_alert(&alert, &body);
    }
}

/// A `{prefix}.raw` record as `leadwatch replay` reads it: the record, its body and headers, then
/// the body parsed again by the source of its kind.
pub fn decode_raw_record(record: &[u8]) {
    let Ok(raw) = serde_json::from_slice::<RawRecord>(record) else {
        return;
    };
    round_trips(&raw, "a raw record");
    let _ = raw.header_map();
    let Ok(body) = raw.body_bytes() else {
        return;
    };
    let source: &Source = match raw.kind.as_str() {
        "generic" => &GENERIC,
        "hubspot" => &HUBSPOT,
        "salesforce" => &SALESFORCE,
        "marketo" => &MARKETO,
        "pipedrive" => &PIPEDRIVE,
        _ => return,
    };
    if raw.truncated {
        return;
    }
    if let Ok(parsed) = source.parse(&body, raw.received_at) {
        check_parsed(source, &parsed);
    }
}
