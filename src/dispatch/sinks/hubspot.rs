//! HubSpot: a task associated with the contact (CRM v3 `objects/tasks`), authenticated with a
//! private app's token.
//!
//! - 429 is retriable: `Retry-After` when HubSpot sends one, otherwise the window its
//!   `X-HubSpot-RateLimit-Interval-Milliseconds` names once `…-Remaining` is 0; the whole sink
//!   waits that long. The sink's own pace (`max_per_second`, default 9) keeps it under the
//!   ten-second limit to begin with.
//! - Idempotency: the alert id is stored in the task (`alert_id_property`, or the task body) and
//!   an attempt after an earlier one searches for it before creating the task again. HubSpot's
//!   search index lags writes by a few seconds, so the first retry is best kept a few seconds
//!   after the first attempt (the default schedule waits 5 s).
//! - `apply_reassignment`: an escalation's `suggested_owner` becomes the contact's
//!   `hubspot_owner_id` (and the task's owner), only if the contact's owner is still the one
//!   the alert names: read (`GET …/objects/contacts/{id}?properties=hubspot_owner_id`),
//!   compared, then written (`PATCH`). HubSpot offers no conditional write on CRM objects, so a
//!   change between the read and the write (a request's time) is not seen.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use url::Url;

use super::attempt::{Attempt, Delivered, DeliveryError, Http, redact, truncate};
use super::crm;
use crate::conf::{HumanDuration0, KeyProblems, SecretString};
use crate::dispatch::retry;

/// HubSpot's association type for task → contact.
const TASK_TO_CONTACT: u32 = 204;

pub struct HubspotSink {
    token: SecretString,
    base_url: Url,
    alert_id_property: Option<String>,
    reassigner: crm::Reassigner,
    due_in: Duration,
    http: Http,
}

impl HubspotSink {
    pub fn from_config(cfg: &HubspotConfig, http: Http) -> Self {
        let HubspotConfig {
            token,
            base_url,
            alert_id_property,
            apply_reassignment,
            due_in,
            ..
        } = cfg;
        Self {
            token: token.clone(),
            base_url: base_url.clone(),
            alert_id_property: alert_id_property.clone(),
            reassigner: crm::Reassigner::new(*apply_reassignment, "hubspot", crm::same_id),
            due_in: due_in.0,
            http,
        }
    }

