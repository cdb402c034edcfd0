//! Benchmarks (not tests): `cargo xtask bench NAME` prints figures and writes docs/bench/NAME.json.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{home_cache, run};

/// Benchmarks that read dataset and prediction artifacts: xtask runs them as itself rebuilt
/// with its `artifacts` feature (relabel-tasks and Parquet), which plain set-up does not wait for.
const NEEDS_ARTIFACTS: &[&str] = &[
    "flag",
    "votes",
    "quality",
    "ner",
    "badcase",
    "ctr",
    "generation",
    "detection",
];

pub fn run_bench(root: &Path, name: &str, args: &[String]) -> Result<()> {
    if NEEDS_ARTIFACTS.contains(&name) && !cfg!(feature = "artifacts") {
        return run(Command::new("cargo")
            .args([
                "run",
                "--quiet",
                "-p",
                "xtask",
                "--features",
                "artifacts",
                "--",
            ])
            .args(["bench", name])
            .args(args));
    }
    let figures = match name {
        "engine" => engine(root, args)?,
        "train" => crate::bench_train::train(root, args)?,
        #[cfg(feature = "artifacts")]
        "flag" => crate::bench_flag::flag(root, args)?,
        "llm" => crate::bench_llm::llm(root, args)?,
        "batch" => crate::bench_batch::batch(root, args)?,
        "knn" => crate::bench_knn::knn(root, args)?,
        #[cfg(feature = "artifacts")]
        "votes" => crate::bench_votes::votes(root, args)?,
        #[cfg(feature = "artifacts")]
        "quality" => crate::bench_quality::quality(root, args)?,
        #[cfg(feature = "artifacts")]
        "badcase" => crate::bench_badcase::badcase(root, args)?,
        "artifacts" => crate::bench_artifacts::artifacts(root, args)?,
        "remote" => crate::bench_remote::remote(root, args)?,
        "slurm" => crate::bench_slurm::slurm(root, args)?,
        "million" => crate::bench_million::million(root, args)?,
        #[cfg(feature = "artifacts")]
        "ner" => crate::bench_ner::ner(root, args)?,
        #[cfg(feature = "artifacts")]
        "ctr" => crate::bench_ctr::ctr(root, args)?,
        #[cfg(feature = "artifacts")]
        "generation" => crate::bench_generation::generation(root, args)?,
        #[cfg(feature = "artifacts")]
        "detection" => crate::bench_detection::detection(root, args)?,
        other => {
            bail!("unknown benchmark \"{other}\"; known: engine, train, flag, llm, batch, knn, votes, quality, badcase, artifacts, ner, ctr, generation, detection, remote, slurm, million")
        }
    };
    let out = json!({
        "benchmark": name,
        "command": format!("cargo xtask bench {name}{}", args.iter().map(|a| format!(" {a}")).collect::<String>()),
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "figures": figures,
    });
    let dir = root.join("docs/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&out["figures"])?);
    println!("wrote {}", path.display());
    Ok(())
}

/// One entry of a benchmark's `targets` list.
pub fn target(name: &str, target: &str, value: f64, met: bool) -> Value {
    json!({"name": name, "target": target, "value": value, "met": met})
}

/// Runs `cmd` (a peer or helper that prints JSON last) and parses its last non-empty line.
pub fn json_output(cmd: &mut Command, what: &str) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let last = out
        .stdout
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or(b"{}");
    serde_json::from_slice(last).with_context(|| format!("{what} printed no JSON"))
}

