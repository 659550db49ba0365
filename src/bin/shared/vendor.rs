//! Vendor-shaped lead lives for the benchmarks: what the default HubSpot and Salesforce mappings
//! make of the payloads those vendors send, built by running real payloads through the real
//! sources (`Source::parse`: the vendor's parser, the key checks and the size limits, as live).
//!
//! - A HubSpot lead (every fourth) is a contact whose subscribed properties arrive one per
//!   event, as HubSpot's `contact.propertyChange` webhooks send them: creation, then the
//!   properties the shipped rules read (employees, region, score, stage, owner), a call
//!   associated with the contact (7 in 10), a lead status and reason at close (3 in 10).
//! - A Salesforce lead is a Lead Outbound Message: a snapshot of about 40 fields (address,
//!   custom fields, a description of 1–2 KB and a notes field) every time the lead changes —
//!   created, handed off with an owner, closed with a reason (3 in 10) — and a closed call Task
//!   on it (7 in 10).
//!
//! The values follow `config/rules.toml`'s vocabulary (stage `MQL` with a score of 60 or more,
//! status `Unqualified`, owners named in its directory) so that the shipped rules fire; the
//! shapes — field names, how many per event, text lengths, event ids, canonical aliases — are
//! the vendors'. The Salesforce source maps `score` and `disposition_reason` to custom fields,
//! as an org adapting the starter rules would. About 4.1 events per lead.

use jiff::{SignedDuration, Timestamp};
use leadwatch::event::LeadEvent;
use leadwatch::ingest::config::{ServerConfig, SourceConfig};
use leadwatch::ingest::{Parsed, Source};
use serde_json::{Value, json};

/// The HubSpot portal and Salesforce org the payloads come from.
const PORTAL: u64 = 62515;
const ORG: &str = "00D5g000004Xq2REAS";

/// Owners as `config/rules.toml`'s directory names them.
pub const OWNERS: [&str; 3] = ["alice@example.com", "bob@example.com", "dave@example.com"];

/// The two vendor sources, configured as a user of the default mappings would.
pub struct Vendors {
    hubspot: Source,
    salesforce: Source,
}

impl Default for Vendors {
    fn default() -> Self {
        Self::new()
    }
}

impl Vendors {
    pub fn new() -> Self {
        let server = ServerConfig::default();
        let hs: SourceConfig = serde_json::from_value(json!({
            "kind": "hubspot", "secret": "bench-secret",
            "public_url": "https://hooks.example.com/webhooks/hs", "portal_ids": [PORTAL],
        }))
        .expect("a HubSpot source config");
        let sf: SourceConfig = serde_json::from_value(json!({
            "kind": "salesforce", "organization_ids": [ORG], "path_secret": "bench-secret",
            "fields": {"score": "Lead_Score__c", "disposition_reason": "Disqualified_Reason__c"},
        }))
        .expect("a Salesforce source config");
        Self {
            hubspot: Source::from_config("hs", &hs, &server),
            salesforce: Source::from_config("sf", &sf, &server),
        }
    }

    /// The events of lead `i`, its life starting at `start`, in time order.
    pub fn life(&self, i: usize, start: Timestamp) -> Vec<LeadEvent> {
        if i.is_multiple_of(4) {
            self.hubspot_life(i, start)
        } else {
            self.salesforce_life(i, start)
        }
    }

    fn parse(source: &Source, body: &[u8], at: Timestamp) -> Vec<LeadEvent> {
        let Parsed { events, .. } = source
            .parse(body, at)
            .unwrap_or_else(|e| panic!("a vendor payload the source refused: {e}"));
        events
    }

