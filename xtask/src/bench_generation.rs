//! `cargo xtask bench generation`: the generation task on real noise and on planted noise.
//!
//! E2E NLG (Dušek et al. 2019's re-annotation, read from `../shared/data/e2e/`): the dev split's
//! texts as training targets for the records their writers were given (`orig_mr`; 39.9% do not
//! say what the record says). Flag precision and recall against the unfaithful rows at budgets
//! of 10/20/40%, judge accuracy (a simulated p = 0.9 judge and the real local LLM) where the
//! right choice is known, and the fixed test's BLEU, chrF and slot error rate for models trained
//! on noisy, relabelled, dropped-flagged and clean (`mr`-matched) targets. G2P on CMUdict with
//! 10% and 20% planted wrong pronunciations: the same table with exact match and phoneme error
//! rate. Training and decoding speed beside the same model in PyTorch.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use relabel_tasks::data::Dataset;
use relabel_tasks::generation::coverage;
use relabel_testkit::{Annotator, Server};
use serde_json::{json, Value};

use crate::bench::{json_output, target};
use crate::bench_ner::{relabel_run_file, unit};
use crate::report::{metric, output, read_jsonl};

const E2E_PORT: u16 = 18_741;
const G2P_PORT: u16 = 18_742;
const BUDGETS: [f64; 3] = [0.10, 0.20, 0.40];
/// The E2E budget the fixing runs use.
const E2E_FIX: f64 = 0.20;
const LLM_ROWS: usize = 30;
/// The better local judge of the quality bench (issue 20).
const LOCAL_MODEL: &str = "qwen2.5-1.5b";

fn pct(b: f64) -> u32 {
    (b * 100.0).round() as u32
}

fn trainer(input: &str, extra: &str) -> String {
    format!(
        "    kind: trainer\n    inputs: [{input}]\n    config: {{model: seq2seq, epochs: 30, patience: 3, seed: 1, threads: 2{extra}}}\n"
    )
}

/// One trained variant: dataset -> model -> predictions -> evaluation (test only).
fn variant(name: &str, dataset: &str, extra: &str) -> String {
    format!(
        "  - id: train_{name}\n{}  - id: predict_{name}\n    kind: self_predictor\n    inputs: {{model: train_{name}.model, dataset: {dataset}}}\n    config: {{}}\n  - id: eval_{name}\n    kind: evaluator\n    inputs: {{predictions: predict_{name}.predictions, dataset: {dataset}}}\n    config: {{splits: [test]}}\n",
        trainer(dataset, extra)
    )
}

fn flags_nodes(budgets: &[f64], rank: &str, prefix: &str) -> String {
    budgets
        .iter()
        .map(|&b| {
            format!(
                "  - id: {prefix}{}\n    kind: disagreement_filter\n    inputs: {{predictions: predict.predictions, dataset: data.dataset}}\n    config: {{rules: [pred_neq_label], rank_by: {rank}, max_fraction: {b}, splits: [train]}}\n",
                pct(b)
            )
        })
        .collect()
}

/// The fixing nodes on flags `flags`: a judge (`llm` endpoint), drop, and a model of each.
fn fixing(flags: &str, llm: &str, extra: &str) -> String {
    format!(
        r#"  - id: relabel_sim
    kind: binary_relabeler
    inputs: {{flags: {flags}.flags, dataset: data.dataset}}
    config: {{llm: {llm}, examples: 2, max_rows: 1000000}}
  - id: apply_sim
    kind: apply_labels
    inputs: {{dataset: data.dataset, decisions: relabel_sim.decisions}}
    config: {{}}
  - id: apply_drop
    kind: apply_labels
    inputs: {{dataset: data.dataset, flags: {flags}.flags}}
    config: {{action: drop}}
{}{}"#,
        variant("sim", "apply_sim.dataset", extra),
        variant("drop", "apply_drop.dataset", extra),
    )
}

