//! Reading run reports: a node's outputs and metrics by instance, and JSON lines artifacts.

#[cfg(feature = "artifacts")]
use std::path::{Path, PathBuf};

#[cfg(feature = "artifacts")]
use anyhow::{Context, Result};
use serde_json::Value;

pub(crate) fn node<'a>(r: &'a Value, instance: &str) -> Option<&'a Value> {
    r["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["instance"] == instance)
}

/// The path of a node's output in a run report.
#[cfg(feature = "artifacts")]
pub(crate) fn output(r: &Value, instance: &str, name: &str) -> Result<PathBuf> {
    node(r, instance)
        .and_then(|n| n["outputs"][name]["path"].as_str())
        .map(PathBuf::from)
        .with_context(|| format!("the run report has no output {instance}.{name}"))
}

/// A node's metric in a run report (null when absent).
pub(crate) fn metric(r: &Value, instance: &str, key: &str) -> Value {
    node(r, instance)
        .map(|n| n["metrics"][key].clone())
        .unwrap_or(Value::Null)
}

/// The values of a JSON lines file (blank lines skipped).
#[cfg(feature = "artifacts")]
pub(crate) fn read_jsonl(p: &Path) -> Result<Vec<Value>> {
    std::fs::read_to_string(p)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}
