//! Dataset versions and predictions are Parquet that other tools read and write: pyarrow reads
//! what the nodes wrote, and predictions an external trainer (a `command` node using pyarrow)
//! wrote are what the disagreement filter flags from.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{output_path, read_jsonl, Fixture};
use serde_json::Value;

fn pyarrow_python() -> PathBuf {
    common::test_python()
}

fn python(script: &str, args: &[&std::path::Path]) -> Value {
    let out = Command::new(pyarrow_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const LABELS: [&str; 3] = ["refund", "delivery", "account"];

/// 60 train and 15 dev rows, texts that name their label.
fn write_rows(f: &Fixture) {
    let mut labels = String::from("labels:\n");
    for l in LABELS {
        labels.push_str(&format!("  - {{name: {l}, definition: about {l}}}\n"));
    }
    f.write("labels.yaml", &labels);
    for (split, n) in [("train", 60), ("dev", 15)] {
        let mut text = String::new();
        for i in 0..n {
            let l = LABELS[i % 3];
            text.push_str(
                &serde_json::json!({"id": format!("{split}{i}"), "text": format!("my {l} question number {i}"), "label": l})
                    .to_string(),
            );
            text.push('\n');
        }
        f.write(&format!("{split}.jsonl"), &text);
    }
}

/// Reads a dataset split and a predictions split with pyarrow and prints what it saw.
const READ_BOTH: &str = r#"
import json, sys
import pyarrow.parquet as pq
ds = pq.read_table(sys.argv[1])
pr = pq.read_table(sys.argv[2])
probs = pr.column("probs").to_pylist()
print(json.dumps({
    "columns": ds.column_names,
    "ids": ds.column("id").to_pylist(),
    "texts": ds.column("text").to_pylist(),
    "labels": [str(x) for x in ds.column("label").to_pylist()],
    "pred_columns": pr.column_names,
    "pred_ids": pr.column("id").to_pylist(),
    "pred_label": [str(x) for x in pr.column("label").to_pylist()],
    "predicted": [str(x) for x in pr.column("predicted").to_pylist()],
    "probs": probs,
}))
"#;

/// An external trainer: confident in each row's label except rows whose id ends in "7", where it
/// is confident in the next label. Writes float64 lists (our writer uses float32) and no `fold`.
const EXTERNAL_TRAINER: &str = r#"
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
data, out = sys.argv[1], sys.argv[2]
names = [l["name"] for l in json.load(open(os.path.join(data, "labels.json")))["labels"]]
os.makedirs(out, exist_ok=True)
for split in ["train", "dev"]:
    t = pq.read_table(os.path.join(data, split + ".parquet"))
    rows = []
    for rid, label in zip(t.column("id").to_pylist(), t.column("label").to_pylist()):
        k = names.index(str(label))
        if rid.endswith("7"):
            k = (k + 1) % len(names)
        p = [0.05] * len(names)
        p[k] = 1.0 - 0.05 * (len(names) - 1)
        rows.append(p)
    pq.write_table(pa.table({"id": t.column("id"), "probs": pa.array(rows, pa.list_(pa.float64()))}),
                   os.path.join(out, split + ".parquet"))
"#;

/// dataset -> `extra` nodes, and an external trainer (`trainer.py`, run by the pyarrow Python)
/// whose predictions the filter reads.
fn external_pipeline(name: &str, extra: &str) -> String {
    format!(
        r#"version: 1
name: {name}
nodes:
  - id: data
    kind: dataset
    config: {{train: train.jsonl, dev: dev.jsonl, labels: labels.yaml, id_column: id}}
{extra}  - id: external
    kind: command
    inputs: {{data: data.dataset}}
    config:
      run: {python} trainer.py ${{inputs.data}} ${{outputs.predictions}}
      files: [trainer.py]
      outputs: [predictions]
  - id: flag
    kind: disagreement_filter
    inputs: {{predictions: external.predictions, dataset: data.dataset}}
    config: {{rules: [pred_neq_label], max_fraction: 0.5}}
"#,
        python = pyarrow_python().display()
    )
}

#[test]
fn pyarrow_reads_dataset_versions_and_predictions_and_writes_predictions_the_filter_reads() {
    let mut f = Fixture::new(&external_pipeline(
        "artifacts",
        r#"  - id: train
    kind: trainer
    inputs: [data.dataset]
    config: {epochs: 5, patience: 2, seed: 1, threads: 1}
  - id: predict
    kind: self_predictor
    inputs: {model: train.model, dataset: data.dataset}
    config: {}
"#,
    ));
    write_rows(&f);
    f.write("trainer.py", EXTERNAL_TRAINER);
    let (code, r) = f.run(&[]);
    assert_eq!(code, 0, "{r}");

    // pyarrow reads the dataset version and our predictions, value by value.
    let data = output_path(&r, "data", "dataset");
    let preds = output_path(&r, "predict", "predictions");
    let seen = python(
        READ_BOTH,
        &[&data.join("train.parquet"), &preds.join("train.parquet")],
    );
    assert_eq!(seen["columns"], serde_json::json!(["id", "text", "label"]));
    let ids: Vec<String> = (0..60).map(|i| format!("train{i}")).collect();
    assert_eq!(seen["ids"], serde_json::json!(ids));
    assert_eq!(seen["texts"][4], "my delivery question number 4");
    let labels: Vec<&str> = (0..60).map(|i| LABELS[i % 3]).collect();
    assert_eq!(seen["labels"], serde_json::json!(labels));
    assert_eq!(seen["pred_ids"], serde_json::json!(ids));
    assert_eq!(seen["pred_label"], serde_json::json!(labels));
    for (row, p) in seen["probs"].as_array().unwrap().iter().enumerate() {
        let p: Vec<f64> = serde_json::from_value(p.clone()).unwrap();
        assert_eq!(p.len(), 3);
        assert!(
            (p.iter().sum::<f64>() - 1.0).abs() < 1e-4,
            "row {row}: {p:?}"
        );
        let argmax = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert_eq!(seen["predicted"][row], LABELS[argmax], "row {row}");
    }
    for c in ["label_prob", "loss", "fold"] {
        assert!(
            seen["pred_columns"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == c),
            "{c}"
        );
    }

    // The filter flagged exactly the rows the external trainer disagreed with, both splits.
    let flags = read_jsonl(&output_path(&r, "flag", "flags"));
    let mut flagged: Vec<String> = flags
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    flagged.sort();
    let mut planted: Vec<String> = ["train", "dev"]
        .iter()
        .flat_map(|s| {
            let n = if *s == "train" { 60 } else { 15 };
            (0..n)
                .map(move |i| format!("{s}{i}"))
                .filter(|id| id.ends_with('7'))
        })
        .collect();
    planted.sort();
    assert_eq!(flagged, planted);
    for fl in &flags {
        let i: usize = fl["row"].as_u64().unwrap() as usize;
        assert_eq!(fl["label"], LABELS[i % 3], "{fl}");
        assert_eq!(fl["candidate"], LABELS[(i + 1) % 3], "{fl}");
    }
}

#[test]
fn predictions_for_another_dataset_version_are_refused_with_the_row() {
    let mut f = Fixture::new(&external_pipeline("artifacts-mismatch", ""));
    write_rows(&f);
    // The same trainer, but it sorts the rows by id before writing: row 1 is then "train1" ->
    // "train10".
    f.write(
        "trainer.py",
        &EXTERNAL_TRAINER.replace(
            "    t = pq.read_table(os.path.join(data, split + \".parquet\"))",
            "    t = pq.read_table(os.path.join(data, split + \".parquet\")).sort_by(\"id\")",
        ),
    );
    let (code, r) = f.run(&[]);
    assert_eq!(code, 1, "{r}");
    let err = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "flag")
        .map(|n| n["error"].to_string())
        .unwrap();
    assert!(
        err.contains("row 2") && err.contains("train10") && err.contains("row order"),
        "{err}"
    );
}
