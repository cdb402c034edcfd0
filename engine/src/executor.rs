//! Executors: where a node instance runs when not in this process. `slurm` submits it with
//! `sbatch` as `relabel node-exec` (which pulls the inputs from the remote cache, runs the
//! node there and pushes its entry), polls `squeue` (then `sacct` or `scontrol`) until it ends,
//! and cancels it with `scancel` when the run is interrupted.

use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// A node's `executor:` (or a manifest-level default for its kind, under `executors:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Executor {
    /// A Slurm cluster: the node runs as a batch job, through the remote cache.
    Slurm(SlurmSpec),
}

/// What the job asks Slurm for; anything unset is the cluster's default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--cpus-per-task`.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// `--mem`, e.g. `4G`.
    #[serde(default)]
    pub mem: Option<String>,
    /// `--gres=gpu:N`.
    #[serde(default)]
    pub gpus: Option<u32>,
    /// `--time`, e.g. `30:00` or `1-00:00:00`.
    #[serde(default)]
    pub time: Option<String>,
    /// Seconds between polls of the job's state.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
    /// More `sbatch` arguments, as given (e.g. `--account=lab`).
    #[serde(default)]
    pub sbatch_args: Vec<String>,
}

fn default_poll() -> f64 {
    1.0
}

impl Executor {
    /// Reads an `executor:` value; the error says what was expected.
    pub fn parse(v: &serde_json::Value) -> Result<Executor, String> {
        let e: Executor = serde_json::from_value(v.clone())
            .map_err(|e| format!("{e} (expected `slurm: {{partition, cpus, mem, gpus, time}}`)"))?;
        let Executor::Slurm(s) = &e;
        if !(s.poll_seconds.is_finite() && s.poll_seconds > 0.0) {
            return Err(format!(
                "slurm.poll_seconds must be above 0; found {}",
                s.poll_seconds
            ));
        }
        Ok(e)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Executor::Slurm(_) => "slurm",
        }
    }
}

/// How a finished job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Slurm's state: COMPLETED, FAILED, TIMEOUT, CANCELLED, OUT_OF_MEMORY, NODE_FAIL, ...
    pub state: String,
    /// `ExitCode` as Slurm gives it (`code:signal`).
    pub exit: String,
}

impl Ended {
    pub fn ok(&self) -> bool {
        self.state == "COMPLETED" && self.exit.split(':').next() == Some("0")
    }
}

/// A shell word: `'...'` with any `'` escaped.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

async fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("{what}: {e} (is Slurm installed and on PATH?)"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Submits `command` as a batch job named `name`, its output in `log` (`%j`: the job id; in
/// an array `%A_%a`: the array's id and the task's index); returns the job id. `array`, e.g.
/// `0-4` or `1,3`, makes it a job array (`--array`): one task per index, each seeing its index
/// in `SLURM_ARRAY_TASK_ID`.
pub async fn submit(
    spec: &SlurmSpec,
    name: &str,
    command: &[String],
    log: &Path,
    array: Option<&str>,
) -> Result<String, String> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={name}"),
        format!("--output={}", log.display()),
    ];
    if let Some(a) = array {
        args.push(format!("--array={a}"));
    }
    if let Some(p) = &spec.partition {
        args.push(format!("--partition={p}"));
    }
    if let Some(c) = spec.cpus {
        args.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &spec.mem {
        args.push(format!("--mem={m}"));
    }
    if let Some(g) = spec.gpus {
        args.push(format!("--gres=gpu:{g}"));
    }
    if let Some(t) = &spec.time {
        args.push(format!("--time={t}"));
    }
    args.extend(spec.sbatch_args.iter().cloned());
    let wrap = command
        .iter()
        .map(|w| quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    args.push(format!("--wrap=exec {wrap}"));
    let out = output(Command::new("sbatch").args(&args), "sbatch").await?;
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let id = out
        .lines()
        .last()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("sbatch printed no job id: {out:?}"));
    }
    Ok(id.to_string())
}

/// States in which a job has not ended.
const LIVE: &[&str] = &[
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
];

/// The job's state now: `Ok(None)` while it lives, its end once it ended.
pub async fn poll(id: &str) -> Result<Option<Ended>, String> {
    let listed = output(
        Command::new("squeue").args(["-h", "-t", "all", "-j", id, "-o", "%T"]),
        "squeue",
    )
    .await
    .unwrap_or_default();
    let state = listed.lines().next().unwrap_or("").trim().to_string();
    if LIVE.contains(&state.as_str()) {
        return Ok(None);
    }
    // Ended (or forgotten by squeue): accounting when the cluster keeps it, else the
    // controller's record.
    if let Ok(acct) = output(
        Command::new("sacct").args(["-n", "-P", "-X", "-j", id, "-o", "State,ExitCode"]),
        "sacct",
    )
    .await
    {
        if let Some((state, exit)) = acct.lines().next().and_then(|l| l.split_once('|')) {
            let state = state.split_whitespace().next().unwrap_or("").to_string();
            if LIVE.contains(&state.as_str()) {
                return Ok(None);
            }
            if !state.is_empty() {
                return Ok(Some(Ended {
                    state,
                    exit: exit.trim().to_string(),
                }));
            }
        }
    }
    let shown = output(
        Command::new("scontrol").args(["show", "job", "-o", id]),
        "scontrol show job",
    )
    .await
    .map_err(|e| format!("job {id} is neither queued nor known to accounting: {e}"))?;
    let field = |k: &str| show_field(&shown, k);
    let state = field("JobState=");
    if LIVE.contains(&state.as_str()) {
        return Ok(None);
    }
    Ok(Some(Ended {
        state,
        exit: field("ExitCode="),
    }))
}

