//! Salesforce: a Task on the lead through the REST API, authenticated with the OAuth 2.0
//! client-credentials flow.
//!
//! - The access token is fetched from `token_url` with the client-credentials flow
//!   (`client_secret`) or the JWT bearer flow (`username` + `private_key`: an RS256-signed
//!   assertion, no secret on the wire), cached, and refreshed once when Salesforce answers 401
//!   (an expired session); a second 401 is permanent.
//! - `403 REQUEST_LIMIT_EXCEEDED` (the org's daily API limit) is retriable: it backs off, it is
//!   never dropped.
//! - Idempotency: with `external_id_field` the task is upserted by alert id
//!   (`PATCH …/sobjects/Task/{field}/{alert id}`), so no retry can create a second one. Without
//!   it the alert id ends the Subject, and an attempt after an earlier one looks it up with SOQL
//!   before creating the task again.
//! - `apply_reassignment`: an escalation's `suggested_owner` becomes the lead's owner (and the
//!   task's), only if the lead's owner is still the one the alert names: read
//!   (`GET …/sobjects/Lead/{id}?fields=OwnerId,LastModifiedDate`), compared, then written with
//!   a conditional `PATCH` (`If-Unmodified-Since` the `LastModifiedDate` read): a record that
//!   changed in between answers 412 and is read and compared again. (Salesforce's `If-Match`
//!   ETags are for Account records only.)

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;

use super::attempt::{Attempt, Delivered, DeliveryError, Http, redact, truncate};
use super::crm;
use crate::conf::{HumanDuration0, KeyProblems, SecretString};
use crate::dispatch::retry;

/// Why the sink pauses (`leadwatch_sink_paused{reason}`): the token endpoint refused the
/// credentials, or the API refused a fresh token.
const TOKEN_REFUSED: &str = "token_refused";
const UNAUTHORIZED: &str = "unauthorized";

/// The longest Subject Salesforce takes.
const SUBJECT_MAX: usize = 255;

/// The dates Salesforce takes.
const FIRST_DATE: jiff::civil::Date = jiff::civil::date(1700, 1, 1);
const LAST_DATE: jiff::civil::Date = jiff::civil::date(4000, 12, 31);

pub struct SalesforceSink {
    instance_url: Url,
    token_url: Url,
    client_id: String,
    auth: Auth,
    api_version: String,
    external_id_field: Option<String>,
    reassigner: crm::Reassigner,
    due_in: Duration,
    http: Http,
    /// The cached access token.
    token: Mutex<Option<String>>,
}

impl SalesforceSink {
    pub fn from_config(cfg: &SalesforceConfig, http: Http) -> Self {
        let SalesforceConfig {
            instance_url,
            token_url,
            client_id,
            client_secret,
            username,
            private_key,
            audience,
            api_version,
            external_id_field,
            apply_reassignment,
            due_in,
            ..
        } = cfg;
        Self {
            instance_url: instance_url.clone(),
            token_url: token_url.clone(),
            client_id: client_id.clone(),
            auth: match (client_secret, private_key) {
                (_, Some(pem)) => Auth::JwtBearer {
                    username: username.clone().unwrap_or_default(),
                    key: RsaKey::from_pem(&pem.0).expect("checked when the config loaded"),
                    audience: audience.clone(),
                },
                (secret, None) => {
                    Auth::ClientCredentials(secret.clone().unwrap_or(SecretString(String::new())))
                }
            },
            api_version: api_version.clone(),
            external_id_field: external_id_field.clone(),
            reassigner: crm::Reassigner::new(*apply_reassignment, "salesforce", same_user),
            due_in: due_in.0,
            http,
            token: Mutex::new(None),
        }
    }

    /// `{instance_url}/services/data/v{api_version}/{segments…}`, each segment percent-encoded
    /// on its own: none can add a level, go up one or start a query.
    fn url(&self, segments: &[&str]) -> Result<Url, DeliveryError> {
        let mut url = self.instance_url.clone();
        let version = format!("v{}", self.api_version);
        url.path_segments_mut()
            .map_err(|()| DeliveryError::permanent("`instance_url` cannot take a path"))?
            .pop_if_empty()
            .extend(["services", "data", version.as_str()])
            .extend(segments);
        Ok(url)
    }

