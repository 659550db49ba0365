//! Salesforce: a Task on the lead through the REST API, authenticated with the OAuth 2.0
//! client-credentials flow.
//!
//! - The access token is fetched from `token_url`, cached, and refreshed once when Salesforce
//!   answers 401 (an expired session); a second 401 is permanent.
//! - `403 REQUEST_LIMIT_EXCEEDED` (the org's daily API limit) is retriable: it backs off, it is
//!   never dropped.
//! - Idempotency: with `external_id_field` the task is upserted by alert id
//!   (`PATCH …/sobjects/Task/{field}/{alert id}`), so no retry can create a second one. Without
//!   it the alert id ends the Subject, and an attempt after an earlier one looks it up with SOQL
//!   before creating the task again.
//! - `apply_reassignment`: an escalation's `suggested_owner` becomes the lead's owner (and the
//!   task's).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;

use super::{Attempt, Delivered, DeliveryError, truncate};
use crate::alert::split_lead_key;
use crate::config::{SecretString, SinkConfig};
use crate::dispatch::template::addressed;

pub struct SalesforceSink {
    instance_url: Url,
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    api_version: String,
    external_id_field: Option<String>,
    apply_reassignment: bool,
    due_in: Duration,
    client: reqwest::Client,
    /// The cached access token.
    token: Mutex<Option<String>>,
}

impl SalesforceSink {
    pub fn from_config(cfg: &SinkConfig, client: reqwest::Client) -> Self {
        let SinkConfig::Salesforce {
            instance_url,
            token_url,
            client_id,
            client_secret,
            api_version,
            external_id_field,
            apply_reassignment,
            due_in,
            ..
        } = cfg
        else {
            unreachable!("a salesforce sink from a salesforce config")
        };
        Self {
            instance_url: instance_url.clone(),
            token_url: token_url.clone(),
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            api_version: api_version.clone(),
            external_id_field: external_id_field.clone(),
            apply_reassignment: *apply_reassignment,
            due_in: due_in.0,
            client,
            token: Mutex::new(None),
        }
    }

    fn url(&self, path: &str) -> Url {
        let base = self.instance_url.as_str().trim_end_matches('/');
        Url::parse(&format!(
            "{base}/services/data/v{}/{path}",
            self.api_version
        ))
        .expect("a valid Salesforce URL")
    }

