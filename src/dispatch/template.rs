//! Messages people read: a title (chat header, CRM task subject) and a text (chat body, task
//! description), rendered with minijinja from sensible defaults per alert type, or from a route's
//! own `title` / `text`.
//!
//! Templates are compiled and rendered against a sample alert of every type their route matches
//! when the config is loaded, so a typo is a config error at start, not a surprise at 3 am.
//! Undefined values may be tested (`{% if suggested_owner %}`) but not printed. Should a route's
//! template still fail on a real alert, the defaults are used and a warning logged: the alert is
//! never lost to a template.
//!
//! What a template sees (strings; empty when unknown): `type`, `rule`, `level`, `message`,
//! `lead` (the lead's name, else email, else key), `lead_key`, `company`, `email`, `owner` (the
//! owner's name from the directory, else id), `suggested_owner`, `deadline` (`2026-11-22 14:00
//! UTC`), `late` (`2h 5m`, how long after the deadline the alert fired), `link`, `reason` and
//! `detail` (close-outs), `mentions` (the addressed people as this sink mentions them: `<@U024>`
//! in Slack, `<at>Ann</at>` in Teams, names elsewhere), `recipients` (the list), and `alert`
//! (the whole alert as delivered).
//!
//! An alert is untrusted input (whoever can write to `{prefix}.alerts`, or a lead's fields): every
//! value a template sees — `alert` and `recipients` included — is escaped for the sink's markup
//! (Slack's `&`, `<`, `>`; Teams' Markdown), cut to [`VALUE_MAX`] characters, and `link` is
//! only ever an http(s) URL. What a route's own template writes around them is its author's.

use std::collections::BTreeMap;

use jiff::Timestamp;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::alert::{ALERT_TYPES, Alert, Recipient};

fn default_title(kind: &str) -> &'static str {
    match kind {
        "lead.unassigned" => "Unassigned sales-ready lead: {{ lead }}",
        "sla.first_touch.reminder" => "First touch due soon: {{ lead }}",
        "sla.first_touch.breached" => "First-touch SLA missed: {{ lead }}",
        "sla.first_touch.escalated" => {
            "Escalation{% if level %} (step {{ level }}){% endif %}: {{ lead }} still untouched"
        }
        "follow_up.attempt_overdue" => "Next attempt overdue: {{ lead }}",
        "follow_up.insufficient_attempts" => "Closed after too few attempts: {{ lead }}",
        "disposition.overdue" => "Close-out overdue: {{ lead }}",
        "disposition.missing_reason" => "Closed without a reason: {{ lead }}",
        "disposition.unknown_reason" => "Closed with a reason not on the list: {{ lead }}",
        "disposition.vague_reason" => "Vague close-out needs a detail: {{ lead }}",
        "disposition.late" => "Late close-out: {{ lead }}",
        _ => "{{ type }}: {{ lead }}",
    }
}

const DEFAULT_TEXT: &str = "{% if mentions %}{{ mentions }}: {% endif %}{{ message }}\
{% if suggested_owner %} Suggested new owner: {{ suggested_owner }}.{% endif %}";

/// How a sink writes mentions and escapes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Slack mrkdwn: `&`, `<`, `>` escaped; mentions `<@U…>`.
    Slack,
    /// Teams Adaptive Card text (a subset of CommonMark): Markdown escaped ([`teams_escape`]);
    /// mentions `<at>Name</at>`.
    Teams,
    /// Plain text (CRM tasks).
    Plain,
}

/// The most characters of one value a template sees (the longest CRM text field, Salesforce's
/// Description, takes 32,000): a record with a field of megabytes renders no megabytes.
pub const VALUE_MAX: usize = 32_000;

/// The most characters of a person's name in a mention.
pub const MENTION_MAX: usize = 100;

/// The longest link an alert carries to a sink (Slack's limit for a button's URL).
pub const LINK_MAX: usize = 3000;

/// A rendered message with the facts sinks lay out themselves (fields, fact sets, task lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub title: String,
    pub text: String,
    pub lead: String,
    pub owner: String,
    pub deadline: String,
    pub late: String,
    pub link: String,
    /// The addressed recipients, for sinks that mention them structurally (Teams entities).
    #[serde(skip)]
    pub recipients: Vec<Recipient>,
}

