//! GitOps commands: `status` against relabel.lock, the remote cache's options, and the pull-request summary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use relabel_engine::cache::{Cache, LockWait};
use relabel_engine::lock::{self, LockFile, LockedNode, PipelineLock};
use relabel_engine::remote::Remote;
use relabel_engine::report::md_text;
use relabel_engine::runner::{self, LockBasis};
use relabel_engine::Pipeline;

use crate::{code, RemoteArgs};

/// The remote named by `--remote`, `$RELABEL_REMOTE` or the manifest's `remote:`, unless
/// `--no-remote`.
pub fn open_remote(
    args: &RemoteArgs,
    manifest: Option<&str>,
) -> Result<Option<Arc<Remote>>, ExitCode> {
    if args.no_remote {
        return Ok(None);
    }
    let url = args
        .remote
        .clone()
        .or_else(|| {
            std::env::var("RELABEL_REMOTE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .or_else(|| manifest.map(String::from));
    let Some(url) = url else {
        if args.remote_write {
            eprintln!(
                "relabel: --remote-write needs a remote (--remote, $RELABEL_REMOTE or the manifest's remote:)"
            );
            return Err(ExitCode::from(code::INVALID));
        }
        return Ok(None);
    };
    Remote::open(&url, args.remote_write)
        .map(|r| Some(Arc::new(r)))
        .map_err(|e| {
            eprintln!("relabel: {e}");
            ExitCode::from(code::INVALID)
        })
}

/// The manifest's file name, as the lock records it.
pub fn manifest_name(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| file.display().to_string())
}

/// `relabel status`: which node instances are stale against the lock, and why.
pub fn status(
    p: &Pipeline,
    cache_dir: &Path,
    exit_code: bool,
    json: bool,
) -> Result<ExitCode, ExitCode> {
    let path = lock::path_for(&p.source.dir);
    let file = LockFile::read(&path).map_err(|e| {
        eprintln!("relabel: {e}");
        ExitCode::from(code::INVALID)
    })?;
    let empty = PipelineLock::default();
    let section = file.as_ref().and_then(|f| f.pipelines.get(&p.name));
    // The cache's memo of file digests saves re-hashing large data files; a busy or absent
    // cache is no reason to wait or to create one.
    let cache = cache_dir
        .join("db")
        .exists()
        .then(|| Cache::open(cache_dir, LockWait::NoWait).ok())
        .flatten();
    let steps = runner::plan_against(
        p,
        &LockBasis {
            lock: section.unwrap_or(&empty),
            cache: cache.as_ref(),
        },
        &[],
    );
    let stale = steps.iter().filter(|s| s.action != "cached").count();
    let removed: Vec<&LockedNode> = section
        .map(|s| {
            s.nodes
                .iter()
                .filter(|n| p.unit_of(n.id()).is_none())
                .collect()
        })
        .unwrap_or_default();
    if json {
        let rows: Vec<serde_json::Value> = steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "node": s.instance,
                    "kind": s.kind,
                    "state": if s.action == "cached" { "up to date" } else { "stale" },
                    "reason": if s.action == "cached" { "" } else { s.reason.as_str() },
                })
            })
            .chain(removed.iter().map(|n| {
                serde_json::json!({"node": n.instance, "kind": n.kind, "state": "stale", "reason": "removed from the manifest"})
            }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "lock": path.display().to_string(),
                "pipeline": p.name,
                "up_to_date": stale == 0 && removed.is_empty() && section.is_some(),
                "nodes": rows,
            }))
            .expect("status serializes")
        );
    } else {
        if section.is_none() {
            println!(
                "{} has no lock for pipeline \"{}\": every node is stale",
                path.display(),
                p.name
            );
        }
        println!("{:<28} {:<20} {:<11} reason", "node", "kind", "state");
        for s in &steps {
            let (state, reason) = if s.action == "cached" {
                ("up to date", "")
            } else {
                ("stale", s.reason.as_str())
            };
            println!("{:<28} {:<20} {:<11} {reason}", s.instance, s.kind, state);
        }
        for n in &removed {
            println!(
                "{:<28} {:<20} {:<11} removed from the manifest",
                n.instance, n.kind, "stale"
            );
        }
        println!(
            "{} stale, {} up to date",
            stale + removed.len(),
            steps.len() - stale
        );
    }
    let up_to_date = stale == 0 && removed.is_empty() && section.is_some();
    Ok(ExitCode::from(if exit_code && !up_to_date { 1 } else { 0 }))
}

