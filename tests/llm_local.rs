//! End-to-end with the real local LLM (llama.cpp's llama-server and Qwen2.5 0.5B, as set up by
//! `cargo xtask setup`): flagged rows get one of their two candidates or `undecided`; the server
//! is started for the run and stopped after it (and on Ctrl-C); a rerun sends no request.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use relabel_llm::endpoint::{llama_server_path, local_model_path, LOCAL_MODEL_ALIAS};
use relabel_testkit::Server;
use serde_json::Value;

/// The tests here watch llama-server processes: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_local_llm() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for p in [llama_server_path(), local_model_path()] {
        assert!(
            p.exists(),
            "{} is missing: run `cargo xtask setup` (the test command does)",
            p.display()
        );
    }
    guard
}

/// The example manifest in a temporary project, made small: one round, `rows` judged rows.
fn project(rows: usize, llm: Option<&str>) -> Fixture {
    let text = std::fs::read_to_string("manifests/relabel_classification.yaml").unwrap();
    let mut text = text
        .replace("max_rounds: 2\n", "max_rounds: 1\n")
        .replace("rows_per_round: 40", &format!("rows_per_round: {rows}"));
    if let Some(base_url) = llm {
        text = text.replace(
            "params:\n",
            &format!("llm:\n  proxy: {{base_url: \"{base_url}\", model: {LOCAL_MODEL_ALIAS}}}\nparams:\n"),
        );
    }
    let f = Fixture::new(&text);
    f.add_script("make_intents.py");
    f
}

/// Pids of running llama-server processes serving the local model.
fn llama_pids() -> Vec<u32> {
    pids_with(&llama_server_path().display().to_string(), true)
}

fn check_decisions(path: &Path) -> Vec<Value> {
    let ds = read_jsonl(path);
    for d in &ds {
        let pair = [
            d["label"].as_str().unwrap(),
            d["candidate"].as_str().unwrap(),
        ];
        assert_ne!(pair[0], pair[1]);
        match d["outcome"].as_str().unwrap() {
            "keep" => assert_eq!(d["chosen"], pair[0], "{d}"),
            "change" => assert_eq!(d["chosen"], pair[1], "{d}"),
            "undecided" => assert!(d["failure"].is_string(), "{d}"),
            other => panic!("unknown outcome {other}"),
        }
        assert_eq!(d["source"], "llm");
    }
    ds
}

