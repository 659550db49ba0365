//! Credential checks every source shares: constant-time comparison (of fixed-length digests, so
//! not even the length leaks) and HTTP basic auth.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `given` equals any of `secrets`, in time independent of where they differ.
pub fn matches_any(given: &[u8], secrets: &[String]) -> bool {
    let given = Sha256::digest(given);
    let mut found = subtle::Choice::from(0u8);
    // Every secret is compared, whether or not an earlier one matched.
    for secret in secrets {
        found |= Sha256::digest(secret.as_bytes()).ct_eq(&given);
    }
    found.into()
}

/// The `(username, password)` of an `Authorization: Basic …` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Checks basic auth against one username and any of `passwords`.
pub fn check_basic(
    headers: &HeaderMap,
    username: &str,
    passwords: &[String],
) -> Result<(), String> {
    let Some((user, password)) = basic_credentials(headers) else {
        return Err("missing HTTP basic auth (`Authorization: Basic …`)".into());
    };
    // Both halves are always compared, so a wrong username takes as long as a wrong password.
    let user_ok = matches_any(user.as_bytes(), &[username.to_string()]);
    let password_ok = matches_any(password.as_bytes(), passwords);
    if user_ok & password_ok {
        Ok(())
    } else {
        Err("wrong username or password".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = BASE64.encode(format!("{user}:{password}"));
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn any_of_the_rotating_secrets_matches() {
        let secrets = vec!["new-secret".to_string(), "old-secret".to_string()];
        assert!(matches_any(b"old-secret", &secrets));
        assert!(matches_any(b"new-secret", &secrets));
        assert!(!matches_any(b"new-secre", &secrets));
        assert!(!matches_any(b"", &secrets));
    }

    #[test]
    fn basic_auth_is_checked_in_full() {
        let pw = vec!["pw1".to_string(), "pw2".to_string()];
        assert!(check_basic(&basic("pd", "pw2"), "pd", &pw).is_ok());
        assert!(check_basic(&basic("pd", "pw3"), "pd", &pw).is_err());
        assert!(check_basic(&basic("other", "pw1"), "pd", &pw).is_err());
        assert!(check_basic(&HeaderMap::new(), "pd", &pw).is_err());
        // A password may contain colons.
        assert!(check_basic(&basic("pd", "a:b"), "pd", &["a:b".to_string()]).is_ok());
    }
}
