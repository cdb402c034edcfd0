//! `cargo xtask bench remote`: restoring a 10-node, 250 MB pipeline from an S3 remote (moto's server) against DVC's push, pull and repro on the same server.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use relabel_testkit::s3::S3Server;
use serde_json::{json, Value};

use crate::bench::{bench_venv, median, stages_dvc_yaml, stages_manifest, target, time};
use crate::{run, TEST_PYTHON};

pub fn remote(root: &Path, args: &[String]) -> Result<Value> {
    let mb: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(25);
    let reps = 9;
    run(Command::new("cargo").args(["build", "--release", "--quiet", "--bin", "relabel"]))?;
    let bin = root.join("target/release/relabel");
    let work = root.join("target/bench-remote");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let python = bench_venv("pyarrow", TEST_PYTHON)?.join("bin/python");
    let server = S3Server::start(&python).context("starting moto's S3 server")?;
    server.create_bucket("bench")?;
    let env = server.env();

    let manifest = stages_manifest("bench-remote", mb);
    std::fs::write(work.join("pipeline.yaml"), &manifest)?;
    let relabel = |cache: &str, args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .arg("--cache")
            .arg(work.join(cache))
            .current_dir(&work)
            .env("RELABEL_LOG", "warn")
            .env("RELABEL_REMOTE", "s3://bench/relabel")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    };
    let cold_push = time(&mut relabel(
        "a",
        &["run", "pipeline.yaml", "--jobs", "2", "--remote-write"],
    ))?;
    let report = work.join("restore-report.json");
    let restore = time(&mut relabel(
        "b",
        &[
            "run",
            "pipeline.yaml",
            "--jobs",
            "2",
            "--frozen",
            "--report",
            report.to_str().unwrap_or_default(),
        ],
    ))?;
    // The figure means something only if the restore executed nothing and restored everything.
    let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let restored = r["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|x| x["status"] == "restored").count())
        .unwrap_or(0);
    anyhow::ensure!(
        restored == 10,
        "the restore run restored {restored} of 10 nodes"
    );
    let restored_bytes = r["remote"]["pulled_bytes"].as_u64().unwrap_or(0);
    let recompute = time(&mut relabel(
        "c",
        &["run", "pipeline.yaml", "--jobs", "2", "--no-remote"],
    ))?;
    let status: Vec<f64> = (0..reps)
        .map(|_| {
            time(&mut relabel(
                "a",
                &["status", "pipeline.yaml", "--exit-code"],
            ))
        })
        .collect::<Result<_>>()?;
    let status_ms = median(status) * 1e3;
    println!(
        "relabel: cold run + push {cold_push:.2} s; restore on an empty cache {restore:.2} s; recompute {recompute:.2} s; status median {status_ms:.1} ms"
    );

    let dvc = match dvc_remote(&work, mb, &server, reps) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("dvc: skipped: {e:#}");
            json!({"skipped": format!("{e:#}")})
        }
    };
    let pull_repro = dvc["pull_plus_repro_s"].as_f64();
    let dvc_status = dvc["status_median_ms"].as_f64();
    let restore_ratio = pull_repro.map(|d| d / restore);
    let status_ratio = dvc_status.map(|d| d / status_ms);
    Ok(json!({
        "stages": 10,
        "artifact_mb": mb * 10,
        "server": "moto 5.2.5 (S3 on loopback)",
        "relabel": {
            "cold_run_and_push_s": cold_push,
            "restore_from_remote_s": restore,
            "restored_nodes": restored,
            "restored_bytes": restored_bytes,
            "recompute_s": recompute,
            "status_median_ms": status_ms,
        },
        "dvc": dvc,
        "ratio_dvc_pull_repro_over_relabel_restore": restore_ratio,
        "ratio_dvc_status_over_relabel_status": status_ratio,
        "targets": [
            target(
                "restore from the remote vs DVC's pull + repro (times faster)",
                ">= 3",
                restore_ratio.unwrap_or(f64::NAN),
                restore_ratio.is_some_and(|r| r >= 3.0)
            ),
            target(
                "relabel status vs dvc status (times faster)",
                ">= 10",
                status_ratio.unwrap_or(f64::NAN),
                status_ratio.is_some_and(|r| r >= 10.0)
            ),
            target("relabel status, 10 nodes (ms)", "< 50", status_ms, status_ms < 50.0),
        ],
    }))
}

fn dvc_remote(work: &Path, mb: usize, server: &S3Server, reps: usize) -> Result<Value> {
    let venv = bench_venv("dvc-s3", &["dvc==3.67.1", "dvc-s3==3.3.0"])?;
    let bin = venv.join("bin/dvc");
    let dir = work.join("dvc");
    std::fs::create_dir_all(&dir)?;
    let git = |dir: &Path, args: &[&str]| run(Command::new("git").args(args).current_dir(dir));
    git(&dir, &["init", "-q"])?;
    git(&dir, &["config", "user.email", "bench@example.invalid"])?;
    git(&dir, &["config", "user.name", "bench"])?;
    let env = server.env();
    let dvc = |dir: &Path, args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .current_dir(dir)
            .env("DVC_NO_ANALYTICS", "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    };
    run(&mut dvc(&dir, &["init", "-q"]))?;
    run(&mut dvc(
        &dir,
        &["remote", "add", "-d", "s3", "s3://bench/dvc"],
    ))?;
    run(&mut dvc(
        &dir,
        &["remote", "modify", "s3", "endpointurl", &server.endpoint()],
    ))?;
    std::fs::write(dir.join("dvc.yaml"), stages_dvc_yaml(mb))?;
    let cold = time(&mut dvc(&dir, &["repro", "-q"]))?;
    let push = time(&mut dvc(&dir, &["push", "-q"]))?;
    git(&dir, &["add", "-A"])?;
    git(&dir, &["commit", "-qm", "pipeline"])?;
    let status: Vec<f64> = (0..reps)
        .map(|_| time(&mut dvc(&dir, &["status", "-q"])))
        .collect::<Result<_>>()?;
    // A fresh clone: pull the outputs, then repro (which must find everything up to date).
    let clone = work.join("dvc-clone");
    run(Command::new("git")
        .args(["clone", "-q"])
        .arg(&dir)
        .arg(&clone))?;
    let pull = time(&mut dvc(&clone, &["pull", "-q"]))?;
    let repro = time(&mut dvc(&clone, &["repro", "-q"]))?;
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let status_ms = median(status) * 1e3;
    println!(
        "dvc {version}: cold repro {cold:.2} s, push {push:.2} s; fresh clone: pull {pull:.2} s + repro {repro:.2} s; status median {status_ms:.1} ms"
    );
    Ok(json!({
        "version": version,
        "cold_repro_s": cold,
        "push_s": push,
        "pull_s": pull,
        "repro_after_pull_s": repro,
        "pull_plus_repro_s": pull + repro,
        "status_median_ms": status_ms,
    }))
}
