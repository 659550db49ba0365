//! The identity join's core: its configuration, what events assert, and the resolver's groups
//! (property tests: any order of the same observations makes the same persons).

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn config(toml: &str) -> Result<IdentityConfig, Vec<(String, String)>> {
    IdentityConfig::parse(toml)
}

fn updated(lead: &str, fields: Value) -> LeadEvent {
    let Value::Object(fields) = fields else {
        panic!("fields are an object")
    };
    LeadEvent {
        id: format!("{lead}-e"),
        source: "test".into(),
        lead: lead.into(),
        occurred_at: Timestamp::UNIX_EPOCH,
        received_at: Timestamp::UNIX_EPOCH,
        change: Change::Updated { fields },
    }
}

fn email(e: &str) -> Option<Identity> {
    Some(Identity::Email(e.into()))
}

#[test]
fn without_a_section_the_email_join_is_on_for_the_crms_and_the_map() {
    let c = config("[lifecycle]\nsales_ready = 'true'\n").unwrap();
    assert_eq!(c, IdentityConfig::default());
    assert!(c.enabled);
    for system in ["salesforce", "hubspot", "pipedrive", "marketo"] {
        assert!(c.asserts(system), "{system}");
    }
    assert!(!c.asserts("generic"));
    let e = updated(
        "marketo:501",
        json!({"email": "  Ann@Example.COM ", "score": 80}),
    );
    assert_eq!(
        assertions(&c, &e),
        [(Slot::Email, email("ann@example.com"))]
    );
    // A record whose key names no system (the generic source's) asserts nothing unless listed.
    assert!(assertions(&c, &updated("web-7", json!({"email": "ann@example.com"}))).is_empty());
    let listed = config("[identity]\nsources = [\"salesforce\", \"generic\"]\n").unwrap();
    assert_eq!(
        assertions(
            &listed,
            &updated("web-7", json!({"email": "ann@example.com"}))
        )
        .len(),
        1
    );
    assert!(
        assertions(
            &listed,
            &updated("marketo:1", json!({"email": "a@b.example"}))
        )
        .is_empty()
    );
}

#[test]
fn an_email_is_trimmed_and_lower_cased_and_an_empty_one_clears_it() {
    assert_eq!(
        normalize_email(&json!(" A@B.Example\t")),
        Some("a@b.example".into())
    );
    assert_eq!(normalize_email(&json!("   ")), None);
    assert_eq!(normalize_email(&Value::Null), None);
    let c = IdentityConfig::default();
    assert_eq!(
        assertions(&c, &updated("salesforce:00Q1", json!({"email": ""}))),
        [(Slot::Email, None)]
    );
    // A patch that does not mention the email says nothing of it.
    assert!(assertions(&c, &updated("salesforce:00Q1", json!({"status": "Open"}))).is_empty());
}

#[test]
fn a_configured_key_names_a_record_of_another_system() {
    let c = IdentityConfig::default();
    let e = updated(
        "marketo:501",
        json!({"sfdcLeadId": " 00Q5e00000AbCdE ", "email": "a@b.example"}),
    );
    assert_eq!(
        assertions(&c, &e),
        [
            (Slot::Email, email("a@b.example")),
            (
                Slot::Key(0),
                Some(Identity::Record("salesforce:00Q5e00000AbCdEEAV".into())),
            )
        ],
        "a 15-character Salesforce id names the record by its 18-character key"
    );
    // HubSpot's synced Salesforce id, the default's second key; another system's field is not.
    let h = updated(
        "hubspot:12",
        json!({"salesforceleadid": "00Q7", "sfdcLeadId": "00Q8"}),
    );
    assert_eq!(
        assertions(&c, &h),
        [(
            Slot::Key(1),
            Some(Identity::Record("salesforce:00Q7".into()))
        )]
    );
    let custom = config(
        "[identity]\n[[identity.keys]]\nsource = \"pipedrive\"\nfield = \"hs_id\"\nrecord = \"hubspot\"\n",
    )
    .unwrap();
    assert_eq!(custom.keys.len(), 1, "keys replace the defaults");
    assert!(custom.reads("hs_id") && custom.reads("email") && !custom.reads("sfdcLeadId"));
    assert_eq!(
        assertions(&custom, &updated("pipedrive:9", json!({"hs_id": 31}))),
        [(Slot::Key(0), Some(Identity::Record("hubspot:31".into())))]
    );
}