    /// The cached token, or a new one.
    async fn token(&self) -> Result<String, DeliveryError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = &*cached {
            return Ok(t.clone());
        }
        let what = format!("POST {}", redact(&self.token_url));
        let response = self
            .http
            .client
            .post(self.token_url.clone())
            .form(&self.token_form()?)
            .send()
            .await
            .map_err(|e| DeliveryError::transport(&what, e))?;
        if !response.status().is_success() {
            let mut e = DeliveryError::from_response(&what, response, self.http.clock.now()).await;
            e.message = format!("getting an access token: {}", e.message);
            if !e.retriable {
                // The credentials (or the connected app) were refused: every alert would be.
                e.credentials = Some(TOKEN_REFUSED);
            }
            return Err(e);
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| DeliveryError::transport(&what, e))?;
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| DeliveryError {
                credentials: Some(TOKEN_REFUSED),
                ..DeliveryError::permanent(format!("{what}: the answer has no access_token"))
            })?
            .to_string();
        *cached = Some(token.clone());
        Ok(token)
    }

    /// The token request's form for the configured flow.
    fn token_form(&self) -> Result<Vec<(&'static str, String)>, DeliveryError> {
        Ok(match &self.auth {
            Auth::ClientCredentials(secret) => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", self.client_id.clone()),
                ("client_secret", secret.0.clone()),
            ],
            Auth::JwtBearer {
                username,
                key,
                audience,
            } => vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                ),
                (
                    "assertion",
                    key.assertion(&self.client_id, username, audience, self.http.clock.now())
                        .map_err(|e| DeliveryError {
                            credentials: Some(TOKEN_REFUSED),
                            ..DeliveryError::permanent(e)
                        })?,
                ),
            ],
        })
    }

    /// Forgets `used` if it is still the cached token (another request may have refreshed it).
    async fn invalidate(&self, used: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_deref() == Some(used) {
            *cached = None;
        }
    }

    /// Counts the reassignments it leaves alone as `sink`'s.
    pub fn observed(&mut self, sink: &str, metrics: std::sync::Arc<crate::telemetry::Metrics>) {
        self.reassigner.observed(sink, metrics);
    }

    /// One API call; on 401 the token is refreshed and the call made once more.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, DeliveryError> {
        self.call_with(method, url, body, None).await
    }

    /// As [`Self::call`], conditional on the record not having changed since `unmodified_since`
    /// (a 412 answers when it has).
    async fn call_with(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        unmodified_since: Option<&str>,
    ) -> Result<reqwest::Response, DeliveryError> {
        let what = format!("{method} {}", redact(&url));
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let mut request = self
                .http
                .client
                .request(method.clone(), url.clone())
                .bearer_auth(&token);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(since) = unmodified_since {
                request = request.header(reqwest::header::IF_UNMODIFIED_SINCE, since);
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
            let mut e = DeliveryError::from_response(&what, response, self.http.clock.now()).await;
            if status == 403 && e.excerpt.contains("REQUEST_LIMIT_EXCEEDED") {
                // The org's API limit: later, not never.
                e.retriable = true;
                e.message = format!("{what}: the org's API request limit is exhausted");
            }
            if status == 401 {
                // A fresh token refused: the integration user or the app, not the alert.
                e.message = format!("{what} answered 401 even with a fresh token");
                e.credentials = Some(UNAUTHORIZED);
            }
            return Err(e);
        }
    }

    pub async fn deliver(&self, a: &Attempt<'_>) -> Result<Delivered, DeliveryError> {
        let lead_id = match crm::record_id(a, "salesforce", "Salesforce") {
            Ok(id) => id,
            Err(outcome) => return outcome,
        };
        let object = if lead_id.starts_with("003") {
            "Contact"
        } else {
            "Lead"
        };
        let reassign_to = self
            .reassigner
            .reassign(
                a,
                || async move {
                    let mut url = self.url(&["sobjects", object, lead_id])?;
                    url.query_pairs_mut()
                        .append_pair("fields", "OwnerId,LastModifiedDate");
                    let response = self.call(Method::GET, url, None).await?;
                    let record: Value = response
                        .json()
                        .await
                        .map_err(|e| DeliveryError::transport("reading the lead's owner", e))?;
                    Ok(crm::Current {
                        owner: crm::id_value(&record["OwnerId"]),
                        version: record["LastModifiedDate"]
                            .as_str()
                            .and_then(http_date_after),
                    })
                },
                |owner, since: Option<String>| async move {
                    let url = self.url(&["sobjects", object, lead_id])?;
                    let body = json!({ "OwnerId": owner });
                    match self
                        .call_with(Method::PATCH, url, Some(&body), since.as_deref())
                        .await
                    {
                        Ok(_) => Ok(crm::Written::Done),
                        Err(e) if e.status == Some(412) => Ok(crm::Written::Changed),
                        Err(e) => Err(e),
                    }
                },
            )
            .await?;
        let task = self.task(a, lead_id, reassign_to);
        match &self.external_id_field {
            Some(field) => {
                let url = self.url(&["sobjects", "Task", field, a.alert.id()])?;
                self.call(Method::PATCH, url, Some(&task)).await?;
                Ok(Delivered::Sent)
            }
            None => {
                if a.may_exist() && self.exists(lead_id, a.alert.id()).await? {
                    return Ok(Delivered::AlreadyThere);
                }
                let url = self.url(&["sobjects", "Task"])?;
                self.call(Method::POST, url, Some(&task)).await?;
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
        let mut url = self.url(&["query"])?;
        url.query_pairs_mut().append_pair("q", &soql);
        let response = self.call(Method::GET, url, None).await?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| DeliveryError::transport("reading the SOQL answer", e))?;
        Ok(body["totalSize"].as_u64().unwrap_or(0) > 0)
    }

    fn task(&self, a: &Attempt<'_>, lead_id: &str, reassigned: Option<&str>) -> Value {
        let m = a.message;
        let owner = crm::task_owner(a, reassigned, |s| s.starts_with("005"));
        let subject = match &self.external_id_field {
            Some(_) => truncate(&m.title, SUBJECT_MAX),
            // The alert id is how a retry finds the task an uncertain attempt created. (An id
            // too long to fit never gets here — the dispatcher refuses it — but if one did, the
            // Subject is still cut to what Salesforce takes.)
            None => {
                let id = a.alert.id();
                let room = SUBJECT_MAX.saturating_sub(id.chars().count() + 3);
                truncate(&format!("{} [{id}]", truncate(&m.title, room)), SUBJECT_MAX)
            }
        };
        // Salesforce takes dates from 1700 to 4000; an alert fired at the end of time (a
        // record no engine wrote) is due on the last of them, not an overflow.
        let due = retry::later(a.alert.timestamp, self.due_in)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .clamp(FIRST_DATE, LAST_DATE);
        let mut task = json!({
            "WhoId": lead_id,
            "Subject": subject,
            "Description": truncate(&crm::task_description(a), 32_000),
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

/// Two Salesforce ids of the same record or user: equal, or the same 15-character
/// (case-sensitive) id, one of them with its 3-character checksum suffix.
pub fn same_user(a: &str, b: &str) -> bool {
    a == b || matches!((short_id(a), short_id(b)), (Some(x), Some(y)) if x == y)
}

/// The 15-character form of a 15- or 18-character id.
fn short_id(s: &str) -> Option<&str> {
    matches!(s.len(), 15 | 18).then(|| s.get(..15)).flatten()
}

/// A Salesforce datetime (`2026-12-07T05:00:00.000+0000`) as the HTTP date of an
/// `If-Unmodified-Since` that it satisfies: the next whole second (HTTP dates have no
/// fractions; rounding down would make the record look modified after it).
pub fn http_date_after(datetime: &str) -> Option<String> {
    let s = datetime.trim();
    let at = s.parse::<Timestamp>().ok().or_else(|| {
        // `+0000` → `+00:00`
        let (head, offset) = s.split_at(s.len().checked_sub(5)?);
        let colon = format!("{head}{}:{}", &offset[..3], &offset[3..]);
        colon.parse::<Timestamp>().ok()
    })?;
    let whole = Timestamp::from_second(at.as_second()).ok()?;
    let at = if whole < at {
        whole.checked_add(jiff::SignedDuration::from_secs(1)).ok()?
    } else {
        whole
    };
    Some(at.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string())
}

fn soql_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// How the sink gets its access token.
enum Auth {
    ClientCredentials(SecretString),
    JwtBearer {
        username: String,
        key: RsaKey,
        audience: String,
    },
}

/// The RSA key that signs JWT bearer assertions. Its `Debug` shows nothing of it.
pub struct RsaKey(openssl::pkey::PKey<openssl::pkey::Private>);

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaKey(<redacted>)")
    }
}

impl RsaKey {
    /// From a PEM (PKCS#1 or PKCS#8); the error never repeats the key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let key = openssl::pkey::PKey::private_key_from_pem(pem.trim().as_bytes())
            .map_err(|_| "is not a PEM-encoded private key".to_string())?;
        if key.rsa().is_err() {
            return Err("must be an RSA key (Salesforce signs with RS256)".into());
        }
        Ok(Self(key))
    }

    /// The signed assertion of the OAuth 2.0 JWT bearer flow: `iss` the connected app's client
    /// id, `sub` the user, `aud` the login URL, valid for three minutes.
    pub fn assertion(
        &self,
        client_id: &str,
        username: &str,
        audience: &str,
        now: Timestamp,
    ) -> Result<String, String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        let claims = json!({
            "iss": client_id,
            "sub": username,
            "aud": audience,
            "exp": now.as_second() + 180,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{claims}");
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &self.0)
                .map_err(|e| format!("signing the assertion: {e}"))?;
        signer
            .update(signed.as_bytes())
            .map_err(|e| format!("signing the assertion: {e}"))?;
        let signature = signer
            .sign_to_vec()
            .map_err(|e| format!("signing the assertion: {e}"))?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// A Task on the lead in Salesforce (REST API), OAuth 2.0 client credentials.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// `https://yourorg.my.salesforce.com`
    #[eserde(compat)]
    pub instance_url: Url,
    /// `https://login.salesforce.com/services/oauth2/token` or the org's My Domain.
    #[eserde(compat)]
    pub token_url: Url,
    pub client_id: String,
    /// The client-credentials flow: the connected app's secret.
    #[serde(default)]
    #[eserde(compat)]
    pub client_secret: Option<SecretString>,
    /// The JWT bearer flow instead (no secret): the user the integration acts as …
    #[serde(default)]
    pub username: Option<String>,
    /// … and the PEM of the RSA key whose certificate the connected app holds (from the
    /// environment, e.g. `LEADWATCH__SINKS__CRM__PRIVATE_KEY`, rather than the file).
    #[serde(default)]
    #[eserde(compat)]
    pub private_key: Option<SecretString>,
    /// The JWT's audience: `https://login.salesforce.com`, or `https://test.salesforce.com`
    /// for a sandbox.
    #[serde(default = "default_salesforce_audience")]
    pub audience: String,
    #[serde(default = "default_salesforce_version")]
    pub api_version: String,
    /// A unique external-id field on Task (e.g. `Leadwatch_Alert_Id__c`): tasks are upserted
    /// by alert id, so no retry or replay can create a second one. Without it the alert id is
    /// put in the Subject and looked up (SOQL) before a retry creates the task again.
    #[serde(default)]
    pub external_id_field: Option<String>,
    /// Escalations that suggest a new owner reassign the lead in Salesforce, if its owner is
    /// still the one the alert names.
    #[serde(default)]
    pub apply_reassignment: bool,
    /// The task is due this long after the alert fired (its ActivityDate is that day, UTC).
    #[serde(default = "default_due_in")]
    #[eserde(compat)]
    pub due_in: HumanDuration0,
    #[serde(default)]
    pub max_per_second: Option<f64>,
}

fn default_salesforce_audience() -> String {
    "https://login.salesforce.com".into()
}

fn default_salesforce_version() -> String {
    "62.0".into()
}

fn default_due_in() -> HumanDuration0 {
    HumanDuration0(Duration::ZERO)
}

impl SalesforceConfig {
    /// Every problem beyond the types, keys relative to `sinks.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        match (&self.client_secret, &self.private_key) {
            (Some(_), Some(_)) => problems.push((
                "private_key".into(),
                "give `client_secret` (client credentials) or `private_key` (JWT bearer), \
                 not both"
                    .into(),
            )),
            (None, None) => problems.push((
                "client_secret".into(),
                "give `client_secret` (client credentials) or `username` and `private_key` \
                 (JWT bearer)"
                    .into(),
            )),
            (None, Some(key)) => {
                if self.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                    problems.push((
                        "username".into(),
                        "the JWT bearer flow needs the username the integration acts as".into(),
                    ));
                }
                if let Err(e) = RsaKey::from_pem(&key.0) {
                    problems.push(("private_key".into(), e));
                }
            }
            (Some(_), None) => {}
        }
        for (key, url) in [
            ("instance_url", &self.instance_url),
            ("token_url", &self.token_url),
        ] {
            if !matches!(url.scheme(), "http" | "https") {
                problems.push((key.into(), "must be an http or https URL".into()));
            }
        }
        if !self
            .api_version
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        {
            problems.push((
                "api_version".into(),
                "must look like `62.0` (no `v`)".into(),
            ));
        }
        if let Some(field) = &self.external_id_field
            && !crm::is_api_name(field)
        {
            problems.push((
                "external_id_field".into(),
                "must be a field's API name, e.g. `Leadwatch_Alert_Id__c`".into(),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Alert;
    use crate::clock::Clock;
    use crate::dispatch::template::{Style, Templates, sample_alert};

    fn sink(extra: Value) -> SalesforceSink {
        let mut cfg = json!({
            "instance_url": "https://example.my.salesforce.com",
            "token_url": "https://login.salesforce.com/services/oauth2/token",
            "client_id": "cid",
            "client_secret": "s",
        });
        cfg.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let cfg: SalesforceConfig = serde_json::from_value(cfg).unwrap();
        let http = Http::new(Duration::from_secs(1), Clock::system()).unwrap();
        SalesforceSink::from_config(&cfg, http)
    }

    fn task_of(sink: &SalesforceSink, alert: &Alert) -> Value {
        let body = bytes::Bytes::from(serde_json::to_vec(alert).unwrap());
        let message = Templates::new(&[])
            .unwrap()
            .render(alert, None, Style::Plain);
        let a = Attempt {
            alert,
            body: &body,
            attempt: 1,
            maybe_attempted: false,
            message: &message,
        };
        sink.task(&a, "00Q5g000001", None)
    }

    /// Values no engine writes — an alert id longer than a Subject, a firing time at either
    /// end of time, a title of 10,000 characters — make a task within Salesforce's limits
    /// (Subject 255 characters, ActivityDate 1700-01-01 … 4000-12-31): no overflow, no panic.
    #[test]
    fn a_poison_alert_makes_a_task_within_salesforces_limits() {
        let sink = sink(json!({"due_in": "2d"}));
        let mut alert = sample_alert("sla.first_touch.breached");
        alert.data.alert_id = format!("alert_{}", "0".repeat(294));
        alert.data.lead_info.name = Some("N".repeat(10_000));
        let task = task_of(&sink, &alert);
        assert!(
            task["Subject"].as_str().unwrap().chars().count() <= 255,
            "{task}"
        );
        alert.timestamp = Timestamp::MAX;
        assert_eq!(task_of(&sink, &alert)["ActivityDate"], "4000-12-31");
        alert.timestamp = Timestamp::MIN;
        assert_eq!(task_of(&sink, &alert)["ActivityDate"], "1700-01-01");
        alert.timestamp = "2026-11-22T23:00:00Z".parse().unwrap();
        assert_eq!(task_of(&sink, &alert)["ActivityDate"], "2026-11-24");
    }

    #[test]
    fn last_modified_dates_become_the_http_date_that_holds_them() {
        assert_eq!(
            http_date_after("2026-12-07T05:00:00.000+0000").as_deref(),
            Some("Mon, 07 Dec 2026 05:00:00 GMT")
        );
        assert_eq!(
            http_date_after("2026-12-07T05:00:00.250Z").as_deref(),
            Some("Mon, 07 Dec 2026 05:00:01 GMT")
        );
        assert_eq!(http_date_after("yesterday"), None);
        assert_eq!(http_date_after(""), None);
    }

    #[test]
    fn fifteen_and_eighteen_character_ids_of_one_user_are_the_same() {
        assert!(same_user("005A00000012345", "005A00000012345AAA"));
        assert!(same_user("005A00000012345AAA", "005A00000012345AAA"));
        assert!(!same_user("005A00000012345", "005a00000012345AAA"));
        assert!(!same_user("005A00000012346AAA", "005A00000012345AAA"));
        assert!(!same_user("55", "56"));
    }

    #[test]
    fn the_assertion_is_an_rs256_jwt_the_public_key_verifies() {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let pem = String::from_utf8(rsa.private_key_to_pem().unwrap()).unwrap();
        let key = RsaKey::from_pem(&pem).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let jwt = key
            .assertion(
                "3MVG9-client",
                "integration@example.com",
                "https://login.salesforce.com",
                now,
            )
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "RS256"}));
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"iss": "3MVG9-client", "sub": "integration@example.com", "aud": "https://login.salesforce.com", "exp": 1_800_000_180})
        );
        let public =
            openssl::pkey::PKey::public_key_from_pem(&rsa.public_key_to_pem().unwrap()).unwrap();
        let mut verifier =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &public).unwrap();
        verifier
            .update(format!("{}.{}", parts[0], parts[1]).as_bytes())
            .unwrap();
        assert!(
            verifier
                .verify(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
                .unwrap()
        );
        assert!(format!("{key:?}").contains("redacted"));
        assert!(
            RsaKey::from_pem("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }
}