fn header(port: u16) -> String {
    format!(
        r#"version: 1
name: bench_generation
llm:
  sim:
    provider: openai
    base_url: http://127.0.0.1:{port}/v1
    model: {sim}
    api_key_env: RELABEL_JUDGE_KEY
    max_concurrency: 8
    send_metadata: true
  local:
    provider: local
    model: {local}
nodes:
"#,
        sim = Annotator::model_name(0.9),
        local = LOCAL_MODEL,
    )
}

/// Precision and recall of the first `k` ranked flags against the rows in `bad` (ids), of
/// `total` rows with `n_bad` bad ones.
fn pr(flag_ids: &[String], bad: &HashSet<String>) -> (usize, f64, f64) {
    let hit = flag_ids.iter().filter(|id| bad.contains(*id)).count();
    (
        hit,
        hit as f64 / flag_ids.len().max(1) as f64,
        hit as f64 / bad.len().max(1) as f64,
    )
}

fn flag_table(r: &Value, prefix: &str, bad: &HashSet<String>) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for b in BUDGETS {
        let flags = read_jsonl(&output(r, &format!("{prefix}{}", pct(b)), "flags")?)?;
        let ids: Vec<String> = flags
            .iter()
            .map(|f| f["id"].as_str().unwrap_or_default().to_string())
            .collect();
        let (hit, p, rec) = pr(&ids, bad);
        out.insert(
            format!("{}%", pct(b)),
            json!({"flags": ids.len(), "hits": hit, "precision": p, "recall": rec}),
        );
    }
    Ok(Value::Object(out))
}

/// A judge's accuracy on decided rows whose right choice is known (`truth`: id -> right text).
fn judge_accuracy(decisions: &[Value], truth: &HashMap<String, String>) -> Value {
    let (mut right, mut decided, mut undecided) = (0usize, 0usize, 0usize);
    for d in decisions {
        let id = d["id"].as_str().unwrap_or_default();
        let Some(t) = truth.get(id) else { continue };
        match d["chosen"].as_str() {
            Some(c) => {
                decided += 1;
                right += usize::from(c == t);
            }
            None => undecided += 1,
        }
    }
    json!({"known": decided + undecided, "decided": decided, "undecided": undecided, "right": right,
        "accuracy": if decided == 0 { Value::Null } else { json!(right as f64 / decided as f64) }})
}

fn e2e_rows(path: &Path) -> Result<Vec<(String, String, String)>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let h: Vec<String> = r.headers()?.iter().map(String::from).collect();
    let col = |n: &str| {
        h.iter()
            .position(|x| x == n)
            .with_context(|| format!("no column {n}"))
    };
    let (mr, rf, orig) = (col("mr")?, col("ref")?, col("orig_mr")?);
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        out.push((
            rec[mr].trim().to_string(),
            rec[rf].trim().to_string(),
            rec[orig].trim().to_string(),
        ));
    }
    Ok(out)
}