/// Salesforce's published pair, and what is not a 15-character id is left alone.
#[test]
fn a_15_character_salesforce_id_gains_its_check_characters() {
    assert_eq!(salesforce_id18("001A0000006Vm9r"), "001A0000006Vm9rIAC");
    assert_eq!(salesforce_id18("001A0000006Vm9rIAC"), "001A0000006Vm9rIAC");
    assert_eq!(salesforce_id18("00Q7"), "00Q7");
    assert_eq!(salesforce_id18("00Q5e00000AbC-E"), "00Q5e00000AbC-E");
    // A Marketo record carrying the 15 joins the Salesforce lead whose key has the 18.
    let c = IdentityConfig::default();
    let mut r = Resolver::default();
    observe_event(
        &mut r,
        &c,
        "salesforce:001A0000006Vm9rIAC",
        json!({"status": "Open"}),
    );
    let m = observe_event(
        &mut r,
        &c,
        "marketo:7",
        json!({"sfdcLeadId": "001A0000006Vm9r"}),
    );
    assert_eq!(m.lead, "salesforce:001A0000006Vm9rIAC");
}

#[test]
fn with_the_join_off_nothing_is_asserted() {
    let c = config("[identity]\nenabled = false\n").unwrap();
    assert!(!c.enabled && !c.reads("email"));
    assert!(assertions(&c, &updated("marketo:1", json!({"email": "a@b.example"}))).is_empty());
}

#[test]
fn every_problem_of_the_section_is_named_by_its_key() {
    let problems = config(
        r#"
[identity]
enabled = "yes"
sources = ["salesforce", "zoho", "salesforce"]
colour = "blue"
[[identity.keys]]
source = "marketo"
field = ""
record = "generic"
[[identity.keys]]
source = "hubspot"
field = "x"
record = "salesforce"
also = 1
[identity.system_of_record]
owner = ["crm", "sap"]
favourite = "crm"
"#,
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "identity.colour",
        "identity.keys[1].also",
        "identity.enabled",
    ] {
        assert!(keys.contains(&key), "{key} in {problems:?}");
    }
    // The checks after the types, once the types are right.
    let problems = config(
        r#"
[identity]
sources = ["salesforce", "zoho", "salesforce"]
[[identity.keys]]
source = "marketo"
field = ""
record = "generic"
[[identity.keys]]
source = "marketo"
field = ""
record = "salesforce"
[identity.system_of_record]
owner = ["crm", "sap"]
favourite = "crm"
"#,
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "identity.sources[1]",
            "identity.sources[2]",
            "identity.keys[0].source",
            "identity.keys[0].field",
            "identity.keys[0].record",
            "identity.keys[1].source",
            "identity.keys[1].field",
            "identity.keys[1]",
            "identity.system_of_record.favourite",
            "identity.system_of_record.owner[1]",
        ],
        "{problems:?}"
    );
    assert!(
        problems[2].1.contains("add it to identity.sources"),
        "{problems:?}"
    );
}