pub fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    json!({
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "cores": sh("nproc"),
        "memory": sh("grep MemTotal /proc/meminfo | awk '{printf \"%.1f GiB\", $2/1048576}'"),
        "os": sh("uname -sr"),
    })
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("no NaN times"));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Wall-clock seconds of `cmd`, which must succeed.
pub fn time(cmd: &mut Command) -> Result<f64> {
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

fn times(n: usize, mut make: impl FnMut() -> Command) -> Result<Vec<f64>> {
    (0..n).map(|_| time(&mut make())).collect()
}

/// The 10 stages: five generators of `mb` MB each and five transforms of them.
pub fn stages(mb: usize) -> Vec<(String, String, Option<String>)> {
    let mut s = Vec::new();
    for i in 1..=5 {
        s.push((
            format!("gen{i}"),
            format!(
                "yes 'row {i} of a synthetic artifact' | head -c {}",
                mb * 1_000_000
            ),
            None,
        ));
    }
    for i in 1..=5 {
        s.push((
            format!("upper{i}"),
            "tr a-z A-Z".to_string(),
            Some(format!("gen{i}")),
        ));
    }
    s
}

/// [`stages`] as a relabel manifest of `command` nodes.
pub fn stages_manifest(name: &str, mb: usize) -> String {
    let mut manifest = format!("version: 1\nname: {name}\nnodes:\n");
    for (id, cmd, input) in stages(mb) {
        match input {
            None => manifest.push_str(&format!(
                "  - id: {id}\n    kind: command\n    config: {{run: \"{cmd} > ${{outputs.out}}\", outputs: [out]}}\n"
            )),
            Some(inp) => manifest.push_str(&format!(
                "  - id: {id}\n    kind: command\n    inputs: [{inp}.out]\n    config: {{run: \"{cmd} < ${{inputs.out}} > ${{outputs.out}}\", outputs: [out]}}\n"
            )),
        }
    }
    manifest
}

/// [`stages`] as DVC's dvc.yaml.
pub fn stages_dvc_yaml(mb: usize) -> String {
    let mut yaml = String::from("stages:\n");
    for (id, cmd, input) in stages(mb) {
        match input {
            None => yaml.push_str(&format!("  {id}:\n    cmd: {cmd} > {id}.out\n    outs: [{id}.out]\n")),
            Some(inp) => yaml.push_str(&format!(
                "  {id}:\n    cmd: {cmd} < {inp}.out > {id}.out\n    deps: [{inp}.out]\n    outs: [{id}.out]\n"
            )),
        }
    }
    yaml.replace('\'', "\"")
}

fn engine(root: &Path, args: &[String]) -> Result<Value> {
    let mb: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(25);
    let reps = 15;
    run(Command::new("cargo").args(["build", "--release", "--quiet", "--bin", "relabel"]))?;
    let bin = root.join("target/release/relabel");
    let work = root.join("target/bench-engine");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // relabel
    let manifest = stages_manifest("bench-engine", mb);
    std::fs::write(work.join("pipeline.yaml"), &manifest)?;
    let relabel = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .arg("--cache")
            .arg(work.join("cache"))
            .current_dir(&work)
            .env("RELABEL_LOG", "warn");
        c
    };
    let cold = time(&mut relabel(&["run", "pipeline.yaml", "--jobs", "2"]))?;
    let artifact_bytes = dir_size(&work.join("cache/objects"));
    let noop = times(reps, || relabel(&["run", "pipeline.yaml"]))?;
    let plan = times(reps, || relabel(&["plan", "pipeline.yaml"]))?;
    let validate = times(reps, || {
        let mut c = Command::new(&bin);
        c.args(["validate", "pipeline.yaml"]).current_dir(&work);
        c
    })?;
    println!(
        "relabel: cold {cold:.2} s, no-op rerun median {:.1} ms, plan median {:.1} ms ({} MB of artifacts)",
        median(noop.clone()) * 1e3,
        median(plan.clone()) * 1e3,
        artifact_bytes / 1_000_000
    );
    // The same pipeline with 1/25 of the data: a no-op rerun must not depend on artifact size.
    let small = work.join("small");
    std::fs::create_dir_all(&small)?;
    std::fs::write(
        small.join("pipeline.yaml"),
        manifest.replace(
            &format!("head -c {}", mb * 1_000_000),
            &format!("head -c {}", mb * 40_000),
        ),
    )?;
    let small_run = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .arg("--cache")
            .arg(small.join("cache"))
            .current_dir(&small)
            .env("RELABEL_LOG", "warn");
        c
    };
    time(&mut small_run(&["run", "pipeline.yaml"]))?;
    let small_bytes = dir_size(&small.join("cache/objects"));
    let small_noop = median(times(reps, || small_run(&["run", "pipeline.yaml"]))?) * 1e3;
    println!(
        "relabel: no-op rerun median {small_noop:.1} ms with {:.1} MB of artifacts",
        small_bytes as f64 / 1e6
    );

    // DVC, the peer, on the same stages in the same run.
    let dvc = match dvc(&work, mb) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("dvc: skipped: {e:#}");
            json!({"skipped": format!("{e:#}")})
        }
    };
    let noop_ms = median(noop) * 1e3;
    let mut figures = json!({
        "stages": 10,
        "artifact_mb": artifact_bytes as f64 / 1e6,
        "repetitions": reps,
        "relabel": {
            "cold_run_s": cold,
            "noop_rerun_median_ms": noop_ms,
            "plan_median_ms": median(plan) * 1e3,
            "validate_median_ms": median(validate) * 1e3,
            "small_artifact_mb": small_bytes as f64 / 1e6,
            "small_noop_rerun_median_ms": small_noop,
        },
        "dvc": dvc,
        "target_noop_rerun_ms": 50.0,
        "meets_target": noop_ms < 50.0,
    });
    if let (Some(d), Some(p)) = (
        figures["dvc"]["noop_repro_median_ms"].as_f64(),
        figures["dvc"]["status_median_ms"].as_f64(),
    ) {
        figures["ratio_dvc_repro_over_relabel_run"] = json!(d / noop_ms);
        figures["ratio_dvc_status_over_relabel_plan"] =
            json!(p / figures["relabel"]["plan_median_ms"].as_f64().unwrap_or(1.0));
    }
    let ratio = figures["ratio_dvc_repro_over_relabel_run"].as_f64();
    figures["targets"] = json!([
        target("no-op rerun (ms)", "< 50", noop_ms, noop_ms < 50.0),
        target(
            "no-op rerun vs DVC's no-op repro (times faster)",
            ">= 50",
            ratio.unwrap_or(f64::NAN),
            ratio.is_some_and(|r| r >= 50.0)
        ),
    ]);
    Ok(figures)
}

