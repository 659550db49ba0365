//! Whether an Outbound Message is Salesforce's. There is no signature: a message is accepted when
//! its `OrganizationId` is one of `organization_ids` (403 otherwise), and, where configured, the
//! request carries the basic-auth credentials (`https://user:password@host/…` in the endpoint
//! URL) or the path secret (`/webhooks/NAME/SECRET`); 401 otherwise. Restrict the endpoint
//! further by Salesforce's IP ranges or its client certificate at the ingress (README).

use super::config::SalesforceConfig;
use super::soap;
use crate::conf::PlainSecrets;
use crate::ingest::{Head, IngestError, Request, auth};

/// What a Salesforce message must carry.
#[derive(Debug)]
pub struct Credentials {
    organization_ids: Vec<String>,
    basic: Option<(String, PlainSecrets)>,
    path_secret: Option<PlainSecrets>,
}

impl Credentials {
    pub fn from_config(cfg: &SalesforceConfig) -> Self {
        Self {
            organization_ids: cfg.organization_ids.clone(),
            basic: cfg.username.clone().zip(cfg.password.clone()),
            path_secret: cfg.path_secret.clone(),
        }
    }

    /// Checks the path secret and basic auth, where configured, before anything is parsed.
    pub fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        self.authenticate_head(&req.head())
    }

    /// The path secret and basic auth are all there is: checked before the body is read.
    pub fn authenticate_head(&self, req: &Head<'_>) -> Result<(), IngestError> {
        if let Some(secrets) = &self.path_secret {
            let given = req.path_secret.unwrap_or("");
            if !auth::matches_any(given.as_bytes(), &secrets.0) {
                return Err(IngestError::Unauthorized(
                    "the URL's secret path segment is missing or wrong".into(),
                ));
            }
        }
        if let Some((user, passwords)) = &self.basic {
            auth::check_basic(req.headers, user, &passwords.0)
                .map_err(IngestError::Unauthorized)?;
        }
        Ok(())
    }

    /// Whether a secret (basic auth or the path's) proves the request before its body is read.
    pub fn authentic_before_parse(&self) -> bool {
        self.basic.is_some() || self.path_secret.is_some()
    }

    /// Without a secret, a message from an allowed org is as authentic as Salesforce makes it:
    /// one whose notifications cannot be read is kept for a replay, not lost once Salesforce
    /// stops retrying.
    pub fn authentic_unparsed(&self, body: &[u8]) -> bool {
        self.authentic_before_parse()
            || soap::organization_id(body).is_some_and(|org| self.org_allowed(org.trim()))
    }

    /// Whether `/webhooks/NAME/SECRET` is this source's URL.
    pub fn takes_path_secret(&self) -> bool {
        self.path_secret.is_some()
    }

    /// A message of an org that is not allowed is forbidden.
    pub fn check_org(&self, org: &str) -> Result<(), IngestError> {
        if !self.org_allowed(org) {
            return Err(IngestError::Forbidden(format!(
                "organization `{org}` is not in `organization_ids`"
            )));
        }
        Ok(())
    }

    /// An 18-character org id matches its 15-character form (Setup shows the 15).
    fn org_allowed(&self, org: &str) -> bool {
        self.organization_ids.iter().any(|allowed| {
            allowed == org || (allowed.len() == 15 && org.len() == 18 && org.starts_with(allowed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Handler;
    use crate::ingest::salesforce::tests::{body, now, source};

    #[test]
    fn credentials_are_checked_before_anything_is_parsed() {
        let s = source("username = \"sf\"\npassword = [\"new\", \"old\"]\npath_secret = \"p4th\"");
        let method = http::Method::POST;
        let uri: http::Uri = "/webhooks/sf/p4th".parse().unwrap();
        let check = |auth: Option<&str>, path: Option<&str>| {
            let mut h = http::HeaderMap::new();
            if let Some(a) = auth {
                h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
            }
            s.authenticate(&Request {
                method: &method,
                uri: &uri,
                headers: &h,
                body: b"",
                path_secret: path,
                now: now(),
            })
        };
        // sf:old
        assert!(check(Some("Basic c2Y6b2xk"), Some("p4th")).is_ok());
        assert!(check(Some("Basic c2Y6b2xk"), None).is_err());
        assert!(check(None, Some("p4th")).is_err());
        assert!(check(Some("Basic c2Y6d3Jvbmc="), Some("p4th")).is_err());
        assert!(s.authentic_before_parse());
        assert!(!source("").authentic_before_parse());
    }

    #[test]
    fn without_a_secret_a_message_of_an_allowed_org_counts_as_authentic_when_unreadable() {
        let s = source("");
        assert!(!s.authentic_before_parse());
        let broken = String::from_utf8(body("lead_sales_ready.http"))
            .unwrap()
            .replace("<sf:Id>00Q5g00000ABCDEEA2</sf:Id>", "");
        assert!(s.parse("sf", broken.as_bytes(), now()).is_err());
        assert!(s.authentic_unparsed(broken.as_bytes()));
        let other_org = broken.replace("00D5g000004Xq2REAS", "00D000000000000AAA");
        assert!(!s.authentic_unparsed(other_org.as_bytes()));
        assert!(!s.authentic_unparsed(b"<not even xml"));
    }

    #[test]
    fn another_org_is_forbidden_and_a_15_character_org_id_matches_its_18() {
        let b = body("lead_sales_ready.http");
        let other = source("").parse(
            "sf",
            &String::from_utf8(b.clone())
                .unwrap()
                .replace("00D5g000004Xq2REAS", "00D000000000001AAA")
                .into_bytes(),
            now(),
        );
        assert!(matches!(other, Err(IngestError::Forbidden(_))));
        let eighteen = {
            let mut s = source("");
            s.credentials.organization_ids = vec!["00D5g000004Xq2REAS".into()];
            s
        };
        assert!(eighteen.parse("sf", &b, now()).is_ok());
    }
}
