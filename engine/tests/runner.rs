//! Runner regression tests with node kinds made for them: a panicking node fails the run,
//! identical outputs produced concurrently import once, and a damaged cached folder reruns.

use std::path::PathBuf;
use std::sync::Arc;

use relabel_engine::cache::{Cache, LockWait};
use relabel_engine::manifest::Source;
use relabel_engine::plugin::{typed, Inputs, NodeContext, NodeError, NodeKind, NodeOutput};
use relabel_engine::runner::{run, RunOptions, RunReport, RunStatus, Status};
use relabel_engine::{load_pipeline, Registry};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Cfg {
    #[serde(default)]
    panic: bool,
    /// Seconds to wait before writing (lets concurrent nodes overlap).
    #[serde(default)]
    delay: f64,
    /// A salt that changes the cache key but not the output.
    #[serde(default)]
    salt: u32,
}

/// Writes a folder `out` with two files, the same bytes for every config; or panics.
struct Folder;

impl NodeKind for Folder {
    type Config = Cfg;
    const KIND: &'static str = "folder";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "writes a fixed folder (test kind)";

    fn outputs(_config: &Cfg) -> Vec<String> {
        vec!["out".into()]
    }

    async fn run(
        &self,
        ctx: NodeContext,
        config: Cfg,
        _inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        if config.panic {
            panic!("the test kind panics on purpose");
        }
        let out = ctx.output_path("out");
        std::fs::create_dir_all(&out).map_err(|e| NodeError::io("out", e))?;
        std::fs::write(out.join("a.txt"), "alpha").map_err(|e| NodeError::io("a", e))?;
        std::fs::write(out.join("b.txt"), "beta").map_err(|e| NodeError::io("b", e))?;
        tokio::time::sleep(std::time::Duration::from_secs_f64(config.delay)).await;
        let mut o = NodeOutput::default();
        o.outputs.insert("out".into(), out);
        Ok(o)
    }
}

/// Counts the files of its input folder (so a damaged input shows up in its metric).
struct CountFiles;

impl NodeKind for CountFiles {
    type Config = Cfg;
    const KIND: &'static str = "count_files";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "counts the files of its input (test kind)";

    fn outputs(_config: &Cfg) -> Vec<String> {
        vec!["n".into()]
    }

    async fn run(
        &self,
        ctx: NodeContext,
        _config: Cfg,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let dir = &inputs["data"].path;
        let n = std::fs::read_dir(dir)
            .map_err(|e| NodeError::io("input", e))?
            .count();
        let path = ctx.output_path("n");
        std::fs::write(&path, n.to_string()).map_err(|e| NodeError::io("n", e))?;
        let mut o = NodeOutput::default();
        o.outputs.insert("n".into(), path);
        o.metrics.insert("files".into(), n.into());
        Ok(o)
    }
}

fn registry() -> Registry {
    Registry::new(vec![typed(Folder), typed(CountFiles)])
}

fn run_manifest(cache_dir: &std::path::Path, text: &str, jobs: usize) -> RunReport {
    let registry = registry();
    let pipeline = load_pipeline(Source::from_text("p.yaml", text), &registry)
        .unwrap_or_else(|d| panic!("manifest: {d:?}"));
    let cache = Cache::open(cache_dir, LockWait::NoWait).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = RunOptions {
        jobs,
        ..RunOptions::default()
    };
    rt.block_on(run(
        Arc::new(pipeline),
        Arc::new(cache),
        opts,
        CancellationToken::new(),
    ))
    .unwrap()
}

fn node<'a>(r: &'a RunReport, instance: &str) -> &'a relabel_engine::runner::NodeReport {
    r.nodes
        .iter()
        .find(|n| n.instance == instance)
        .unwrap_or_else(|| panic!("no node {instance} in {:?}", r.nodes))
}

#[test]
fn a_panicking_node_fails_with_its_message_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_manifest(
        dir.path(),
        "version: 1\nname: p\nnodes:\n  - id: boom\n    kind: folder\n    config: {panic: true}\n  - id: after\n    kind: count_files\n    inputs: {data: boom}\n",
        2,
    );
    assert_eq!(r.status, RunStatus::Failed);
    let boom = node(&r, "boom");
    assert_eq!(boom.status, Status::Failed);
    let err = boom.error.as_deref().unwrap_or("");
    assert!(
        err.contains("panicked") && err.contains("on purpose"),
        "{err}"
    );
    assert_eq!(node(&r, "after").status, Status::Skipped);
}

