//! Sequence tagging end to end on a reduced CoNLL-2003 (as `cargo xtask setup` fetches it):
//! planted type swaps in train are found as span disputes by a real BiLSTM tagger, judged as
//! binary questions (a simulated judge of known accuracy; the real local LLM), applied, and
//! scored by entity F1 on the fixed test split.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use relabel_tasks::data::LabelSpec;
use relabel_tasks::tagging::{entities, read_tags, tag_names, tags_of, title, Scheme};
use serde_json::Value;

/// A sentence: tokens and tag strings.
type Sentence = (Vec<String>, Vec<String>);

/// Row id -> tokens and gold tag ids, for the simulated judge.
type GoldById = Arc<Mutex<HashMap<String, (Vec<String>, Vec<u32>)>>>;

/// Sentences of a CoNLL file: (tokens, tag strings), `-DOCSTART-` left out.
fn conll(name: &str, n: usize) -> Vec<Sentence> {
    let p = relabel_tasks::home::relabel_home()
        .join("data/conll2003")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (`cargo xtask setup` fetches CoNLL-2003)",
            p.display()
        )
    });
    let mut out = Vec::new();
    let mut cur = (Vec::new(), Vec::new());
    for line in text.lines().chain(std::iter::once("")) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() || cols[0] == "-DOCSTART-" {
            if !cur.0.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        cur.0.push(cols[0].to_string());
        cur.1.push(cols[cols.len() - 1].to_string());
    }
    out.truncate(n);
    out
}

/// The local-LLM test starts llama-server: one at a time in this file.
static LOCAL_LLM: Mutex<()> = Mutex::new(());

fn spec() -> LabelSpec {
    LabelSpec::load(std::path::Path::new("manifests/ner/labels.yaml")).unwrap()
}

fn write_conll(f: &Fixture, name: &str, rows: &[Sentence]) {
    let mut s = String::from("-DOCSTART- -X- -X- O\n\n");
    for (tokens, tags) in rows {
        for (t, g) in tokens.iter().zip(tags) {
            s.push_str(&format!("{t} X X {g}\n"));
        }
        s.push('\n');
    }
    f.write(name, &s);
}

/// Swaps the type of every `every`-th entity of train to the next type (seeded by position):
/// returns the noisy sentences and how many entities were swapped.
fn plant_swaps(rows: &[Sentence], every: usize) -> (Vec<Sentence>, usize) {
    let spec = spec();
    let names = tag_names(&spec);
    let mut k = 0usize;
    let mut swapped = 0;
    let out = rows
        .iter()
        .map(|(tokens, tags)| {
            let raw: Vec<&str> = tags.iter().map(String::as_str).collect();
            let ids = read_tags(&raw, Scheme::Iob2, &spec, &|_| None).0;
            let mut es = entities(&ids);
            for e in &mut es {
                k += 1;
                if k.is_multiple_of(every) {
                    e.kind = (e.kind + 1) % spec.len() as u32;
                    swapped += 1;
                }
            }
            let noisy = tags_of(&es, tokens.len());
            (
                tokens.clone(),
                noisy.iter().map(|&t| names[t as usize].clone()).collect(),
            )
        })
        .collect();
    (out, swapped)
}

/// Entity F1 of `tags` (IOB2 strings) against `gold`.
fn f1(gold: &[Sentence], tags: &[Vec<u32>]) -> f64 {
    let spec = spec();
    let g: Vec<Vec<u32>> = gold
        .iter()
        .map(|(_, t)| {
            read_tags(
                &t.iter().map(String::as_str).collect::<Vec<_>>(),
                Scheme::Iob2,
                &spec,
                &|_| None,
            )
            .0
        })
        .collect();
    relabel_tasks::tagging::score(&spec, &g, tags).f1
}

