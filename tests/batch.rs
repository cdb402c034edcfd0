//! Batch judging end to end, against the scripted Batch API (testkit's `/v1/files` and
//! `/v1/batches`): a run submits and ends pending (exit 3), a batch still running keeps it
//! pending, the next run collects; partial errors, expiry and cancellation leave rows undecided
//! and askable again; a run killed between creating the batch and recording it neither loses
//! it nor asks twice. And the vLLM request shape (`server: vllm`).

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relabel_testkit::batch::{BatchApi, End, Script};
use relabel_testkit::{offered, Annotator, Reply, Server};
use serde_json::{json, Value};

const ROWS: usize = 24;
const LABELS: [&str; 4] = ["card_lost", "top_up", "refund", "exchange_rate"];

/// Row i: its label, its candidate, and the truth (the candidate for even rows).
fn row(i: usize) -> (String, String, String) {
    let label = LABELS[i % 4].to_string();
    let cand = LABELS[(i + 1) % 4].to_string();
    let truth = if i.is_multiple_of(2) {
        cand.clone()
    } else {
        label.clone()
    };
    (label, cand, truth)
}

fn truth() -> HashMap<String, String> {
    (0..ROWS).map(|i| (format!("r{i}"), row(i).2)).collect()
}

fn manifest(base_url: &str, endpoint_extra: &str, judge_extra: &str) -> String {
    format!(
        r#"
version: 1
name: batch
llm:
  judge:
    base_url: {base_url}
    model: {model}
    send_metadata: true
    batch: true
    max_retries: 1
    price_per_million: {{input: 1.0, output: 2.0}}
{endpoint_extra}
nodes:
  - id: data
    kind: dataset
    config: {{train: train.jsonl, dev: dev.jsonl, labels: labels.yaml, id_column: id}}
  - id: flags
    kind: command
    config:
      run: cp flags.jsonl ${{outputs.flags}}
      files: [flags.jsonl]
      outputs: [flags]
  - id: relabel
    kind: binary_relabeler
    inputs: {{flags: flags.flags, dataset: data.dataset}}
    config: {{llm: judge, examples: 1, answer_retries: 0{judge_extra}}}
  - id: apply
    kind: apply_labels
    inputs: {{dataset: data.dataset, decisions: relabel.decisions}}
    config: {{}}
"#,
        model = Annotator::model_name(1.0)
    )
}

fn fixture(base_url: &str, endpoint_extra: &str, judge_extra: &str) -> Fixture {
    let f = Fixture::new(&manifest(base_url, endpoint_extra, judge_extra));
    write_files(&f);
    f
}

/// The dataset, its labels and the flags the pipeline judges.
fn write_files(f: &Fixture) {
    let (mut train, mut flags) = (String::new(), String::new());
    for i in 0..ROWS {
        let (label, cand, _) = row(i);
        let text = format!("row {i} about money");
        train.push_str(&json!({"id": format!("r{i}"), "text": text, "label": label}).to_string());
        train.push('\n');
        flags.push_str(
            &json!({"split": "train", "row": i, "id": format!("r{i}"), "text": text,
                "label": label, "candidate": cand, "label_prob": 0.1, "candidate_prob": 0.8,
                "score": 1.0 - i as f64 / 100.0, "rule": "pred_neq_label"})
            .to_string(),
        );
        flags.push('\n');
    }
    for l in LABELS {
        train.push_str(
            &json!({"id": format!("c-{l}"), "text": format!("clean {l}"), "label": l}).to_string(),
        );
        train.push('\n');
    }
    f.write("train.jsonl", &train);
    f.write(
        "dev.jsonl",
        &LABELS
            .iter()
            .map(|l| {
                json!({"id": format!("d-{l}"), "text": format!("dev {l}"), "label": l}).to_string()
                    + "\n"
            })
            .collect::<String>(),
    );
    let spec: String = LABELS
        .iter()
        .map(|l| format!("  - name: {l}\n    definition: \"the {l} intent\"\n"))
        .collect();
    f.write("labels.yaml", &format!("labels:\n{spec}"));
    f.write("flags.jsonl", &flags);
}