fn scores(r: &Value, name: &str, keys: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for k in keys {
        m.insert(
            k.to_string(),
            metric(r, &format!("eval_{name}"), &format!("test_{k}")),
        );
    }
    Value::Object(m)
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn e2e(root: &Path, bin: &Path, work: &Path) -> Result<(Value, Vec<Value>)> {
    let shared = root.join("../shared/data/e2e");
    let (train, test) = (
        shared.join("devel-fixed.csv"),
        shared.join("test-fixed.csv"),
    );
    for p in [&train, &test] {
        if !p.exists() {
            bail!(
                "{} is missing (the E2E gold lives in ../shared/data/e2e/)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(work)?;
    let extra = ", seq2seq: {delexicalise: [name, near]}";
    let data = |id: &str, text: &str| {
        format!(
            "  - id: {id}\n    kind: dataset\n    config: {{task: generation, train: {}, test: {}, text_column: {text}, label_column: ref, test_text_column: mr}}\n",
            train.display(),
            test.display()
        )
    };
    let mut m = header(E2E_PORT);
    m.push_str(&data("data", "orig_mr"));
    m.push_str(&data("data_clean", "mr"));
    m.push_str(&format!(
        "  - id: train\n{}",
        trainer("data.dataset", extra)
    ));
    m.push_str("  - id: predict\n    kind: self_predictor\n    inputs: {model: train.model, dataset: data.dataset}\n    config: {kfold: 5}\n");
    m.push_str("  - id: eval_noisy\n    kind: evaluator\n    inputs: {predictions: predict.predictions, dataset: data.dataset}\n    config: {splits: [test]}\n");
    m.push_str(&variant("clean", "data_clean.dataset", extra));
    m.push_str(&flags_nodes(&BUDGETS, "distance", "flag_"));
    m.push_str(&flags_nodes(&BUDGETS, "loss", "lossflag_"));
    std::fs::write(work.join("phase1.yaml"), &m)?;
    let r1 = relabel_run_file(bin, work, &["phase1.yaml"], &work.join("report-1.json"))?;

    // Which train rows are unfaithful: their (orig_mr, ref) pair has mr != orig_mr.
    let rows = e2e_rows(&train)?;
    let unfaithful_pairs: HashSet<(String, String)> = rows
        .iter()
        .filter(|(mr, _, orig)| mr != orig)
        .map(|(_, r, orig)| (orig.clone(), r.clone()))
        .collect();
    let ds = Dataset::read(&output(&r1, "data", "dataset")?)?;
    let tr = ds.split("train").context("train split")?;
    let bad: HashSet<String> = (0..tr.len())
        .filter(|&i| unfaithful_pairs.contains(&(tr.texts[i].clone(), tr.targets[i].clone())))
        .map(|i| tr.ids[i].clone())
        .collect();
    let distance = flag_table(&r1, "flag_", &bad)?;
    let loss = flag_table(&r1, "lossflag_", &bad)?;
    eprintln!("bench generation: E2E flags by distance {distance}\nby loss {loss}");

    // The judges' truth on the fixing flags: keep a faithful target; take the output of an
    // unfaithful one. "Known" rows (for accuracy): faithful targets, and unfaithful ones whose
    // output realises every slot of the record by the coverage check.
    let flags = read_jsonl(&output(&r1, &format!("flag_{}", pct(E2E_FIX)), "flags")?)?;
    let (mut truth, mut known) = (HashMap::new(), HashMap::new());
    for fl in &flags {
        let id = fl["id"].as_str().unwrap_or_default().to_string();
        let (label, cand) = (
            fl["label"].as_str().unwrap_or_default(),
            fl["candidate"].as_str().unwrap_or_default(),
        );
        let src = fl["text"].as_str().unwrap_or_default();
        if bad.contains(&id) {
            truth.insert(id.clone(), cand.to_string());
            if coverage(src, cand) >= 1.0 {
                known.insert(id, cand.to_string());
            }
        } else {
            truth.insert(id.clone(), label.to_string());
            known.insert(id, label.to_string());
        }
    }
    let _server = Server::start_on(
        E2E_PORT,
        Annotator::new(truth, 2026, Duration::ZERO).handler(),
    )
    .with_context(|| format!("starting the simulated judge on port {E2E_PORT}"))?;
    let mut m2 = m.clone();
    m2.push_str(&fixing(&format!("flag_{}", pct(E2E_FIX)), "sim", extra));
    m2.push_str(&format!(
        "  - id: relabel_llm\n    kind: binary_relabeler\n    inputs: {{flags: flag_{}.flags, dataset: data.dataset}}\n    config: {{llm: local, examples: 2, max_rows: {LLM_ROWS}}}\n",
        pct(E2E_FIX)
    ));
    std::fs::write(work.join("phase2.yaml"), &m2)?;
    let t0 = std::time::Instant::now();
    let r2 = relabel_run_file(bin, work, &["phase2.yaml"], &work.join("report-2.json"))?;
    let phase2_s = t0.elapsed().as_secs_f64();
    let sim_dec = read_jsonl(&output(&r2, "relabel_sim", "decisions")?)?;
    let llm_dec = read_jsonl(&output(&r2, "relabel_llm", "decisions")?)?;
    let keys = ["bleu", "chrf", "slot_error_rate", "exact_match"];
    let table = json!({
        "noisy": scores(&r2, "noisy", &keys),
        "relabelled_sim_p0.9": scores(&r2, "sim", &keys),
        "dropped_flagged": scores(&r2, "drop", &keys),
        "clean_mr_matched": scores(&r2, "clean", &keys),
    });
    let ser = |k: &str| f(&table[k], "slot_error_rate");
    let gap = ser("noisy") - ser("clean_mr_matched");
    let closed = (ser("noisy") - ser("relabelled_sim_p0.9")) / gap;
    let llm_seconds = metric(&r2, "relabel_llm", "seconds_per_row");
    // Speed from the relabelled model's training: the same architecture on the same number of
    // rows, and the last training before the PyTorch peer runs (the k-fold trainings of the
    // first phase can share the machine with other work).
    let train_m = |k: &str| metric(&r2, "train_sim", k);
    let figures = json!({
        "train_rows": tr.len(),
        "unfaithful_train_rows": bad.len(),
        "flags_rank_by_distance": distance,
        "flags_rank_by_loss": loss,
        "fix_budget": E2E_FIX,
        "judge_sim_p0.9": judge_accuracy(&sim_dec, &known),
        "judge_local_llm": judge_accuracy(&llm_dec, &known),
        "judge_local_llm_model": LOCAL_MODEL,
        "judge_local_llm_rows": llm_dec.len(),
        "judge_local_llm_seconds_per_row": llm_seconds,
        "changed_sim": metric(&r2, "apply_sim", "changed"),
        "test": table,
        "slot_error_gap_closed_by_relabelling": closed,
        "phase2_seconds": phase2_s,
        "model": {
            "train_target_tokens_per_s": train_m("train_target_tokens_per_s"),
            "test_decode_tokens_per_s": train_m("test_decode_tokens_per_s"),
            "seconds_per_epoch": train_m("seconds_per_epoch"),
            "best_epoch": train_m("best_epoch"),
        },
    });
    let targets = vec![target(
        "E2E: relabelling (simulated judge p = 0.9) closes >= 50% of the test slot-error-rate gap between noisy and clean training",
        ">= 0.5",
        closed,
        closed >= 0.5,
    )];
    Ok((figures, targets))
}

/// Plain alphabetic CMUdict words and their first pronunciation, in file order.
fn cmudict_words() -> Result<Vec<(String, String)>> {
    let p = crate::cmudict()?.join("cmudict.dict");
    let text = std::fs::read_to_string(&p)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let (w, ph) = l.split_once(' ')?;
            (w.len() >= 2 && w.chars().all(|c| c.is_ascii_lowercase()))
                .then(|| (w.to_string(), ph.trim().to_string()))
        })
        .collect())
}

fn g2p(bin: &Path, work: &Path, train_n: usize, test_n: usize) -> Result<(Value, Vec<Value>)> {
    std::fs::create_dir_all(work)?;
    let words = cmudict_words()?;
    // Every k-th word: train and test are disjoint, spread over the alphabet.
    let step = (words.len() / (train_n + test_n)).max(1);
    let picked: Vec<&(String, String)> =
        words.iter().step_by(step).take(train_n + test_n).collect();
    let (tr, te) = picked.split_at(train_n.min(picked.len()));
    let write = |name: &str, rows: &[(String, String, String)]| -> Result<()> {
        let mut w = csv::Writer::from_path(work.join(name))?;
        w.write_record(["id", "word", "phones"])?;
        for (id, a, b) in rows {
            w.write_record([id, a, b])?;
        }
        w.flush()?;
        Ok(())
    };
    let gold: HashMap<String, String> = tr
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (format!("w{i}"), p.clone()))
        .collect();
    let test_rows: Vec<(String, String, String)> = te
        .iter()
        .enumerate()
        .map(|(i, (w, p))| (format!("t{i}"), w.clone(), p.clone()))
        .collect();
    write("test.csv", &test_rows)?;
    write(
        "clean.csv",
        &tr.iter()
            .enumerate()
            .map(|(i, (w, p))| (format!("w{i}"), w.clone(), p.clone()))
            .collect::<Vec<_>>(),
    )?;
    let _server = Server::start_on(
        G2P_PORT,
        Annotator::new(gold.clone(), 2026, Duration::ZERO).handler(),
    )
    .with_context(|| format!("starting the simulated judge on port {G2P_PORT}"))?;
    let extra = ", batch_size: 64, seq2seq: {source_chars: true, max_output: 30}";
    let mut levels = serde_json::Map::new();
    let mut targets = Vec::new();
    for noise in [0.10, 0.20] {
        let lvl = pct(noise);
        // A planted error: another word's pronunciation (a real one, so it looks plausible).
        let mut bad = HashSet::new();
        let rows: Vec<(String, String, String)> = tr
            .iter()
            .enumerate()
            .map(|(i, (w, p))| {
                let id = format!("w{i}");
                if unit(lvl as u64, i, 0) < noise {
                    let j = (unit(lvl as u64, i, 1) * tr.len() as f64) as usize % tr.len();
                    if tr[j].1 != *p {
                        bad.insert(id.clone());
                        return (id, w.clone(), tr[j].1.clone());
                    }
                }
                (id, w.clone(), p.clone())
            })
            .collect();
        let name = format!("train{lvl}.csv");
        write(&name, &rows)?;
        let data = |id: &str, file: &str| {
            format!("  - id: {id}\n    kind: dataset\n    config: {{task: generation, train: {file}, test: test.csv, text_column: word, label_column: phones, id_column: id}}\n")
        };
        let mut m = header(G2P_PORT);
        m.push_str(&data("data", &name));
        m.push_str(&data("data_clean", "clean.csv"));
        m.push_str(&format!(
            "  - id: train\n{}",
            trainer("data.dataset", extra)
        ));
        m.push_str("  - id: predict\n    kind: self_predictor\n    inputs: {model: train.model, dataset: data.dataset}\n    config: {kfold: 3}\n");
        m.push_str("  - id: eval_noisy\n    kind: evaluator\n    inputs: {predictions: predict.predictions, dataset: data.dataset}\n    config: {splits: [test]}\n");
        m.push_str(&variant("clean", "data_clean.dataset", extra));
        m.push_str(&flags_nodes(&BUDGETS, "loss", "flag_"));
        let fix = if noise <= 0.1 { 0.20 } else { 0.40 };
        m.push_str(&fixing(&format!("flag_{}", pct(fix)), "sim", extra));
        let file = format!("g2p{lvl}.yaml");
        std::fs::write(work.join(&file), &m)?;
        let r = relabel_run_file(
            bin,
            work,
            &[&file],
            &work.join(format!("report-{lvl}.json")),
        )?;
        let ds = Dataset::read(&output(&r, "data", "dataset")?)?;
        let in_train: HashSet<String> = ds
            .split("train")
            .context("train")?
            .ids
            .iter()
            .filter(|id| bad.contains(*id))
            .cloned()
            .collect();
        let sim_dec = read_jsonl(&output(&r, "relabel_sim", "decisions")?)?;
        let known: HashMap<String, String> = sim_dec
            .iter()
            .filter_map(|d| {
                let id = d["id"].as_str()?;
                let g = gold.get(id)?;
                let offered = d["label"].as_str() == Some(g) || d["candidate"].as_str() == Some(g);
                offered.then(|| (id.to_string(), g.clone()))
            })
            .collect();
        let keys = ["exact_match", "token_error_rate", "bleu", "chrf"];
        let table = json!({
            "noisy": scores(&r, "noisy", &keys),
            "relabelled_sim_p0.9": scores(&r, "sim", &keys),
            "dropped_flagged": scores(&r, "drop", &keys),
            "clean": scores(&r, "clean", &keys),
        });
        let per = |k: &str| f(&table[k], "token_error_rate");
        let closed = (per("noisy") - per("relabelled_sim_p0.9")) / (per("noisy") - per("clean"));
        levels.insert(
            format!("noise_{lvl}%"),
            json!({
                "planted_in_train": in_train.len(),
                "flags_rank_by_loss": flag_table(&r, "flag_", &in_train)?,
                "fix_budget": fix,
                "judge_sim_p0.9_where_gold_offered": judge_accuracy(&sim_dec, &known),
                "changed_sim": metric(&r, "apply_sim", "changed"),
                "test": table,
                "per_gap_closed_by_relabelling": closed,
                "model": {
                    "train_target_tokens_per_s": metric(&r, "train", "train_target_tokens_per_s"),
                    "test_decode_tokens_per_s": metric(&r, "train", "test_decode_tokens_per_s"),
                },
            }),
        );
        targets.push(target(
            &format!("G2P {lvl}% noise: relabelling (p = 0.9) closes >= 50% of the test PER gap between noisy and clean training"),
            ">= 0.5",
            closed,
            closed >= 0.5,
        ));
    }
    Ok((
        json!({"train_words": tr.len(), "test_words": te.len(), "levels": levels}),
        targets,
    ))
}