fn manifest(llm: &str, relabel: &str) -> String {
    format!(
        r#"
version: 1
name: ner
{llm}
nodes:
  - id: data
    kind: dataset
    config: {{task: tagging, train: train.txt, dev: dev.txt, test: test.txt, labels: labels.yaml}}
  - id: train
    kind: trainer
    inputs: [data.dataset]
    config: {{model: bilstm, epochs: 12, patience: 2, seed: 1, threads: 2}}
  - id: predict
    kind: self_predictor
    inputs: {{model: train.model, dataset: data.dataset}}
    config: {{kfold: 2}}
  - id: flag
    kind: disagreement_filter
    inputs: {{predictions: predict.predictions, dataset: data.dataset}}
    config: {{max_fraction: 0.15, splits: [train], per_class_max_fraction: 0.5}}
  - id: relabel
    kind: binary_relabeler
    inputs: {{flags: flag.flags, dataset: data.dataset}}
    config: {relabel}
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

fn project(llm: &str, relabel: &str) -> (Fixture, Vec<Sentence>, usize) {
    let f = Fixture::new(&manifest(llm, relabel));
    std::fs::copy("manifests/ner/labels.yaml", f.path().join("labels.yaml")).unwrap();
    let gold = conll("train.txt", 1500);
    let (noisy, swapped) = plant_swaps(&gold, 7);
    write_conll(&f, "train.txt", &noisy);
    write_conll(&f, "dev.txt", &conll("valid.txt", 400));
    write_conll(&f, "test.txt", &conll("test.txt", 400));
    (f, gold, swapped)
}

fn dataset_tags(report: &Value, node: &str, split: &str) -> (Vec<String>, Vec<Vec<u32>>) {
    let ds = relabel_tasks::data::Dataset::read(&output_path(report, node, "dataset")).unwrap();
    let s = ds.split(split).unwrap();
    (s.texts.clone(), s.tags.clone())
}

#[test]
fn planted_type_swaps_are_found_judged_and_fixed_and_scored_on_test() {
    // A judge that is always right where the truth is offered, answering by the gold reading.
    let gold = conll("train.txt", 1500);
    let types = spec();
    let by_text: HashMap<String, Vec<u32>> = gold
        .iter()
        .map(|(tokens, tags)| {
            let raw: Vec<&str> = tags.iter().map(String::as_str).collect();
            (
                tokens.join(" "),
                read_tags(&raw, Scheme::Iob2, &types, &|_| None).0,
            )
        })
        .collect();
    let id_text: GoldById = Default::default();
    let lookup = id_text.clone();
    let truth: relabel_testkit::SiteTruth = Box::new(move |id, site| {
        let m = lookup.lock().unwrap();
        let (tokens, tags) = m.get(id)?;
        let (s, e) = (
            site["start"].as_u64()? as usize,
            site["end"].as_u64()? as usize,
        );
        Some(title(tokens, s, &tags[s..e], &types))
    });
    let ann = relabel_testkit::Annotator::of_sites(truth, 3, std::time::Duration::ZERO);
    let (server, prompts) = relabel_testkit::recording_server(ann.handler()).unwrap();
    let llm = format!(
        "llm:\n  sim:\n    base_url: {}\n    model: sim-p1\n    api_key_env: RELABEL_TEST_KEY\n    send_metadata: true\n    max_concurrency: 4",
        server.base_url()
    );
    let (mut f, gold, swapped) = project(&llm, "{llm: sim, examples: 2}");
    f.envs.push(("RELABEL_TEST_KEY".into(), "k".into()));
    // The judge needs each row id's tokens and gold tags: read them from the dataset first.
    let (code, report) = f.run(&["--target", "data"]);
    assert_eq!(code, 0, "{report:#}");
    let ds = relabel_tasks::data::Dataset::read(&output_path(&report, "data", "dataset")).unwrap();
    assert_eq!(ds.task, relabel_tasks::task::TaskKind::Tagging);
    let train = ds.split("train").unwrap();
    assert_eq!(train.len(), 1500);
    for (i, id) in train.ids.iter().enumerate() {
        let g = by_text[&train.texts[i]].clone();
        id_text
            .lock()
            .unwrap()
            .insert(id.clone(), (train.tokens[i].clone(), g));
    }
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");

    // Flags are spans with their two readings' titles.
    let flags = read_jsonl(&output_path(&report, "flag", "flags"));
    assert!(flags.len() >= 20, "{} flags", flags.len());
    assert!(flags.len() <= 225, "budget: 15% of 1500 sentences");
    for fl in &flags {
        assert!(
            fl["site"]["start"].is_u64() && fl["site"]["end"].is_u64(),
            "{fl}"
        );
        assert!(fl["text"].as_str().unwrap().contains("[["), "{fl}");
        assert_ne!(fl["label"], fl["candidate"]);
    }
    // Many flags are planted swaps whose proposed reading is the gold one.
    let found = flags
        .iter()
        .filter(|fl| {
            let m = id_text.lock().unwrap();
            let (tokens, g) = &m[fl["id"].as_str().unwrap()];
            let (s, e) = (
                fl["site"]["start"].as_u64().unwrap() as usize,
                fl["site"]["end"].as_u64().unwrap() as usize,
            );
            fl["rule"] == "type_swap"
                && fl["candidate"] == title(tokens, s, &g[s..e], &spec()).as_str()
        })
        .count();
    // (A small tagger on 750 sentences per fold: the bench measures real quality.)
    assert!(
        found * 6 >= swapped && found * 4 >= flags.len(),
        "{found} of {swapped} planted swaps flagged with the gold reading, of {} flags",
        flags.len()
    );

    // Each prompt shows the marked sentence and only the types its two readings name.
    let prompts = prompts.lock().unwrap().clone();
    assert_eq!(prompts.len(), flags.len());
    for p in &prompts {
        assert!(p.contains("[[") && p.contains("]]"), "{p}");
        let types = ["PER", "LOC", "ORG", "MISC"]
            .iter()
            .filter(|t| p.contains(&format!("\n{t}: ")))
            .count();
        assert!(types <= 2, "{p}");
    }

    // A judge right wherever the truth is offered only ever improves the train labels.
    let (_, before) = dataset_tags(&report, "data", "train");
    let (_, after) = dataset_tags(&report, "apply", "train");
    let (f0, f1_after) = (f1(&gold, &before), f1(&gold, &after));
    let changed = node(&report, "apply")["metrics"]["changed"]
        .as_u64()
        .unwrap();
    assert!(changed >= 10, "{changed} changes");
    assert!(
        f1_after > f0 + 0.01,
        "train label F1 against gold: {f0:.4} -> {f1_after:.4} ({swapped} swaps planted)"
    );
    let audit = read_jsonl(&output_path(&report, "apply", "audit"));
    assert_eq!(audit.len() as u64, changed);

    // The fixed test split is scored per type, with badcases.
    let m = &node(&report, "evaluate")["metrics"];
    let test_f1 = m["test_f1"].as_f64().unwrap();
    assert!(test_f1 > 0.4 && test_f1 < 1.0, "test F1 {test_f1}");
    let eval: Value = serde_json::from_slice(
        &std::fs::read(output_path(&report, "evaluate", "evaluation")).unwrap(),
    )
    .unwrap();
    for t in ["PER", "LOC", "ORG", "MISC"] {
        assert!(
            eval["test"]["per_type"][t]["support"].as_u64().unwrap() > 0,
            "{t}"
        );
    }
    let bad = read_jsonl(&output_path(&report, "evaluate", "badcases"));
    assert_eq!(bad.len() as u64, m["badcases"].as_u64().unwrap());
    assert!(bad
        .iter()
        .all(|b| b["spans"].as_array().is_some_and(|s| !s.is_empty())));

    // `relabel diff` names span changes.
    let out = f.output(&[
        "diff",
        output_path(&report, "data", "dataset").to_str().unwrap(),
        output_path(&report, "apply", "dataset").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("->") && text.contains("[["), "{text}");

    // The HTML report shows entity F1, the per-type test scores and the changed spans.
    let page = std::fs::read_to_string(f.html_report()).unwrap();
    assert!(page.contains("Entity F1 per round"), "no entity F1 section");
    assert!(page.contains("per entity type") && page.contains("<td>MISC</td>"));
    // The changed examples: marked sentences with their old and new readings.
    assert!(page.contains("Changed examples") && page.contains("[["));

    // A rerun computes nothing and asks nothing.
    let asked = server.count();
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(with_status(&report, "ran"), Vec::<String>::new());
    assert_eq!(server.count(), asked);
}

#[test]
fn bad_tags_are_named_by_file_and_line() {
    let f = Fixture::new(
        "version: 1\nname: bad\nnodes:\n  - id: data\n    kind: dataset\n    config: {task: tagging, train: train.txt, dev: train.txt, labels: labels.yaml}\n",
    );
    std::fs::copy("manifests/ner/labels.yaml", f.path().join("labels.yaml")).unwrap();
    f.write("train.txt", "EU B-ORG\nrejects O\nGerman I-MISC\ncall O\n\nPeter B-PRE\nBlackburn I-PER\n\nBrussels B-LOC X\n");
    let mut f = f;
    let (code, report) = f.run(&[]);
    assert_ne!(code, 0);
    let e = node(&report, "data")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        e.contains("train.txt:1") && e.contains("line 3: I-MISC after O"),
        "{e}"
    );
    assert!(
        e.contains("line 6: unknown entity type \"PRE\"") && e.contains("PER"),
        "{e}"
    );
    assert!(e.contains("line 9: 3 columns, but line 1 has 2"), "{e}");
}

#[test]
fn the_example_manifest_runs_reduced_with_the_local_llm() {
    let _serial = LOCAL_LLM.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string("manifests/ner_conll.yaml").unwrap();
    let mut f = Fixture::new(&text);
    std::fs::create_dir_all(f.path().join("ner")).unwrap();
    std::fs::copy(
        "manifests/ner/labels.yaml",
        f.path().join("ner/labels.yaml"),
    )
    .unwrap();
    std::fs::create_dir_all(f.path().join("conll")).unwrap();
    let (noisy, _) = plant_swaps(&conll("train.txt", 1200), 7);
    write_conll(&f, "conll/train.txt", &noisy);
    write_conll(&f, "conll/valid.txt", &conll("valid.txt", 300));
    write_conll(&f, "conll/test.txt", &conll("test.txt", 300));
    let conll_dir = f.path().join("conll");
    let sets = [
        format!("conll={}", conll_dir.display()),
        format!("test_file={}", conll_dir.join("test.txt").display()),
        "relabel_rows=12".to_string(),
    ];
    let mut args = Vec::new();
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let (code, report) = f.run(&args);
    assert_eq!(code, 0, "{report:#}");
    // Every answer is one of its question's two readings, or undecided.
    let decisions = read_jsonl(&output_path(&report, "relabel", "decisions"));
    assert_eq!(decisions.len(), 12);
    for d in &decisions {
        let pair = [
            d["label"].as_str().unwrap(),
            d["candidate"].as_str().unwrap(),
        ];
        match d["outcome"].as_str().unwrap() {
            "keep" => assert_eq!(d["chosen"], pair[0], "{d}"),
            "change" => assert_eq!(d["chosen"], pair[1], "{d}"),
            "undecided" => assert!(d["failure"].is_string(), "{d}"),
            other => panic!("unknown outcome {other}"),
        }
        assert!(d["site"]["start"].is_u64(), "{d}");
    }
    let decided = decisions
        .iter()
        .filter(|d| d["outcome"] != "undecided")
        .count();
    assert!(decided >= 6, "{decided} of 12 decided");
    for n in ["evaluate", "reevaluate"] {
        let f1 = node(&report, n)["metrics"]["test_f1"].as_f64().unwrap();
        assert!(f1 > 0.3 && f1 < 1.0, "{n}: test F1 {f1}");
    }
}
