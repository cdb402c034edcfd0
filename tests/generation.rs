//! Sequence generation end to end on a reduced grapheme-to-phoneme task from CMUdict (as
//! `cargo xtask setup` fetches it): planted wrong pronunciations in train are found by a real
//! seq2seq model's out-of-fold predictions, judged as binary questions between the target and
//! the model's output (a simulated judge that knows the gold pronunciation), applied, and
//! scored by exact match and phoneme error rate on the fixed test split.

mod common;

use std::collections::HashMap;

use common::*;
use relabel_tasks::textmetrics::token_error_rate;
use serde_json::Value;

/// Plain alphabetic words of CMUdict and their first pronunciation (stress marks kept),
/// every `stride`-th entry from `offset`.
fn cmudict(offset: usize, stride: usize, n: usize) -> Vec<(String, String)> {
    let p = relabel_tasks::home::relabel_home().join("data/cmudict/cmudict.dict");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (`cargo xtask setup` fetches CMUdict)", p.display()));
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let (w, ph) = l.split_once(' ')?;
            (w.len() >= 3 && w.chars().all(|c| c.is_ascii_lowercase()))
                .then(|| (w.to_string(), ph.trim().to_string()))
        })
        .skip(offset)
        .step_by(stride)
        .take(n)
        .collect()
}

fn csv(rows: &[(String, String, String)]) -> String {
    let mut s = String::from("id,word,phones\n");
    for (id, w, p) in rows {
        s.push_str(&format!("{id},{w},{p}\n"));
    }
    s
}

fn manifest(llm: &str) -> String {
    format!(
        r#"
version: 1
name: g2p
{llm}
nodes:
  - id: data
    kind: dataset
    config: {{task: generation, train: train.csv, test: test.csv, text_column: word, label_column: phones, id_column: id, dev_fraction: 0.1}}
  - id: train
    kind: trainer
    inputs: [data.dataset]
    config: {{model: seq2seq, epochs: 25, patience: 3, seed: 1, threads: 2, batch_size: 32, seq2seq: {{source_chars: true, max_output: 25}}}}
  - id: predict
    kind: self_predictor
    inputs: {{model: train.model, dataset: data.dataset}}
    config: {{kfold: 2}}
  - id: flag
    kind: disagreement_filter
    inputs: {{predictions: predict.predictions, dataset: data.dataset}}
    config: {{rules: [pred_neq_label], rank_by: loss, max_fraction: 0.2, splits: [train]}}
  - id: relabel
    kind: binary_relabeler
    inputs: {{flags: flag.flags, dataset: data.dataset}}
    config: {{llm: sim, examples: 2}}
  - id: apply
    kind: apply_labels
    inputs: {{dataset: data.dataset, decisions: relabel.decisions}}
    config: {{}}
  - id: evaluate
    kind: evaluator
    inputs: {{predictions: predict.predictions, dataset: data.dataset}}
    config: {{}}
"#
    )
}