/// The scripted Batch API answering as a judge that is always right.
fn batch_server() -> (Arc<BatchApi>, Server) {
    let judge = Annotator::new(truth(), 1, Duration::ZERO);
    let api = BatchApi::new(Arc::new(move |body: &Value| judge.respond(body)));
    let server = Server::start(api.handler()).unwrap();
    (api, server)
}

fn decisions(report: &Value) -> Vec<Value> {
    read_jsonl(&output_path(report, "relabel", "decisions"))
}

#[test]
fn a_batch_is_submitted_once_waits_pending_and_is_collected_by_a_later_run() {
    let (api, server) = batch_server();
    api.script.lock().unwrap().polls_before_done = 1;
    let mut f = fixture(&server.base_url(), "", "");

    // Run 1: every question goes into one batch; the node is pending, its dependents wait.
    let (code, report) = f.run(&[]);
    assert_eq!(code, 3, "pending exits 3: {report:#}");
    assert_eq!(report["status"], "pending");
    let st = statuses(&report);
    assert_eq!(st["relabel"], "pending", "{st:?}");
    assert_eq!(st["apply"], "skipped", "{st:?}");
    // The message names the batch's input, kept for a person (or `vllm run-batch`).
    let why = node(&report, "relabel")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("submitted (24 requests, as in "), "{why}");
    let kept = why
        .split("as in ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    assert_eq!(std::fs::read_to_string(kept).unwrap().lines().count(), ROWS);
    assert_eq!(api.uploads.load(Ordering::SeqCst), 1);
    assert_eq!(api.created.load(Ordering::SeqCst), 1);
    // The JSONL is the Batch API's (and vllm run-batch's) shape; custom_id is the memo key.
    let lines = api.file_lines("file-000001");
    assert_eq!(lines.len(), ROWS);
    for l in &lines {
        let cid = l["custom_id"].as_str().unwrap();
        assert!(
            cid.len() == 64 && cid.chars().all(|c| c.is_ascii_hexdigit()),
            "{cid}"
        );
        assert_eq!(l["method"], "POST");
        assert_eq!(l["url"], "/v1/chat/completions");
        assert_eq!(l["body"]["model"], "sim-p1");
        assert_eq!(offered(&l["body"]).len(), 2);
    }
    let batch = &api.batches()[0];
    assert_eq!(batch["completion_window"], "24h");
    assert_eq!(batch["endpoint"], "/v1/chat/completions");

    // Run 2: the batch is still running: still pending, nothing sent again.
    let (code, report) = f.run(&[]);
    assert_eq!(code, 3, "{report:#}");
    assert!(
        node(&report, "relabel")["error"]
            .as_str()
            .unwrap()
            .contains("in_progress"),
        "{report:#}"
    );
    assert_eq!(api.uploads.load(Ordering::SeqCst), 1, "nothing re-sent");

    // Run 3: done: answers joined on custom_id, every row decided right, cost at half price.
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    let m = &node(&report, "relabel")["metrics"];
    assert_eq!(m["batch"]["collected"], ROWS, "{m:#}");
    assert_eq!(m["batch"]["submitted"], 0, "{m:#}");
    let ds = decisions(&report);
    assert_eq!(ds.len(), ROWS);
    let t = truth();
    for d in &ds {
        assert_eq!(
            d["chosen"].as_str(),
            Some(t[d["id"].as_str().unwrap()].as_str()),
            "{d:#}"
        );
    }
    assert_eq!(m["change"], ROWS / 2, "{m:#}");
    // 24 answers of 100 prompt and 8 completion tokens at $1 and $2 per million, halved.
    let cost = m["cost"].as_f64().unwrap();
    let full = ROWS as f64 * (100.0 + 16.0) / 1e6;
    assert!(
        (cost - full * 0.5).abs() < 1e-12,
        "cost {cost} vs {}",
        full * 0.5
    );
    assert_eq!(statuses(&report)["apply"], "ran");
    // Each question was uploaded exactly once over the three runs.
    assert!(api.seen.lock().unwrap().values().all(|n| *n == 1));

    // Run 4: cached; the server hears nothing.
    let before = server.count();
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(statuses(&report)["relabel"], "cached");
    assert_eq!(server.count(), before);
}

