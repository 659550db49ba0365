//! `[[routes]]`: which alerts go to which sinks.
//!
//! A route matches an alert when the alert's type is one of its `alerts` (exactly, or by a
//! `prefix.*` pattern; none listed: every type) and the alert is addressed (`data.to`) to one of
//! its `to` roles (none listed: any). The alert goes to the union of the matching routes' sinks,
//! each sink once; for a sink several routes name, the first of them (in file order) decides the
//! message template. An alert no route matches is logged and counted, never silently dropped.
//! With no routes at all, every alert goes to every sink.

use super::template::{RouteTemplates, Templates};
use crate::alert::{ALERT_TYPES, Alert};
use crate::conf::KeyProblems;

/// Which alerts go to which sinks (`[[routes]]`).
#[derive(Debug, Clone, Default, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Alert types (`sla.first_touch.breached`, or a prefix such as `disposition.*`); empty:
    /// every type.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// Roles the alert must be addressed to (any of them; `data.to`); empty: any.
    #[serde(default)]
    pub to: Vec<String>,
    /// Sinks (names of `[sinks.NAME]`).
    pub sinks: Vec<String>,
    /// A minijinja template for the message's title (chat header, CRM task subject).
    #[serde(default)]
    pub title: Option<String>,
    /// A minijinja template for the message's text (chat body, CRM task description).
    #[serde(default)]
    pub text: Option<String>,
}

impl RouteConfig {
    /// Its own templates, with the alert types it can receive.
    pub fn templates(&self) -> RouteTemplates<'_> {
        RouteTemplates {
            title: self.title.as_deref(),
            text: self.text.as_deref(),
            to: &self.to,
            kinds: ALERT_TYPES
                .iter()
                .copied()
                .filter(|k| type_matches(&self.alerts, k))
                .collect(),
        }
    }
}

/// The messages of `routes`: the default templates and each route's own, compiled and rendered
/// against a sample of every alert type the route can receive. Errors are (key path, message),
/// relative to the list.
pub fn templates(routes: &[RouteConfig]) -> Result<Templates, KeyProblems> {
    let own: Vec<RouteTemplates<'_>> = routes.iter().map(RouteConfig::templates).collect();
    Templates::new(&own)
}

/// One sink an alert goes to, and the route that chose it (none: there are no routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sink: String,
    pub route: Option<usize>,
}

/// The routes, checked.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<RouteConfig>,
    sinks: Vec<String>,
}

/// Whether `kind` is one of `patterns` (`x.y.z` exactly, or `x.*` for a prefix); empty: all.
pub fn type_matches(patterns: &[String], kind: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => p == kind,
        })
}

impl Routes {
    pub fn new(routes: Vec<RouteConfig>, sinks: impl IntoIterator<Item = String>) -> Self {
        Self {
            routes,
            sinks: sinks.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn matches(route: &RouteConfig, alert: &Alert) -> bool {
        type_matches(&route.alerts, &alert.kind)
            && (route.to.is_empty() || alert.data.to.iter().any(|r| route.to.contains(r)))
    }

    /// The sinks `alert` goes to, each once, in the order the routes name them.
    pub fn targets(&self, alert: &Alert) -> Vec<Target> {
        if self.routes.is_empty() {
            return self
                .sinks
                .iter()
                .map(|s| Target {
                    sink: s.clone(),
                    route: None,
                })
                .collect();
        }
        let mut out: Vec<Target> = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            if !Self::matches(route, alert) {
                continue;
            }
            for sink in &route.sinks {
                if !out.iter().any(|t| t.sink == *sink) {
                    out.push(Target {
                        sink: sink.clone(),
                        route: Some(i),
                    });
                }
            }
        }
        out
    }

    /// The route that decides how `alert` looks in `sink` (its index and its `to` roles).
    pub fn route_for(&self, alert: &Alert, sink: &str) -> Option<(usize, &[String])> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.sinks.iter().any(|s| s == sink) && Self::matches(r, alert))
            .map(|(i, r)| (i, r.to.as_slice()))
    }

    pub fn configs(&self) -> &[RouteConfig] {
        &self.routes
    }
}