#[test]
fn the_local_server_judges_flagged_rows_and_a_rerun_starts_no_server() {
    let _serial = require_local_llm();
    let before = llama_pids();
    let mut f = project(20, None);
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    let relabel = node(&report, "relabel@1");
    let m = &relabel["metrics"];
    assert_eq!(m["rows"], 20, "{m:#}");
    assert_eq!(m["local_server_started"], true);
    assert!(m["http_requests"].as_u64().unwrap() >= 20, "{m:#}");
    let ds = check_decisions(&output_path(&report, "relabel@1", "decisions"));
    assert_eq!(ds.len(), 20);
    let decided = ds.iter().filter(|d| d["outcome"] != "undecided").count();
    assert!(decided >= 15, "the model should answer most rows: {m:#}");
    // The audit trail holds exactly the changes, with their provenance.
    let audit = read_jsonl(&output_path(&report, "apply@1", "audit"));
    let changes = ds.iter().filter(|d| d["outcome"] == "change").count();
    assert_eq!(audit.len(), changes);
    for a in &audit {
        assert_eq!(a["source"], "llm");
        assert!(a["model"].as_str().unwrap().contains("qwen"), "{a}");
        assert_eq!(a["template_digest"].as_str().unwrap().len(), 64);
    }
    // The server stopped with the run.
    assert_eq!(llama_pids(), before, "llama-server outlived the run");

    // Forced again: every answer comes from the LLM cache, so no server is even started.
    let (code, report) = f.run(&["--force", "relabel"]);
    assert_eq!(code, 0);
    let m2 = &node(&report, "relabel@1")["metrics"];
    assert_eq!(m2["http_requests"], 0, "{m2:#}");
    assert_eq!(m2["local_server_started"], false);
    assert_eq!(m2["cache_hits"], m["http_requests"]);

    // `relabel diff` shows the applied changes between the dataset versions.
    let out = f.output(&["diff", "data", "apply@1", "--manifest", "p.yaml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["changed"], changes as u64);
}

#[test]
fn a_counting_proxy_sees_every_request_once_and_none_on_rerun() {
    let _serial = require_local_llm();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Stop(
        Command::new(llama_server_path())
            .arg("-m")
            .arg(local_model_path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "-c",
                "2048",
                "-np",
                "1",
                "-t",
                "2",
                "--alias",
                LOCAL_MODEL_ALIAS,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !healthy(port) {
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "llama-server exited"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "llama-server never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let proxy = Server::proxy(([127, 0, 0, 1], port).into()).unwrap();
    let mut f = project(20, Some(&proxy.base_url()));
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    let m = &node(&report, "relabel@1")["metrics"];
    let sent = proxy.count();
    assert!(sent >= 20, "{sent}");
    assert_eq!(m["http_requests"].as_u64().unwrap(), sent, "{m:#}");
    assert_eq!(m["local_server_started"], false);
    check_decisions(&output_path(&report, "relabel@1", "decisions"));

    let (code, _) = f.run(&["--force", "relabel"]);
    assert_eq!(code, 0);
    assert_eq!(proxy.count(), sent, "the rerun sent requests");
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

#[test]
fn ctrl_c_stops_the_local_server() {
    let _serial = require_local_llm();
    let before = llama_pids();
    let f = project(200, None);
    let mut child = f.spawn(&[]);
    let t0 = Instant::now();
    // Wait until the relabeler has started its server.
    loop {
        let now = llama_pids();
        if now.iter().any(|p| !before.contains(p)) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the server started"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no llama-server appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let t1 = Instant::now();
    while llama_pids() != before {
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "llama-server outlived Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_llm_annotator_labels_only_within_the_label_set_and_debugs_its_prompt() {
    let _serial = require_local_llm();
    let mut f = Fixture::new(
        r#"
version: 1
name: annotate
nodes:
  - id: make_data
    kind: command
    config:
      run: python3 scripts/make_intents.py ${outputs.data} 60 0.0
      files: [scripts/make_intents.py]
      outputs: [data]
  - id: subset
    kind: command
    inputs: [make_data.data]
    config:
      run: "mkdir -p ${outputs.data} && head -n 8 ${inputs.data}/train.jsonl > ${outputs.data}/unlabelled.jsonl && head -n 8 ${inputs.data}/test.jsonl > ${outputs.data}/test.jsonl && cp ${inputs.data}/labels.yaml ${outputs.data}/"
      outputs: [data]
  - id: label
    kind: llm_annotator
    inputs: {data: subset.data}
    config: {in_input: true, labels: labels.yaml, unlabelled: unlabelled.jsonl, test: test.jsonl, id_column: id, max_rows: 8}
"#,
    );
    f.add_script("make_intents.py");
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    let m = &node(&report, "label")["metrics"];
    assert_eq!(
        m["labelled"].as_u64().unwrap() + m["left_unlabelled"].as_u64().unwrap(),
        8,
        "{m:#}"
    );
    assert!(m["labelled"].as_u64().unwrap() >= 6, "{m:#}");
    let acc = m["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let debug: Value =
        serde_json::from_slice(&std::fs::read(output_path(&report, "label", "debug")).unwrap())
            .unwrap();
    let confusion = debug["test"]["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 6);
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(total + debug["test"]["unanswered"].as_u64().unwrap(), 8);
    assert_eq!(debug["template_digest"].as_str().unwrap().len(), 64);
}
