//! `relabel node-exec`: runs one node instance given its key, on a machine that shares only
//! the remote cache with the run that asked for it (a Slurm job's node): pulls the inputs from
//! the remote, checks the key, runs the node, and pushes its entry; the asking run restores
//! that entry as if the node had run there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use relabel_engine::cache::{Cache, LockWait};
use relabel_engine::plugin::{Artifact, Inputs, Registry};
use relabel_engine::progress::ProgressSink;
use relabel_engine::remote::Remote;
use relabel_engine::resolve::{NodeSpec, Unit};
use relabel_engine::runner::{self, Here};
use tokio_util::sync::CancellationToken;

use crate::code;

/// What `node-exec` is asked to run (its command line).
#[derive(clap::Args)]
pub struct Job {
    pub file: PathBuf,
    /// The node's id
    #[arg(long)]
    pub node: String,
    /// The loop round, for a node in a loop body
    #[arg(long)]
    pub round: Option<u32>,
    /// The key the asking run computed; a different key here is an error
    #[arg(long)]
    pub key: String,
    /// An input's artifact: NAME=DIGEST; repeatable
    #[arg(long = "input", value_name = "NAME=DIGEST", value_parser = crate::parse_set)]
    pub inputs: Vec<(String, String)>,
    /// The remote cache (written to)
    #[arg(long)]
    pub remote: String,
    /// Override a declared param, as the asking run did: NAME=VALUE; repeatable
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = crate::parse_set)]
    pub sets: Vec<(String, String)>,
    /// A scratch cache folder to keep (default: a temporary one, removed after)
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Compute only piece N of the node (a k-fold predictor's fold N), pushed under the
    /// piece's own key; the asking run merges the pieces
    #[arg(long, value_name = "N", conflicts_with = "shard_from_env")]
    pub shard: Option<usize>,
    /// The piece is `$SLURM_ARRAY_TASK_ID` (a task of a job array)
    #[arg(long)]
    pub shard_from_env: bool,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("relabel node-exec: {msg}");
    ExitCode::from(code)
}