/// Problems in `[[routes]]`, keys relative to the list (`[0].sinks`): unknown sinks (`sinks`
/// are the configured names) and alert types, empty lists, and templates that do not compile
/// or render.
pub fn problems<'a>(
    routes: &[RouteConfig],
    sinks: impl IntoIterator<Item = &'a str>,
) -> KeyProblems {
    let sinks: Vec<&str> = sinks.into_iter().collect();
    let mut problems = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        if route.sinks.is_empty() {
            problems.push((format!("[{i}].sinks"), "name at least one sink".into()));
        }
        for (j, sink) in route.sinks.iter().enumerate() {
            if !sinks.contains(&sink.as_str()) {
                let known = &sinks;
                problems.push((
                    format!("[{i}].sinks[{j}]"),
                    format!("no sink `{sink}` (configured: {})", known.join(", ")),
                ));
            }
        }
        for (j, kind) in route.alerts.iter().enumerate() {
            let known = match kind.strip_suffix('*') {
                Some(prefix) => ALERT_TYPES.iter().any(|t| t.starts_with(prefix)),
                None => ALERT_TYPES.contains(&kind.as_str()),
            };
            if !known {
                problems.push((
                    format!("[{i}].alerts[{j}]"),
                    format!(
                        "unknown alert type `{kind}` (known: {}, or a prefix such as `disposition.*`)",
                        ALERT_TYPES.join(", ")
                    ),
                ));
            }
        }
        for (j, role) in route.to.iter().enumerate() {
            if role.trim().is_empty() {
                problems.push((format!("[{i}].to[{j}]"), "must not be empty".into()));
            }
        }
    }
    if let Err(mut more) = templates(routes) {
        problems.append(&mut more);
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::template::{Style, sample_alert};

    fn route(alerts: &[&str], to: &[&str], sinks: &[&str]) -> RouteConfig {
        RouteConfig {
            alerts: alerts.iter().map(|s| s.to_string()).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn sinks(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn names(targets: &[Target]) -> Vec<&str> {
        targets.iter().map(|t| t.sink.as_str()).collect()
    }

    fn alert(kind: &str, to: &[&str]) -> Alert {
        let mut a = sample_alert(kind);
        a.data.to = to.iter().map(|s| s.to_string()).collect();
        a
    }

    #[test]
    fn without_routes_every_alert_goes_to_every_sink() {
        let r = Routes::new(vec![], sinks(&["a", "b"]));
        let t = r.targets(&alert("disposition.late", &["marketing_ops"]));
        assert_eq!(names(&t), ["a", "b"]);
        assert!(t.iter().all(|t| t.route.is_none()));
    }

    #[test]
    fn routes_choose_by_type_and_role_and_name_each_sink_once() {
        let r = Routes::new(
            vec![
                route(
                    &["sla.first_touch.reminder", "sla.first_touch.breached"],
                    &["owner"],
                    &["slack", "crm"],
                ),
                route(&["sla.first_touch.escalated"], &["manager"], &["slack"]),
                route(&["sla.*"], &[], &["crm", "hook"]),
                route(&["disposition.*"], &["marketing_ops"], &["marketing"]),
            ],
            sinks(&["slack", "crm", "hook", "marketing"]),
        );
        let breach = r.targets(&alert("sla.first_touch.breached", &["owner"]));
        assert_eq!(names(&breach), ["slack", "crm", "hook"]);
        assert_eq!(
            breach[1].route,
            Some(0),
            "the first route naming crm decides"
        );
        assert_eq!(breach[2].route, Some(2));
        // An escalation to the manager: not the owner's route.
        let esc = r.targets(&alert("sla.first_touch.escalated", &["manager"]));
        assert_eq!(names(&esc), ["slack", "crm", "hook"]);
        assert_eq!(esc[0].route, Some(1));
        // An escalation addressed to marketing ops matches only the catch-all sla route.
        let esc = r.targets(&alert("sla.first_touch.escalated", &["marketing_ops"]));
        assert_eq!(names(&esc), ["crm", "hook"]);
        assert_eq!(
            names(&r.targets(&alert(
                "disposition.vague_reason",
                &["marketing_ops", "owner"]
            ))),
            ["marketing"]
        );
        // Nothing matches: no target (the dispatcher logs and counts it).
        assert!(r.targets(&alert("disposition.late", &["owner"])).is_empty());
        assert!(r.targets(&alert("lead.unassigned", &["queue"])).is_empty());
        assert_eq!(
            r.route_for(&alert("sla.first_touch.escalated", &["manager"]), "slack")
                .map(|(i, _)| i),
            Some(1)
        );
    }

    #[test]
    fn unknown_sinks_and_types_are_problems_with_key_paths() {
        let problems = super::problems(
            &[
                route(&["sla.first_touch.breached"], &["owner"], &["slack"]),
                route(
                    &["sla.first_touch.breachd", "nope.*", "disposition.*"],
                    &[""],
                    &["slak"],
                ),
                route(&[], &[], &[]),
            ],
            ["slack"],
        );
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "[1].sinks[0]",
                "[1].alerts[0]",
                "[1].alerts[1]",
                "[1].to[0]",
                "[2].sinks"
            ],
            "{problems:?}"
        );
        assert!(problems[0].1.contains("no sink `slak`"), "{problems:?}");
    }

    #[test]
    fn type_patterns_match_exactly_or_by_prefix() {
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(type_matches(&p(&[]), "anything"));
        assert!(type_matches(&p(&["sla.*"]), "sla.first_touch.breached"));
        assert!(!type_matches(
            &p(&["sla.first_touch.breached"]),
            "sla.first_touch.reminder"
        ));
        assert!(!type_matches(
            &p(&["disposition.*"]),
            "sla.first_touch.breached"
        ));
    }

    fn templated(alerts: &[&str], title: Option<&str>, text: Option<&str>) -> RouteConfig {
        RouteConfig {
            alerts: alerts.iter().map(|s| s.to_string()).collect(),
            to: vec![],
            sinks: vec!["s".into()],
            title: title.map(str::to_string),
            text: text.map(str::to_string),
        }
    }

    #[test]
    fn a_route_template_overrides_the_default() {
        let t = super::templates(&[templated(
            &["sla.*"],
            Some("SLA {{ type }} for {{ lead }} ({{ company }})"),
            Some("{{ owner }} is {{ late }} late: {{ link }}"),
        )])
        .unwrap();
        let alert = sample_alert("sla.first_touch.breached");
        let m = t.render(&alert, Some((0, &[])), Style::Plain);
        assert_eq!(m.title, "SLA sla.first_touch.breached for Jane Doe (Acme)");
        assert_eq!(
            m.text,
            "Alice Rep is 5m late: https://example.my.salesforce.com/00Q5g000001"
        );
    }

    #[test]
    fn a_template_that_does_not_compile_or_render_is_a_config_problem() {
        let problems = super::templates(&[
            templated(&[], Some("{{ lead "), None),
            templated(&["sla.first_touch.breached"], None, Some("{{ leed }}")),
            templated(
                &["disposition.*"],
                None,
                Some("{{ alert.data.disposition.reason }}"),
            ),
            templated(
                &["sla.first_touch.breached"],
                None,
                Some("{{ alert.data.disposition.reason }}"),
            ),
        ])
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        // Syntax errors are found first; the rest once everything compiles.
        assert_eq!(keys, ["[0].title"], "{problems:?}");
        let problems = super::templates(&[
            templated(&["sla.first_touch.breached"], None, Some("{{ leed }}")),
            templated(
                &["disposition.*"],
                None,
                Some("{{ alert.data.disposition.reason }}"),
            ),
            templated(
                &["sla.first_touch.breached"],
                None,
                Some("{{ alert.data.disposition.reason }}"),
            ),
            templated(
                &[],
                None,
                Some("{% if suggested_owner %}x{% endif %}{{ unknown_thing }}"),
            ),
        ])
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["[0].text", "[2].text", "[3].text"], "{problems:?}");
        assert!(
            problems[0].1.contains("sla.first_touch.breached"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_route_template_failing_at_runtime_falls_back_to_the_default() {
        let t = super::templates(&[templated(
            &["sla.*"],
            Some("{{ alert.data.lead_info.name }}"),
            None,
        )])
        .unwrap();
        let mut alert = sample_alert("sla.first_touch.breached");
        alert.data.lead_info = Default::default();
        let m = t.render(&alert, Some((0, &[])), Style::Plain);
        assert_eq!(m.title, "First-touch SLA missed: salesforce:00Q5g000001");
    }
}