#[test]
fn the_crm_owns_what_sales_does_and_the_map_owns_the_score() {
    let c = IdentityConfig::default();
    for field in [
        "owner",
        "status",
        "stage",
        "disposition_reason",
        "disposition_detail",
    ] {
        assert_eq!(c.precedence(field, "salesforce"), Some(0), "{field}");
        assert_eq!(c.precedence(field, "marketo"), None, "{field}");
        // The MAP re-sending "MQL" after the CRM set a stage does not win.
        assert!(!c.replaces(field, Some("salesforce"), "marketo"), "{field}");
        assert!(c.replaces(field, Some("marketo"), "salesforce"), "{field}");
        assert!(
            c.replaces(field, Some("salesforce"), "salesforce"),
            "{field}"
        );
        // Where the CRM never set it, the MAP's value counts.
        assert!(c.replaces(field, None, "marketo"), "{field}");
    }
    assert_eq!(c.precedence("score", "marketo"), Some(0));
    assert!(!c.replaces("score", Some("marketo"), "salesforce"));
    assert!(c.replaces("score", Some("salesforce"), "marketo"));
    // A field no system owns: the newest value, whoever sent it.
    assert_eq!(c.precedence("company", "salesforce"), None);
    assert!(c.replaces("company", Some("salesforce"), "marketo"));
    assert!(c.replaces("company", Some("marketo"), "salesforce"));

    let c = config(
        "[identity.system_of_record]\nscore = \"crm\"\nowner = [\"hubspot\", \"salesforce\"]\nstage = []\n",
    )
    .unwrap();
    assert!(c.replaces("score", Some("marketo"), "salesforce"));
    assert!(!c.replaces("score", Some("salesforce"), "marketo"));
    assert_eq!(c.precedence("owner", "hubspot"), Some(0));
    assert!(!c.replaces("owner", Some("hubspot"), "salesforce"));
    assert!(c.replaces("stage", Some("salesforce"), "marketo"));
    // Fields not named keep their defaults.
    assert!(!c.replaces("status", Some("salesforce"), "marketo"));
}

fn observe_event(r: &mut Resolver, c: &IdentityConfig, lead: &str, fields: Value) -> Resolved {
    let e = updated(lead, fields);
    r.observe(&e.lead, &assertions(c, &e))
}

#[test]
fn the_crm_record_names_the_person_and_a_record_without_identity_keeps_its_key() {
    let c = IdentityConfig::default();
    let mut r = Resolver::default();
    let m = observe_event(
        &mut r,
        &c,
        "marketo:501",
        json!({"email": "ann@example.com"}),
    );
    assert_eq!(
        (m.lead.as_str(), m.before.as_deref()),
        ("marketo:501", None)
    );
    let s = observe_event(
        &mut r,
        &c,
        "salesforce:00Q1",
        json!({"email": "Ann@Example.com"}),
    );
    assert_eq!(s.lead, "salesforce:00Q1");
    assert_eq!(s.merged, ["marketo:501"]);
    assert_eq!(r.lead_of("marketo:501"), Some("salesforce:00Q1"));
    assert_eq!(
        r.records_of("marketo:501"),
        ["marketo:501", "salesforce:00Q1"]
    );
    // An event without identity (a call) changes nothing.
    let again = r.observe("salesforce:00Q1", &[]);
    assert_eq!(
        (again.lead.as_str(), again.merged.len()),
        ("salesforce:00Q1", 0)
    );
    let alone = observe_event(&mut r, &c, "hubspot:9", json!({"score": 3}));
    assert_eq!(alone.lead, "hubspot:9");
    assert_eq!(r.records_of("hubspot:9"), ["hubspot:9"]);
}

#[test]
fn a_key_joins_before_the_named_record_is_seen_and_merged_records_are_one() {
    let c = IdentityConfig::default();
    let mut r = Resolver::default();
    observe_event(&mut r, &c, "marketo:7", json!({"sfdcLeadId": "00QA"}));
    assert_eq!(r.lead_of("marketo:7"), Some("marketo:7"));
    let s = r.observe("salesforce:00QA", &[]);
    assert_eq!(
        (s.lead.as_str(), s.merged.as_slice()),
        ("salesforce:00QA", &["marketo:7".to_string()][..])
    );
    // Two CRM records of one person: the least key, whichever came first.
    observe_event(
        &mut r,
        &c,
        "salesforce:00Q0",
        json!({"email": "x@y.example"}),
    );
    let m = r.observe(
        "salesforce:00QA",
        &[(
            Slot::MergedInto,
            Some(Identity::Record("salesforce:00Q0".into())),
        )],
    );
    assert_eq!(m.lead, "salesforce:00Q0");
    assert_eq!(r.lead_of("marketo:7"), Some("salesforce:00Q0"));
}