#[test]
fn planted_wrong_pronunciations_are_found_judged_between_target_and_output_and_fixed() {
    // 2,400 train words (15% given another word's pronunciation) and 300 other test words.
    let words = cmudict(0, 20, 2700);
    assert_eq!(
        words.len(),
        2700,
        "CMUdict has fewer plain words than expected"
    );
    let (train_words, test_words) = words.split_at(2400);
    let mut gold: HashMap<String, String> = HashMap::new();
    let mut noisy_ids = std::collections::HashSet::new();
    let train: Vec<(String, String, String)> = train_words
        .iter()
        .enumerate()
        .map(|(i, (w, p))| {
            let id = format!("w{i}");
            gold.insert(id.clone(), p.clone());
            let target = if i % 7 == 3 {
                noisy_ids.insert(id.clone());
                train_words[(i * 31 + 17) % train_words.len()].1.clone()
            } else {
                p.clone()
            };
            (id, w.clone(), target)
        })
        .collect();
    let planted = train
        .iter()
        .filter(|(id, _, t)| noisy_ids.contains(id) && *t != gold[id])
        .count();
    let test: Vec<(String, String, String)> = test_words
        .iter()
        .enumerate()
        .map(|(i, (w, p))| (format!("t{i}"), w.clone(), p.clone()))
        .collect();

    // A judge that knows each row's gold pronunciation: it picks it when offered (p = 1).
    let ann = relabel_testkit::Annotator::new(gold.clone(), 5, std::time::Duration::ZERO);
    let (server, prompts) = relabel_testkit::recording_server(ann.handler()).unwrap();
    let llm = format!(
        "llm:\n  sim:\n    base_url: {}\n    model: sim-p1\n    api_key_env: RELABEL_TEST_KEY\n    send_metadata: true\n    max_concurrency: 4",
        server.base_url()
    );
    let mut f = Fixture::new(&manifest(&llm));
    f.envs.push(("RELABEL_TEST_KEY".into(), "k".into()));
    f.write("train.csv", &csv(&train));
    f.write("test.csv", &csv(&test));
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");

    let data =
        relabel_tasks::data::Dataset::read(&output_path(&report, "data", "dataset")).unwrap();
    assert_eq!(data.task, relabel_tasks::task::TaskKind::Generation);
    let tr = data.split("train").unwrap();
    assert!(
        tr.len() > 2000 && tr.len() < 2400,
        "{} train rows",
        tr.len()
    );

    // Flags: under the budget, each between the row's target and the model's (other) output,
    // mostly the planted rows.
    let flags = read_jsonl(&output_path(&report, "flag", "flags"));
    assert!(
        !flags.is_empty() && flags.len() <= tr.len() / 5,
        "{} flags",
        flags.len()
    );
    let mut hits = 0;
    for fl in &flags {
        let i = fl["row"].as_u64().unwrap() as usize;
        assert_eq!(fl["label"].as_str().unwrap(), tr.targets[i], "{fl}");
        assert_eq!(fl["text"].as_str().unwrap(), tr.texts[i]);
        assert_ne!(fl["label"], fl["candidate"]);
        hits += usize::from(noisy_ids.contains(fl["id"].as_str().unwrap()));
    }
    let in_train = tr.ids.iter().filter(|id| noisy_ids.contains(*id)).count();
    // Random flags would be 1 in 7 planted; an out-of-fold model's loss finds them.
    assert!(
        hits * 2 >= flags.len() && hits * 3 >= in_train,
        "{hits} of {} flags planted ({in_train} planted rows in train, {planted} in all)",
        flags.len()
    );

    // Each prompt shows one flagged word with its two texts, and examples of other words.
    let prompts = prompts.lock().unwrap().clone();
    // Both orders by default for generation: two questions per flag.
    assert_eq!(prompts.len(), 2 * flags.len());
    let by_word: HashMap<&str, &Value> = flags
        .iter()
        .map(|f| (f["text"].as_str().unwrap(), f))
        .collect();
    for p in &prompts {
        let word = p
            .lines()
            .find_map(|l| l.strip_prefix("Input: "))
            .unwrap_or_else(|| panic!("no input line: {p}"));
        let fl = by_word
            .get(word.trim())
            .unwrap_or_else(|| panic!("{word} was not flagged"));
        for t in [&fl["label"], &fl["candidate"]] {
            assert!(p.contains(&format!("Text: {}", t.as_str().unwrap())), "{p}");
        }
        assert_eq!(p.matches("Text: ").count(), 2, "{p}");
        assert!(
            p.contains(" => ") && !p.contains(&format!("\n  {word} => ")),
            "examples of other rows: {p}"
        );
    }

    // The judge only ever moves targets toward the gold: phoneme error rate and exact match of
    // the train targets against the gold improve.
    let after =
        relabel_tasks::data::Dataset::read(&output_path(&report, "apply", "dataset")).unwrap();
    let ta = after.split("train").unwrap();
    let golds: Vec<Vec<String>> = tr.ids.iter().map(|id| vec![gold[id].clone()]).collect();
    let (per0, per1) = (
        token_error_rate(&tr.targets, &golds),
        token_error_rate(&ta.targets, &golds),
    );
    let exact = |t: &[String]| t.iter().zip(&golds).filter(|(a, g)| **a == g[0]).count();
    let changed = node(&report, "apply")["metrics"]["changed"]
        .as_u64()
        .unwrap();
    assert!(changed >= 10, "{changed} changes");
    assert!(
        per1 < per0,
        "train target PER against gold: {per0:.4} -> {per1:.4}"
    );
    assert!(
        exact(&ta.targets) > exact(&tr.targets),
        "exact {} -> {}",
        exact(&tr.targets),
        exact(&ta.targets)
    );
    let audit = read_jsonl(&output_path(&report, "apply", "audit"));
    assert_eq!(audit.len() as u64, changed);
    for a in &audit {
        let i = a["row"].as_u64().unwrap() as usize;
        assert_eq!(a["new_label"].as_str().unwrap(), ta.targets[i]);
        assert_eq!(a["old_label"].as_str().unwrap(), tr.targets[i]);
    }

    // The fixed test split: exact match and phoneme error rate, neither trivial.
    let m = &node(&report, "evaluate")["metrics"];
    let em = m["test_exact_match"].as_f64().unwrap();
    let per = m["test_token_error_rate"].as_f64().unwrap();
    assert!(em > 0.02 && em < 0.95, "test exact match {em}");
    assert!(per > 0.02 && per < 0.8, "test PER {per}");
    assert!(m["test_bleu"].as_f64().is_some() && m["test_chrf"].as_f64().is_some());
    assert!(
        m.get("test_slot_error_rate").is_none(),
        "words are not records"
    );
    let bad = read_jsonl(&output_path(&report, "evaluate", "badcases"));
    assert_eq!(bad.len() as u64, m["badcases"].as_u64().unwrap());
    assert!(bad.iter().all(|b| b["label"] != b["predicted"]));

    // `relabel diff` names target changes.
    let out = f.output(&[
        "diff",
        output_path(&report, "data", "dataset").to_str().unwrap(),
        output_path(&report, "apply", "dataset").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("->"));
}

#[test]
fn a_generation_dataset_names_its_bad_rows_and_refuses_classification_rules() {
    let mut f = Fixture::new(
        r#"
version: 1
name: bad
nodes:
  - id: data
    kind: dataset
    config: {task: generation, train: train.csv, text_column: src, label_column: tgt}
"#,
    );
    f.write("train.csv", "src,tgt\nhello,HH AH0 L OW1\n,EMPTY\nworld,\n");
    let (code, report) = f.run(&[]);
    assert_ne!(code, 0);
    let err = node(&report, "data")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("train.csv:3: empty source") && err.contains("train.csv:4: empty target"),
        "{err}"
    );

    // A generation dataset takes a seq2seq model, and its filter no class-probability rule.
    let mut f = Fixture::new(
        r#"
version: 1
name: bad
nodes:
  - id: data
    kind: dataset
    config: {task: generation, train: train.csv, text_column: src, label_column: tgt, dev_fraction: 0.3}
  - id: train
    kind: trainer
    inputs: [data.dataset]
    config: {model: fasttext, epochs: 1}
"#,
    );
    let rows: String = (0..20).map(|i| format!("w{i},T{i}\n")).collect();
    f.write("train.csv", &format!("src,tgt\n{rows}"));
    let (code, report) = f.run(&[]);
    assert_ne!(code, 0);
    let err = node(&report, "train")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("model: seq2seq"), "{err}");
}
