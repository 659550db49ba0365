//! The vocabulary of configuration, shared by every component's own settings: problems with
//! their key paths, durations written the human way, secrets that never show in `Debug`, and
//! the lenient deserialization that lists every problem of a file at once.
//!
//! A leaf: it imports nothing from the crate. Each component owns its section (its type,
//! defaults, documentation and a `problems()` check with key paths relative to itself, next to
//! the code that uses it); `app::config` is the only place that names every section.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Problems of one section, as `(key path relative to the section, message)`.
pub type KeyProblems = Vec<(String, String)>;

/// `key` below `section`: `a` + `b` is `a.b`, `a` + `[0].b` is `a[0].b`, `a` + `` is `a`.
pub fn join(section: &str, key: &str) -> String {
    match (section.is_empty(), key.is_empty()) {
        (_, true) => section.to_string(),
        (true, false) => key.to_string(),
        (false, false) if key.starts_with('[') => format!("{section}{key}"),
        (false, false) => format!("{section}.{key}"),
    }
}

/// The problems of a section nested below `section`, their keys made relative to the parent.
pub fn nested(section: &str, problems: KeyProblems) -> impl Iterator<Item = (String, String)> {
    let section = section.to_string();
    problems
        .into_iter()
        .map(move |(key, message)| (join(&section, &key), message))
}

/// One problem found in a configuration or rules file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// Dotted key path, e.g. `sinks.alerts.url`; empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.key, self.message)
    }
}

/// Every problem found, in file order as far as they could be found.
#[derive(Debug, thiserror::Error)]
#[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

/// Secrets compared as they are (a HubSpot client secret, a password, a token): one string or a
/// list while rotating. Never shown in `Debug`.
#[derive(Clone)]
pub struct PlainSecrets(pub Vec<String>);

impl fmt::Debug for PlainSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainSecrets(<{} redacted>)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for PlainSecrets {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = secret_list(de, "expected a secret string or a list of them")?;
        if raw.iter().any(|s| s.trim().is_empty()) {
            return Err(serde::de::Error::custom("a secret must not be empty"));
        }
        Ok(PlainSecrets(raw))
    }
}

/// A secret string (a token, a client secret): never shown in `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(pub String);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s =
            String::deserialize(de).map_err(|_| serde::de::Error::custom("expected a string"))?;
        if s.trim().is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(SecretString(s))
    }
}

/// A URL that is itself a secret (Slack and Teams webhook URLs): `Debug` shows the host only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(pub Url);

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl SecretUrl {
    /// `scheme://host/…`: what may be logged.
    pub fn redacted(&self) -> String {
        format!(
            "{}://{}/…",
            self.0.scheme(),
            self.0.host_str().unwrap_or("")
        )
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        // The message never repeats the value: it is a secret.
        let s = String::deserialize(de)
            .map_err(|_| serde::de::Error::custom("expected a URL string"))?;
        let url =
            Url::parse(&s).map_err(|e| serde::de::Error::custom(format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(serde::de::Error::custom("must be an http or https URL"));
        }
        Ok(SecretUrl(url))
    }
}

/// A duration that may be zero (`"0s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration0(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration0 {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"0s\" or \"4h\"")
        })?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration0)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration: {e}")))
    }
}

/// One secret or a list of them (while rotating), at least one; `expected` is the error when it
/// is neither a string nor a list of strings.
pub fn secret_list<'de, D: serde::Deserializer<'de>>(
    de: D,
    expected: &str,
) -> Result<Vec<String>, D::Error> {
    let raw = one_or_many(de, expected)?;
    if raw.is_empty() {
        return Err(serde::de::Error::custom("at least one secret is needed"));
    }
    Ok(raw)
}

/// `"x"` or `["x", "y"]` as a list; `expected` is the error when it is neither.
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(
    de: D,
    expected: &str,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(de) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(expected)),
    }
}

