//! Tidy: every Rust module opens with a `//!` line saying what it is for, and no `pub fn` of a
//! library crate exists only for tests (each is used by code outside `#[cfg(test)]` and the
//! test folders).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Crates whose public functions are an API (testkit is test code by definition).
const LIBRARY_CRATES: &[&str] = &["engine", "tasks", "plugins"];
const ALL_SOURCE: &[&str] = &[
    "src",
    "engine/src",
    "tasks/src",
    "llm/src",
    "plugins/src",
    "plugins/examples",
    "ml/src",
    "testkit/src",
    "xtask/src",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's code with its `#[cfg(test)]` items cut off (they come last, by convention).
fn non_test_code(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    }
}

#[test]
fn every_module_opens_with_a_doc_line() {
    let mut files = Vec::new();
    for d in ALL_SOURCE
        .iter()
        .chain(&["tests", "engine/tests", "plugins/tests", "ml/tests"])
    {
        rust_files(Path::new(d), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` line: {missing:?}"
    );
}

#[test]
fn no_public_function_exists_only_for_tests() {
    let mut lib_files = Vec::new();
    for c in LIBRARY_CRATES {
        rust_files(&Path::new(c).join("src"), &mut lib_files);
    }
    let mut all = Vec::new();
    for d in ALL_SOURCE {
        rust_files(Path::new(d), &mut all);
    }
    let code: Vec<String> = all
        .iter()
        .map(|f| non_test_code(&std::fs::read_to_string(f).unwrap()).to_string())
        .collect();
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for f in &lib_files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in non_test_code(&text).lines() {
            let t = line.trim_start();
            if let Some(rest) = t
                .strip_prefix("pub fn ")
                .or_else(|| t.strip_prefix("pub async fn "))
            {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                defined.insert(name, f.display().to_string());
            }
        }
    }
    // Trait-required or conventional names that are called through a trait or by derive.
    let exempt = ["new", "default", "fmt", "from", "drop", "poll"];
    let unused: Vec<String> = defined
        .iter()
        .filter(|(name, _)| !exempt.contains(&name.as_str()))
        .filter(|(name, _)| {
            let uses: usize = code
                .iter()
                .map(|c| {
                    c.match_indices(name.as_str())
                        .filter(|(i, _)| {
                            let before = c[..*i].chars().next_back();
                            let after = c[i + name.len()..].chars().next();
                            let word = |ch: Option<char>| {
                                ch.is_some_and(|ch| ch.is_alphanumeric() || ch == '_')
                            };
                            !word(before) && !word(after)
                        })
                        .count()
                })
                .sum();
            uses <= 1
        })
        .map(|(name, file)| format!("{file}: {name}"))
        .collect();
    assert!(
        unused.is_empty(),
        "public functions used only by tests (or not at all): {unused:?}"
    );
}