#[test]
fn failed_expired_and_cancelled_requests_stay_undecided_and_are_asked_again() {
    for end in [
        End::Completed,
        End::Expired { answered: 10 },
        End::Cancelled { answered: 16 },
    ] {
        let (api, server) = batch_server();
        {
            let mut s = api.script.lock().unwrap();
            if end == End::Completed {
                // Lines whose custom_id starts with 0-3 come back as errors (about a quarter).
                s.fail = Arc::new(|cid: &str| cid.starts_with(['0', '1', '2', '3']));
            }
            s.end = end;
        }
        let mut f = fixture(&server.base_url(), "", ", max_failure_rate: 0.9");
        let (code, _) = f.run(&[]);
        assert_eq!(code, 3, "{end:?}");
        let (code, report) = f.run(&[]);
        assert_eq!(code, 0, "{end:?}: {report:#}");
        let lines = api.file_lines("file-000001");
        let failed_ids: Vec<String> = match end {
            End::Completed => lines
                .iter()
                .map(|l| l["custom_id"].as_str().unwrap().to_string())
                .filter(|c| c.starts_with(['0', '1', '2', '3']))
                .collect(),
            End::Expired { answered } | End::Cancelled { answered } => lines[answered..]
                .iter()
                .map(|l| l["custom_id"].as_str().unwrap().to_string())
                .collect(),
        };
        assert!(!failed_ids.is_empty(), "{end:?}");
        let m = &node(&report, "relabel")["metrics"];
        assert_eq!(
            m["failures"]["batch_failed"],
            failed_ids.len(),
            "{end:?}: {m:#}"
        );
        assert_eq!(m["undecided"], failed_ids.len(), "{end:?}: {m:#}");
        assert_eq!(m["batch"]["collected"], ROWS - failed_ids.len(), "{end:?}");

        // Asked again (a forced rerun): only the unanswered questions go out, and now all
        // rows are decided.
        *api.script.lock().unwrap() = Script::default();
        let (code, _) = f.run(&["--force", "relabel"]);
        assert_eq!(code, 3, "{end:?}");
        let again: Vec<String> = api
            .file_lines(api.batches()[1]["input_file_id"].as_str().unwrap())
            .iter()
            .map(|l| l["custom_id"].as_str().unwrap().to_string())
            .collect();
        let (mut a, mut b) = (again.clone(), failed_ids.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{end:?}: exactly the unanswered ones are asked again");
        let (code, report) = f.run(&["--force", "relabel"]);
        assert_eq!(code, 0, "{end:?}");
        let m = &node(&report, "relabel")["metrics"];
        assert_eq!(m["undecided"], 0, "{end:?}: {m:#}");
    }
}

#[test]
fn a_run_killed_after_creating_the_batch_finds_it_and_never_asks_twice() {
    let judge = Annotator::new(truth(), 1, Duration::ZERO);
    let api = BatchApi::new(Arc::new(move |body: &Value| judge.respond(body)));
    // While `slow`, the server creates a batch at once but takes 30 s to say so: the run is
    // killed while it waits, before it could record the batch's id.
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = {
        let inner = api.handler();
        let slow = slow.clone();
        Server::start(Arc::new(move |req| {
            let reply = inner(req);
            if slow.load(Ordering::SeqCst) && req.method == "POST" && req.path.ends_with("/batches")
            {
                reply.delayed(Duration::from_secs(30))
            } else {
                reply
            }
        }))
        .unwrap()
    };
    let mut f = fixture(&server.base_url(), "", "");
    let mut child = f.spawn(&[]);
    let t0 = std::time::Instant::now();
    while api.created.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no batch created");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();

    // The next run finds the batch by its file instead of making another.
    slow.store(false, Ordering::SeqCst);
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(api.created.load(Ordering::SeqCst), 1, "one batch, adopted");
    assert_eq!(api.uploads.load(Ordering::SeqCst), 1, "one upload");
    assert_eq!(api.answered.load(Ordering::SeqCst), ROWS as u64);
    assert_eq!(node(&report, "relabel")["metrics"]["undecided"], 0);
}

#[test]
fn a_vllm_endpoint_constrains_the_answer_by_choice_and_reads_the_bare_title() {
    let judge = Annotator::new(truth(), 1, Duration::ZERO);
    let shapes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = shapes.clone();
    let server = Server::start(Arc::new(move |req| {
        let body = req.json().unwrap_or(Value::Null);
        seen.lock().unwrap().push(body.clone());
        if req.path.ends_with("/chat/completions") {
            judge.respond(&body)
        } else {
            Reply::status(404, "{}")
        }
    }))
    .unwrap();
    let text =
        manifest(&server.base_url(), "    server: vllm", "").replace("    batch: true\n", "");
    let mut f = Fixture::new(&text);
    write_files(&f);
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    let bodies = shapes.lock().unwrap().clone();
    assert_eq!(bodies.len(), ROWS);
    for b in &bodies {
        assert!(b.get("response_format").is_none(), "{b:#}");
        let choice = b["structured_outputs"]["choice"].as_array().unwrap();
        assert_eq!(choice.len(), 2, "{b:#}");
    }
    let m = &node(&report, "relabel")["metrics"];
    assert_eq!(
        m["keep"].as_u64().unwrap() + m["change"].as_u64().unwrap(),
        ROWS as u64,
        "{m:#}"
    );
    let t = truth();
    for d in decisions(&report) {
        assert_eq!(
            d["chosen"].as_str(),
            Some(t[d["id"].as_str().unwrap()].as_str())
        );
        // The bare title is the whole answer.
        assert_eq!(d["answer"], d["chosen"]);
    }
}

#[test]
fn llm_annotator_labels_through_a_batch_too() {
    // A line handler that labels each text with the label its text names.
    let api = BatchApi::new(Arc::new(|body: &Value| {
        let msg = relabel_testkit::user_message(body);
        let item = msg.rsplit("Item:").next().unwrap_or("").to_string();
        let pick = offered(body)
            .into_iter()
            .find(|l| item.contains(l.as_str()))
            .unwrap_or_default();
        Reply::ok(relabel_testkit::chat_completion(
            &json!({ "label": pick }).to_string(),
        ))
    }));
    let server = Server::start(api.handler()).unwrap();
    let mut f = Fixture::new(&format!(
        r#"
version: 1
name: annotate
llm:
  judge: {{base_url: {}, model: m, batch: true}}
nodes:
  - id: annotate
    kind: llm_annotator
    config: {{llm: judge, labels: labels.yaml, unlabelled: texts.jsonl}}
"#,
        server.base_url()
    ));
    write_files(&f);
    let texts: String = (0..12)
        .map(|i| {
            json!({"text": format!("text {i}: please help with {}", LABELS[i % 4])}).to_string()
                + "\n"
        })
        .collect();
    f.write("texts.jsonl", &texts);
    let (code, report) = f.run(&[]);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(api.file_lines("file-000001").len(), 12);
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    let m = &node(&report, "annotate")["metrics"];
    assert_eq!(m["labelled"], 12, "{m:#}");
    assert_eq!(m["batch"]["collected"], 12, "{m:#}");
    assert_eq!(api.uploads.load(Ordering::SeqCst), 1);
}