#[test]
fn an_email_that_changes_moves_the_record() {
    let c = IdentityConfig::default();
    let mut r = Resolver::default();
    observe_event(
        &mut r,
        &c,
        "salesforce:00Q1",
        json!({"email": "ann@example.com"}),
    );
    observe_event(&mut r, &c, "marketo:1", json!({"email": "ann@example.com"}));
    observe_event(
        &mut r,
        &c,
        "salesforce:00Q2",
        json!({"email": "bob@example.com"}),
    );
    assert_eq!(r.lead_of("marketo:1"), Some("salesforce:00Q1"));
    let moved = observe_event(&mut r, &c, "marketo:1", json!({"email": "BOB@example.com"}));
    assert_eq!(moved.before.as_deref(), Some("salesforce:00Q1"));
    assert_eq!(moved.lead, "salesforce:00Q2");
    assert_eq!(r.records_of("salesforce:00Q1"), ["salesforce:00Q1"]);
    // Cleared: a lead of its own again, under its own key.
    let cleared = observe_event(&mut r, &c, "marketo:1", json!({"email": null}));
    assert_eq!(cleared.lead, "marketo:1");
    assert_eq!(r.records_of("salesforce:00Q2"), ["salesforce:00Q2"]);
}

/// An observation of the property tests: a record, and what its event asserted.
#[derive(Debug, Clone)]
struct Seen {
    record: String,
    email: Option<usize>,
    link: Option<usize>,
}

const RECORDS: [&str; 10] = [
    "salesforce:S1",
    "salesforce:S2",
    "salesforce:S3",
    "hubspot:H1",
    "hubspot:H2",
    "pipedrive:P1",
    "marketo:M1",
    "marketo:M2",
    "marketo:M3",
    "marketo:M4",
];

/// Each record with a fixed email and link (or none), seen one to three times (some times
/// without them: a call), in the order given.
fn observations() -> impl Strategy<Value = Vec<Seen>> {
    let record = (
        0..RECORDS.len(),
        proptest::option::weighted(0.6, 0..4usize),
        proptest::option::weighted(0.4, 0..3usize),
        1..4usize,
    );
    proptest::collection::vec(record, 1..10).prop_map(|records| {
        let mut out = Vec::new();
        let mut taken = std::collections::BTreeSet::new();
        for (i, email, link, times) in records {
            if !taken.insert(i) {
                continue;
            }
            for t in 0..times {
                // The identities ride on the first event; later ones are activities.
                let first = t == 0;
                out.push(Seen {
                    record: RECORDS[i].to_string(),
                    email: email.filter(|_| first),
                    link: link.filter(|_| first && RECORDS[i].starts_with("marketo")),
                });
            }
        }
        out
    })
}

fn run(order: &[Seen]) -> Resolver {
    let c = IdentityConfig::default();
    let mut r = Resolver::default();
    for s in order {
        let mut fields = serde_json::Map::new();
        if let Some(e) = s.email {
            fields.insert("email".into(), json!(format!(" P{e}@Example.com")));
        }
        if let Some(l) = s.link {
            fields.insert("sfdcLeadId".into(), json!(format!("S{}", l + 1)));
        }
        let e = updated(&s.record, Value::Object(fields));
        r.observe(&e.lead, &assertions(&c, &e));
    }
    r
}

/// The groups a reference computes: records with a common email, or linked, are one.
fn reference(order: &[Seen]) -> Vec<Vec<String>> {
    let mut records: Vec<&Seen> = order
        .iter()
        .filter(|s| s.email.is_some() || s.link.is_some())
        .collect();
    let mut all: Vec<String> = order.iter().map(|s| s.record.clone()).collect();
    all.sort();
    all.dedup();
    records.dedup_by(|a, b| a.record == b.record);
    let mut group: Vec<usize> = (0..all.len()).collect();
    let idx = |k: &str| all.iter().position(|a| a == k).unwrap();
    fn find(g: &mut [usize], i: usize) -> usize {
        if g[i] == i {
            i
        } else {
            let r = find(g, g[i]);
            g[i] = r;
            r
        }
    }
    let union = |g: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (find(g, a), find(g, b));
        g[ra] = rb;
    };
    for a in &records {
        for b in &records {
            if a.email.is_some() && a.email == b.email {
                union(&mut group, idx(&a.record), idx(&b.record));
            }
        }
        if let Some(l) = a.link {
            let target = format!("salesforce:S{}", l + 1);
            if all.contains(&target) {
                union(&mut group, idx(&a.record), idx(&target));
            }
            // Two records naming one Salesforce lead are one person, seen or not.
            for b in &records {
                if b.link == Some(l) {
                    union(&mut group, idx(&a.record), idx(&b.record));
                }
            }
        }
    }
    let mut out: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for (i, k) in all.iter().enumerate() {
        out.entry(find(&mut group, i)).or_default().push(k.clone());
    }
    let mut out: Vec<Vec<String>> = out.into_values().collect();
    out.sort();
    out
}

