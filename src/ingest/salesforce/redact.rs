//! "Send Session ID" puts a live API session of the sending user in every Outbound Message: its
//! `SessionId` is blanked before the message is kept in `{prefix}.raw`.

/// The body with the content of every `SessionId` element (any namespace prefix, CDATA and
/// comments included; to the end of the body when it is never closed) replaced by `REDACTED`;
/// `None` when there is none.
///
/// One forward pass over the body, whatever it holds: every `<` is looked at once, as the start
/// of a tag, and the search for an element's end resumes where the last one stopped (a body of
/// nothing but `SessionId` costs what any other body of its size does).
pub fn redact_session_ids(body: &[u8]) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    let mut copied = 0;
    let mut at = 0;
    while let Some(lt) = memchr(b'<', &body[at..]).map(|i| i + at) {
        at = lt + 1;
        // An opening tag `<SessionId …>` or `<prefix:SessionId …>`.
        let Some(name_end) = session_id_name(body, lt + 1) else {
            continue;
        };
        let Some(gt) = memchr(b'>', &body[name_end..]).map(|i| i + name_end) else {
            break; // the tag is never closed: nothing inside it
        };
        at = gt + 1;
        if body[gt - 1] == b'/' {
            continue; // `<SessionId/>`: empty.
        }
        // The closing tag: the first `</SessionId>` or `</prefix:SessionId>` after it; else the
        // rest of the body.
        let mut end = body.len();
        let mut search = gt + 1;
        while let Some(close) = memchr(b'<', &body[search..]).map(|i| i + search) {
            search = close + 1;
            if body.get(close + 1) == Some(&b'/') && session_id_name(body, close + 2).is_some() {
                end = close;
                break;
            }
        }
        if end > gt + 1 {
            out.extend_from_slice(&body[copied..=gt]);
            out.extend_from_slice(b"REDACTED");
            copied = end;
        }
        at = at.max(end);
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

/// Where the element name ends when `body[from..]` starts with `SessionId` or
/// `prefix:SessionId` (the prefix without space, `<`, `>`, `/` or `:`) followed by the end of the
/// name (`>`, `/`, whitespace or the end of the body). Looks at most at one name's bytes.
fn session_id_name(body: &[u8], from: usize) -> Option<usize> {
    const NAME: &[u8] = b"SessionId";
    // The prefix, if any: a run of name characters up to a `:`.
    let rest = body.get(from..)?;
    let run = rest
        .iter()
        .take_while(|b| !(b.is_ascii_whitespace() || matches!(b, b'<' | b'>' | b'/' | b':')))
        .count();
    let name_at = if rest.get(run) == Some(&b':') {
        from + run + 1
    } else {
        from
    };
    let after = name_at + NAME.len();
    let ends_name = |at: usize| {
        matches!(body.get(at), Some(b'>' | b'/') | None)
            || body.get(at).is_some_and(u8::is_ascii_whitespace)
    };
    (body.get(name_at..after) == Some(NAME) && ends_name(after)).then_some(after)
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
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

    #[test]
    fn a_body_full_of_session_ids_is_blanked_from_its_first_open_element() {
        // A megabyte of the name alone is no element; of opening tags, everything after the
        // first is its (unclosed) content; closed ones are each blanked.
        let names = "SessionId".repeat(120_000);
        assert_eq!(redact_session_ids(names.as_bytes()), None);
        let opens = "<SessionId>".repeat(100_000);
        assert_eq!(
            redact_session_ids(opens.as_bytes()).unwrap(),
            b"<SessionId>REDACTED"
        );
        let closed = "<SessionId>x</SessionId>".repeat(40_000);
        let out = redact_session_ids(closed.as_bytes()).unwrap();
        assert_eq!(
            out,
            "<SessionId>REDACTED</SessionId>".repeat(40_000).as_bytes()
        );
        let prefixes = "<a:SessionId <b:SessionId </a:".repeat(30_000);
        let _ = redact_session_ids(prefixes.as_bytes());
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