/// One route's own templates, as [`Templates`] compiles and checks them (`[[routes]]` says
/// which: [`super::routes::templates`]).
#[derive(Debug, Clone, Default)]
pub struct RouteTemplates<'a> {
    /// Its title template, if it has its own.
    pub title: Option<&'a str>,
    /// Its text template, if it has its own.
    pub text: Option<&'a str>,
    /// The roles it addresses (they pick the people `mentions` names).
    pub to: &'a [String],
    /// The alert types it can receive: its templates are rendered against a sample of each
    /// when the config loads.
    pub kinds: Vec<&'static str>,
}

/// The compiled templates: the defaults, then each route's own.
pub struct Templates {
    env: Environment<'static>,
    /// Per route: (has title, has text).
    routes: Vec<(bool, bool)>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("routes", &self.routes.len())
            .finish()
    }
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    // Plain text: escaping for Slack is done on the values, not on the output.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

impl Templates {
    /// Compiles the defaults and the routes' templates. Errors are (key path, message).
    pub fn new(routes: &[RouteTemplates<'_>]) -> Result<Self, Vec<(String, String)>> {
        let mut env = env();
        for kind in ALERT_TYPES.iter().copied().chain(["*"]) {
            env.add_template_owned(format!("default.title.{kind}"), default_title(kind))
                .expect("default templates compile");
        }
        env.add_template_owned("default.text", DEFAULT_TEXT)
            .expect("default templates compile");
        let mut problems = Vec::new();
        let mut flags = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            for (field, source) in [("title", route.title), ("text", route.text)] {
                if let Some(source) = source
                    && let Err(e) =
                        env.add_template_owned(format!("route.{i}.{field}"), source.to_string())
                {
                    problems.push((format!("[{i}].{field}"), describe(&e)));
                }
            }
            flags.push((route.title.is_some(), route.text.is_some()));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let templates = Templates { env, routes: flags };
        // Render each route's templates against a sample of every type it can receive.
        for (i, route) in routes.iter().enumerate() {
            for kind in &route.kinds {
                let sample = sample_alert(kind);
                for style in [Style::Slack, Style::Teams, Style::Plain] {
                    let ctx = context(&sample, route.to, style);
                    for (field, has) in [
                        ("title", route.title.is_some()),
                        ("text", route.text.is_some()),
                    ] {
                        if !has {
                            continue;
                        }
                        let name = format!("route.{i}.{field}");
                        if let Err(e) = templates.render_one(&name, &ctx) {
                            let key = format!("[{i}].{field}");
                            if !problems.iter().any(|(k, _)| *k == key) {
                                problems.push((
                                    key,
                                    format!(
                                        "does not render for a sample `{kind}` alert: {}",
                                        describe(&e)
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(templates)
        } else {
            Err(problems)
        }
    }

    fn render_one(&self, name: &str, ctx: &Context) -> Result<String, minijinja::Error> {
        let value = minijinja::Value::from(minijinja::value::Serde(ctx));
        let out = self.env.get_template(name)?.render(value)?;
        Ok(out.trim().to_string())
    }

    /// Renders the message of `alert` for a sink of `style`, with route `route`'s templates if it
    /// has its own (`to`: the roles the route addresses, which pick the people mentioned).
    pub fn render(
        &self,
        alert: &Alert,
        route: Option<(usize, &[String])>,
        style: Style,
    ) -> Message {
        let to: &[String] = route.map(|(_, to)| to).unwrap_or(&[]);
        let ctx = context(alert, to, style);
        let mut plain = ctx.clone();
        if style == Style::Slack {
            plain = context(alert, to, Style::Plain);
            plain.mentions = ctx.mentions.clone();
        }
        let kind = if ALERT_TYPES.contains(&alert.kind.as_str()) {
            alert.kind.as_str()
        } else {
            "*"
        };
        let default_title = format!("default.title.{kind}");
        let (own_title, own_text) = route
            .and_then(|(i, _)| self.routes.get(i).map(|f| (i, *f)))
            .map(|(i, (t, x))| {
                (
                    t.then(|| format!("route.{i}.title")),
                    x.then(|| format!("route.{i}.text")),
                )
            })
            .unwrap_or((None, None));
        // The title is plain text everywhere (Slack headers are `plain_text`).
        let title = self.render_or_default(own_title.as_deref(), &default_title, &plain, alert);
        let text = self.render_or_default(own_text.as_deref(), "default.text", &ctx, alert);
        Message {
            title,
            text,
            lead: plain.lead,
            owner: plain.owner,
            deadline: plain.deadline,
            late: plain.late,
            link: plain.link,
            recipients: addressed(alert, to).into_iter().cloned().collect(),
        }
    }

    fn render_or_default(
        &self,
        own: Option<&str>,
        default: &str,
        ctx: &Context,
        alert: &Alert,
    ) -> String {
        if let Some(name) = own {
            match self.render_one(name, ctx) {
                Ok(s) => return s,
                Err(e) => tracing::warn!(
                    template = name, alert_id = %alert.id(), error = %describe(&e),
                    "a route's template failed on this alert; using the default"
                ),
            }
        }
        self.render_one(default, ctx).unwrap_or_else(|e| {
            tracing::error!(template = default, error = %describe(&e), "a default template failed");
            alert.data.message.clone()
        })
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What templates see.
#[derive(Debug, Clone, Serialize)]
struct Context {
    r#type: String,
    rule: String,
    level: u32,
    message: String,
    lead: String,
    lead_key: String,
    company: String,
    email: String,
    owner: String,
    owner_id: String,
    suggested_owner: String,
    deadline: String,
    late: String,
    link: String,
    reason: String,
    detail: String,
    mentions: String,
    recipients: Vec<Recipient>,
    alert: serde_json::Value,
}

/// The recipients an alert addresses through `to` (the route's roles), or all its recipients
/// whose role is one of the alert's `to`.
pub fn addressed<'a>(alert: &'a Alert, to: &[String]) -> Vec<&'a Recipient> {
    let roles: &[String] = if to.is_empty() { &alert.data.to } else { to };
    alert
        .data
        .recipients
        .iter()
        .filter(|r| roles.contains(&r.role))
        .collect()
}

/// Slack's three escapes for mrkdwn text.
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text as Teams shows it in an Adaptive Card, whose `TextBlock`s and facts read a subset of
/// CommonMark — `**bold**`, `_italic_`, `[links](…)`, lists — plus `<at>…</at>` mentions and
/// `{{DATE(…)}}` functions: every character that could start any of them is backslash-escaped
/// (CommonMark's escape for ASCII punctuation), line breaks and other control characters become
/// spaces (a list starts on a new line), and a leading `-`, `+` or `1.` is escaped too.
pub fn teams_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    for (i, c) in s.chars().enumerate() {
        let markup = matches!(
            c,
            '\\' | '`'
                | '*'
                | '_'
                | '~'
                | '['
                | ']'
                | '('
                | ')'
                | '<'
                | '>'
                | '{'
                | '}'
                | '#'
                | '|'
                | '!'
        );
        let list = (i == 0 && matches!(c, '-' | '+')) || (i == digits && digits > 0 && c == '.');
        if c.is_control() {
            out.push(' ');
            continue;
        }
        if markup || list {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The name a mention shows: the person's name, else their id, cut to [`MENTION_MAX`].
pub fn mention_name(r: &Recipient) -> String {
    let name = r.name.as_deref().unwrap_or(&r.id);
    name.chars().take(MENTION_MAX).collect()
}

/// The alert's link as `style` may carry it: an http(s) URL of at most [`LINK_MAX`]
/// characters (anything else is no link: a `javascript:` link is no link into a CRM); for
/// Teams with the characters Markdown reads percent-encoded (the same URL), for Slack escaped.
pub fn link(link: Option<&str>, style: Style) -> String {
    let Some(url) = link
        .filter(|l| l.len() <= LINK_MAX)
        .and_then(|l| url::Url::parse(l).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
    else {
        return String::new();
    };
    let url = url.as_str();
    match style {
        Style::Plain => url.to_string(),
        Style::Slack => slack_escape(url),
        Style::Teams => {
            let mut out = String::with_capacity(url.len());
            for c in url.chars() {
                match c {
                    '\\' | '`' | '*' | '_' | '~' | '[' | ']' | '(' | ')' | '<' | '>' | '{'
                    | '}' | '|' | '!' | '\'' | '"' | ' ' => {
                        out.push_str(&format!("%{:02X}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out
        }
    }
}

/// `value` with each of its strings escaped by `esc` (what a template sees of `alert` and
/// `recipients`).
fn escape_strings(value: serde_json::Value, esc: &dyn Fn(&str) -> String) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(esc(&s)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| escape_strings(v, esc)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, escape_strings(v, esc)))
                .collect(),
        ),
        other => other,
    }
}

/// A Slack mention: `<@U024BE7LH>` for a member id, `@handle` otherwise.
pub fn slack_mention(handle: &str) -> String {
    let h = handle.trim_start_matches('@');
    let is_id = h.len() >= 9
        && matches!(h.as_bytes()[0], b'U' | b'W')
        && h.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if is_id {
        format!("<@{h}>")
    } else {
        format!("@{}", slack_escape(h))
    }
}

fn context(alert: &Alert, to: &[String], style: Style) -> Context {
    let d = &alert.data;
    let esc = |s: &str| {
        let cut: String = s.chars().take(VALUE_MAX).collect();
        match style {
            Style::Slack => slack_escape(&cut),
            Style::Teams => teams_escape(&cut),
            Style::Plain => cut,
        }
    };
    let owner_person = d
        .recipients
        .iter()
        .find(|r| r.role == "owner" || Some(&r.id) == d.owner.as_ref());
    let owner = owner_person
        .and_then(|r| r.name.clone())
        .or_else(|| d.owner.clone())
        .unwrap_or_default();
    let lead = d
        .lead_info
        .name
        .clone()
        .or_else(|| d.lead_info.email.clone())
        .unwrap_or_else(|| d.lead.clone());
    let mentions: Vec<String> = addressed(alert, to)
        .iter()
        .map(|r| match style {
            Style::Slack => r
                .slack
                .as_deref()
                .map(slack_mention)
                .unwrap_or_else(|| slack_escape(&mention_name(r))),
            // The card's `msteams.entities` name the same text (`sinks::teams`).
            Style::Teams => match &r.teams {
                Some(_) => format!("<at>{}</at>", teams_escape(&mention_name(r))),
                None => teams_escape(&mention_name(r)),
            },
            Style::Plain => mention_name(r),
        })
        .collect();
    let (reason, detail) = d
        .disposition
        .as_ref()
        .map(|x| {
            (
                x.reason.clone().unwrap_or_default(),
                x.detail.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    Context {
        r#type: esc(&alert.kind),
        rule: esc(&d.rule),
        level: d.level,
        message: esc(&d.message),
        lead: esc(&lead),
        lead_key: esc(&d.lead),
        company: esc(d.lead_info.company.as_deref().unwrap_or("")),
        email: esc(d.lead_info.email.as_deref().unwrap_or("")),
        owner: esc(&owner),
        owner_id: esc(d.owner.as_deref().unwrap_or("")),
        suggested_owner: esc(d.suggested_owner.as_deref().unwrap_or("")),
        deadline: format_time(d.deadline),
        late: late(d.deadline, alert.timestamp),
        link: link(d.link.as_deref(), style),
        reason: esc(&reason),
        detail: esc(&detail),
        mentions: mentions.join(", "),
        recipients: d
            .recipients
            .iter()
            .map(|r| Recipient {
                role: esc(&r.role),
                id: esc(&r.id),
                name: r.name.as_deref().map(esc),
                email: r.email.as_deref().map(esc),
                slack: r.slack.as_deref().map(esc),
                teams: r.teams.as_deref().map(esc),
            })
            .collect(),
        alert: escape_strings(serde_json::to_value(alert).unwrap_or_default(), &esc),
    }
}

/// `2026-11-22 14:00 UTC`
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// How long after `deadline` the alert fired, as `2h 5m` (empty when it was not late).
pub fn late(deadline: Timestamp, fired: Timestamp) -> String {
    let secs = fired.duration_since(deadline).as_secs();
    if secs <= 0 {
        return String::new();
    }
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d}d"));
    }
    if h > 0 {
        parts.push(format!("{h}h"));
    }
    if m > 0 && d == 0 {
        parts.push(format!("{m}m"));
    }
    if parts.is_empty() {
        parts.push(format!("{s}s"));
    }
    parts.join(" ")
}

/// A realistic alert of `kind` with every field its type carries, for checking templates.
pub fn sample_alert(kind: &str) -> Alert {
    use crate::alert::{AlertData, Disposition, LeadInfo};
    let deadline: Timestamp = "2026-11-22T14:00:00Z".parse().expect("a timestamp");
    let started: Timestamp = "2026-11-22T10:00:00Z".parse().expect("a timestamp");
    let closeout = kind.starts_with("disposition.") || kind.starts_with("follow_up.");
    let escalated = kind.ends_with(".escalated");
    let to = if escalated { "manager" } else { "owner" };
    let mut by_role = BTreeMap::new();
    by_role.insert("owner", ("005A0000001", "Alice Rep", "U024BE7LH"));
    by_role.insert("manager", ("005A0000002", "Mona Manager", "U024BE7LM"));
    let recipients = by_role
        .iter()
        .map(|(role, (id, name, slack))| Recipient {
            role: role.to_string(),
            id: id.to_string(),
            name: Some(name.to_string()),
            email: Some(format!("{}@example.com", role)),
            slack: Some(slack.to_string()),
            teams: Some(format!("{}@example.com", role)),
        })
        .collect();
    Alert {
        kind: kind.to_string(),
        timestamp: deadline + jiff::SignedDuration::from_mins(5),
        data: AlertData {
            alert_id: "alert_00000000000000000000000000000000".into(),
            lead: "salesforce:00Q5g000001".into(),
            owner: Some("005A0000001".into()),
            rule: kind.split('.').next().unwrap_or("rule").into(),
            level: u32::from(escalated),
            to: vec![to.into()],
            recipients,
            sales_ready_at: Some(started),
            clock_started_at: started,
            deadline,
            suggested_owner: escalated.then(|| "005A0000003".into()),
            disposition: closeout.then(|| Disposition {
                reason: Some("not interested".into()),
                detail: None,
                attempts: 1,
                closed_at: deadline,
                last_activity_at: Some(started),
            }),
            lead_info: LeadInfo {
                name: Some("Jane Doe".into()),
                email: Some("jane@example.com".into()),
                company: Some("Acme".into()),
                source: Some("web".into()),
            },
            link: Some("https://example.my.salesforce.com/00Q5g000001".into()),
            message: format!("Lead Jane Doe needs attention ({kind})."),
            records: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_name_the_lead_and_mention_the_owner_in_slack() {
        let t = Templates::new(&[]).unwrap();
        let mut alert = sample_alert("sla.first_touch.breached");
        alert.data.message = "Lead <Jane> & co was not touched.".into();
        let m = t.render(&alert, None, Style::Slack);
        assert_eq!(m.title, "First-touch SLA missed: Jane Doe");
        assert_eq!(
            m.text,
            "<@U024BE7LH>: Lead &lt;Jane&gt; &amp; co was not touched."
        );
        assert_eq!(m.owner, "Alice Rep");
        assert_eq!(m.deadline, "2026-11-22 14:00 UTC");
        assert_eq!(m.late, "5m");
        let plain = t.render(&alert, None, Style::Plain);
        assert_eq!(plain.text, "Alice Rep: Lead <Jane> & co was not touched.");
        let teams = t.render(&alert, None, Style::Teams);
        assert!(
            teams.text.starts_with("<at>Alice Rep</at>: "),
            "{}",
            teams.text
        );
    }

    #[test]
    fn escalations_address_the_manager_and_name_the_suggested_owner() {
        let t = Templates::new(&[]).unwrap();
        let alert = sample_alert("sla.first_touch.escalated");
        let m = t.render(&alert, None, Style::Slack);
        assert_eq!(m.title, "Escalation (step 1): Jane Doe still untouched");
        assert!(m.text.starts_with("<@U024BE7LM>: "), "{}", m.text);
        assert!(
            m.text.ends_with("Suggested new owner: 005A0000003."),
            "{}",
            m.text
        );
        // A route addressing the owner instead mentions the owner.
        let to = vec!["owner".to_string()];
        let m = t.render(&alert, Some((0, &to)), Style::Slack);
        assert!(m.text.starts_with("<@U024BE7LH>: "), "{}", m.text);
    }

    #[test]
    fn how_late_reads_like_a_person_would_say_it() {
        let d: Timestamp = "2026-11-22T14:00:00Z".parse().unwrap();
        let at = |s: i64| d + jiff::SignedDuration::from_secs(s);
        assert_eq!(late(d, at(-60)), "");
        assert_eq!(late(d, at(0)), "");
        assert_eq!(late(d, at(42)), "42s");
        assert_eq!(late(d, at(3 * 3600 + 5 * 60)), "3h 5m");
        assert_eq!(late(d, at(2 * 86_400 + 3600 + 60)), "2d 1h");
    }

    #[test]
    fn slack_ids_become_mentions_and_handles_stay_readable() {
        assert_eq!(slack_mention("U024BE7LH"), "<@U024BE7LH>");
        assert_eq!(slack_mention("W0123ABCDE"), "<@W0123ABCDE>");
        assert_eq!(slack_mention("@alice"), "@alice");
        assert_eq!(slack_mention("alice<x>"), "@alice&lt;x&gt;");
    }
}
