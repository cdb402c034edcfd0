//! `cargo xtask bench artifacts`: how fast dataset splits and predictions reload from Parquet,
//! beside pyarrow reading the same files (the peer users open them with).

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};

use crate::bench::{json_output, target};

const ROWS: usize = 1_000_000;
const CLASSES: usize = 77;
const PRED_ROWS: usize = 100_000;

/// The binary split format this replaced reloaded 1M rows in ~0.1 s (docs/BENCHMARKS.md, before).
const BEFORE_S: f64 = 0.1;

const PYARROW_READ: &str = r#"
import json, sys, time
import pyarrow.parquet as pq
def best(path, convert):
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        table = pq.read_table(path)
        if convert:
            for name in table.column_names:
                table.column(name).to_pylist()
        ts.append(time.perf_counter() - t)
    return min(ts)
print(json.dumps({
    "read_split_s": best(sys.argv[1], False),
    "read_split_to_python_s": best(sys.argv[1], True),
    "read_pred_s": best(sys.argv[2], False),
}))
"#;

pub fn artifacts(root: &Path, _args: &[String]) -> Result<Value> {
    let work = crate::home_cache().join("bench/artifacts");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let ours = json_output(
        Command::new("cargo")
            .current_dir(root)
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "relabel-tasks",
                "--example",
                "artifact_speed",
                "--",
            ])
            .arg(&work)
            .args([ROWS.to_string(), CLASSES.to_string(), PRED_ROWS.to_string()]),
        "artifact_speed",
    )?;
    let py = crate::bench::bench_venv("pyarrow", crate::TEST_PYTHON)?.join("bin/python");
    let peer = json_output(
        Command::new(py)
            .args(["-c", PYARROW_READ])
            .arg(work.join("train.parquet"))
            .arg(work.join("pred.parquet")),
        "pyarrow",
    )?;
    let read = ours["read_split_s"].as_f64().unwrap_or(f64::NAN);
    let out = json!({
        "rows": ROWS,
        "classes": CLASSES,
        "prediction_rows": PRED_ROWS,
        "relabel": ours,
        "pyarrow": peer,
        "split_reload_vs_pyarrow_to_python": read / peer["read_split_to_python_s"].as_f64().unwrap_or(f64::NAN),
        "before_binary_split_reload_s": BEFORE_S,
        "targets": [
            target(
                "1M-row split reload (s), against the binary format's ~0.1 s",
                "<= 0.2",
                read,
                read <= 0.2,
            ),
        ],
    });
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}