fn dir_size(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// A throwaway venv for a benchmark's peer, `~/.cache/relabel/bench/NAME-venv`, with
/// `packages` installed the first time; returns the venv's folder.
pub fn bench_venv(name: &str, packages: &[&str]) -> Result<PathBuf> {
    let venv = home_cache().join(format!("bench/{name}-venv"));
    let marker = venv.join("relabel-installed.txt");
    let want = packages.join(" ");
    if std::fs::read_to_string(&marker)
        .map(|m| m != want)
        .unwrap_or(true)
    {
        eprintln!(
            "bench: installing {want} into a throwaway venv at {}",
            venv.display()
        );
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages))?;
        std::fs::write(&marker, &want)?;
    }
    Ok(venv)
}

fn dvc_bin() -> Result<PathBuf> {
    Ok(bench_venv("dvc", &["dvc==3.67.1"])?.join("bin/dvc"))
}

fn dvc(work: &Path, mb: usize) -> Result<Value> {
    let bin = dvc_bin()?;
    let dir = work.join("dvc");
    std::fs::create_dir_all(&dir)?;
    let git = |args: &[&str]| run(Command::new("git").args(args).current_dir(&dir));
    git(&["init", "-q"])?;
    git(&["config", "user.email", "bench@example.invalid"])?;
    git(&["config", "user.name", "bench"])?;
    let dvc = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args).current_dir(&dir).env("DVC_NO_ANALYTICS", "1");
        c
    };
    run(&mut dvc(&["init", "-q"]))?;
    std::fs::write(dir.join("dvc.yaml"), stages_dvc_yaml(mb))?;
    let cold = time(&mut dvc(&["repro", "-q"]))?;
    let reps = 5;
    let noop = times(reps, || dvc(&["repro", "-q"]))?;
    let status = times(reps, || dvc(&["status", "-q"]))?;
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "dvc {version}: cold {cold:.2} s, no-op repro median {:.1} ms, status median {:.1} ms",
        median(noop.clone()) * 1e3,
        median(status.clone()) * 1e3
    );
    Ok(json!({
        "version": version,
        "repetitions": reps,
        "cold_repro_s": cold,
        "noop_repro_median_ms": median(noop) * 1e3,
        "status_median_ms": median(status) * 1e3,
    }))
}
