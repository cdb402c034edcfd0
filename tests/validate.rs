//! Validation that teaches: snapshot tests of every invalid manifest's diagnostics, and valid ones pass.

use std::path::Path;

use relabel_engine::load_pipeline;
use relabel_engine::manifest::Source;

fn source(path: &Path) -> Source {
    let text = std::fs::read_to_string(path).unwrap();
    let name = format!(
        "cases/invalid/{}",
        path.file_name().unwrap().to_string_lossy()
    );
    Source::from_text(&name, &text)
}

#[test]
fn every_invalid_manifest_is_reported_with_locations() {
    let registry = relabel_plugins::registry();
    let mut count = 0;
    insta::glob!("cases/invalid/*.yaml", |path| {
        count += 1;
        let diags = match load_pipeline(source(path), &registry) {
            Ok(_) => panic!("{} should be invalid", path.display()),
            Err(d) => d,
        };
        assert!(!diags.is_empty());
        let lines = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .count()
            .max(1);
        for d in &diags.0 {
            assert!(
                d.loc.line >= 1 && d.loc.line <= lines + 1,
                "{d} points outside the file"
            );
            assert!(d.loc.col >= 1, "{d}");
        }
        insta::assert_snapshot!(diags.to_string());
    });
    assert!(
        count >= 30,
        "the corpus has {count} invalid manifests; keep at least 30"
    );
}

#[test]
fn every_valid_case_and_example_manifest_validates() {
    let registry = relabel_plugins::registry();
    std::env::remove_var("RELABEL_TEST_UNSET_HOME");
    let mut files: Vec<_> = std::fs::read_dir("tests/cases/valid")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.extend(
        std::fs::read_dir("manifests")
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml")),
    );
    assert!(files.len() >= 4);
    for f in files {
        let src = Source::read(&f).unwrap();
        if let Err(d) = load_pipeline(src, &registry) {
            panic!("{} should be valid:\n{d}", f.display());
        }
    }
}

#[test]
fn multiple_problems_are_all_reported_not_just_the_first() {
    let registry = relabel_plugins::registry();
    let Err(d) = load_pipeline(
        source(Path::new("tests/cases/invalid/multiple_problems.yaml")),
        &registry,
    ) else {
        panic!("should be invalid")
    };
    let text = d.to_string();
    for needle in [
        "unknown kind \"comand\"",
        "unknown param \"m\"",
        "duplicate id \"b\"",
        "refers to no node",
        "timeout",
        "confg",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn params_keep_their_type_when_they_are_the_whole_value() {
    let registry = relabel_plugins::registry();
    let p = load_pipeline(
        Source::read(Path::new("tests/cases/valid/params_and_env.yaml")).unwrap(),
        &registry,
    )
    .unwrap();
    let relabel_engine::resolve::Unit::Node(n) = &p.units[0] else {
        panic!()
    };
    assert_eq!(n.config["timeout"], serde_json::json!(30.0));
    assert_eq!(
        n.config["run"],
        serde_json::json!("echo hello $${HOME} /tmp")
    );
}

#[test]
fn the_cli_exits_2_and_prints_file_line_col() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relabel"))
        .args(["validate", "tests/cases/invalid/unknown_input.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tests/cases/invalid/unknown_input.yaml:10:20: node \"count\": input \"rwos\" refers to no node"), "{err}");
    assert!(err.contains("help: did you mean \"rows\"?"), "{err}");
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_relabel"))
        .args(["validate", "manifests/demo.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
