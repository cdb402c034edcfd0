//! `relabel.lock`: what each node instance was computed from and what it produced, for review and CI.
//!
//! One lock file sits in a manifest's folder and holds one section per pipeline, so several
//! manifests in a folder share it without clobbering each other. A section lists every node
//! instance (`id`, or `id@round` in a loop) in run order with its key parts (kind, version,
//! config digest, input and referenced-file digests), its output digests and its stable
//! metrics. Nothing in it depends on the time, the machine or the run's accounting (seconds,
//! throughput, HTTP counts, cache hits, server ports), so identical results give identical
//! bytes and a diff of the lock in a pull request shows exactly what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{Digest, KeyParts};
use crate::plugin::Metrics;
use crate::resolve::Pipeline;
use crate::runner::{NodeReport, RunReport, Status};

/// The lock file's name, in the manifest's folder.
pub const LOCK_FILE: &str = "relabel.lock";

/// The format version written in the file.
pub const LOCK_VERSION: u32 = 1;

/// How a run treats the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Run, then rewrite this pipeline's section.
    #[default]
    Update,
    /// Fail as soon as a node's key or outputs differ from the lock (Cargo's `--locked`).
    Locked,
    /// Like `Locked`, and compute nothing: every node must come from a cache (`--frozen`).
    Frozen,
}

/// The whole lock file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    /// Pipeline name -> its section.
    pub pipelines: BTreeMap<String, PipelineLock>,
}

/// One pipeline's section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineLock {
    /// The manifest's file name (relative to the lock).
    pub manifest: String,
    pub nodes: Vec<LockedNode>,
}

/// One node instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockedNode {
    /// `id`, or `id@round` inside a loop.
    pub instance: String,
    pub kind: String,
    pub version: String,
    /// The cache key (blake3 of the key parts).
    pub key: String,
    /// Digest of the canonical config (resources' key parts included).
    pub config: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Digest>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Digest>,
    pub outputs: BTreeMap<String, Digest>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: Metrics,
}

impl LockedNode {
    /// The key parts this instance was computed from.
    pub fn parts(&self) -> KeyParts {
        KeyParts {
            kind: self.kind.clone(),
            version: self.version.clone(),
            config: self.config.clone(),
            inputs: self.inputs.clone(),
            files: self.files.clone(),
            round: self.round,
        }
    }

    /// The node id (the instance without its round).
    pub fn id(&self) -> &str {
        self.instance
            .split_once('@')
            .map(|(id, _)| id)
            .unwrap_or(&self.instance)
    }

    fn of(n: &NodeReport, parts: &KeyParts, key: &str) -> LockedNode {
        LockedNode {
            instance: n.instance.clone(),
            kind: parts.kind.clone(),
            version: parts.version.clone(),
            key: key.to_string(),
            config: parts.config.clone(),
            round: parts.round,
            inputs: parts.inputs.clone(),
            files: parts.files.clone(),
            outputs: n
                .outputs
                .iter()
                .map(|(k, o)| (k.clone(), o.digest.clone()))
                .collect(),
            metrics: stable_metrics(&n.metrics),
        }
    }
}

/// Metric names that describe the run rather than its result, left out of the lock.
const VOLATILE: &[&str] = &[
    "endpoint",
    "http_requests",
    "http_failures",
    "cache_hits",
    "cache_write_errors",
    "prompt_tokens",
    "completion_tokens",
    "local_server_started",
    "cost_usd",
    "cost",
    "batch",
    "executor",
];

fn volatile(name: &str) -> bool {
    VOLATILE.contains(&name)
        || name.contains("seconds")
        || name.ends_with("_per_s")
        || name.ends_with("_ms")
        || name.contains("elapsed")
}

/// `metrics` without the run's accounting (times, rates, HTTP and cache counts), recursively.
pub fn stable_metrics(metrics: &Metrics) -> Metrics {
    fn clean(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => serde_json::Value::Object(stable_metrics(m)),
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(clean).collect()),
            other => other.clone(),
        }
    }
    metrics
        .iter()
        .filter(|(k, _)| !volatile(k))
        .map(|(k, v)| (k.clone(), clean(v)))
        .collect()
}

/// Where the lock for a manifest in `manifest_dir` lives.
pub fn path_for(manifest_dir: &Path) -> PathBuf {
    manifest_dir.join(LOCK_FILE)
}

impl LockFile {
    /// Reads a lock file; `Ok(None)` when there is none. A damaged one is an error with its
    /// line and column.
    pub fn read(path: &Path) -> Result<Option<LockFile>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        LockFile::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}:{e}", path.display()))
    }

    /// Parses a lock's text; errors read `LINE:COL: message`.
    pub fn parse(text: &str) -> Result<LockFile, String> {
        let lock: LockFile = serde_json::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            format!("{}:{}: not a relabel lock: {msg}", e.line(), e.column())
        })?;
        if lock.version != LOCK_VERSION {
            return Err(format!(
                "1:1: lock format version {} (this relabel reads version {LOCK_VERSION})",
                lock.version
            ));
        }
        Ok(lock)
    }

    /// The file's bytes: pretty JSON in a fixed order, ending in a newline.
    pub fn to_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("locks serialize");
        s.push('\n');
        s
    }

    /// Writes the lock through a temporary file.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::report::write_atomic(path, self.to_text().as_bytes())
    }
}

