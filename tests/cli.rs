//! The command line as a user meets it: `check-config` and `dev-broker`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

fn leadwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leadwatch"))
}

#[test]
fn check_config_lists_every_problem_with_its_key_path_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("leadwatch.toml");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &config,
        r#"
[server]
lisen = "0.0.0.0:8080"
[kafka]
partitions = "six"
[sources.web]
kind = "generic"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
[sinks.log]
kind = "log"
"#,
    )
    .unwrap();
    std::fs::write(
        &rules,
        "[lifecycle]\nsales_ready = 'lead.stage == \"sales_ready\"'\n[first_touch]\nwithin = \"soon\"\n\
         [identity]\nsources = [\"salesforce\", \"zoho\"]\n",
    )
    .unwrap();
    let out = leadwatch()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let c = config.display().to_string();
    let r = rules.display().to_string();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{c}:server.lisen: unknown field `lisen`"))),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{c}:kafka.partitions: "))),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{r}:first_touch.within: `soon` is not a duration"))),
        "{stderr}"
    );
    // `[identity]` of the rules file: identity/ checks it, in the same list.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{r}:identity.sources[1]: `zoho` is not one of"))),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/leadwatch.toml");
    let out = leadwatch()
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_accepts_each_crms_starter_rules_file() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/leadwatch.toml"
    ))
    .unwrap();
    for crm in ["salesforce", "hubspot"] {
        let rules = format!(
            "{}/config/examples/{crm}.rules.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let config = dir.path().join(format!("{crm}.toml"));
        let text = example.replace("rules = \"rules.toml\"", &format!("rules = {rules:?}"));
        assert_ne!(text, example, "the example names its rules file");
        std::fs::write(&config, text).unwrap();
        let out = leadwatch()
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{crm}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&rules), "{stdout}");
    }
}

#[test]
fn an_environment_variable_overrides_the_file_and_is_checked_too() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/leadwatch.toml");
    let out = leadwatch()
        .args(["check-config", "--config", example])
        .env("LEADWATCH__KAFKA__TOPIC_PREFIX", "bad prefix!")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":kafka.topic_prefix: "));
}