/// The lock at git ref `rev`, read with `git show` in the lock's folder; `None` when that
/// commit has no lock file.
fn lock_at(dir: &Path, rev: &str) -> Result<Option<LockFile>, String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .arg("show")
        .arg(format!("{rev}:./{}", lock::LOCK_FILE))
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("does not exist") || err.contains("exists on disk, but not in") {
            return Ok(None);
        }
        return Err(format!(
            "git show {rev}:{}: {}",
            lock::LOCK_FILE,
            err.trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    LockFile::parse(&text)
        .map(Some)
        .map_err(|e| format!("{rev}:{}:{e}", lock::LOCK_FILE))
}

/// Scalar figures of a node's metrics, nested objects one level deep as `a.b`.
fn figures(m: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (k, v) in m {
        match v {
            serde_json::Value::Number(n) => out.extend(n.as_f64().map(|f| (k.clone(), f))),
            serde_json::Value::Object(inner) => {
                for (k2, v2) in inner {
                    if let Some(f) = v2.as_f64() {
                        out.push((format!("{k}.{k2}"), f));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn num(f: Option<f64>) -> String {
    match f {
        None => "–".into(),
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        Some(f) => format!("{f:.4}"),
    }
}

fn delta(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a == b => "0".into(),
        (Some(a), Some(b)) => {
            let d = b - a;
            if d.fract() == 0.0 && d.abs() < 1e15 {
                format!("{d:+.0}")
            } else {
                format!("{d:+.4}")
            }
        }
        _ => String::new(),
    }
}

/// `relabel report --format markdown [--baseline REF]`: the run and, against the lock at
/// `REF`, which nodes changed and why, the evaluators' figures side by side with deltas, and
/// the other nodes' figures that moved (flags, label changes).
pub fn summary(
    report: Option<&serde_json::Value>,
    manifest: Option<&Path>,
    baseline: Option<&str>,
) -> Result<String, String> {
    let manifest_path = manifest.map(PathBuf::from).or_else(|| {
        report
            .and_then(|r| r["manifest"].as_str())
            .map(PathBuf::from)
    });
    let Some(manifest_path) = manifest_path else {
        return Err("no manifest: give --manifest".into());
    };
    let dir = manifest_path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let lock_path = lock::path_for(&dir);
    let current = LockFile::read(&lock_path)?
        .ok_or_else(|| format!("{}: no lock (run the pipeline first)", lock_path.display()))?;
    let name = match report.and_then(|r| r["pipeline"].as_str()) {
        Some(n) => n.to_string(),
        None if current.pipelines.len() == 1 => {
            current.pipelines.keys().next().cloned().unwrap_or_default()
        }
        None => {
            return Err(format!(
                "{} holds several pipelines; name the run (its report) to pick one",
                lock_path.display()
            ))
        }
    };
    let now = current
        .pipelines
        .get(&name)
        .ok_or_else(|| format!("{}: no lock for pipeline \"{name}\"", lock_path.display()))?;
    let mut s = String::new();
    let _ = writeln!(s, "## relabel: {}\n", md_text(&name));
    if let Some(r) = report {
        let nodes = r["nodes"].as_array().cloned().unwrap_or_default();
        let count = |st: &str| nodes.iter().filter(|n| n["status"] == st).count();
        let _ = writeln!(
            s,
            "Run {}: **{}**. {} ran, {} cached, {} restored from the remote, {} failed.\n",
            md_text(r["run_id"].as_str().unwrap_or("?")),
            md_text(r["status"].as_str().unwrap_or("?")),
            count("ran"),
            count("cached"),
            count("restored"),
            count("failed")
        );
    }
    let Some(rev) = baseline else {
        let _ = writeln!(s, "{} node instances in the lock.", now.nodes.len());
        return Ok(s);
    };
    let base_file = lock_at(&dir, rev)?;
    let empty = PipelineLock::default();
    let base = base_file
        .as_ref()
        .and_then(|f| f.pipelines.get(&name))
        .unwrap_or(&empty);
    if base_file.is_none() {
        let _ = writeln!(
            s,
            "`{}` has no {} here: every node is new.\n",
            md_text(rev),
            lock::LOCK_FILE
        );
    }
    // Node changes.
    let mut rows = Vec::new();
    let mut unchanged = 0;
    for n in &now.nodes {
        match base.node(&n.instance) {
            None => rows.push((n.instance.clone(), n.kind.clone(), "new".to_string())),
            Some(b) if b.key == n.key && b.outputs == n.outputs => unchanged += 1,
            Some(b) if b.key == n.key => rows.push((
                n.instance.clone(),
                n.kind.clone(),
                "same inputs, different outputs (not deterministic?)".into(),
            )),
            Some(b) => {
                let why = lock::changes(&b.parts(), &n.parts());
                let why = if why.is_empty() {
                    "recomputed".to_string()
                } else {
                    why.join("; ")
                };
                rows.push((n.instance.clone(), n.kind.clone(), why));
            }
        }
    }
    for b in &base.nodes {
        if now.node(&b.instance).is_none() {
            rows.push((b.instance.clone(), b.kind.clone(), "removed".into()));
        }
    }
    let _ = writeln!(
        s,
        "Against `{}`: {} node instance{} changed, {unchanged} unchanged.\n",
        md_text(rev),
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    if !rows.is_empty() {
        let _ = writeln!(s, "| node | kind | change |\n|---|---|---|");
        for (i, k, why) in &rows {
            let _ = writeln!(s, "| {} | {} | {} |", md_text(i), md_text(k), md_text(why));
        }
        s.push('\n');
    }
    // Figures.
    let table =
        |s: &mut String, title: &str, only_changed: bool, pick: &dyn Fn(&LockedNode) -> bool| {
            let mut lines = Vec::new();
            let mut instances: Vec<&str> = now
                .nodes
                .iter()
                .filter(|n| pick(n))
                .map(|n| n.instance.as_str())
                .collect();
            for b in base.nodes.iter().filter(|n| pick(n)) {
                if !instances.contains(&b.instance.as_str()) {
                    instances.push(&b.instance);
                }
            }
            for inst in instances {
                let a: Vec<(String, f64)> = base
                    .node(inst)
                    .map(|n| figures(&n.metrics))
                    .unwrap_or_default();
                let b: Vec<(String, f64)> = now
                    .node(inst)
                    .map(|n| figures(&n.metrics))
                    .unwrap_or_default();
                let mut names: Vec<&String> = b.iter().map(|(k, _)| k).collect();
                for (k, _) in &a {
                    if !names.contains(&k) {
                        names.push(k);
                    }
                }
                for k in names {
                    let va = a.iter().find(|(x, _)| x == k).map(|(_, v)| *v);
                    let vb = b.iter().find(|(x, _)| x == k).map(|(_, v)| *v);
                    if only_changed && va == vb {
                        continue;
                    }
                    lines.push(format!(
                        "| {} | {} | {} | {} | {} |",
                        md_text(inst),
                        md_text(k),
                        num(va),
                        num(vb),
                        delta(va, vb)
                    ));
                }
            }
            if lines.is_empty() {
                return;
            }
            let shown = lines.len().min(60);
            let _ = writeln!(
                s,
                "### {title}\n\n| node | metric | `{}` | this | Δ |\n|---|---|---:|---:|---:|",
                md_text(rev)
            );
            for l in &lines[..shown] {
                let _ = writeln!(s, "{l}");
            }
            if lines.len() > shown {
                let _ = writeln!(s, "\n{} more rows left out.", lines.len() - shown);
            }
            s.push('\n');
        };
    table(&mut s, "Evaluators (the fixed test)", false, &|n| {
        n.kind == "evaluator"
    });
    table(
        &mut s,
        "Other figures that moved (flags, judgements, label changes)",
        true,
        &|n| n.kind != "evaluator",
    );
    Ok(s)
}
