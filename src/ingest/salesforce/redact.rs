//! "Send Session ID" puts a live API session of the sending user in every Outbound Message: its
//! `SessionId` is blanked before the message is kept in `{prefix}.raw`.

/// The body with the content of every `SessionId` element (any namespace prefix, CDATA and
/// comments included; to the end of the body when it is never closed) replaced by `REDACTED`;
/// `None` when there is none.
pub fn redact_session_ids(body: &[u8]) -> Option<Vec<u8>> {
    const NAME: &[u8] = b"SessionId";
    // `<` then an optional `prefix:` (no space, `<`, `>` or `/` in it) right before the name.
    let tag_start = |name_at: usize| -> Option<usize> {
        let lt = body[..name_at].iter().rposition(|&b| b == b'<')?;
        let between = &body[lt + 1..name_at];
        let prefix_ok = between.is_empty()
            || (between.ends_with(b":")
                && !between
                    .iter()
                    .any(|b| b.is_ascii_whitespace() || matches!(b, b'<' | b'>' | b'/')));
        prefix_ok.then_some(lt)
    };
    let ends_name = |at: usize| {
        matches!(body.get(at), Some(b'>' | b'/') | None)
            || body.get(at).is_some_and(u8::is_ascii_whitespace)
    };
    let mut out: Vec<u8> = Vec::new();
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = find(&body[at..], NAME).map(|i| i + at) {
        at = found + NAME.len();
        if tag_start(found).is_none() || !ends_name(at) {
            continue;
        }
        let Some(gt) = body[at..].iter().position(|&b| b == b'>').map(|i| i + at) else {
            break;
        };
        if body[gt - 1] == b'/' {
            continue; // `<SessionId/>`: empty.
        }
        // The closing tag: `</SessionId>` or `</prefix:SessionId>`; else the rest of the body.
        let mut end = body.len();
        let mut search = gt + 1;
        while let Some(close) = find(&body[search..], NAME).map(|i| i + search) {
            search = close + NAME.len();
            if let Some(lt) = body[..close].iter().rposition(|&b| b == b'<')
                && lt > gt
                && body.get(lt + 1) == Some(&b'/')
                && ends_name(search)
            {
                end = lt;
                break;
            }
        }
        if end > gt + 1 {
            out.extend_from_slice(&body[copied..=gt]);
            out.extend_from_slice(b"REDACTED");
            copied = end;
        }
        at = end.max(at);
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Handler;
    use crate::ingest::salesforce::tests::{now, source};
    use crate::ingest::testing::fixture;

    #[test]
    fn a_session_id_never_reaches_the_raw_topic() {
        let text = include_str!("../../../tests/fixtures/salesforce/lead_sales_ready.http");
        let (_, _, _, body) = fixture(text);
        // The fixture's session id is nil: nothing to blank, the body is kept as it came.
        assert_eq!(redact_session_ids(&body), None);
        let with = String::from_utf8(body.clone()).unwrap().replace(
            r#"<SessionId xsi:nil="true"/>"#,
            "<SessionId>00D5g000004Xq2R!AQ4AQFhf.live.token</SessionId>",
        );
        let redacted = String::from_utf8(redact_session_ids(with.as_bytes()).unwrap()).unwrap();
        assert!(!redacted.contains("live.token"), "{redacted}");
        assert!(redacted.contains("<SessionId>REDACTED</SessionId>"));
        // Everything else is untouched, and the message still parses to the same events.
        assert_eq!(
            redacted.len(),
            with.len() - "00D5g000004Xq2R!AQ4AQFhf.live.token".len() + 8
        );
        let s = source("");
        let a = s.parse("sf", &body, now()).unwrap();
        let b = s.parse("sf", redacted.as_bytes(), now()).unwrap();
        assert_eq!(a.events, b.events);
        // A namespace prefix is blanked too; a field merely named like it is not an element.
        let ns = b"<n:SessionId>secret</n:SessionId><Note>SessionId</Note>";
        assert_eq!(
            redact_session_ids(ns).unwrap(),
            b"<n:SessionId>REDACTED</n:SessionId><Note>SessionId</Note>"
        );
        // CDATA, comments, odd prefixes, a space before `>`, and a body cut off inside it.
        for (given, kept) in [
            (
                &b"<SessionId><![CDATA[00D!tok]]></SessionId>"[..],
                &b"<SessionId>REDACTED</SessionId>"[..],
            ),
            (
                b"<SessionId><!--x-->00D!tok</SessionId>",
                b"<SessionId>REDACTED</SessionId>",
            ),
            (
                b"<ns.1:SessionId >00D!tok</ns.1:SessionId>",
                b"<ns.1:SessionId >REDACTED</ns.1:SessionId>",
            ),
            (b"<x><SessionId>00D!tok", b"<x><SessionId>REDACTED"),
        ] {
            assert_eq!(
                String::from_utf8_lossy(&redact_session_ids(given).unwrap()),
                String::from_utf8_lossy(kept)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn redaction_never_panics_and_never_keeps_a_marked_token(
            before in "[ -~]{0,40}", token in "[A-Za-z0-9!.]{1,20}", after in "[ -~]{0,40}",
        ) {
            let body = format!("{before}<SessionId>{token}TOKEN</SessionId>{after}");
            let out = redact_session_ids(body.as_bytes()).unwrap();
            let out = String::from_utf8(out).unwrap();
            let marked = format!("{}TOKEN", token);
            proptest::prop_assert!(!out.contains(&marked) || before.contains("TOKEN") || after.contains("TOKEN"));
            let _ = redact_session_ids(before.as_bytes());
        }
    }
}