#[test]
fn dev_broker_prints_its_bootstrap_first_serves_the_topics_and_stops_on_sigterm() {
    let mut child = leadwatch()
        .args([
            "dev-broker",
            "--partitions",
            "3",
            "--topic-prefix",
            "devtest",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let bootstrap = first
        .trim()
        .strip_prefix("bootstrap=127.0.0.1:")
        .map(|port| {
            assert!(port.parse::<u16>().is_ok(), "{first}");
            format!("127.0.0.1:{port}")
        });
    let bootstrap = bootstrap.unwrap_or_else(|| panic!("first line was {first:?}"));

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    for topic in [
        "events",
        "raw",
        "state",
        "alerts",
        "delivered",
        "alerts.dlq",
        "alerts.retry",
    ] {
        let name = format!("devtest.{topic}");
        let t = metadata.topics().iter().find(|t| t.name() == name);
        assert_eq!(t.map(|t| t.partitions().len()), Some(3), "{name}");
    }

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn dev_broker_refuses_a_port_it_cannot_pin() {
    let out = leadwatch()
        .args(["dev-broker", "--port", "9092"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("random"));
}

#[test]
fn check_config_names_vendor_source_problems_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("leadwatch.toml");
    std::fs::write(
        dir.path().join("rules.toml"),
        "[lifecycle]\nsales_ready = 'lead.stage == \"salesqualifiedlead\"'\n[first_touch]\nwithin = \"4h\"\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        r#"
roles = ["ingest"]
[sources.sf]
kind = "salesforce"
organization_ids = ["12345"]
[sources.hs]
kind = "hubspot"
secret = "client-secret"
public_url = "https://hooks.example.com/webhooks/hs"
[sources.hs.fields]
lifecycle = "lifecyclestage"
"#,
    )
    .unwrap();
    let out = leadwatch()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let c = config.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{c}:sources.hs.fields.lifecycle: unknown field name"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{c}:sources.sf.organization_ids.0: `12345` is not a Salesforce org id"
        )),
        "{stderr}"
    );
    // Neither basic auth nor a path secret: anyone who knows the org id (no secret) could post.
    assert!(
        stderr.contains(&format!(
            "{c}:sources.sf.path_secret: neither basic auth (`username`, `password`) nor a \
             `path_secret` guards this source"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("client-secret"), "{stderr}");
}

#[test]
fn replay_explains_what_it_cannot_do() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/leadwatch.toml");
    let out = leadwatch()
        .args(["replay", "--config", example, "--source", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no `[sources.nope]`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The example runs on the embedded broker, which lives inside the daemon only.
    let out = leadwatch()
        .args([
            "replay",
            "--config",
            example,
            "--source",
            "web",
            "--from",
            "2026-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka.brokers"));
    let out = leadwatch()
        .args([
            "replay",
            "--config",
            example,
            "--source",
            "web",
            "--from",
            "yesterday",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad timestamp");
}

#[test]
fn simulate_prints_only_alerts_on_stdout_and_the_scorecard_apart() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    // Friday 16:30 New York: with the shipped rules (business hours, 4 h) A is due Monday 12:30;
    // B is called on Monday morning, in time; a bad line is skipped and named.
    std::fs::write(
        &events,
        r#"{"id":"1","type":"lead.updated","lead":"A","occurred_at":"2026-11-20T21:30:00Z","fields":{"stage":"sales_ready","owner":"alice@example.com"},"source":"hs"}
{"id":"2","type":"lead.updated","lead":"B","occurred_at":"2026-11-20T21:30:00Z","fields":{"stage":"sales_ready","owner":"dave@example.com"},"source":"web"}
{"id":"3","type":"lead.activity","lead":"B","occurred_at":"2026-11-23T14:30:00Z","activity":{"kind":"call"}}
{"id":"4","type":"lead.updated","lead":"A"}
"#,
    )
    .unwrap();
    let card = dir.path().join("card.json");
    let out = leadwatch()
        .args(["simulate", "--rules"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rules.toml"))
        .arg("--events")
        .arg(&events)
        .args(["--until", "2026-11-23T18:00:00Z", "--scorecard"])
        .arg(&card)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("events.jsonl:4: skipped"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let alerts: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is an alert"))
        .collect();
    let fired: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a["type"].as_str().unwrap(), a["fired_at"].as_str().unwrap()))
        .collect();
    assert_eq!(
        fired,
        [
            ("sla.first_touch.reminder", "2026-11-23T16:30:00Z"),
            ("sla.first_touch.breached", "2026-11-23T17:30:00Z"),
        ]
    );
    assert!(alerts.iter().all(|a| a["data"]["lead"] == "A"));
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(&card).unwrap()).unwrap();
    assert_eq!(card["total"]["handed_off"], 2);
    assert_eq!(
        card["by_owner"]["dave@example.com"]["touched_within_sla"],
        1
    );
    assert_eq!(card["by_source"]["hs"]["never_touched"], 1);
}

#[test]
fn simulate_refuses_broken_rules_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[lifecycle]\nsales_ready = 'lead.stage =='\n[first_touch]\nwithin = \"4h\"\nescalate = [{ after = \"1h\", notify = \"boss\" }]\n",
    )
    .unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "").unwrap();
    let out = leadwatch()
        .args(["simulate", "--rules"])
        .arg(&rules)
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let r = rules.display().to_string();
    for key in [
        "lifecycle.sales_ready",
        "first_touch.escalate[0].after",
        "first_touch.escalate[0].notify",
    ] {
        assert!(stderr.contains(&format!("{r}:{key}: ")), "{key}: {stderr}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn check_config_names_unknown_sinks_types_and_broken_templates_in_routes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("leadwatch.toml");
    std::fs::write(
        dir.path().join("rules.toml"),
        "[lifecycle]\nsales_ready = 'lead.stage == \"sales_ready\"'\n[first_touch]\nwithin = \"4h\"\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        r#"
roles = ["dispatch"]
[sinks.team_slack]
kind = "slack"
webhook_url = "https://hooks.slack.com/services/T0/B0/verysecretpart"
[sinks.crm]
kind = "salesforce"
instance_url = "https://example.my.salesforce.com"
token_url = "https://login.salesforce.com/services/oauth2/token"
client_id = "id"
client_secret = "topsecret"
api_version = "v62"
[[routes]]
alerts = ["sla.first_touch.breached", "sla.first_touch.breachd"]
to = ["owner"]
sinks = ["team_slack", "crmm"]
[[routes]]
alerts = ["disposition.*"]
sinks = ["crm"]
text = "{{ lead }} closed: {{ reasn }}"
"#,
    )
    .unwrap();
    let out = leadwatch()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let c = config.display().to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    for key in [
        "sinks.crm.api_version",
        "routes[0].sinks[1]",
        "routes[0].alerts[1]",
        "routes[1].text",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{c}:{key}: "))),
            "{key} missing from:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("verysecretpart") && !stderr.contains("topsecret"),
        "{stderr}"
    );
}

#[test]
fn dlq_replay_needs_a_real_broker_and_a_known_sink() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/leadwatch.toml");
    let out = leadwatch()
        .args(["dlq", "replay", "--config", example, "--sink", "stdout"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs `kafka.brokers`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn simulate_with_a_config_gives_the_alerts_the_daemon_would_send_links_included() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[lifecycle]\nsales_ready = 'lead.stage == \"salesqualifiedlead\"'\n[first_touch]\nwithin = \"1h\"\n",
    )
    .unwrap();
    let config = dir.path().join("leadwatch.toml");
    std::fs::write(
        &config,
        r#"
[sources.hs]
kind = "hubspot"
secret = "client-secret"
public_url = "https://hooks.example.com/webhooks/hs"
link = "https://app.hubspot.com/contacts/62515/record/0-1/{id}"
[sinks.stdout]
kind = "log"
"#,
    )
    .unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        r#"{"id":"1","type":"lead.updated","lead":"hubspot:123","occurred_at":"2026-11-20T10:00:00Z","fields":{"stage":"salesqualifiedlead","owner":"77"},"source":"hs"}
"#,
    )
    .unwrap();
    let out = leadwatch()
        .args(["simulate", "--config"])
        .arg(&config)
        .arg("--events")
        .arg(&events)
        .args(["--until", "2026-11-20T12:00:00Z"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alert: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(alert["type"], "sla.first_touch.breached");
    assert_eq!(
        alert["data"]["link"],
        "https://app.hubspot.com/contacts/62515/record/0-1/123"
    );
    // Neither rules nor a config: told what to give.
    let out = leadwatch()
        .args(["simulate", "--events"])
        .arg(&events)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses it");
}