    /// `{base_url}/crm/v3/{segments…}`, each segment percent-encoded on its own: none can add
    /// a level, go up one or start a query.
    fn url(&self, segments: &[&str]) -> Result<Url, DeliveryError> {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| DeliveryError::permanent("`base_url` cannot take a path"))?
            .pop_if_empty()
            .extend(["crm", "v3"])
            .extend(segments);
        Ok(url)
    }

    /// Counts the reassignments it leaves alone as `sink`'s.
    pub fn observed(&mut self, sink: &str, metrics: std::sync::Arc<crate::telemetry::Metrics>) {
        self.reassigner.observed(sink, metrics);
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, DeliveryError> {
        let what = format!("{method} {}", redact(&url));
        let mut request = self
            .http
            .client
            .request(method, url)
            .bearer_auth(&self.token.0);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DeliveryError::transport(&what, e))?;
        if response.status().is_success() {
            return Ok(response.json().await.unwrap_or(Value::Null));
        }
        let status = response.status().as_u16();
        let wait = rate_limit_wait(response.headers());
        let mut e = DeliveryError::from_response(&what, response, self.http.clock.now()).await;
        match status {
            429 => {
                e.retry_after = e.retry_after.or(wait);
                e.pause_sink = e.retry_after;
            }
            // The token is static: a 401 refuses it for every alert; so does a token without
            // the scopes the call needs.
            401 => e.credentials = Some("unauthorized"),
            403 if e.excerpt.contains("MISSING_SCOPES") => e.credentials = Some("missing_scopes"),
            _ => {}
        }
        Err(e)
    }

    pub async fn deliver(&self, a: &Attempt<'_>) -> Result<Delivered, DeliveryError> {
        let contact_id = match crm::record_id(a, "hubspot", "HubSpot") {
            Ok(id) => id,
            Err(outcome) => return outcome,
        };
        let reassign_to = self
            .reassigner
            .reassign(
                a,
                || async move {
                    let mut url = self.url(&["objects", "contacts", contact_id])?;
                    url.query_pairs_mut()
                        .append_pair("properties", "hubspot_owner_id");
                    let contact = self.call(Method::GET, url, None).await?;
                    Ok(crm::Current {
                        owner: crm::id_value(&contact["properties"]["hubspot_owner_id"]),
                        version: (),
                    })
                },
                |owner, ()| async move {
                    let url = self.url(&["objects", "contacts", contact_id])?;
                    let owner = json!({"properties": {"hubspot_owner_id": owner}});
                    self.call(Method::PATCH, url, Some(&owner)).await?;
                    Ok(crm::Written::Done)
                },
            )
            .await?;
        if a.may_exist() && self.exists(a.alert.id()).await? {
            return Ok(Delivered::AlreadyThere);
        }
        let url = self.url(&["objects", "tasks"])?;
        self.call(
            Method::POST,
            url,
            Some(&self.task(a, contact_id, reassign_to)),
        )
        .await?;
        Ok(Delivered::Sent)
    }

    /// Whether a task carrying `alert_id` exists.
    async fn exists(&self, alert_id: &str) -> Result<bool, DeliveryError> {
        let filter = match &self.alert_id_property {
            Some(p) => json!({"propertyName": p, "operator": "EQ", "value": alert_id}),
            None => {
                json!({"propertyName": "hs_task_body", "operator": "CONTAINS_TOKEN", "value": alert_id})
            }
        };
        let url = self.url(&["objects", "tasks", "search"])?;
        let found = self
            .call(
                Method::POST,
                url,
                Some(&json!({"filterGroups": [{"filters": [filter]}], "properties": ["hs_task_subject"], "limit": 1})),
            )
            .await?;
        Ok(found["total"].as_u64().unwrap_or(0) > 0)
    }

    fn task(&self, a: &Attempt<'_>, contact_id: &str, reassigned: Option<&str>) -> Value {
        let m = a.message;
        let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        let owner = crm::task_owner(a, reassigned, numeric);
        let mut properties = json!({
            "hs_timestamp": retry::later(a.alert.timestamp, self.due_in).to_string(),
            "hs_task_subject": truncate(&m.title, 255),
            "hs_task_body": truncate(&crm::task_description(a), 65_000),
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": if a.alert.kind.ends_with(".reminder") { "MEDIUM" } else { "HIGH" },
            "hs_task_type": "TODO",
        });
        if let Some(owner) = owner {
            properties["hubspot_owner_id"] = json!(owner);
        }
        if let Some(p) = &self.alert_id_property {
            properties[p] = json!(a.alert.id());
        }
        json!({
            "properties": properties,
            "associations": [{
                "to": {"id": contact_id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}],
            }],
        })
    }
}

/// How long HubSpot's rate-limit headers say to wait: the rolling window, when nothing remains
/// in it (the daily limit: until midnight UTC is not worth computing; the schedule takes over).
/// Both come from the answer: the window is clamped ([`retry::parse_millis`]), a count that is
/// not a whole number means nothing.
pub fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("x-hubspot-ratelimit-remaining")?.trim().parse::<u64>() != Ok(0) {
        return None;
    }
    retry::parse_millis(get("x-hubspot-ratelimit-interval-milliseconds")?)
}

/// A task associated with the contact in HubSpot (CRM v3), private-app token.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotConfig {
    #[eserde(compat)]
    pub token: SecretString,
    #[serde(default = "default_hubspot_url")]
    #[eserde(compat)]
    pub base_url: Url,
    /// A task property holding the alert id (searched before a retry re-creates the task);
    /// without it the id is written into the task body and searched there.
    #[serde(default)]
    pub alert_id_property: Option<String>,
    /// Escalations that suggest a new owner reassign the contact, if its owner is still the
    /// one the alert names.
    #[serde(default)]
    pub apply_reassignment: bool,
    #[serde(default = "default_due_in")]
    #[eserde(compat)]
    pub due_in: HumanDuration0,
    /// HubSpot allows 100–190 requests per 10 s per app; stay under it.
    #[serde(default = "default_hubspot_rate")]
    pub max_per_second: Option<f64>,
}

