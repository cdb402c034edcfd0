//! The `relabel-ml` worker: finding it, and running a task in it with progress and cancellation.

use std::path::PathBuf;
use std::process::Stdio;

use relabel_engine::plugin::{Metrics, NodeContext, NodeError};
use tokio::io::{AsyncBufReadExt, BufReader};

/// `$RELABEL_ML_BIN`, else `relabel-ml` beside the running executable (or its parent folder,
/// for test binaries under `target/*/deps`), else `relabel-ml` on the PATH.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("RELABEL_ML_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("relabel-ml");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("relabel-ml")
}

pub use relabel_tasks::protocol::WorkerLine;

/// Runs `relabel-ml task TASK REQUEST.json` and returns its metrics. The worker is killed if
/// the node is cancelled (the future is dropped).
pub async fn run_task(
    ctx: &NodeContext,
    task: &str,
    request: &impl serde::Serialize,
) -> Result<Metrics, NodeError> {
    let req_path = ctx.work_dir.join(format!("{task}-request.json"));
    std::fs::write(
        &req_path,
        serde_json::to_vec_pretty(request).map_err(|e| NodeError::Failed(e.to_string()))?,
    )
    .map_err(|e| NodeError::io("writing the worker request", e))?;
    let log_path = ctx.work_dir.join(format!("{task}-worker.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| NodeError::io("worker log", e))?;
    let bin = path();
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["task", task])
        .arg(&req_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    // A SIGKILLed relabel must not leave the worker training on.
    relabel_engine::child::die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| NodeError::Failed(format!("cannot start the ML worker {}: {e} (build it with `cargo build --workspace --bins`, or set RELABEL_ML_BIN)", bin.display())))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut metrics = None;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| NodeError::io("reading the worker", e))?
    {
        match serde_json::from_str::<WorkerLine>(&line) {
            Ok(WorkerLine::Progress { len, inc, msg }) => {
                if let Some(n) = len {
                    ctx.progress.set_length(n);
                }
                if let Some(n) = inc {
                    ctx.progress.inc(n);
                }
                if let Some(m) = msg {
                    tracing::info!(parent: &ctx.span, "{m}");
                    ctx.progress.set_message(m);
                }
            }
            Ok(WorkerLine::Metrics(m)) => metrics = Some(m),
            Err(_) => tracing::debug!(parent: &ctx.span, "worker: {line}"),
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| NodeError::io("waiting for the worker", e))?;
    if !status.success() {
        return Err(NodeError::Failed(format!(
            "the ML worker failed ({status}) in task {task}:\n{}",
            relabel_engine::child::log_tail(&log_path, 12)
        )));
    }
    metrics.ok_or_else(|| {
        NodeError::Failed(format!(
            "the ML worker finished task {task} without reporting metrics"
        ))
    })
}
