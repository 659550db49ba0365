//! The SOAP of an Outbound Message: the `notifications` envelope read into its org id and
//! `Notification`s (each an `Id` and an `sObject` of the fields the admin selected, by name), and
//! what Salesforce wants back: the `notificationsResponse` `<Ack>true</Ack>`, or a SOAP fault
//! that makes it retry.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::ingest::IngestError;

const ACK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;

/// The `notifications` of a body (400 when it is not an Outbound Message).
pub fn read(body: &[u8]) -> Result<Notifications, IngestError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| IngestError::malformed("the body is not UTF-8 XML"))?;
    let envelope: Envelope<Notifications> = quick_xml::de::from_str(text)
        .map_err(|e| IngestError::malformed(format!("not a SOAP Outbound Message: {e}")))?;
    Ok(envelope.body.notifications)
}

/// The `OrganizationId` of a message, read even when its notifications cannot be.
pub fn organization_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Org {
        #[serde(rename = "OrganizationId")]
        organization_id: String,
    }
    let text = std::str::from_utf8(body).ok()?;
    let envelope: Envelope<Org> = quick_xml::de::from_str(text).ok()?;
    Some(envelope.body.notifications.organization_id)
}

/// The answer once every event is in Kafka: Salesforce stops retrying the message.
pub fn ack() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        ACK,
    )
        .into_response()
}

/// A SOAP fault with the status of the error: Salesforce shows the `faultstring` in its
/// outbound message queue, and retries.
pub fn fault(error: &IngestError, retry_after: Duration) -> Response {
    let code = if error.status().is_server_error() {
        "soapenv:Server"
    } else {
        "soapenv:Client"
    };
    let text = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>{code}</faultcode><faultstring>{}: {}</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#,
        error.outcome(),
        quick_xml::escape::escape(error.describe()),
    );
    let response = (
        error.status(),
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        )],
        text,
    )
        .into_response();
    error.with_retry_after(response, retry_after)
}

/// `<soapenv:Envelope><soapenv:Body><notifications>…`, read as far as `N` says.
#[derive(Debug, Deserialize)]
struct Envelope<N> {
    #[serde(rename = "Body")]
    body: Body<N>,
}

#[derive(Debug, Deserialize)]
struct Body<N> {
    notifications: N,
}

/// A message: who sent it, and what.
#[derive(Debug, Deserialize)]
pub struct Notifications {
    #[serde(rename = "OrganizationId")]
    pub organization_id: String,
    #[serde(rename = "Notification", default)]
    pub notification: Vec<Notification>,
}

/// One notification: its id (the same on every retry) and the record it is about.
#[derive(Debug, Deserialize)]
pub struct Notification {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "sObject")]
    pub sobject: SObject,
}

/// An sObject: its `xsi:type` and its fields by name (any the admin selected).
#[derive(Debug, Default)]
pub struct SObject {
    pub r#type: Option<String>,
    pub fields: Map<String, Value>,
}

/// One field element: its text, or `xsi:nil="true"`.
#[derive(Debug, Deserialize)]
struct FieldElement {
    #[serde(rename = "@nil", alias = "@xsi:nil", default)]
    nil: Option<String>,
    #[serde(rename = "$text", default)]
    text: Option<String>,
}

impl<'de> Deserialize<'de> for SObject {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an sObject element")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SObject, A::Error> {
                let mut object = SObject::default();
                let mut seen: BTreeMap<String, ()> = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let local = key.rsplit(':').next().unwrap_or(&key).to_string();
                    if let Some(attr) = key.strip_prefix('@') {
                        let value: String = map.next_value()?;
                        if attr == "type" || attr.ends_with(":type") {
                            object.r#type = Some(value);
                        }
                        continue;
                    }
                    let element: FieldElement = map.next_value()?;
                    let value = match element {
                        FieldElement { nil: Some(n), .. } if n == "true" => Value::Null,
                        FieldElement { text, .. } => Value::String(text.unwrap_or_default()),
                    };
                    // A field repeated (it should not be) keeps its first value.
                    if seen.insert(local.clone(), ()).is_none() {
                        object.fields.insert(local, value);
                    }
                }
                Ok(object)
            }
        }
        de.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Handler;
    use crate::ingest::salesforce::tests::{now, source};

    #[test]
    fn malformed_xml_is_named() {
        for bad in [
            &b"<soapenv:Envelope><oops"[..],
            b"not xml",
            b"\xff\xfe",
            b"<a/>",
        ] {
            let r = source("").parse("sf", bad, now());
            assert!(matches!(r, Err(IngestError::Malformed(_))), "{r:?}");
        }
    }

    #[test]
    fn the_ack_and_the_fault_are_soap() {
        let ok = source("").accepted(1, 0);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers()[header::CONTENT_TYPE],
            "text/xml; charset=utf-8"
        );
        let fault = super::fault(&IngestError::malformed("bad <xml>"), Duration::from_secs(5));
        assert_eq!(fault.status(), StatusCode::BAD_REQUEST);
        // Kafka did not take the events: a server fault, so Salesforce retries.
        let busy = super::fault(
            &IngestError::Unavailable(crate::bus::producer::SendError::Timeout),
            Duration::from_secs(7),
        );
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "7");
        let body = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let bytes = axum::body::to_bytes(fault.into_body(), 10_000)
                .await
                .unwrap();
            let busy = axum::body::to_bytes(busy.into_body(), 10_000)
                .await
                .unwrap();
            (
                String::from_utf8(bytes.to_vec()).unwrap(),
                String::from_utf8(busy.to_vec()).unwrap(),
            )
        });
        assert!(
            body.0.contains("<faultcode>soapenv:Client</faultcode>"),
            "{}",
            body.0
        );
        assert!(body.0.contains("bad &lt;xml&gt;"), "{}", body.0);
        assert!(
            body.1.contains("<faultcode>soapenv:Server</faultcode>"),
            "{}",
            body.1
        );
    }
}