    /// The cached token, or a new one.
    async fn token(&self) -> Result<String, DeliveryError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = &*cached {
            return Ok(t.clone());
        }
        let what = format!("POST {}", super::redact(&self.token_url));
        let response = self
            .client
            .post(self.token_url.clone())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.0.as_str()),
            ])
            .send()
            .await
            .map_err(|e| DeliveryError::transport(&what, e))?;
        if !response.status().is_success() {
            let mut e = DeliveryError::from_response(&what, response).await;
            e.message = format!("getting an access token: {}", e.message);
            return Err(e);
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| DeliveryError::transport(&what, e))?;
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| DeliveryError::permanent("the token answer has no access_token"))?
            .to_string();
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Forgets `used` if it is still the cached token (another request may have refreshed it).
    async fn invalidate(&self, used: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_deref() == Some(used) {
            *cached = None;
        }
    }

    /// One API call; on 401 the token is refreshed and the call made once more.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, DeliveryError> {
        let what = format!("{method} {}", super::redact(&url));
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .bearer_auth(&token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| DeliveryError::transport(&what, e))?;
            let status = response.status().as_u16();
            if status == 401 && !refreshed {
                tracing::info!("Salesforce answered 401; refreshing the access token");
                self.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            if response.status().is_success() {
                return Ok(response);
            }
            let mut e = DeliveryError::from_response(&what, response).await;
            if status == 403 && e.excerpt.contains("REQUEST_LIMIT_EXCEEDED") {
                // The org's API limit: later, not never.
                e.retriable = true;
                e.message = format!("{what}: the org's API request limit is exhausted");
            }
            if status == 401 {
                e.message = format!("{what} answered 401 even with a fresh token");
            }
            return Err(e);
        }
    }

    pub async fn deliver(&self, a: &Attempt<'_>) -> Result<Delivered, DeliveryError> {
        let (system, lead_id) = split_lead_key(&a.alert.data.lead);
        if system.is_some_and(|s| s != "salesforce") {
            return Ok(Delivered::Skipped(format!(
                "lead {} is not a Salesforce record",
                a.alert.data.lead
            )));
        }
        let d = &a.alert.data;
        let reassign_to = d
            .suggested_owner
            .as_deref()
            .filter(|_| self.apply_reassignment);
        if let Some(owner) = reassign_to {
            let object = if lead_id.starts_with("003") {
                "Contact"
            } else {
                "Lead"
            };
            self.call(
                Method::PATCH,
                self.url(&format!("sobjects/{object}/{lead_id}")),
                Some(&json!({ "OwnerId": owner })),
            )
            .await?;
        }
        let task = self.task(a, lead_id, reassign_to);
        match &self.external_id_field {
            Some(field) => {
                self.call(
                    Method::PATCH,
                    self.url(&format!("sobjects/Task/{field}/{}", a.alert.id())),
                    Some(&task),
                )
                .await?;
                Ok(Delivered::Sent)
            }
            None => {
                if a.attempt > 1 && self.exists(lead_id, a.alert.id()).await? {
                    return Ok(Delivered::AlreadyThere);
                }
                self.call(Method::POST, self.url("sobjects/Task"), Some(&task))
                    .await?;
                Ok(Delivered::Sent)
            }
        }
    }

    /// Whether a task of this lead already carries `alert_id` in its Subject.
    async fn exists(&self, lead_id: &str, alert_id: &str) -> Result<bool, DeliveryError> {
        let soql = format!(
            "SELECT Id FROM Task WHERE WhoId = '{}' AND Subject LIKE '%{}%' LIMIT 1",
            soql_escape(lead_id),
            soql_escape(alert_id)
        );
        let mut url = self.url("query");
        url.query_pairs_mut().append_pair("q", &soql);
        let response = self.call(Method::GET, url, None).await?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| DeliveryError::transport("reading the SOQL answer", e))?;
        Ok(body["totalSize"].as_u64().unwrap_or(0) > 0)
    }

    fn task(&self, a: &Attempt<'_>, lead_id: &str, reassigned: Option<&str>) -> Value {
        let d = &a.alert.data;
        let m = a.message;
        let is_user = |s: &&str| s.starts_with("005");
        let owner = reassigned
            .or_else(|| {
                addressed(a.alert, &[])
                    .iter()
                    .map(|r| r.id.as_str())
                    .find(is_user)
            })
            .or(d.owner.as_deref().filter(is_user));
        let subject = match &self.external_id_field {
            Some(_) => truncate(&m.title, 255),
            // The alert id is how a retry finds the task an uncertain attempt created.
            None => format!(
                "{} [{}]",
                truncate(&m.title, 255 - a.alert.id().len() - 3),
                a.alert.id()
            ),
        };
        let due = (a.alert.timestamp + self.due_in)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        let mut lines = vec![m.text.clone(), String::new()];
        lines.push(format!("Lead: {}", m.lead));
        if !m.owner.is_empty() {
            lines.push(format!("Owner: {}", m.owner));
        }
        lines.push(format!("Deadline: {}", m.deadline));
        if !m.late.is_empty() {
            lines.push(format!("Late by: {}", m.late));
        }
        if !m.link.is_empty() {
            lines.push(m.link.clone());
        }
        lines.push(format!("leadwatch alert id: {}", a.alert.id()));
        let mut task = json!({
            "WhoId": lead_id,
            "Subject": subject,
            "Description": truncate(&lines.join("\n"), 32_000),
            "ActivityDate": due.to_string(),
            "Priority": if a.alert.kind.ends_with(".reminder") { "Normal" } else { "High" },
            "Status": "Not Started",
        });
        if let Some(owner) = owner {
            task["OwnerId"] = json!(owner);
        }
        task
    }
}

fn soql_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}