proptest! {
    /// Any order of the same observations makes the same persons, as a reference groups them,
    /// and a person with a CRM record takes the same key whatever came first.
    #[test]
    fn any_order_makes_the_same_persons(
        seen in observations(),
        shuffles in proptest::collection::vec(any::<proptest::sample::Index>(), 0..30),
    ) {
        let mut shuffled = seen.clone();
        for (i, s) in shuffles.iter().enumerate() {
            let n = shuffled.len();
            shuffled.swap(i % n, s.index(n));
        }
        // The identities ride on a record's first event, whichever it is now.
        let mut first = std::collections::BTreeMap::new();
        for s in &seen {
            if s.email.is_some() || s.link.is_some() {
                first.insert(s.record.clone(), (s.email, s.link));
            }
        }
        let mut given = std::collections::BTreeSet::new();
        for s in &mut shuffled {
            let (email, link) = first.get(&s.record).copied().unwrap_or((None, None));
            if given.insert(s.record.clone()) {
                (s.email, s.link) = (email, link);
            } else {
                (s.email, s.link) = (None, None);
            }
        }
        let (a, b) = (run(&seen), run(&shuffled));
        let groups = |r: &Resolver| -> Vec<Vec<String>> {
            r.persons().into_iter().map(|p| p.into_iter().map(String::from).collect()).collect()
        };
        prop_assert_eq!(groups(&a), reference(&seen));
        prop_assert_eq!(groups(&a), groups(&b));
        for person in groups(&a) {
            let crm: Vec<&String> = person.iter().filter(|k| CRM.contains(&system_of(k))).collect();
            let lead_a = a.lead_of(&person[0]).unwrap();
            for k in &person {
                prop_assert_eq!(a.lead_of(k), Some(lead_a));
            }
            if let Some(least) = crm.first() {
                prop_assert_eq!(lead_a, least.as_str());
                prop_assert_eq!(b.lead_of(&person[0]), Some(least.as_str()));
            }
            if person.len() == 1 {
                // A record joined to no one keeps its own key.
                prop_assert_eq!(lead_a, person[0].as_str());
                prop_assert_eq!(b.lead_of(&person[0]), Some(person[0].as_str()));
            }
        }
    }

    /// A record whose email changes ends where a record that always had the last email would.
    #[test]
    fn a_changed_email_leaves_no_trace(seen in observations(), moves in proptest::collection::vec((0..RECORDS.len(), 0..4usize), 0..6)) {
        let mut changed = seen.clone();
        let mut last: std::collections::BTreeMap<String, usize> = Default::default();
        for (i, e) in moves {
            let record = RECORDS[i].to_string();
            if seen.iter().any(|s| s.record == record) {
                changed.push(Seen { record: record.clone(), email: Some(e), link: None });
                last.insert(record, e);
            }
        }
        // The same records, each with its last email from the start.
        let mut direct = Vec::new();
        let mut given = std::collections::BTreeSet::new();
        for s in &seen {
            let mut s = s.clone();
            if let Some(e) = last.get(&s.record) {
                if given.insert(s.record.clone()) {
                    s.email = Some(*e);
                } else {
                    s.email = None;
                }
            }
            direct.push(s);
        }
        let groups = |r: &Resolver| -> Vec<Vec<String>> {
            r.persons().into_iter().map(|p| p.into_iter().map(String::from).collect()).collect()
        };
        prop_assert_eq!(groups(&run(&changed)), groups(&run(&direct)));
    }
}