/// How one task of a job array ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnd {
    pub task: usize,
    pub ended: Ended,
}

/// `123_4` -> 4; `123_[0-3]` (tasks not yet split off) and a plain `123` -> None.
fn task_of(job_id: &str) -> Option<usize> {
    job_id.split_once('_')?.1.parse().ok()
}

/// The array job's tasks once every one has ended (`Ok(None)` while any lives), each with
/// its end; `tasks` is how many were submitted.
pub async fn poll_array(id: &str, tasks: usize) -> Result<Option<Vec<TaskEnd>>, String> {
    // `-r`: one line per task, pending ones included.
    let listed = output(
        Command::new("squeue").args(["-h", "-r", "-t", "all", "-j", id, "-o", "%i|%T"]),
        "squeue",
    )
    .await
    .unwrap_or_default();
    if listed
        .lines()
        .filter_map(|l| l.split_once('|'))
        .any(|(_, st)| LIVE.contains(&st.trim()))
    {
        return Ok(None);
    }
    let mut ends: Vec<TaskEnd> = Vec::new();
    if let Ok(acct) = output(
        Command::new("sacct").args(["-n", "-P", "-X", "-j", id, "-o", "JobID,State,ExitCode"]),
        "sacct",
    )
    .await
    {
        for l in acct.lines() {
            let f: Vec<&str> = l.split('|').collect();
            if let (3, Some(task)) = (f.len(), task_of(f[0])) {
                let state = f[1].split_whitespace().next().unwrap_or("").to_string();
                if LIVE.contains(&state.as_str()) {
                    return Ok(None);
                }
                ends.push(TaskEnd {
                    task,
                    ended: Ended {
                        state,
                        exit: f[2].trim().to_string(),
                    },
                });
            }
        }
    }
    if ends.len() < tasks {
        ends.clear();
        let shown = output(
            Command::new("scontrol").args(["show", "job", "-o", id]),
            "scontrol show job",
        )
        .await
        .map_err(|e| format!("job array {id} is neither queued nor known to accounting: {e}"))?;
        for line in shown.lines() {
            let field = |k: &str| show_field(line, k);
            let state = field("JobState=");
            if LIVE.contains(&state.as_str()) {
                return Ok(None);
            }
            if let Ok(task) = field("ArrayTaskId=").parse() {
                ends.push(TaskEnd {
                    task,
                    ended: Ended {
                        state,
                        exit: field("ExitCode="),
                    },
                });
            }
        }
    }
    if ends.len() < tasks {
        // Tasks not split off yet are listed as one record: still to come.
        return Ok(None);
    }
    ends.sort_by_key(|t| t.task);
    Ok(Some(ends))
}

/// Waits for every task of the array job to end, polling every `every`.
pub async fn wait_array(id: &str, tasks: usize, every: Duration) -> Result<Vec<TaskEnd>, String> {
    loop {
        if let Some(ends) = poll_array(id, tasks).await? {
            return Ok(ends);
        }
        tokio::time::sleep(every).await;
    }
}

/// Indices as `--array` takes them: `0-4`, `1,3`, `0-2,5`.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        parts.push(if end > start {
            format!("{start}-{end}")
        } else {
            start.to_string()
        });
        i += 1;
    }
    parts.join(",")
}

/// Cancels the job (Ctrl-C on the controlling run).
pub async fn cancel(id: &str) {
    let _ = Command::new("scancel").arg(id).output().await;
}

/// Waits for the job to end, polling every `every`.
pub async fn wait(id: &str, every: Duration) -> Result<Ended, String> {
    loop {
        if let Some(end) = poll(id).await? {
            return Ok(end);
        }
        tokio::time::sleep(every).await;
    }
}

/// The value of `KEY=` in a line of `scontrol show job -o` (empty when absent).
fn show_field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_survive_quoting() {
        assert_eq!(quote("node-exec"), "node-exec");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn array_indices_are_written_as_ranges() {
        assert_eq!(array_spec(&[0, 1, 2, 3, 4]), "0-4");
        assert_eq!(array_spec(&[1, 3]), "1,3");
        assert_eq!(array_spec(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(array_spec(&[]), "");
        assert_eq!(task_of("123_4"), Some(4));
        assert_eq!(task_of("123_[0-3]"), None);
        assert_eq!(task_of("123"), None);
    }

    #[test]
    fn an_executor_is_checked_when_read() {
        let e =
            Executor::parse(&serde_json::json!({"slurm": {"cpus": 2, "time": "10:00"}})).unwrap();
        assert_eq!(e.name(), "slurm");
        let err = Executor::parse(&serde_json::json!({"slurm": {"cpu": 2}})).unwrap_err();
        assert!(err.contains("cpu"), "{err}");
        let err = Executor::parse(&serde_json::json!({"kubernetes": {}})).unwrap_err();
        assert!(err.contains("slurm"), "{err}");
        assert!(Executor::parse(&serde_json::json!({"slurm": {"poll_seconds": 0}})).is_err());
        assert!(Ended {
            state: "COMPLETED".into(),
            exit: "0:0".into()
        }
        .ok());
        assert!(!Ended {
            state: "COMPLETED".into(),
            exit: "1:0".into()
        }
        .ok());
        assert!(!Ended {
            state: "TIMEOUT".into(),
            exit: "0:15".into()
        }
        .ok());
    }
}