impl PipelineLock {
    pub fn node(&self, instance: &str) -> Option<&LockedNode> {
        self.nodes.iter().find(|n| n.instance == instance)
    }

    /// This pipeline's section after `report`: the instances the run finished (ran or cached),
    /// and, from `old`, those of nodes the run did not select that still exist. `None` when the
    /// run did not finish every node it selected.
    pub fn from_run(
        report: &RunReport,
        pipeline: &Pipeline,
        manifest: &str,
        old: Option<&PipelineLock>,
    ) -> Option<PipelineLock> {
        let mut nodes = Vec::new();
        let mut touched = std::collections::HashSet::new();
        for n in &report.nodes {
            match n.status {
                Status::Ran | Status::Cached | Status::Restored => {}
                Status::Failed | Status::Pending => return None,
                // Not selected (a --target run), or not reached.
                Status::Skipped => continue,
            }
            let (Some(parts), Some(key)) = (&n.parts, &n.key) else {
                return None;
            };
            touched.insert(n.id.clone());
            nodes.push(LockedNode::of(n, parts, key));
        }
        if let Some(old) = old {
            for o in &old.nodes {
                if !touched.contains(o.id()) && pipeline.unit_of(o.id()).is_some() {
                    nodes.push(o.clone());
                }
            }
        }
        // Pipeline order: units as the DAG orders them, a loop's rounds in turn, its body in order.
        let ids = pipeline.all_ids();
        let order = |n: &LockedNode| {
            let unit = pipeline.unit_of(n.id()).unwrap_or(usize::MAX);
            let unit_pos = pipeline.dag.order.iter().position(|u| *u == unit);
            let id_pos = ids.iter().position(|x| x == n.id());
            (unit_pos, n.round.unwrap_or(0), id_pos)
        };
        nodes.sort_by_key(order);
        Some(PipelineLock {
            manifest: manifest.to_string(),
            nodes,
        })
    }
}

/// Why `new` differs from `old`, in words: plugin version, config, files, inputs.
pub fn changes(old: &KeyParts, new: &KeyParts) -> Vec<String> {
    let mut why = Vec::new();
    if old.version != new.version || old.kind != new.kind {
        why.push(format!(
            "plugin version changed ({} -> {})",
            old.version, new.version
        ));
    }
    if old.config != new.config {
        why.push("config changed".into());
    }
    for (f, d) in &new.files {
        if old.files.get(f) != Some(d) {
            why.push(format!("file changed: {f}"));
        }
    }
    for f in old.files.keys() {
        if !new.files.contains_key(f) {
            why.push(format!("file no longer referenced: {f}"));
        }
    }
    for (n, d) in &new.inputs {
        if old.inputs.get(n) != Some(d) {
            why.push(format!("input changed: {n}"));
        }
    }
    for n in old.inputs.keys() {
        if !new.inputs.contains_key(n) {
            why.push(format!("input removed: {n}"));
        }
    }
    if why.is_empty() && old.round != new.round {
        why.push("round changed".into());
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_metrics_stay_out_of_the_lock() {
        let m: Metrics = serde_json::from_value(serde_json::json!({
            "accuracy": 0.9, "seconds": 3.2, "train_rows_per_s": 100.0, "http_requests": 5,
            "endpoint": "scripted (http://127.0.0.1:43785/v1)",
            "per_round": {"changed": 4, "seconds_per_epoch": 1.0}
        }))
        .unwrap();
        let s = stable_metrics(&m);
        assert_eq!(
            serde_json::Value::Object(s),
            serde_json::json!({"accuracy": 0.9, "per_round": {"changed": 4}})
        );
    }

    #[test]
    fn a_damaged_lock_says_where() {
        let e = LockFile::parse("{\n  \"version\": 1,\n  \"pipelines\": [}\n").unwrap_err();
        assert!(e.starts_with("3:"), "{e}");
        let e = LockFile::parse("{\"version\": 9, \"pipelines\": {}}").unwrap_err();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn changes_name_each_part() {
        let a = KeyParts {
            kind: "k".into(),
            version: "1".into(),
            config: "c1".into(),
            inputs: [("data".to_string(), "d1".to_string())].into(),
            files: [("labels.yaml".to_string(), "f1".to_string())].into(),
            round: None,
        };
        let mut b = a.clone();
        assert!(changes(&a, &b).is_empty());
        b.config = "c2".into();
        b.files.insert("labels.yaml".into(), "f2".into());
        b.inputs.insert("data".into(), "d2".into());
        assert_eq!(
            changes(&a, &b),
            vec![
                "config changed",
                "file changed: labels.yaml",
                "input changed: data"
            ]
        );
    }
}