fn default_hubspot_rate() -> Option<f64> {
    Some(9.0)
}

fn default_due_in() -> HumanDuration0 {
    HumanDuration0(Duration::ZERO)
}

fn default_hubspot_url() -> Url {
    Url::parse("https://api.hubapi.com").expect("a valid URL")
}

impl HubspotConfig {
    /// Every problem beyond the types, keys relative to `sinks.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if !matches!(self.base_url.scheme(), "http" | "https") {
            problems.push(("base_url".into(), "must be an http or https URL".into()));
        }
        if let Some(p) = &self.alert_id_property
            && !crm::is_api_name(p)
        {
            problems.push((
                "alert_id_property".into(),
                "must be a property's internal name, e.g. `leadwatch_alert_id`".into(),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::retry::LONGEST_WAIT;

    #[test]
    fn the_rolling_window_is_waited_only_when_nothing_remains() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            "10000".parse().unwrap(),
        );
        h.insert("x-hubspot-ratelimit-max", "100".parse().unwrap());
        h.insert("x-hubspot-ratelimit-remaining", "3".parse().unwrap());
        assert_eq!(rate_limit_wait(&h), None);
        h.insert("x-hubspot-ratelimit-remaining", "0".parse().unwrap());
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_secs(10)));
        assert_eq!(rate_limit_wait(&HeaderMap::new()), None);
    }

    /// A firing time at the end of time plus `due_in` is the end of time, not an overflow.
    #[test]
    fn a_task_due_past_the_end_of_time_is_due_at_its_end() {
        use crate::clock::Clock;
        use crate::dispatch::template::{Style, Templates, sample_alert};
        let cfg: HubspotConfig =
            serde_json::from_value(json!({"token": "pat", "due_in": "2d"})).unwrap();
        let http = Http::new(Duration::from_secs(1), Clock::system()).unwrap();
        let sink = HubspotSink::from_config(&cfg, http);
        let mut alert = sample_alert("sla.first_touch.breached");
        alert.timestamp = jiff::Timestamp::MAX;
        let body = bytes::Bytes::from(serde_json::to_vec(&alert).unwrap());
        let message = Templates::new(&[])
            .unwrap()
            .render(&alert, None, Style::Plain);
        let a = Attempt {
            alert: &alert,
            body: &body,
            attempt: 1,
            maybe_attempted: false,
            message: &message,
        };
        let task = sink.task(&a, "901", None);
        assert_eq!(
            task["properties"]["hs_timestamp"],
            jiff::Timestamp::MAX.to_string()
        );
    }

    /// Rate-limit headers with values no clock holds: a window of at most a year (then
    /// `max_retry_after` clamps it to an hour), or none; never a panic.
    #[test]
    fn absurd_rate_limit_headers_are_clamped_never_a_panic() {
        let wait = |remaining: &str, interval: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-hubspot-ratelimit-remaining", remaining.parse().unwrap());
            h.insert(
                "x-hubspot-ratelimit-interval-milliseconds",
                interval.parse().unwrap(),
            );
            rate_limit_wait(&h)
        };
        for huge in [
            "18446744073709551615",
            "99999999999999999999999999999",
            "1e300",
            "31622400000000",
        ] {
            assert_eq!(wait("0", huge), Some(LONGEST_WAIT), "{huge}");
        }
        for nothing in ["-1", "NaN", "inf", "", "soon"] {
            assert_eq!(wait("0", nothing), None, "{nothing}");
        }
        assert_eq!(wait("0", "2500.5"), Some(Duration::from_micros(2_500_500)));
        // Something remains, or the count is absurd: no wait from these headers.
        for remaining in ["99999999999999999999999", "-5", "NaN", "1.5"] {
            assert_eq!(wait(remaining, "1000"), None, "{remaining}");
        }
    }
}