/// The same seq2seq (bidirectional GRU encoder 128 per direction, GRU decoder 256, Luong
/// general attention, tanh combination, Adam 2e-3, batches of one source length) in PyTorch:
/// target tokens/s over two epochs of E2E training, and greedy decoding tokens/s.
const PYTORCH: &str = r#"
import csv, json, re, sys, time, random
import torch, torch.nn as nn
torch.set_num_threads(int(sys.argv[2])); torch.manual_seed(1); random.seed(1)
rows = list(csv.DictReader(open(sys.argv[1])))
def rec(s):
    return [(m.group(1).strip(), m.group(2).strip()) for m in re.finditer(r'([^\[,]+)\[([^\]]*)\]', s)]
def toks(t): return re.findall(r"[\w'£]+|[^\w\s]", t)
data = []
for r in rows:
    a = rec(r['orig_mr']); tgt = r['ref']; src = []
    for k, v in a:
        if k in ('name', 'near') and v:
            tgt = tgt.replace(v, '__%s__' % k); v = '__%s__' % k
        src.append('%s=%s' % (k, v))
    data.append((src, toks(tgt)[:60]))
def vocab(seqs):
    c = {}
    for s in seqs:
        for w in s: c[w] = c.get(w, 0) + 1
    return {w: i + 4 for i, w in enumerate(sorted(c, key=lambda w: (-c[w], w)))}