    fn hubspot_life(&self, i: usize, start: Timestamp) -> Vec<LeadEvent> {
        let contact = 1_000_000 + i as u64;
        let owner = OWNERS[i % 3];
        let mut n = 0u64;
        let mut at_secs = |secs: i64, body: Value| -> Value {
            n += 1;
            let mut body = body;
            let obj = body.as_object_mut().expect("an object");
            obj.insert("eventId".into(), json!(contact * 100 + n));
            obj.insert("subscriptionId".into(), json!(2_318_788 + n));
            obj.insert("portalId".into(), json!(PORTAL));
            obj.insert("appId".into(), json!(1_160_452));
            obj.insert(
                "occurredAt".into(),
                json!((start + SignedDuration::from_secs(secs)).as_millisecond()),
            );
            obj.insert("attemptNumber".into(), json!(0));
            body
        };
        let change = |property: &str, value: Value, source: &str| {
            json!({"subscriptionType": "contact.propertyChange", "objectId": contact,
                   "propertyName": property, "propertyValue": value, "changeSource": source})
        };
        let employees = (i * 37 % 3000).to_string();
        let region = if i.is_multiple_of(3) { "EMEA" } else { "NA" };
        let mut bodies = vec![
            at_secs(
                0,
                json!({"subscriptionType": "contact.creation", "objectId": contact, "changeSource": "FORM"}),
            ),
            at_secs(1, change("numemployees", json!(employees), "FORM")),
            at_secs(1, change("state", json!(region), "FORM")),
            at_secs(600, change("hubspotscore", json!("75"), "CALCULATED")),
            at_secs(
                601,
                change("lifecyclestage", json!("MQL"), "AUTOMATION_PLATFORM"),
            ),
            at_secs(900, change("hubspot_owner_id", json!(owner), "CRM_UI")),
        ];
        if i % 10 < 7 {
            let call = 9_000_000 + i as u64;
            bodies.push(at_secs(
                3_600 + (i % 7_200) as i64,
                json!({"subscriptionType": "object.associationChange", "changeSource": "CRM_UI",
                       "associationType": "CALL_TO_CONTACT", "associationCategory": "HUBSPOT_DEFINED",
                       "associationTypeId": 194, "fromObjectId": call, "fromObjectTypeId": "0-48",
                       "toObjectId": contact, "toObjectTypeId": "0-1", "associationRemoved": false,
                       "isPrimaryAssociation": false}),
            ));
        }
        if i % 10 < 3 {
            let reason = ["No budget", "Not interested", "Bad timing"][i % 3];
            bodies.push(at_secs(
                86_400,
                change("hs_lead_disqualification_reason", json!(reason), "CRM_UI"),
            ));
            bodies.push(at_secs(
                86_401,
                change("hs_lead_status", json!("Unqualified"), "CRM_UI"),
            ));
        }
        bodies
            .into_iter()
            .flat_map(|b| {
                let at = Timestamp::from_millisecond(b["occurredAt"].as_i64().expect("ms"))
                    .expect("a time");
                let body = serde_json::to_vec(&[b]).expect("json");
                Self::parse(&self.hubspot, &body, at)
            })
            .collect()
    }

    fn salesforce_life(&self, i: usize, start: Timestamp) -> Vec<LeadEvent> {
        let owner = OWNERS[i % 3];
        let at = |secs: i64| start + SignedDuration::from_secs(secs);
        let mut notes = 0u64;
        let mut message = |object: &str, fields: &[(String, Option<String>)]| -> Vec<u8> {
            notes += 1;
            soap(
                &format!("04l5g{:013}", i as u64 * 10 + notes),
                object,
                fields,
            )
        };
        let lead = |status: &str, owner: &str, modified: Timestamp, reason: Option<&str>| {
            salesforce_lead_fields(i, status, owner, start, modified, reason)
        };
        let mut events = Vec::new();
        let mut push = |body: Vec<u8>, when: Timestamp| {
            events.extend(Self::parse(&self.salesforce, &body, when));
        };
        // Created from a web form, waiting in the marketing queue.
        let t = at(0);
        push(
            message(
                "Lead",
                &lead("Open - Not Contacted", "00G5g000001MKTQ", t, None),
            ),
            t,
        );
        // Scored into an MQL and assigned by a flow: one change, one message.
        let t = at(900);
        push(message("Lead", &lead("MQL", owner, t, None)), t);
        if i % 10 < 7 {
            let t = at(3_600 + (i % 7_200) as i64);
            push(message("Task", &salesforce_task_fields(i, owner, t)), t);
        }
        if i % 10 < 3 {
            let reason = ["No budget", "Not interested", "Bad timing"][i % 3];
            let t = at(86_400);
            push(
                message("Lead", &lead("Unqualified", owner, t, Some(reason))),
                t,
            );
        }
        events
    }
}

/// The Salesforce Lead id of lead `i`.
pub fn salesforce_id(i: usize) -> String {
    format!("00Q5g{:010}AA", i)
}

