//! The Slurm executor for real, on the single-node Slurm that `cargo xtask test` configures and
//! starts (slurm-wlm and munge on localhost): a node with `executor: {slurm: ...}` runs as a
//! batch job (`relabel node-exec`) through a remote cache, its entry comes back as if it had
//! run here; a failing job fails the node with the job's own lines; Ctrl-C cancels the job.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A Slurm node that answers: idle, or busy with another test's job (the tests share one node
/// and run in parallel, so "mixed"/"allocated"/"completing" mean up, not missing).
fn require_slurm() {
    let up = || {
        Command::new("sinfo")
            .args(["-h", "-o", "%T"])
            .output()
            .map(|o| {
                let states = String::from_utf8_lossy(&o.stdout).to_string();
                o.status.success()
                    && ["idle", "mix", "alloc", "completing"]
                        .iter()
                        .any(|s| states.contains(s))
            })
            .unwrap_or(false)
    };
    let start = Instant::now();
    while !up() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        up(),
        "no Slurm node up: `cargo xtask test` installs slurm-wlm and munge and starts them (cargo xtask slurm-up does only that)"
    );
}

fn manifest(remote: &str, upper: &str) -> String {
    format!(
        r#"
version: 1
name: cluster
remote: {remote}
executors:
  command: {{slurm: {{cpus: 1, mem: 500M, time: "5:00", poll_seconds: 0.3}}}}
nodes:
  - id: words
    kind: command
    executor: null
    config: {{run: "printf 'alpha beta gamma' > ${{outputs.out}}", outputs: [out]}}
  - id: upper
    kind: command
    inputs: {{text: words.out}}
    config: {{run: "{upper}", outputs: [out]}}
"#
    )
}