sv, tv = vocab(d[0] for d in data), vocab(d[1] for d in data)
S = [[sv[w] for w in s] for s, _ in data]; T = [[tv[w] for w in t] for _, t in data]
E, H = 64, 128; D = 2 * H
class M(nn.Module):
    def __init__(s):
        super().__init__()
        s.se = nn.Embedding(len(sv) + 4, E); s.te = nn.Embedding(len(tv) + 4, E)
        s.enc = nn.GRU(E, H, batch_first=True, bidirectional=True); s.init = nn.Linear(2 * H, D)
        s.dec = nn.GRU(E, D, batch_first=True); s.attn = nn.Linear(2 * H, D); s.comb = nn.Linear(D + 2 * H, D)
        s.out = nn.Linear(D, len(tv) + 4); s.drop = nn.Dropout(0.2)
    def encode(s, x):
        st, _ = s.enc(s.drop(s.se(x))); return st, s.attn(st), torch.tanh(s.init(st.mean(1))).unsqueeze(0)
    def step(s, y, st, k, h):
        d, h = s.dec(s.drop(s.te(y)), h)
        c = torch.softmax(d @ k.transpose(1, 2), -1) @ st
        return s.out(s.drop(torch.tanh(s.comb(torch.cat([d, c], 2))))), h
