//! The committed JSON Schema is current, and every example manifest conforms to it.

use relabel_engine::schema::{json_schema, SCHEMA_PATH};

fn current() -> serde_json::Value {
    json_schema(&relabel_plugins::registry())
}

#[test]
fn committed_schema_is_current() {
    let want = serde_json::to_string_pretty(&current()).unwrap() + "\n";
    let have = std::fs::read_to_string(SCHEMA_PATH).unwrap_or_default();
    assert!(
        have == want,
        "{SCHEMA_PATH} is stale: regenerate it with `cargo xtask schema` and commit it"
    );
}

#[test]
fn example_manifests_conform_and_reference_the_schema() {
    let validator = jsonschema::validator_for(&current()).unwrap();
    let mut files: Vec<_> = std::fs::read_dir("manifests")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.extend(
        std::fs::read_dir("manifests/demo")
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    files.extend(
        std::fs::read_dir("tests/cases/valid")
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        // `${params.x}` placeholders stand where numbers go; the loader checks those after substitution.
        let errors: Vec<&String> = errors.iter().filter(|e| !e.contains("${params.")).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
        if f.starts_with("manifests") {
            let depth = f.components().count() - 2;
            let want = format!(
                "# yaml-language-server: $schema={}relabel.schema.json",
                "../".repeat(depth)
            );
            assert!(
                text.starts_with(&want),
                "{} should reference the schema",
                f.display()
            );
        }
    }
}

#[test]
fn the_schema_rejects_an_unknown_kind_and_a_bad_config() {
    let validator = jsonschema::validator_for(&current()).unwrap();
    let bad_kind =
        serde_json::json!({"version": 1, "name": "p", "nodes": [{"id": "a", "kind": "nope"}]});
    let bad_config = serde_json::json!({"version": 1, "name": "p", "nodes": [{"id": "a", "kind": "command", "config": {"run": "x", "outputz": []}}]});
    let good = serde_json::json!({"version": 1, "name": "p", "nodes": [{"id": "a", "kind": "command", "config": {"run": "x"}}]});
    assert!(!validator.is_valid(&bad_kind));
    assert!(!validator.is_valid(&bad_config));
    assert!(validator.is_valid(&good));
}