/// The Slurm state of job `id` as the controller tells it.
fn job_state(id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_node_runs_as_a_slurm_job_through_the_remote_and_comes_back_as_if_local() {
    require_slurm();
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", remote_dir.path().display());
    let mut f = Fixture::new(&manifest(
        &remote,
        "tr a-z A-Z < ${inputs.text} > ${outputs.out}; echo ran on $SLURM_JOB_ID",
    ));
    let (code, report) = f.run(&["--remote-write"]);
    assert_eq!(code, 0, "{report:#}");
    let up = node(&report, "upper");
    assert_eq!(up["status"], "ran", "{up:#}");
    let job = up["metrics"]["executor"]["slurm_job"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(job.chars().all(|c| c.is_ascii_digit()), "{job}");
    assert_eq!(up["metrics"]["executor"]["state"], "COMPLETED");
    assert_eq!(job_state(&job), "COMPLETED");
    // The upstream node ran here (its executor is null), this one in the job.
    assert!(node(&report, "words")["metrics"].get("executor").is_none());
    let out = output_path(&report, "upper", "out");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "ALPHA BETA GAMMA");
    // The job's entry is in the remote under the asker's key.
    let key = up["key"].as_str().unwrap();
    assert!(remote_dir
        .path()
        .join(format!("entries/{key}.json"))
        .exists());

    // A rerun: cached, no new job.
    let (code, report) = f.run(&["--remote-write"]);
    assert_eq!(code, 0);
    assert_eq!(statuses(&report)["upper"], "cached");

    // A fresh cache elsewhere restores it from the remote without a job.
    let other = tempfile::tempdir().unwrap();
    let out = f
        .cmd_in(other.path(), &["run", "p.yaml", "--remote-write"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_failing_job_fails_the_node_with_its_own_lines() {
    require_slurm();
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", remote_dir.path().display());
    let mut f = Fixture::new(&manifest(
        &remote,
        "echo the cluster side broke >&2; exit 7",
    ));
    let (code, report) = f.run(&["--remote-write"]);
    assert_eq!(code, 1, "{report:#}");
    let up = node(&report, "upper");
    assert_eq!(up["status"], "failed");
    let err = up["error"].as_str().unwrap();
    assert!(err.contains("ended FAILED"), "{err}");
    assert!(err.contains("the cluster side broke"), "{err}");
    // Nothing recorded for it: a rerun submits again.
    assert!(!remote_dir
        .path()
        .join(format!("entries/{}.json", up["key"].as_str().unwrap()))
        .exists());
}

#[test]
fn without_a_writable_remote_the_node_is_refused_before_submitting() {
    require_slurm();
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", remote_dir.path().display());
    let mut f = Fixture::new(&manifest(&remote, "cp ${inputs.text} ${outputs.out}"));
    let (code, report) = f.run(&[]);
    assert_eq!(code, 1);
    let err = node(&report, "upper")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("writable"), "{err}");
}

#[test]
fn ctrl_c_cancels_the_job() {
    require_slurm();
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", remote_dir.path().display());
    let f = Fixture::new(&manifest(
        &remote,
        "sleep 300; cp ${inputs.text} ${outputs.out}",
    ));
    let mut child = f.spawn(&["--remote-write"]);
    // Wait until our job runs.
    let t0 = Instant::now();
    let job = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job never started"
        );
        let out = Command::new("squeue")
            .args(["-h", "-t", "RUNNING", "-o", "%i %j"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if let Some(line) = text.lines().find(|l| l.contains("relabel-cluster-upper")) {
            break line.split_whitespace().next().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let t1 = Instant::now();
    loop {
        let s = job_state(&job);
        if s == "CANCELLED" || s.is_empty() {
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "job {job} is {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_job_goes_through_an_s3_remote_too() {
    require_slurm();
    let server =
        relabel_testkit::s3::S3Server::start(&test_python()).expect("moto's S3 server starts");
    server.create_bucket("team").unwrap();
    let mut f = Fixture::new(&manifest(
        "s3://team/cache",
        "tr a-z A-Z < ${inputs.text} > ${outputs.out}",
    ));
    // The credentials and endpoint reach the job through sbatch's exported environment.
    f.envs = relabel_testkit::s3::env_for(&server.endpoint());
    f.envs.push(("RELABEL_REMOTE_RETRIES".into(), "0".into()));
    let (code, report) = f.run(&["--remote-write"]);
    assert_eq!(code, 0, "{report:#}");
    let up = node(&report, "upper");
    assert_eq!(up["metrics"]["executor"]["state"], "COMPLETED", "{up:#}");
    let out = output_path(&report, "upper", "out");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "ALPHA BETA GAMMA");
    // Another machine's cache restores both nodes from the bucket: nothing runs, no job.
    let other = tempfile::tempdir().unwrap();
    let rep = other.path().join("r.json");
    let o = f
        .cmd_in(
            other.path(),
            &["run", "p.yaml", "--report", rep.to_str().unwrap()],
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep).unwrap()).unwrap();
    assert_eq!(statuses(&r)["upper"], "restored");
    assert!(node(&r, "upper")["metrics"].get("executor").is_none());
}

fn kfold_manifest(remote: &str, executors: &str) -> String {
    format!(
        r#"
version: 1
name: folds
remote: {remote}
executors: {executors}
nodes:
  - id: make_data
    kind: command
    config:
      run: python3 scripts/make_intents.py ${{outputs.data}} 300 0.2
      files: [scripts/make_intents.py]
      outputs: [data]
  - id: data
    kind: dataset
    inputs: [make_data.data]
    config: {{in_input: true, train: train.jsonl, dev: dev.jsonl, test: test.jsonl, labels: labels.yaml, id_column: id}}
  - id: train
    kind: trainer
    inputs: [data.dataset]
    config: {{epochs: 4, patience: 2, seed: 1, threads: 1}}
  - id: predict
    kind: self_predictor
    inputs: {{model: train.model, dataset: data.dataset}}
    config: {{kfold: 3, seed: 5}}
"#
    )
}

#[test]
fn kfold_trainings_run_as_a_job_array_and_a_resumed_run_reuses_the_pieces() {
    require_slurm();
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", remote_dir.path().display());
    let slurm = r#"{self_predictor: {slurm: {cpus: 1, mem: 1G, time: "5:00", poll_seconds: 0.3}}}"#;
    let mut f = Fixture::new(&kfold_manifest(&remote, slurm));
    f.add_script("make_intents.py");
    let (code, report) = f.run(&["--remote-write"]);
    assert_eq!(code, 0, "{report:#}");
    let p = node(&report, "predict");
    assert_eq!(p["status"], "ran", "{p:#}");
    let ex = &p["metrics"]["executor"];
    let job = ex["slurm_job"]
        .as_str()
        .expect("an array job id")
        .to_string();
    assert_eq!(ex["pieces"], 3, "{ex:#}");
    assert_eq!(ex["reused"], 0, "{ex:#}");
    let tasks = ex["tasks"].as_array().unwrap();
    assert_eq!(
        tasks
            .iter()
            .map(|t| t["task"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2],
        "{ex:#}"
    );
    for t in tasks {
        assert_eq!(t["state"], "COMPLETED", "{t:#}");
        let delay = t["start_delay_s"].as_f64().unwrap();
        assert!((0.0..120.0).contains(&delay), "{t:#}");
    }
    // Slurm itself ran the three tasks of one array.
    let shown = Command::new("scontrol")
        .args(["show", "job", "-o", &job])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert_eq!(
        shown
            .lines()
            .filter(|l| l.contains(&format!("ArrayJobId={job}")))
            .count(),
        3,
        "{shown}"
    );
    // Each fold's model predicted only its held-out rows: every train row is out-of-sample.
    assert_eq!(p["metrics"]["mode"], "kfold");
    assert_eq!(
        p["metrics"]["fold_best_epochs"].as_array().unwrap().len(),
        3,
        "{p:#}"
    );

    // The same node run here, in one process, gives the same predictions.
    let here_remote = tempfile::tempdir().unwrap();
    let mut h = Fixture::new(&kfold_manifest(
        &format!("file://{}", here_remote.path().display()),
        "{}",
    ));
    h.add_script("make_intents.py");
    let (code, here) = h.run(&[]);
    assert_eq!(code, 0, "{here:#}");
    let q = node(&here, "predict");
    assert_eq!(q["key"], p["key"], "the executor is not part of the key");
    assert!(q["metrics"].get("executor").is_none());
    for m in ["fold_best_epochs", "train_accuracy", "dev_accuracy"] {
        assert_eq!(q["metrics"][m], p["metrics"][m], "{m}");
    }
    let (a, b) = (
        p["metrics"]["train_mean_loss"].as_f64().unwrap(),
        q["metrics"]["train_mean_loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");

    // A run killed after the array ended, before the merge was recorded: the node's own entry
    // is missing, its pieces are in the remote. A fresh cache merges them without a job.
    let key = p["key"].as_str().unwrap();
    std::fs::remove_file(remote_dir.path().join(format!("entries/{key}.json"))).unwrap();
    let other = tempfile::tempdir().unwrap();
    let rep = other.path().join("r.json");
    let o = f
        .cmd_in(
            other.path(),
            &[
                "run",
                "p.yaml",
                "--remote-write",
                "--report",
                rep.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep).unwrap()).unwrap();
    let again = node(&r, "predict");
    assert_eq!(again["status"], "ran", "{again:#}");
    let ex = &again["metrics"]["executor"];
    assert_eq!(ex["reused"], 3, "{ex:#}");
    assert!(ex["slurm_job"].is_null(), "no job submitted: {ex:#}");
    assert_eq!(
        again["metrics"]["train_mean_loss"], p["metrics"]["train_mean_loss"],
        "the merged pieces are the same predictions"
    );
}