m = M(); opt = torch.optim.Adam(m.parameters(), 2e-3)
by_len = {}
for i, s in enumerate(S): by_len.setdefault(len(s), []).append(i)
batches = [v[j:j + 32] for v in by_len.values() for j in range(0, len(v), 32)]
tokens = sum(len(t) + 1 for t in T); t0 = time.time()
for ep in range(2):
    random.shuffle(batches); m.train()
    for b in batches:
        x = torch.tensor([S[i] for i in b]); n = max(len(T[i]) + 1 for i in b)
        inp = torch.tensor([[2] + T[i] + [0] * (n - 1 - len(T[i])) for i in b])
        out = torch.tensor([T[i] + [3] + [0] * (n - 1 - len(T[i])) for i in b])
        st, k, h = m.encode(x); lg, _ = m.step(inp, st, k, h)
        loss = nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), out.reshape(-1), ignore_index=0, reduction='sum') / (out != 0).sum()
        opt.zero_grad(); loss.backward(); nn.utils.clip_grad_norm_(m.parameters(), 5.0); opt.step()
train_s = time.time() - t0
m.eval(); made = 0; t0 = time.time()
uniq = {}
for i, s in enumerate(S): uniq.setdefault(tuple(s), i)
idx = list(uniq.values()); by = {}
for i in idx: by.setdefault(len(S[i]), []).append(i)
with torch.no_grad():
    for v in by.values():
        for j in range(0, len(v), 256):
            b = v[j:j + 256]; st, k, h = m.encode(torch.tensor([S[i] for i in b]))
            y = torch.full((len(b), 1), 2); done = torch.zeros(len(b), dtype=torch.bool)
            for _ in range(60):
                lg, h = m.step(y, st, k, h); y = lg.argmax(-1)
                made += int((~done).sum()); done |= (y[:, 0] == 3)
                if bool(done.all()): break