/// A duration written the human way: `250ms`, `90s`, `4h`, `2days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl std::ops::Deref for HumanDuration {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"90s\" or \"4h\"")
        })?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a humantime duration that must be positive.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as \"90s\" or \"4h\": {e}"))?;
    if d.is_zero() {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(d)
}

/// Reads the TOML file at `path` (a `what`, for the message when it cannot be read) and builds
/// `T` from it with `build`; every problem names the file and its key path.
pub fn load_file<T>(
    path: &Path,
    what: &str,
    build: impl FnOnce(&serde_json::Value) -> Result<T, KeyProblems>,
) -> Result<T, Problems> {
    let problem = |key: String, message: String| Problem {
        file: path.to_path_buf(),
        key,
        message,
    };
    let value = read_toml(path).map_err(|e| {
        Problems(vec![problem(
            String::new(),
            format!("cannot read the {what}: {e}"),
        )])
    })?;
    build(&value).map_err(|ps| Problems(ps.into_iter().map(|(k, m)| problem(k, m)).collect()))
}

/// Reads a TOML file into a JSON value (the form [`from_value_lenient`] checks).
pub fn read_toml(path: &Path) -> Result<serde_json::Value, String> {
    config::Config::builder()
        .add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        )
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| e.to_string())
}

/// Deserializes `value`, or lists every problem as `(key path, message)` — not just the first.
///
/// `eserde` collects the errors, but an unknown key derails what it reports after it (wrong
/// paths, lost errors). So: keep the errors up to the first unknown key, remove that key, and
/// look again, until a pass finds no unknown key; that pass's errors are all sound.
///
/// A value whose only problems are unknown keys is still returned, with them: the checks that
/// need the value can then run too, and one pass lists everything.
pub fn from_value_lenient<T>(value: &serde_json::Value) -> Result<(T, KeyProblems), KeyProblems>
where
    T: for<'de> eserde::EDeserialize<'de>,
{
    if let Ok(v) = T::deserialize(value) {
        return Ok((v, Vec::new()));
    }
    let mut value = value.clone();
    let mut problems: KeyProblems = Vec::new();
    // Each pass removes one key, so this ends; the bound only guards against a surprise.
    for _ in 0..64 {
        let text = value.to_string();
        let errors = match eserde::json::from_str::<T>(&text) {
            Ok(v) => return Ok((v, problems)),
            Err(errors) => errors,
        };
        let mut unknown = None;
        for e in errors.iter() {
            let key = e.path().map(|p| p.to_string()).unwrap_or_default();
            let message = strip_position(e.message());
            let is_unknown = message.starts_with("unknown field `");
            if !problems.contains(&(key.clone(), message.clone())) {
                problems.push((key.clone(), message));
            }
            if is_unknown {
                unknown = Some(key);
                break;
            }
        }
        match unknown {
            Some(key) if remove_path(&mut value, &key) => {
                // Keep only the unknown keys: the next pass finds the other errors again.
                problems.retain(|(_, m)| m.starts_with("unknown field `"));
            }
            _ => return Err(problems),
        }
    }
    Err(problems)
}

/// Removes the key at a dotted path (`segments[1].extra`); false when there is none.
fn remove_path(value: &mut serde_json::Value, path: &str) -> bool {
    // `a.b[1][2].c` → steps a, b, [1], [2], c.
    let mut steps: Vec<Result<usize, &str>> = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            steps.push(Err(name));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let Some((index, after)) = open.split_once(']') else {
                return false;
            };
            match index.parse() {
                Ok(i) => steps.push(Ok(i)),
                Err(_) => return false,
            }
            rest = after;
        }
    }
    let Some(Err(last)) = steps.pop() else {
        return false;
    };
    let mut node = value;
    for step in steps {
        let next = match step {
            Ok(i) => node.get_mut(i),
            Err(key) => node.get_mut(key),
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    node.as_object_mut()
        .is_some_and(|m| m.remove(last).is_some())
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// serde_json appends where in the (re-serialized) document an error sits; the key path says it better.
pub fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_string(),
        _ => message.to_string(),
    }
}