/// What a Lead Outbound Message carries: about 40 fields, `None` being `xsi:nil`.
pub fn salesforce_lead_fields(
    i: usize,
    status: &str,
    owner: &str,
    created: Timestamp,
    modified: Timestamp,
    reason: Option<&str>,
) -> Vec<(String, Option<String>)> {
    let s = |v: &str| Some(v.to_string());
    let stamp = |t: Timestamp| Some(format!("{}", t.strftime("%Y-%m-%dT%H:%M:%S.000Z")));
    let region = if i.is_multiple_of(3) { "EMEA" } else { "NA" };
    let fields: Vec<(&str, Option<String>)> = vec![
        ("Id", Some(salesforce_id(i))),
        (
            "AnnualRevenue",
            Some(format!("{}.0", (i % 90 + 10) * 100_000)),
        ),
        ("City", s(["Boston", "Austin", "Berlin", "Denver"][i % 4])),
        ("CleanStatus", s("Pending")),
        (
            "Company",
            Some(format!("Company {} & Partners Ltd.", i % 5000)),
        ),
        (
            "Country",
            s(if region == "EMEA" {
                "Germany"
            } else {
                "United States"
            }),
        ),
        ("CreatedById", s("0055g00000INTG1AAA")),
        ("CreatedDate", stamp(created)),
        ("Description", Some(long_text(i, 1_024 + (i * 131) % 1_024))),
        ("Disqualified_Reason__c", reason.map(str::to_string)),
        ("DoNotCall", s("false")),
        (
            "Email",
            Some(format!("jane.doe{i}@company{}.example", i % 5000)),
        ),
        ("EmailBouncedReason", None),
        ("Fax", None),
        ("FirstName", s("Jane")),
        ("HasOptedOutOfEmail", s("false")),
        (
            "Industry",
            s(["Software", "Manufacturing", "Healthcare", "Retail"][i % 4]),
        ),
        ("IsConverted", s("false")),
        ("IsUnreadByOwner", s("true")),
        ("LastModifiedById", s("0055g00000INTG1AAA")),
        ("LastModifiedDate", stamp(modified)),
        ("LastName", Some(format!("Doe {i}"))),
        (
            "LeadSource",
            s(["Web", "Partner Referral", "Trade Show", "Webinar"][i % 4]),
        ),
        (
            "Lead_Score__c",
            Some(
                if status == "Open - Not Contacted" {
                    "20"
                } else {
                    "75"
                }
                .to_string(),
            ),
        ),
        ("MobilePhone", Some(format!("+1 617 555 {:04}", i % 10_000))),
        ("Name", Some(format!("Jane Doe {i}"))),
        ("NumberOfEmployees", Some((i * 37 % 3000).to_string())),
        ("OwnerId", s(owner)),
        ("Phone", Some(format!("+1 617 555 {:04}", (i + 1) % 10_000))),
        ("PostalCode", Some(format!("{:05}", 2_100 + i % 900))),
        (
            "Product_Interest__c",
            s("Analytics Platform; Data Integration"),
        ),
        ("Rating", s(["Hot", "Warm", "Cold"][i % 3])),
        ("Salutation", s("Ms.")),
        ("State", s(region)),
        ("Status", s(status)),
        (
            "Street",
            Some(format!(
                "{} Commonwealth Avenue\nSuite {}",
                100 + i % 900,
                200 + i % 50
            )),
        ),
        ("SystemModstamp", stamp(modified)),
        ("Title", s("VP Marketing Operations")),
        (
            "UTM_Campaign__c",
            Some(format!("2026-q4-webinar-series-{}", i % 12)),
        ),
        ("UTM_Medium__c", s("paid_social")),
        ("UTM_Source__c", s("linkedin")),
        (
            "Website",
            Some(format!("https://www.company{}.example", i % 5000)),
        ),
        ("Notes__c", Some(long_text(i + 7, 300))),
    ];
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A closed call Task on lead `i`.
fn salesforce_task_fields(i: usize, owner: &str, done: Timestamp) -> Vec<(String, Option<String>)> {
    let at = done.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string();
    [
        ("Id", format!("00T5g{:010}AA", i)),
        ("WhoId", salesforce_id(i)),
        ("OwnerId", owner.to_string()),
        ("Subject", "Call".into()),
        ("Status", "Completed".into()),
        ("IsClosed", "true".into()),
        ("TaskSubtype", "Call".into()),
        ("Type", "Call".into()),
        ("CallDurationInSeconds", (60 + i % 600).to_string()),
        ("Description", long_text(i + 3, 200)),
        ("CompletedDateTime", at.clone()),
        ("LastModifiedDate", at.clone()),
        ("CreatedDate", at),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Some(v)))
    .collect()
}

/// Prose of about `len` bytes, a little different per lead.
pub fn long_text(seed: usize, len: usize) -> String {
    const WORDS: [&str; 16] = [
        "evaluating",
        "pipeline",
        "budget",
        "quarter",
        "integration",
        "stakeholders",
        "pricing",
        "renewal",
        "requested",
        "demo",
        "timeline",
        "procurement",
        "security",
        "review",
        "follow-up",
        "webinar",
    ];
    let mut text = String::with_capacity(len + 16);
    let mut k = seed;
    while text.len() < len {
        text.push_str(WORDS[k % WORDS.len()]);
        k = k.wrapping_mul(31).wrapping_add(7) % 1_000_003;
        text.push(if k.is_multiple_of(11) { '.' } else { ' ' });
    }
    text
}

/// An Outbound Message with one notification of `object` (`Lead`, `Task`).
fn soap(notification: &str, object: &str, fields: &[(String, Option<String>)]) -> Vec<u8> {
    let mut xml = String::with_capacity(4_096);
    xml.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">"#);
    xml.push_str(&format!(
        "<OrganizationId>{ORG}</OrganizationId><ActionId>04k5g000000OutbAAE</ActionId><SessionId xsi:nil=\"true\"/><EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/00D5g000004Xq2R</EnterpriseUrl><PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/00D5g000004Xq2R</PartnerUrl>"
    ));
    xml.push_str(&format!(
        "<Notification><Id>{notification}</Id><sObject xsi:type=\"sf:{object}\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">"
    ));
    for (name, value) in fields {
        match value {
            Some(v) => xml.push_str(&format!("<sf:{name}>{}</sf:{name}>", escape(v))),
            None => xml.push_str(&format!("<sf:{name} xsi:nil=\"true\"/>")),
        }
    }
    xml.push_str("</sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>");
    xml.into_bytes()
}

fn escape(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
