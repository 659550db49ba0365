//! The root configuration: the only place that names every section. Loaded with the `config`
//! crate (built-in defaults → TOML file → `LEADWATCH__SECTION__KEY` environment variables),
//! deserialized with every problem collected (not just the first), then each section checks
//! itself (its `problems()`, next to the component that owns it) and the whole is checked for
//! what spans sections. `leadwatch check-config` prints the problems one per line as
//! `<file>:<key.path>: <message>` and exits 64.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bus::{KafkaConfig, RawKafkaConfig};
use crate::conf::{
    HumanDuration, KeyProblems, Problem, Problems, from_value_lenient, nested, valid_name,
};
use crate::dispatch::routes::RouteConfig;
use crate::dispatch::sinks::SinkConfig;
use crate::dispatch::{DispatchConfig, DispatchSections};
use crate::engine::EngineConfig;
use crate::engine::rules::Rules;
use crate::identity::IdentityConfig;
use crate::ingest::{ServerConfig, SourceConfig};

/// The daemon's whole configuration, validated.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub kafka: KafkaConfig,
    pub engine: EngineConfig,
    pub dispatch: DispatchConfig,
    pub roles: Roles,
    /// How long shutdown may take before in-flight work is abandoned (it is re-done on restart).
    pub shutdown_grace: Duration,
    /// How long a stage's loop, or one of its partitions with work waiting, may go without
    /// progress before `/healthz` fails (see [`crate::runner::health`]).
    pub stall_timeout: Duration,
    pub sources: BTreeMap<String, SourceConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[[routes]]`, checked against the sinks and alert types, templates compiled and tried.
    pub routes: Vec<RouteConfig>,
    /// Where the rules were read from (resolved against the config file's folder).
    pub rules_path: PathBuf,
    pub rules: Rules,
    /// `[identity]` of the rules file: read by `simulate`; the daemon does not join yet.
    pub identity: IdentityConfig,
}

/// The file's shape. Every section and field has a default except sources and sinks.
#[derive(Debug, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    kafka: RawKafkaConfig,
    #[serde(default)]
    engine: EngineConfig,
    #[serde(default)]
    dispatch: DispatchConfig,
    /// Which roles this instance runs; all three by default.
    #[serde(default = "default_roles")]
    roles: Vec<Role>,
    /// Read before deserialization (so its problems are listed too); declared so it is a known key.
    #[serde(default = "default_rules")]
    #[allow(dead_code)]
    rules: String,
    #[serde(default = "default_grace")]
    #[eserde(compat)]
    shutdown_grace: HumanDuration,
    /// How long a loop, or a partition with work waiting, may go without progress before
    /// `/healthz` fails.
    #[serde(default = "default_stall_timeout")]
    #[eserde(compat)]
    stall_timeout: HumanDuration,
    #[serde(default)]
    sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    sinks: BTreeMap<String, SinkConfig>,
    /// Which alerts go to which sinks; none: every alert to every sink.
    #[serde(default)]
    routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, eserde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Ingest,
    Engine,
    Dispatch,
}

/// Which of the three roles this instance runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub ingest: bool,
    pub engine: bool,
    pub dispatch: bool,
}

fn default_roles() -> Vec<Role> {
    vec![Role::Ingest, Role::Engine, Role::Dispatch]
}
fn default_rules() -> String {
    "rules.toml".into()
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}
fn default_stall_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// A rules file: the engine's rules, and `[identity]` (how records are joined into persons).
#[derive(Debug, Clone)]
pub struct RulesFile {
    pub rules: Rules,
    pub identity: IdentityConfig,
}

/// Reads and compiles a rules file, listing every problem with its key path (the engine's and
/// `[identity]`'s, in one list).
pub fn load_rules(path: &Path) -> Result<RulesFile, Problems> {
    crate::conf::load_file(path, "rules file", |value| {
        match (Rules::from_value(value), IdentityConfig::from_rules(value)) {
            (Ok(rules), Ok(identity)) => Ok(RulesFile { rules, identity }),
            (rules, identity) => Err(rules
                .err()
                .into_iter()
                .chain(identity.err())
                .flatten()
                .collect()),
        }
    })
}

impl Config {
    /// The sections delivery reads.
    pub fn dispatch_sections(&self) -> DispatchSections<'_> {
        DispatchSections {
            dispatch: &self.dispatch,
            sinks: &self.sinks,
            routes: &self.routes,
        }
    }

    /// The sources' link templates into their CRM, by source name.
    pub fn source_links(&self) -> std::collections::HashMap<String, String> {
        self.sources
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.link()?.to_string())))
            .collect()
    }

    /// Loads and validates `path` (and the rules file it names), with the environment on top.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment passed in (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Problems> {
        let whole = |message: String| {
            Problems(vec![Problem {
                file: path.to_path_buf(),
                key: String::new(),
                message,
            }])
        };
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("LEADWATCH__"))
            .collect();
        let layered = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            )
            .add_source(
                config::Environment::with_prefix("LEADWATCH")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| whole(e.to_string()))?;
        let value: serde_json::Value = layered
            .try_deserialize()
            .map_err(|e| whole(e.to_string()))?;
        let parsed: Result<(RawConfig, _), _> = from_value_lenient(&value);

        // The rules file is checked even when the config file has problems, so one run lists all.
        let rules_name = value
            .get("rules")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(default_rules);
        let rules_path = path.parent().unwrap_or(Path::new(".")).join(rules_name);
        let rules = load_rules(&rules_path);

        match parsed {
            Ok((raw, unknown)) => {
                let early = unknown
                    .into_iter()
                    .map(|(key, message)| Problem {
                        file: path.to_path_buf(),
                        key,
                        message,
                    })
                    .collect();
                Self::validate(path, raw, rules_path, rules, early)
            }
            Err(errors) => {
                let mut problems: Vec<Problem> = errors
                    .into_iter()
                    .map(|(key, message)| Problem {
                        file: path.to_path_buf(),
                        key,
                        message,
                    })
                    .collect();
                if let Err(Problems(mut more)) = rules {
                    problems.append(&mut more);
                }
                Err(Problems(problems))
            }
        }
    }

    /// Checks the whole; `early` are problems already found (unknown keys) to list with the rest.
    fn validate(
        path: &Path,
        raw: RawConfig,
        rules_path: PathBuf,
        rules: Result<RulesFile, Problems>,
        early: Vec<Problem>,
    ) -> Result<Config, Problems> {
        let mut problems = early;
        let mut problem = |key: String, message: String| {
            problems.push(Problem {
                file: path.to_path_buf(),
                key,
                message,
            })
        };

        let mut section = |name: &str, found: KeyProblems| {
            for (key, message) in nested(name, found) {
                problem(key, message);
            }
        };
        // In file order, as far as there is one: each section checks itself.
        section("kafka", raw.kafka.problems());
        let kafka: KafkaConfig = raw.kafka.into();
        section("server", raw.server.problems());
        // What spans sections: every record ingest produces must fit the producer's limit.
        let message_max = kafka.message_max_bytes();
        section("server", raw.server.problems_within(message_max));
        let raw_max = crate::ingest::raw::MAX_RAW_RECORD + crate::ingest::config::RECORD_OVERHEAD;
        if message_max < raw_max {
            section(
                "kafka.options",
                vec![(
                    "message.max.bytes".into(),
                    format!(
                        "must be at least {raw_max}: a webhook's raw record (`{{prefix}}.raw`) \
                         may be that large"
                    ),
                )],
            );
        }
        section("engine", raw.engine.problems());
        section("dispatch", raw.dispatch.problems());
        if raw.stall_timeout.0 < Duration::from_secs(1) {
            section(
                "stall_timeout",
                vec![(
                    String::new(),
                    "must be at least 1s (a loop turns once a second when idle)".into(),
                )],
            );
        }
        if raw.roles.is_empty() {
            section(
                "roles",
                vec![(
                    String::new(),
                    "name at least one of ingest, engine, dispatch".into(),
                )],
            );
        }
        for (name, source) in &raw.sources {
            let key = format!("sources.{name}");
            if !valid_name(name) {
                section(
                    &key,
                    vec![(
                        String::new(),
                        "a source name becomes a URL path: use only letters, digits, `_` and `-`"
                            .into(),
                    )],
                );
            }
            section(&key, source.problems());
        }
        for (name, sink) in &raw.sinks {
            let key = format!("sinks.{name}");
            if !valid_name(name) {
                section(
                    &key,
                    vec![(
                        String::new(),
                        "use only letters, digits, `_` and `-`".into(),
                    )],
                );
            }
            section(&key, sink.problems());
        }
        section(
            "routes",
            crate::dispatch::routes::problems(&raw.routes, raw.sinks.keys().map(String::as_str)),
        );
        let roles = Roles {
            ingest: raw.roles.contains(&Role::Ingest),
            engine: raw.roles.contains(&Role::Engine),
            dispatch: raw.roles.contains(&Role::Dispatch),
        };
        if roles.ingest && raw.sources.is_empty() {
            problem(
                "sources".into(),
                "ingest runs, but no `[sources.NAME]` is configured".into(),
            );
        }
        if roles.dispatch && raw.sinks.is_empty() {
            problem(
                "sinks".into(),
                "dispatch runs, but no `[sinks.NAME]` is configured".into(),
            );
        }

        let rules = match rules {
            Ok(rules) => Some(rules),
            Err(Problems(mut rule_problems)) => {
                problems.append(&mut rule_problems);
                None
            }
        };

        match rules {
            Some(rules) if problems.is_empty() => Ok(Config {
                server: raw.server,
                kafka,
                engine: raw.engine,
                dispatch: raw.dispatch,
                roles,
                shutdown_grace: raw.shutdown_grace.0,
                stall_timeout: raw.stall_timeout.0,
                sources: raw.sources,
                sinks: raw.sinks,
                routes: raw.routes,
                rules_path,
                rules: rules.rules,
                identity: rules.identity,
            }),
            _ => Err(Problems(problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const RULES: &str = r#"
[lifecycle]
sales_ready = 'lead.stage == "sales_ready"'
[first_touch]
within = "4h"
"#;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9999"
[kafka]
brokers = "127.0.0.1:9092"
[kafka.options]
"security.protocol" = "SASL_SSL"
sasl = { mechanism = "PLAIN", password = "hunter2" }
"linger.ms" = 5
[sources.web]
kind = "generic"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
[sinks.hook]
kind = "webhook"
url = "http://127.0.0.1:1/alerts"
secret = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[sinks.stdout]
kind = "log"
"#;

    #[test]
    fn a_good_file_loads_with_defaults_and_flattened_options() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(dir.path(), "leadwatch.toml", GOOD);
        let cfg = Config::load_with_env(&path, Vec::new()).unwrap();
        assert_eq!(cfg.server.listen.port(), 9999);
        assert_eq!(cfg.server.max_body_bytes, 1024 * 1024);
        assert_eq!(cfg.kafka.topic_prefix, "leadwatch");
        assert_eq!(cfg.kafka.options["security.protocol"], "SASL_SSL");
        assert_eq!(cfg.kafka.options["sasl.mechanism"], "PLAIN");
        assert_eq!(cfg.kafka.options["linger.ms"], "5");
        assert!(cfg.roles.ingest && cfg.roles.engine && cfg.roles.dispatch);
        assert_eq!(cfg.sinks.len(), 2);
        // No secret in Debug output.
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("C2FVsBQ"), "{debug}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(dir.path(), "leadwatch.toml", GOOD);
        let env = vec![
            (
                "LEADWATCH__KAFKA__BROKERS".to_string(),
                "broker-a:9093,broker-b:9093".to_string(),
            ),
            (
                "LEADWATCH__SERVER__MAX_BODY_BYTES".to_string(),
                "2048".to_string(),
            ),
        ];
        let cfg = Config::load_with_env(&path, env).unwrap();
        assert_eq!(cfg.kafka.brokers, "broker-a:9093,broker-b:9093");
        assert_eq!(cfg.server.max_body_bytes, 2048);
    }

    const VENDORS: &str = r#"
[sources.hs]
kind = "hubspot"
secret = ["hs-new-secret", "hs-old-secret"]
public_url = "https://hooks.example.com/webhooks/hs"
portal_ids = [62515]
link = "https://app.hubspot.com/contacts/62515/record/0-1/{id}"
dedupe_window = "2h"
[sources.hs.fields]
score = "predictive_score"
[sources.sf]
kind = "salesforce"
organization_ids = ["00D5g000004Xq2R", "00D5g000004Xq2REAS"]
username = "sf"
password = "sf-password"
path_secret = "sf-path-secret"
[sources.mk]
kind = "marketo"
header = "X-Leadwatch-Token"
secret = "mk-token"
[sources.mk.fields]
lead = "/leadId"
email = "/email"
[sources.pd]
kind = "pipedrive"
username = "pd"
password = "pd-password"
"#;

    #[test]
    fn vendor_sources_load_with_links_windows_and_no_secret_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(dir.path(), "leadwatch.toml", &format!("{GOOD}{VENDORS}"));
        let cfg = Config::load_with_env(&path, Vec::new()).unwrap();
        let kinds: Vec<&str> = cfg.sources.values().map(|s| s.kind()).collect();
        assert_eq!(
            kinds,
            ["hubspot", "marketo", "pipedrive", "salesforce", "generic"]
        );
        assert_eq!(
            cfg.sources["hs"].link(),
            Some("https://app.hubspot.com/contacts/62515/record/0-1/{id}")
        );
        assert_eq!(cfg.sources["sf"].link(), None);
        assert_eq!(
            cfg.sources["hs"].dedupe_window(),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(cfg.server.dedupe_window.0, Duration::from_secs(24 * 3600));
        let debug = format!("{cfg:?}");
        for secret in [
            "hs-new-secret",
            "hs-old-secret",
            "sf-password",
            "sf-path-secret",
            "mk-token",
            "pd-password",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    /// What ingest produces must fit the producer's `message.max.bytes`, wherever it is set.
    #[test]
    fn ingests_limits_are_checked_against_the_producers_message_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let with_max = |max: &str| {
            GOOD.replace(
                "\"linger.ms\" = 5",
                &format!("\"linger.ms\" = 5\n\"message.max.bytes\" = {max}"),
            )
        };
        let path = write(dir.path(), "leadwatch.toml", &with_max("500000"));
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["server.max_event_bytes", "kafka.options.message.max.bytes"],
            "{problems:#?}"
        );
        let path = write(
            dir.path(),
            "leadwatch.toml",
            &with_max("4000000").replace("[server]", "[server]\nmax_event_bytes = 3000000"),
        );
        assert!(Config::load_with_env(&path, Vec::new()).is_ok());
    }

    #[test]
    fn vendor_source_problems_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let bad = r#"
[sources.hs]
kind = "hubspot"
secret = "s"
public_url = "ftp://hooks.example.com/hs"
link = "https://app.hubspot.com/contacts/1/record/0-1/"
[sources.hs.fields]
scor = "hubspotscore"
[sources.sf]
kind = "salesforce"
organization_ids = ["00Dshort", "00D5g000004Xq2R"]
username = "only-a-user"
[sources.mk]
kind = "marketo"
header = "bad header"
secret = "t"
[sources.mk.fields]
lead = ""
email = "email"
[sources.pd]
kind = "pipedrive"
username = ""
password = "p"
"#;
        let path = write(dir.path(), "leadwatch.toml", &format!("{GOOD}{bad}"));
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sources.hs.link",
                "sources.hs.public_url",
                "sources.hs.fields.scor",
                "sources.mk.header",
                "sources.mk.fields.email",
                "sources.mk.fields.lead",
                "sources.pd.username",
                "sources.sf.organization_ids.0",
                "sources.sf.username",
            ],
            "{problems:#?}"
        );
        assert!(problems[2].message.contains("stage"), "{problems:#?}");

        // An unknown key inside a source is an error too, and so is a missing required one.
        let path = write(
            dir.path(),
            "leadwatch.toml",
            &format!(
                "{GOOD}\n[sources.pd]\nkind = \"pipedrive\"\nusername = \"u\"\npasword = \"p\"\n"
            ),
        );
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.key == "sources.pd" && p.message.contains("pasword")),
            "{problems:#?}"
        );
    }

    /// A Salesforce source no secret guards is a configuration error, unless it says the
    /// ingress guards it.
    #[test]
    fn a_salesforce_source_without_credentials_loads_only_when_allowed_unauthenticated() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let open =
            "\n[sources.sf]\nkind = \"salesforce\"\norganization_ids = [\"00D5g000004Xq2R\"]\n";
        let path = write(dir.path(), "leadwatch.toml", &format!("{GOOD}{open}"));
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["sources.sf.path_secret"], "{problems:#?}");
        assert!(
            problems[0].message.contains("allow_unauthenticated"),
            "{problems:#?}"
        );
        let allowed = format!("{GOOD}{open}allow_unauthenticated = true\n");
        let path = write(dir.path(), "leadwatch.toml", &allowed);
        let cfg = Config::load_with_env(&path, Vec::new()).unwrap();
        assert_eq!(cfg.sources["sf"].kind(), "salesforce");
    }

    /// Each section checks itself with key paths relative to it; the root nests them, so
    /// check-config still names the whole path, in section order.
    #[test]
    fn nested_sections_are_named_by_their_whole_key_path() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(
            dir.path(),
            "leadwatch.toml",
            r#"
[kafka]
topic_prefix = "bad prefix"
partitions = 0
[engine]
max_in_flight = 0
memory_budget_mib = 0
[dispatch]
ledger_retention = "1h"
retry_jitter = 2.0
sink_concurrency = 0
[sources.web]
kind = "generic"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
[sinks.hook]
kind = "log"
[[routes]]
alerts = ["sla.nope"]
sinks = ["hook", "nowhere"]
to = [""]
[[routes]]
sinks = []
"#,
        );
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kafka.topic_prefix",
                "kafka.partitions",
                "engine.max_in_flight",
                "engine.memory_budget_mib",
                "dispatch.retry_jitter",
                "dispatch.sink_concurrency",
                "dispatch.ledger_retention",
                "routes[0].sinks[1]",
                "routes[0].alerts[0]",
                "routes[0].to[0]",
                "routes[1].sinks",
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(
            dir.path(),
            "leadwatch.toml",
            r#"
[server]
listen = "not an address"
max_body_bytez = 5
[kafka.options]
"enable.idempotence" = false
[sources.web]
kind = "generic"
secret = "hunter2"
[sinks.hook]
kind = "webhook"
url = "http://127.0.0.1:1/alerts"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
"#,
        );
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"server.listen"), "{problems:?}");
        assert!(keys.contains(&"server.max_body_bytez"), "{problems:?}");
        assert!(keys.contains(&"kafka.options"), "{problems:?}");
        assert_eq!(problems.len(), 4, "{problems:?}");
        // Inside a `kind`-tagged table the path stops at the table; the message names the secret.
        assert!(keys.contains(&"sources.web"), "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("max_body_bytez")),
            "{problems:?}"
        );
        // Secrets are not echoed back in errors.
        assert!(
            !problems.iter().any(|p| p.message.contains("hunter2")),
            "{problems:?}"
        );
    }

    #[test]
    fn chat_and_crm_sinks_load_with_defaults_and_keep_their_secrets_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(
            dir.path(),
            "leadwatch.toml",
            r#"
roles = ["dispatch"]
[dispatch]
retry_schedule = ["1s", "1m"]
[sinks.chat]
kind = "slack"
webhook_url = "https://hooks.slack.com/services/T0/B0/slacksecret"
[sinks.ms]
kind = "teams"
webhook_url = "https://prod.westeurope.logic.azure.com/workflows/x?sig=teamssecret"
[sinks.sf]
kind = "salesforce"
instance_url = "https://example.my.salesforce.com"
token_url = "https://login.salesforce.com/services/oauth2/token"
client_id = "cid"
client_secret = "sfsecret"
external_id_field = "Leadwatch_Alert_Id__c"
apply_reassignment = true
due_in = "1h"
[sinks.hs]
kind = "hubspot"
token = "pat-na1-hubsecret"
[[routes]]
alerts = ["sla.*"]
to = ["owner"]
sinks = ["chat", "sf"]
title = "{{ lead }}"
"#,
        );
        let cfg = Config::load_with_env(&path, Vec::new()).unwrap();
        assert_eq!(cfg.sinks["chat"].max_per_second(), Some(1.0));
        assert_eq!(cfg.sinks["hs"].kind(), "hubspot");
        match &cfg.sinks["hs"] {
            SinkConfig::Hubspot(c) => {
                assert_eq!(c.base_url.as_str(), "https://api.hubapi.com/")
            }
            other => panic!("{other:?}"),
        }
        match &cfg.sinks["sf"] {
            SinkConfig::Salesforce(c) => {
                assert_eq!(c.api_version, "62.0");
                assert_eq!(c.due_in.0, Duration::from_secs(3600));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(
            crate::dispatch::retry::Schedule::from(&cfg.dispatch).delays,
            [Duration::from_secs(1), Duration::from_secs(60)]
        );
        let debug = format!("{cfg:?}");
        for secret in ["slacksecret", "teamssecret", "sfsecret", "hubsecret"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("hooks.slack.com"), "{debug}");
    }
}
