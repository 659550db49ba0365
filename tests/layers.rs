//! The house keeps its shape: the crate's top-level modules (each `src/X.rs` or `src/X/`) sit in
//! the layers the README's "Architecture" section lists, bottom up; a module may use modules of
//! its own layer or below, never above, and no modules use each other around a circle. Every
//! `crate::` path in the code counts (test modules inside `src/` included; comments do not), and
//! so does a `super::` that climbs out of its top-level module. A test that needs a higher layer
//! lives in that layer or in `tests/`.
//!
//! The engine is pure besides: no Kafka, no runtime, no clock, no logging, no files (its own
//! test, below).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The layers, bottom up, as the README's "Architecture" section lists them in its `text`
/// block: one line per layer, `name  module module …`.
fn layers() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = readme
        .split("\n## Architecture\n")
        .nth(1)
        .expect("the README has an `## Architecture` section");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the Architecture section lists the layers in a ```text block");
    let layers: Vec<(String, Vec<String>)> = block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap().to_string();
            (
                name,
                words.map(|w| w.trim_matches('/').to_string()).collect(),
            )
        })
        .collect();
    assert!(layers.len() > 2, "too few layers read: {layers:?}");
    layers
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to, and how deep its own module sits below the
/// crate root (`src/engine/rules/mod.rs`: `engine`, 2); `None` for the crate root, `main.rs`
/// and `src/bin/` (binaries, outside the library).
fn module_of(file: &Path) -> Option<(String, usize)> {
    let rel = file.strip_prefix(Path::new(ROOT).join("src")).unwrap();
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let top = parts[0].trim_end_matches(".rs").to_string();
    if matches!(top.as_str(), "lib" | "main" | "bin") {
        return None;
    }
    let depth = if parts.last().unwrap() == "mod.rs" {
        parts.len() - 1
    } else {
        parts.len()
    };
    Some((top, depth))
}

/// The code of a file without its comments (`//` to the end of a line, outside strings).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut prev = ' ';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            if c == '"' && prev != '\\' {
                in_string = !in_string;
            }
            if !in_string && c == '/' && prev == '/' {
                cut = i - 1;
                break;
            }
            prev = c;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The first names of a `{…}` group that `text` starts after (`{bus::X, engine}`: bus, engine),
/// however many lines it spans.
fn group_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut level = 0;
    let mut start = true;
    for (j, c) in text.char_indices() {
        match c {
            '{' => level += 1,
            '}' if level == 0 => break,
            '}' => level -= 1,
            ',' if level == 0 => start = true,
            c if start && !c.is_whitespace() => {
                start = false;
                let name = ident(&text[j..]);
                if !name.is_empty() {
                    names.push(name);
                }
            }
            _ => {}
        }
    }
    names
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a file's code names, with the line of each. `depth`: how deep the
/// file's module sits; inline modules (`mod tests {`, formatted by rustfmt) add to it.
fn uses(code: &str, depth: usize) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    // Indentation of the inline modules open at this line.
    let mut inline: Vec<usize> = Vec::new();
    let mut line_start = 0;
    for (n, line) in code.lines().enumerate() {
        let line_no = n + 1;
        let here = line_start;
        line_start += line.len() + 1;
        // Where `rest`, a tail of `line`, starts in the whole code.
        let at = |rest: &str| here + line.len() - rest.len();
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed == "}" && inline.last() == Some(&indent) {
            inline.pop();
            continue;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        let opens_mod = matches!(
            words.as_slice(),
            ["mod", _, "{"] | ["pub", "mod", _, "{"] | ["pub(crate)", "mod", _, "{"]
        );
        let depth = depth + inline.len();
        if opens_mod {
            inline.push(indent);
        }
        // `crate::x`, `crate::{x, y::z}`.
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue; // e.g. `leadwatch_crate::`
            }
            if rest.starts_with('{') {
                // A group may span lines (rustfmt breaks long ones).
                for name in group_names(&code[at(rest) + 1..]) {
                    found.push((name.to_string(), line_no));
                }
            } else {
                let name = ident(rest);
                if !name.is_empty() {
                    found.push((name.to_string(), line_no));
                }
            }
        }
        // `super::super::x` climbing to the crate root.
        let mut rest = line;
        while let Some(i) = rest.find("super::") {
            let before = rest[..i].chars().last();
            let mut tail = &rest[i..];
            rest = &rest[i + "super::".len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue; // counted with the chain it belongs to
            }
            let mut ups = 0;
            while let Some(t) = tail.strip_prefix("super::") {
                ups += 1;
                tail = t;
            }
            if ups >= depth {
                let names = if tail.starts_with('{') {
                    group_names(&code[at(tail) + 1..])
                } else {
                    vec![ident(tail)]
                };
                for name in names.into_iter().filter(|n| !n.is_empty()) {
                    found.push((name.to_string(), line_no));
                }
            }
        }
    }
    found
}