pub fn run(job: Job, registry: &Registry) -> Result<ExitCode, ExitCode> {
    let started = runner::unix_now();
    let shard = match (job.shard, job.shard_from_env) {
        (Some(i), _) => Some(i),
        (None, true) => Some(
            std::env::var("SLURM_ARRAY_TASK_ID")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    fail(
                        code::INVALID,
                        "--shard-from-env: SLURM_ARRAY_TASK_ID is not set to a number (is this a task of a job array?)",
                    )
                })?,
        ),
        (None, false) => None,
    };
    let p = crate::load_with(&job.file, registry, &job.sets)?;
    let spec: NodeSpec = p
        .units
        .iter()
        .flat_map(|u| match u {
            Unit::Node(s) => vec![s.clone()],
            Unit::Loop(l) => l.body.clone(),
        })
        .find(|s| s.id == job.node)
        .ok_or_else(|| {
            fail(
                code::INVALID,
                format!("{}: no node \"{}\"", job.file.display(), job.node),
            )
        })?;
    let instance = match job.round {
        Some(r) => format!("{}@{r}", job.node),
        None => job.node.clone(),
    };
    let scratch = job.cache.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "relabel-node-exec-{}-{}",
            &job.key[..12.min(job.key.len())],
            std::process::id()
        ))
    });
    let cache = Arc::new(
        Cache::open(&scratch, LockWait::Wait).map_err(|e| fail(code::FAILED, e.to_string()))?,
    );
    let remote = Remote::open(&job.remote, true).map_err(|e| fail(code::INVALID, e))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(code::FAILED, e))?;
    let result = rt.block_on(exec(
        &job,
        &spec,
        (&instance, shard, started),
        &cache,
        &remote,
        &p.source.dir,
    ));
    if job.cache.is_none() {
        drop(cache);
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

async fn exec(
    job: &Job,
    spec: &NodeSpec,
    (instance, shard, started): (&str, Option<usize>, f64),
    cache: &Arc<Cache>,
    remote: &Remote,
    manifest_dir: &Path,
) -> Result<ExitCode, ExitCode> {
    let mut digests = BTreeMap::new();
    for (name, d) in &job.inputs {
        if !spec.inputs.contains_key(name) {
            return Err(fail(
                code::INVALID,
                format!("node \"{}\" has no input \"{name}\"", spec.id),
            ));
        }
        digests.insert(name.clone(), d.clone());
    }
    if let Some(missing) = spec.inputs.keys().find(|n| !digests.contains_key(*n)) {
        return Err(fail(
            code::INVALID,
            format!("input \"{missing}\" not given (--input {missing}=DIGEST)"),
        ));
    }
    // The key, as this machine sees the manifest and its files: it must be the asker's.
    let parts = {
        let digest = |p: &Path| cache.file_digest(p).map_err(|e| e.to_string());
        runner::key_parts(spec, job.round, &digests, &digest, manifest_dir)
            .map_err(|e| fail(code::FAILED, e))?
    };
    if parts.key() != job.key {
        return Err(fail(
            code::INVALID,
            format!(
                "node \"{instance}\" has key {} here, not the {} it was sent to compute: the manifest, its files or relabel differ on this machine",
                &parts.key()[..12],
                &job.key[..12.min(job.key.len())]
            ),
        ));
    }
    let wanted: BTreeSet<String> = digests.values().cloned().collect();
    remote
        .pull_objects(cache, &wanted)
        .await
        .map_err(|e| fail(code::FAILED, format!("pulling the inputs: {e}")))?;
    let inputs: Inputs = digests
        .iter()
        .map(|(n, d)| {
            (
                n.clone(),
                Artifact {
                    path: cache.object_path(d),
                    digest: d.clone(),
                },
            )
        })
        .collect();
    let cancel = CancellationToken::new();
    let watcher = cancel.clone();
    // Slurm signals a job it cancels or times out with SIGTERM first.
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
        watcher.cancel();
    });
    let progress = ProgressSink::hidden();
    let here = Here {
        cache,
        run_id: "node-exec",
        cancel: &cancel,
        progress: &progress,
    };
    if let Some(i) = shard {
        let n = spec.plugin.shards(&spec.config);
        if i >= n {
            return Err(fail(
                code::INVALID,
                format!("node \"{instance}\" splits into {n} pieces; there is no piece {i}"),
            ));
        }
    }
    let part = match shard {
        Some(i) => runner::Part::Shard(i),
        None => runner::Part::Whole(Vec::new()),
    };
    let what = match shard {
        Some(i) => format!("node \"{instance}\" piece {i}"),
        None => format!("node \"{instance}\""),
    };
    let key = match shard {
        Some(i) => runner::shard_key(&job.key, i),
        None => job.key.clone(),
    };
    let mut entry = runner::execute_part(
        &here,
        spec,
        job.round,
        instance,
        inputs,
        manifest_dir.to_path_buf(),
        part,
    )
    .await
    .map_err(|(stop, msg)| match stop {
        runner::Stop::Cancelled => fail(code::CANCELLED, "cancelled"),
        _ => fail(code::FAILED, format!("{what}: {msg}")),
    })?;
    // When the job itself began: the asking run subtracts its submission time from it.
    if shard.is_some() {
        entry
            .metrics
            .insert("job_started_unix".into(), serde_json::json!(started));
    }
    cache
        .store()
        .put(&key, &entry)
        .and_then(|_| cache.store().flush())
        .map_err(|e| fail(code::FAILED, e))?;
    remote
        .push_one(cache, &key)
        .await
        .map_err(|e| fail(code::FAILED, format!("pushing the result: {e}")))?;
    eprintln!(
        "relabel node-exec: {what} ran in {:.1} s; entry {} pushed to {}",
        entry.seconds,
        &key[..12],
        remote.url()
    );
    Ok(ExitCode::SUCCESS)
}