#[test]
fn a_panicking_node_inside_a_loop_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_manifest(
        dir.path(),
        "version: 1\nname: p\nnodes:\n  - id: seed\n    kind: folder\n  - id: fix\n    loop:\n      max_rounds: 2\n      carry:\n        data: {from: seed, next: step}\n    nodes:\n      - id: step\n        kind: folder\n        config: {panic: true}\n        inputs: {x: fix.data}\n",
        2,
    );
    assert_eq!(r.status, RunStatus::Failed);
    let step = node(&r, "step@1");
    assert_eq!(step.status, Status::Failed);
    assert!(step.error.as_deref().unwrap_or("").contains("on purpose"));
}

#[test]
fn identical_folders_produced_concurrently_are_imported_once() {
    // Eight nodes with different keys write byte-identical folders at the same moment.
    let mut text = String::from("version: 1\nname: p\nnodes:\n");
    for i in 0..8 {
        text.push_str(&format!(
            "  - id: n{i}\n    kind: folder\n    config: {{salt: {i}, delay: 0.2}}\n"
        ));
    }
    for attempt in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let r = run_manifest(dir.path(), &text, 8);
        assert_eq!(r.status, RunStatus::Ok, "attempt {attempt}: {:?}", r.nodes);
        let digests: std::collections::BTreeSet<_> = r
            .nodes
            .iter()
            .map(|n| n.outputs["out"].digest.clone())
            .collect();
        assert_eq!(digests.len(), 1);
    }
}

#[test]
fn a_damaged_cached_folder_is_not_a_cache_hit() {
    let dir = tempfile::tempdir().unwrap();
    let text = "version: 1\nname: p\nnodes:\n  - id: make\n    kind: folder\n  - id: count\n    kind: count_files\n    inputs: {data: make}\n";
    let r = run_manifest(dir.path(), text, 1);
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(node(&r, "count").metrics["files"], 2);
    // Delete one file inside the cached folder, as a disk clean-up or a user might.
    let obj = PathBuf::from(&node(&r, "make").outputs["out"].path);
    std::fs::remove_file(obj.join("b.txt")).unwrap();
    let r = run_manifest(dir.path(), text, 1);
    assert_eq!(r.status, RunStatus::Ok, "{:?}", r.nodes);
    assert_eq!(
        node(&r, "make").status,
        Status::Ran,
        "the damaged entry must rerun"
    );
    assert_eq!(node(&r, "count").metrics["files"], 2);
    assert!(obj.join("b.txt").exists(), "the object is restored");
}

fn validate(text: &str) -> (std::time::Duration, String) {
    let t0 = std::time::Instant::now();
    let r = load_pipeline(Source::from_text("p.yaml", text), &registry());
    let shown = match r {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    };
    (t0.elapsed(), shown)
}

#[test]
fn twenty_thousand_broken_references_validate_in_linear_time() {
    let mut text = String::from("version: 1\nname: p\nnodes:\n");
    for i in 0..20_000 {
        text.push_str(&format!(
            "  - id: node{i}\n    kind: count_files\n    inputs: {{data: missing{i}}}\n"
        ));
    }
    let (took, diags) = validate(&text);
    assert!(
        diags.contains("missing19999"),
        "every reference is reported"
    );
    assert!(took.as_secs_f64() < 20.0, "took {took:?}");
}

#[test]
fn deeply_nested_flow_brackets_and_huge_ids_validate_quickly() {
    let deep = format!(
        "version: 1\nname: p\nnodes:\n  - id: a\n    kind: folder\n    config: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (took, diags) = validate(&deep);
    assert!(!diags.is_empty());
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
    let long = format!(
        "version: 1\nname: p\nnodes:\n  - id: {}\n    kind: folder\n  - id: b\n    kind: count_files\n    inputs: {{data: {}x}}\n",
        "a".repeat(100_000),
        "a".repeat(100_000)
    );
    let (took, diags) = validate(&long);
    assert!(
        diags.contains("p.yaml:"),
        "{}",
        &diags[..diags.len().min(300)]
    );
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
}

#[test]
fn a_byte_order_mark_is_ignored_and_non_utf8_is_located() {
    let (_, diags) = validate("\u{feff}version: 1\nname: p\nnodes:\n  - id: a\n    kind: folder\n");
    assert_eq!(diags, "", "a manifest with a BOM is valid");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, b"version: 1\nname: p\nnodes:\n  - id: \xff\n").unwrap();
    let e = Source::read(&p).unwrap_err().to_string();
    assert!(e.contains("p.yaml:4:9: not UTF-8"), "{e}");
}