dec_s = time.time() - t0
print(json.dumps({"train_target_tokens_per_s": 2 * tokens / train_s, "decode_tokens_per_s": made / dec_s, "train_seconds_2_epochs": train_s, "torch": torch.__version__, "threads": torch.get_num_threads()}))
"#;

pub fn generation(root: &Path, args: &[String]) -> Result<Value> {
    let bin = crate::relabel_bin(root)?;
    let work = root.join("target/bench-generation");
    let only = |n: &str| args.is_empty() || args.iter().any(|a| a == n);
    let mut figures = serde_json::Map::new();
    let mut targets = Vec::new();
    if only("e2e") {
        let (f, t) = e2e(root, &bin, &work.join("e2e"))?;
        figures.insert("e2e".into(), f);
        targets.extend(t);
    }
    if only("g2p") {
        let (f, t) = g2p(&bin, &work.join("g2p"), 8000, 1500)?;
        figures.insert("g2p".into(), f);
        targets.extend(t);
    }
    if only("speed") {
        let py = crate::bench_train::torch_python()?;
        let theirs = json_output(
            Command::new(py)
                .arg("-c")
                .arg(PYTORCH)
                .arg(root.join("../shared/data/e2e/devel-fixed.csv"))
                .arg("2"),
            "the PyTorch seq2seq",
        );
        let ours = figures
            .get("e2e")
            .map(|e| e["model"].clone())
            .unwrap_or(Value::Null);
        let ratio = |k: &str, t: &str| -> Value {
            match (&theirs, ours[k].as_f64()) {
                (Ok(th), Some(o)) => th[t].as_f64().map(|t| json!(o / t)).unwrap_or(Value::Null),
                _ => Value::Null,
            }
        };
        figures.insert(
            "speed_2_cores".into(),
            json!({
                "relabel": ours,
                "pytorch": match &theirs { Ok(v) => v.clone(), Err(e) => json!({"skipped": format!("{e:#}")}) },
                "train_ratio_relabel_over_pytorch": ratio("train_target_tokens_per_s", "train_target_tokens_per_s"),
                "decode_ratio_relabel_over_pytorch": ratio("test_decode_tokens_per_s", "decode_tokens_per_s"),
            }),
        );
    }
    figures.insert("targets".into(), Value::Array(targets));
    Ok(Value::Object(figures))
}
