//! Helpers shared by the end-to-end tests: a temporary project folder with a manifest, and
//! readers for run reports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    runs: usize,
    /// Environment variables every command gets.
    pub envs: Vec<(String, String)>,
}

impl Fixture {
    pub fn new(manifest: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), manifest).unwrap();
        Fixture {
            dir,
            runs: 0,
            envs: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `manifests/scripts/NAME` into the fixture's `scripts/`, as example manifests expect.
    pub fn add_script(&self, name: &str) {
        std::fs::create_dir_all(self.path().join("scripts")).unwrap();
        std::fs::copy(
            Path::new("manifests/scripts").join(name),
            self.path().join("scripts").join(name),
        )
        .unwrap();
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path().join(name), text).unwrap();
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_in(&self.cache(), args)
    }

    /// [`Fixture::cmd`] on another cache folder.
    pub fn cmd_in(&self, cache: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_relabel"));
        c.args(args)
            .arg("--cache")
            .arg(cache)
            .current_dir(self.path())
            .env("RELABEL_LOG", "warn");
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// Runs the pipeline; returns (exit code, report).
    pub fn run(&mut self, extra: &[&str]) -> (i32, Value) {
        self.runs += 1;
        let report = self.path().join(format!("report-{}.json", self.runs));
        let out = self
            .cmd(&["run", "p.yaml", "--report", report.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        let text = std::fs::read_to_string(&report).unwrap_or_else(|_| {
            panic!(
                "no report; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, serde_json::from_str(&text).unwrap())
    }

    pub fn spawn(&self, extra: &[&str]) -> Child {
        self.cmd(&["run", "p.yaml"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Renders the latest run with `relabel report` into `html/`; returns report.html's path.
    pub fn html_report(&self) -> PathBuf {
        let out = self.output(&["report", "latest", "--out", "html"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.path().join("html/report.html")
    }
}

/// instance -> status
pub fn statuses(report: &Value) -> BTreeMap<String, String> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["instance"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn with_status(report: &Value, status: &str) -> Vec<String> {
    statuses(report)
        .into_iter()
        .filter(|(_, s)| s == status)
        .map(|(k, _)| k)
        .collect()
}

/// instance -> {output -> digest}
pub fn artifacts(report: &Value) -> BTreeMap<String, BTreeMap<String, String>> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let outs = n["outputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v["digest"].as_str().unwrap().to_string()))
                .collect();
            (n["instance"].as_str().unwrap().to_string(), outs)
        })
        .collect()
}

/// A node's entry in a run report, by instance name.
pub fn node<'a>(report: &'a Value, instance: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["instance"] == instance)
        .unwrap_or_else(|| panic!("no node {instance} in the report"))
}

/// The path of an output of a node, from a run report.
pub fn output_path(report: &Value, instance: &str, output: &str) -> PathBuf {
    PathBuf::from(
        node(report, instance)["outputs"][output]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{instance} has no output {output}")),
    )
}

/// JSON lines of a file.
pub fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file under `p`.
pub fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Live (non-zombie) processes whose command line contains `marker` (`starts`: begins with it).
pub fn pids_with(marker: &str, starts: bool) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            == Some("Z");
        let hit = if starts {
            cmd.starts_with(marker)
        } else {
            cmd.contains(marker)
        };
        if hit && !zombie {
            out.push(pid);
        }
    }
    out
}

/// The tests' Python that `cargo xtask test` installs (pyarrow, seqeval, moto's S3 server);
/// `RELABEL_TEST_PYTHON` overrides.
pub fn test_python() -> PathBuf {
    let p = std::env::var_os("RELABEL_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            relabel_plugins::home::relabel_home().join("bench/pyarrow-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask test` installs it",
        p.display()
    );
    p
}

/// Two loops (one stopped by `until` after 3 rounds, one by `max_rounds` after 2) between plain nodes.
pub const LOOPS: &str = r#"
version: 1
name: loops
nodes:
  - id: seed
    kind: command
    config: {run: "echo 0 > ${outputs.n}", outputs: [n]}
  - id: grow
    loop:
      max_rounds: 10
      until: "step.n >= 3"
      carry:
        n: {from: seed, next: step.n}
    nodes:
      - id: step
        kind: command
        inputs: {n: grow.n}
        config:
          run: "n=$(( $(cat ${inputs.n}) + 1 )); echo $n > ${outputs.n}; echo \"{\\\"n\\\": $n}\" > ${metrics}"
          outputs: [n]
  - id: capped
    loop:
      max_rounds: 2
      until: "tick.n > 100"
      carry:
        n: {from: grow.n, next: tick.n}
    nodes:
      - id: tick
        kind: command
        inputs: {n: capped.n}
        config:
          run: "n=$(( $(cat ${inputs.n}) + 10 )); echo $n > ${outputs.n}; echo \"{\\\"n\\\": $n}\" > ${metrics}"
          outputs: [n]
  - id: result
    kind: command
    inputs: {n: capped.n}
    config: {run: "cp ${inputs.n} ${outputs.n}", outputs: [n]}
"#;