#[test]
fn layers_point_down_and_no_modules_go_round_in_a_circle() {
    let layers = layers();
    let layer_of: BTreeMap<String, (usize, String)> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, (name, modules))| {
            modules.iter().map(move |m| (m.clone(), (i, name.clone())))
        })
        .collect();

    let mut files = Vec::new();
    sources(&Path::new(ROOT).join("src"), &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    // (from, to) → where.
    let mut arrows: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &files {
        let Some((module, depth)) = module_of(file) else {
            continue;
        };
        modules.insert(module.clone());
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(ROOT).unwrap().display().to_string();
        for (to, line) in uses(&code(&text), depth) {
            if to != module && to != "self" && to != "super" {
                arrows
                    .entry((module.clone(), to))
                    .or_insert(format!("{rel}:{line}"));
            }
        }
    }

    let mut problems = Vec::new();
    for m in &modules {
        if !layer_of.contains_key(m) {
            problems.push(format!(
                "`src/{m}` is in no layer: add it to the README's Architecture section"
            ));
        }
    }
    for m in layer_of.keys() {
        if !modules.contains(m) {
            problems.push(format!("the README lists `{m}`, which src/ does not have"));
        }
    }
    for ((from, to), at) in &arrows {
        let (Some((a, a_name)), Some((b, b_name))) = (layer_of.get(from), layer_of.get(to)) else {
            // Everything at the crate root is a module (lib.rs re-exports nothing).
            if !modules.contains(to) {
                problems.push(format!("{at}: `crate::{to}` is no module of the crate"));
            }
            continue;
        };
        if b > a {
            problems.push(format!(
                "{at}: `{from}` ({a_name}) uses `{to}` ({b_name}), a layer above it"
            ));
        }
    }
    // Circles: a module that reaches itself.
    let next = |m: &str| -> Vec<String> {
        arrows
            .keys()
            .filter(|(f, _)| f == m)
            .map(|(_, t)| t.clone())
            .collect()
    };
    for start in &modules {
        let mut stack = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            for to in next(path.last().unwrap()) {
                // Each circle once: from its smallest module.
                if &to == start && path.iter().all(|m| m >= start) {
                    let mut circle = path.clone();
                    circle.push(to);
                    let wheres: Vec<&str> = circle
                        .windows(2)
                        .map(|w| arrows[&(w[0].clone(), w[1].clone())].as_str())
                        .collect();
                    problems.push(format!(
                        "a circle: {} ({})",
                        circle.join(" → "),
                        wheres.join(", ")
                    ));
                } else if &to != start && seen.insert(to.clone()) {
                    let mut longer = path.clone();
                    longer.push(to);
                    stack.push(longer);
                }
            }
        }
    }
    problems.dedup();
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// The engine is a pure function of (state, input, now): what would let it reach outside —
/// Kafka, a runtime, a clock, logging, files, the network, the environment — is not in its code.
#[test]
fn the_engine_is_pure() {
    const OUTSIDE: &[&str] = &[
        "crate::bus",
        "crate::clock",
        "crate::telemetry",
        "rdkafka",
        "tokio",
        "tracing",
        "reqwest",
        "Instant",
        "SystemTime",
        "::now(",
        "std::fs",
        "std::io",
        "std::net",
        "std::env",
        "std::thread",
        "std::process",
    ];
    let mut files = Vec::new();
    sources(&Path::new(ROOT).join("src/engine"), &mut files);
    assert!(!files.is_empty());
    let mut problems = Vec::new();
    for file in &files {
        let text = code(&std::fs::read_to_string(file).unwrap());
        let rel = file.strip_prefix(ROOT).unwrap().display().to_string();
        for (n, line) in text.lines().enumerate() {
            for word in OUTSIDE.iter().filter(|w| line.contains(*w)) {
                problems.push(format!(
                    "{rel}:{}: the engine reaches outside: `{word}`",
                    n + 1
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_scanner_sees_paths_through_groups_and_climbing_supers() {
    let code = code(
        "use crate::{bus::Topics, engine};\n// crate::dispatch in a comment\nlet x = \"//\"; crate::ingest::f(); use crate::{\n    signature::X,\n    clock::{self, Clock},\n};\nuse super::super::app::X;\nuse super::y;\nmod tests {\n    use super::super::y;\n    use super::super::super::cli;\n}\nuse super::super::z;\n",
    );
    let names: Vec<(String, usize)> = uses(&code, 2);
    assert_eq!(
        names,
        [
            ("bus".to_string(), 1),
            ("engine".to_string(), 1),
            ("ingest".to_string(), 3),
            ("signature".to_string(), 3),
            ("clock".to_string(), 3),
            ("app".to_string(), 7),
            ("cli".to_string(), 11),
            ("z".to_string(), 13),
        ]
    );
    assert_eq!(
        module_of(&Path::new(ROOT).join("src/engine/rules/mod.rs")),
        Some(("engine".to_string(), 2))
    );
    assert_eq!(
        module_of(&Path::new(ROOT).join("src/engine/rules/cel.rs")),
        Some(("engine".to_string(), 3))
    );
    assert_eq!(
        module_of(&Path::new(ROOT).join("src/alert.rs")),
        Some(("alert".to_string(), 1))
    );
}
