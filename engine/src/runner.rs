//! The runner: executes a pipeline on tokio, concurrently where the DAG allows, skipping what is cached.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::{canonical_json, Cache, Digest, Entry, KeyParts, LastRecord};
use crate::lock::{changes, LockMode, PipelineLock};
use crate::plugin::{Artifact, Inputs, Metrics, NodeContext, NodeError};
use crate::progress::ProgressSink;
use crate::remote::{Remote, RemoteReport};
use crate::resolve::{InputRef, LoopSpec, NodeSpec, Pipeline, Unit};

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Most nodes running at once.
    pub jobs: usize,
    /// Run only these nodes and what they need (all when empty).
    pub targets: Vec<String>,
    /// Run these nodes even when cached.
    pub force: Vec<String>,
    pub progress: ProgressSink,
    /// The pipeline's section of the lock file, when there is one.
    pub lock: Option<Arc<PipelineLock>>,
    pub lock_mode: LockMode,
    /// A remote cache: read on a local miss; written after the run when it allows writes.
    pub remote: Option<Arc<Remote>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            targets: Vec::new(),
            force: Vec::new(),
            progress: ProgressSink::hidden(),
            lock: None,
            lock_mode: LockMode::Update,
            remote: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ran,
    Cached,
    /// Restored from the remote cache.
    Restored,
    Failed,
    Skipped,
    /// Waiting on work handed elsewhere (a batch); not recorded, rerun to collect.
    Pending,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    pub digest: Digest,
    pub path: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Failed,
    Cancelled,
    /// Nothing failed, but a node waits on work handed elsewhere (a batch): run again later.
    Pending,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Pending => "pending",
        })
    }
}

/// One node instance in a run report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: String,
    /// `id`, or `id@round` inside a loop.
    pub instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    pub kind: String,
    pub status: Status,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What the key was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<KeyParts>,
    pub metrics: Metrics,
    pub outputs: BTreeMap<String, OutputReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a loop ended.
#[derive(Debug, Clone, Serialize)]
pub struct LoopReport {
    pub id: String,
    pub rounds: u32,
    /// `until`, `max_rounds`, `failed` or `cancelled`.
    pub stopped_by: String,
}

/// What a run did, node by node.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub pipeline: String,
    pub manifest: String,
    pub started: String,
    pub seconds: f64,
    pub status: RunStatus,
    pub nodes: Vec<NodeReport>,
    pub loops: Vec<LoopReport>,
    /// What moved to and from the remote cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteReport>,
}

impl RunReport {
    pub fn count(&self, status: Status) -> usize {
        self.nodes.iter().filter(|n| n.status == status).count()
    }
}

/// A produced value: outputs by name, and metrics.
#[derive(Debug, Clone, Default)]
struct Produced {
    outputs: BTreeMap<String, Digest>,
    metrics: Metrics,
}

type Table = Arc<Mutex<HashMap<String, Produced>>>;

struct Shared {
    pipeline: Arc<Pipeline>,
    cache: Arc<Cache>,
    opts: RunOptions,
    cancel: CancellationToken,
    run_id: String,
    permits: Semaphore,
    reports: Mutex<Vec<NodeReport>>,
    loops: Mutex<Vec<LoopReport>>,
}

/// Why a node or loop did not finish.
#[derive(Debug, Clone)]
pub enum Stop {
    Failed,
    Cancelled,
    /// The node waits on a batch; its dependents do not start, independent nodes go on.
    Pending,
}

/// Where a node's inputs come from in one round.
#[derive(Clone)]
struct Scope {
    top: Table,
    /// The body's outputs this round, when running inside a loop.
    round: Option<(String, Table, BTreeMap<String, Digest>)>,
}

impl Scope {
    fn lookup(&self, r: &InputRef) -> Option<Digest> {
        match r {
            InputRef::Node { node, output } => {
                if let Some((_, table, _)) = &self.round {
                    if let Some(p) = table.lock().expect("table lock").get(node) {
                        return p.outputs.get(output).cloned();
                    }
                }
                self.top
                    .lock()
                    .expect("table lock")
                    .get(node)?
                    .outputs
                    .get(output)
                    .cloned()
            }
            InputRef::Carry { loop_id, name } => {
                if let Some((lid, _, carries)) = &self.round {
                    if lid == loop_id {
                        return carries.get(name).cloned();
                    }
                }
                self.top
                    .lock()
                    .expect("table lock")
                    .get(loop_id)?
                    .outputs
                    .get(name)
                    .cloned()
            }
        }
    }
}

/// A fresh run id: UTC time and process id.
pub fn new_run_id() -> String {
    let t = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let compact: String = t.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{}-{}", compact.trim_end_matches('Z'), std::process::id())
}

/// Digests a referenced file (through the cache's memo of file digests, or directly).
pub type FileDigester<'a> = &'a dyn Fn(&std::path::Path) -> Result<Digest, String>;

pub fn key_parts(
    spec: &NodeSpec,
    round: Option<u32>,
    inputs: &BTreeMap<String, Digest>,
    digest: FileDigester,
    manifest_dir: &std::path::Path,
) -> Result<KeyParts, String> {
    let mut files = BTreeMap::new();
    for f in &spec.files {
        let d =
            digest(f).map_err(|e| format!("node \"{}\": file {}: {e}", spec.id, f.display()))?;
        let shown = f
            .strip_prefix(manifest_dir)
            .unwrap_or(f)
            .display()
            .to_string();
        files.insert(shown, d);
    }
    Ok(KeyParts {
        kind: spec.plugin.kind().to_string(),
        version: spec.plugin.version().to_string(),
        config: if spec.resources.is_empty() {
            blake3::hash(canonical_json(&spec.config).as_bytes())
        } else {
            // The resources' output-affecting parts join the config's digest, each under its
            // section's name.
            let mut keyed = serde_json::Map::new();
            keyed.insert("config".into(), spec.config.clone());
            for (section, res) in &spec.resources {
                keyed.insert(section.clone(), res.key.clone());
            }
            blake3::hash(canonical_json(&serde_json::Value::Object(keyed)).as_bytes())
        }
        .to_hex()
        .to_string(),
        inputs: inputs.clone(),
        files,
        round,
    })
}

fn instance_name(id: &str, round: Option<u32>) -> String {
    match round {
        Some(r) => format!("{id}@{r}"),
        None => id.to_string(),
    }
}

fn scope_key(pipeline: &str, instance: &str) -> String {
    format!("{pipeline}/{instance}")
}

/// Runs `pipeline` on `cache`. Cancelling `cancel` stops it cleanly: running nodes are stopped,
/// nothing half-done is recorded, and the next run resumes from what finished.
pub async fn run(
    pipeline: Arc<Pipeline>,
    cache: Arc<Cache>,
    opts: RunOptions,
    cancel: CancellationToken,
) -> Result<RunReport, String> {
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let selected = select_units(&pipeline, &opts.targets)?;
    for f in &opts.force {
        if pipeline.unit_of(f).is_none() {
            return Err(format!("--force {f}: no node has that id"));
        }
    }
    let shared = Arc::new(Shared {
        permits: Semaphore::new(opts.jobs.max(1)),
        pipeline: pipeline.clone(),
        cache,
        opts,
        cancel,
        run_id: new_run_id(),
        reports: Mutex::new(Vec::new()),
        loops: Mutex::new(Vec::new()),
    });
    if let Some(remote) = &shared.opts.remote {
        remote.pull_memo(&shared.cache).await;
    }
    let top: Table = Arc::default();
    let n = pipeline.units.len();
    let outcome = {
        let shared = shared.clone();
        let top = top.clone();
        schedule(
            &pipeline.dag.deps,
            &pipeline.dag.order,
            &selected,
            &shared.cancel.clone(),
            move |i| {
                let shared = shared.clone();
                let top = top.clone();
                async move {
                    match &shared.pipeline.units[i] {
                        Unit::Node(spec) => {
                            let scope = Scope {
                                top: top.clone(),
                                round: None,
                            };
                            let p = run_node(shared.clone(), spec.clone(), None, scope).await?;
                            top.lock().expect("table lock").insert(spec.id.clone(), p);
                            Ok(())
                        }
                        Unit::Loop(l) => {
                            let p = run_loop(shared.clone(), l.clone(), top.clone()).await?;
                            top.lock().expect("table lock").insert(l.id.clone(), p);
                            Ok(())
                        }
                    }
                }
            },
        )
        .await
    };
    // Units that never started are reported as skipped.
    for (i, o) in outcome.iter().enumerate().take(n) {
        if selected[i] && *o == Outcome::NotStarted {
            let u = &pipeline.units[i];
            let specs: Vec<&NodeSpec> = match u {
                Unit::Node(s) => vec![s],
                Unit::Loop(l) => l.body.iter().collect(),
            };
            for s in specs {
                shared
                    .reports
                    .lock()
                    .expect("reports lock")
                    .push(NodeReport {
                        id: s.id.clone(),
                        instance: s.id.clone(),
                        round: None,
                        kind: s.plugin.kind().to_string(),
                        status: Status::Skipped,
                        seconds: 0.0,
                        key: None,
                        parts: None,
                        metrics: Metrics::new(),
                        outputs: BTreeMap::new(),
                        error: None,
                    });
            }
        }
    }
    let _ = shared.cache.store().flush();
    let status = if shared.cancel.is_cancelled() {
        RunStatus::Cancelled
    } else if outcome.contains(&Outcome::Failed) {
        RunStatus::Failed
    } else if outcome.contains(&Outcome::Pending) {
        RunStatus::Pending
    } else {
        RunStatus::Ok
    };
    let mut nodes = std::mem::take(&mut *shared.reports.lock().expect("reports lock"));
    // Report in manifest order, rounds ascending.
    let order: HashMap<String, usize> = pipeline
        .all_ids()
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    nodes.sort_by_key(|r| {
        (
            r.round.unwrap_or(0),
            order.get(&r.id).copied().unwrap_or(usize::MAX),
        )
    });
    nodes.sort_by_key(|r| {
        let u = pipeline.unit_of(&r.id).unwrap_or(usize::MAX);
        pipeline
            .dag
            .order
            .iter()
            .position(|x| *x == u)
            .unwrap_or(usize::MAX)
    });
    let loops = std::mem::take(&mut *shared.loops.lock().expect("loops lock"));
    if let Some(remote) = &shared.opts.remote {
        if remote.writes() {
            let keys: Vec<String> = nodes
                .iter()
                .filter(|n| matches!(n.status, Status::Ran | Status::Cached))
                .filter_map(|n| n.key.clone())
                .collect();
            remote.push(&shared.cache, &keys).await;
        }
    }
    Ok(RunReport {
        run_id: shared.run_id.clone(),
        pipeline: pipeline.name.clone(),
        manifest: pipeline.source.name.clone(),
        started: humantime::format_rfc3339_seconds(started_at).to_string(),
        seconds: t0.elapsed().as_secs_f64(),
        status,
        nodes,
        loops,
        remote: shared.opts.remote.as_ref().map(|r| r.report()),
    })
}

fn select_units(pipeline: &Pipeline, targets: &[String]) -> Result<Vec<bool>, String> {
    if targets.is_empty() {
        return Ok(vec![true; pipeline.units.len()]);
    }
    let mut idx = Vec::new();
    for t in targets {
        match pipeline.unit_of(t) {
            Some(i) => idx.push(i),
            None => {
                let ids = pipeline.all_ids();
                let hint = crate::diag::did_you_mean(t, ids.iter().map(String::as_str))
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                return Err(format!("--target {t}: no node has that id{hint}"));
            }
        }
    }
    Ok(pipeline.dag.ancestors_of(&idx))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    NotStarted,
    Done,
    Failed,
    /// Waiting on a batch: its dependents never start, but other members do.
    Pending,
}

/// Starts members as soon as their dependencies are done, until all are done, one fails, or
/// the run is cancelled; then waits for the started ones to finish.
async fn schedule<F, Fut>(
    deps: &[Vec<usize>],
    order: &[usize],
    selected: &[bool],
    cancel: &CancellationToken,
    mut start: F,
) -> Vec<Outcome>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), Stop>> + Send + 'static,
{
    let n = deps.len();
    let mut outcome = vec![Outcome::NotStarted; n];
    let mut started = vec![false; n];
    let mut set: JoinSet<(usize, Result<(), Stop>)> = JoinSet::new();
    let mut member_of_task = std::collections::HashMap::new();
    let mut stop = false;
    loop {
        if !stop && !cancel.is_cancelled() {
            for &i in order {
                if selected[i]
                    && !started[i]
                    && deps[i].iter().all(|d| outcome[*d] == Outcome::Done)
                {
                    started[i] = true;
                    let fut = start(i);
                    let handle = set.spawn(async move { (i, fut.await) });
                    member_of_task.insert(handle.id(), i);
                }
            }
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok((i, Ok(()))) => outcome[i] = Outcome::Done,
            Ok((i, Err(Stop::Pending))) => outcome[i] = Outcome::Pending,
            Ok((i, Err(_))) => {
                outcome[i] = Outcome::Failed;
                stop = true;
            }
            Err(e) => {
                // A member whose task itself panicked failed: it must not count as skipped.
                tracing::error!("a node task panicked: {e}");
                if let Some(&i) = member_of_task.get(&e.id()) {
                    outcome[i] = Outcome::Failed;
                }
                stop = true;
            }
        }
    }
    outcome
}

/// Polls a node's future, turning a panic inside it into an error with the panic's message,
/// so a panicking node kind fails its node (and the run) instead of vanishing.
struct CatchPanic<F>(F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => std::task::Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

/// The text of a panic's payload (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

async fn run_loop(shared: Arc<Shared>, l: LoopSpec, top: Table) -> Result<Produced, Stop> {
    let scope0 = Scope {
        top: top.clone(),
        round: None,
    };
    let mut carries: BTreeMap<String, Digest> = BTreeMap::new();
    for c in &l.carry {
        let d = scope0.lookup(&c.from).ok_or(Stop::Failed)?;
        carries.insert(c.name.clone(), d);
    }
    let selected = vec![true; l.body.len()];
    let mut round = 0;
    let mut stopped_by = "max_rounds".to_string();
    let body_ids: Vec<String> = l.body.iter().map(|n| n.id.clone()).collect();
    let mut last_metrics = Metrics::new();
    while round < l.max_rounds {
        round += 1;
        let table: Table = Arc::default();
        let scope = Scope {
            top: top.clone(),
            round: Some((l.id.clone(), table.clone(), carries.clone())),
        };
        let outcome = {
            let shared = shared.clone();
            let body = l.body.clone();
            let table = table.clone();
            schedule(
                &l.body_dag.deps,
                &l.body_dag.order,
                &selected,
                &shared.cancel.clone(),
                move |i| {
                    let shared = shared.clone();
                    let spec = body[i].clone();
                    let scope = scope.clone();
                    let table = table.clone();
                    async move {
                        let p = run_node(shared, spec.clone(), Some(round), scope).await?;
                        table.lock().expect("table lock").insert(spec.id.clone(), p);
                        Ok(())
                    }
                },
            )
            .await
        };
        if outcome.iter().any(|o| *o != Outcome::Done) {
            let (why, stop) = if shared.cancel.is_cancelled() {
                ("cancelled", Stop::Cancelled)
            } else if outcome.contains(&Outcome::Failed) {
                ("failed", Stop::Failed)
            } else {
                ("pending", Stop::Pending)
            };
            shared.loops.lock().expect("loops lock").push(LoopReport {
                id: l.id.clone(),
                rounds: round,
                stopped_by: why.into(),
            });
            return Err(stop);
        }
        let produced = table.lock().expect("table lock").clone();
        for c in &l.carry {
            if let InputRef::Node { node, output } = &c.next {
                if let Some(d) = produced.get(node).and_then(|p| p.outputs.get(output)) {
                    carries.insert(c.name.clone(), d.clone());
                }
            }
        }
        last_metrics = Metrics::new();
        for id in &body_ids {
            if let Some(p) = produced.get(id) {
                last_metrics.insert(id.clone(), serde_json::Value::Object(p.metrics.clone()));
            }
        }
        if let Some(until) = &l.until {
            match eval_until(until, round, &last_metrics) {
                Ok(true) => {
                    stopped_by = "until".into();
                    break;
                }
                Ok(false) => {}
                Err(e) => {
                    shared
                        .opts
                        .progress
                        .println(&format!("loop \"{}\": until: {e}", l.id));
                    shared.loops.lock().expect("loops lock").push(LoopReport {
                        id: l.id.clone(),
                        rounds: round,
                        stopped_by: "failed".into(),
                    });
                    return Err(Stop::Failed);
                }
            }
        }
    }
    shared.loops.lock().expect("loops lock").push(LoopReport {
        id: l.id.clone(),
        rounds: round,
        stopped_by: stopped_by.clone(),
    });
    let mut metrics = Metrics::new();
    metrics.insert("rounds".into(), round.into());
    metrics.insert("stopped_by".into(), stopped_by.into());
    metrics.insert("last_round".into(), serde_json::Value::Object(last_metrics));
    Ok(Produced {
        outputs: carries,
        metrics,
    })
}

/// Evaluates a loop's `until` expression over one round's metrics (`round` and each body node's metrics).
pub fn eval_until(expr: &str, round: u32, metrics: &Metrics) -> Result<bool, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let e = env.compile_expression(expr).map_err(|e| e.to_string())?;
    let mut ctx = metrics.clone();
    ctx.insert("round".into(), round.into());
    let v = e
        .eval(minijinja::Value::from_serialize(&ctx))
        .map_err(|e| format!("{e} (in `{expr}`)"))?;
    Ok(v.is_true())
}

async fn run_node(
    shared: Arc<Shared>,
    spec: NodeSpec,
    round: Option<u32>,
    scope: Scope,
) -> Result<Produced, Stop> {
    let _permit = shared
        .permits
        .acquire()
        .await
        .map_err(|_| Stop::Cancelled)?;
    if shared.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let instance = instance_name(&spec.id, round);
    let t0 = Instant::now();
    let kind = spec.plugin.kind().to_string();
    let mut report = NodeReport {
        id: spec.id.clone(),
        instance: instance.clone(),
        round,
        kind: kind.clone(),
        status: Status::Failed,
        seconds: 0.0,
        key: None,
        parts: None,
        metrics: Metrics::new(),
        outputs: BTreeMap::new(),
        error: None,
    };
    let result = run_node_inner(&shared, &spec, round, &scope, &instance, &mut report).await;
    report.seconds = t0.elapsed().as_secs_f64();
    match &result {
        Ok(p) => {
            report.outputs = p
                .outputs
                .iter()
                .map(|(k, d)| {
                    (
                        k.clone(),
                        OutputReport {
                            digest: d.clone(),
                            path: shared.cache.object_path(d).display().to_string(),
                        },
                    )
                })
                .collect();
            report.metrics = p.metrics.clone();
            tracing::info!(node = %instance, status = ?report.status, seconds = report.seconds, "node finished");
        }
        Err((stop, msg)) => {
            report.status = match stop {
                Stop::Cancelled => Status::Skipped,
                Stop::Failed => Status::Failed,
                Stop::Pending => Status::Pending,
            };
            report.error = Some(msg.clone());
            match stop {
                Stop::Failed => shared
                    .opts
                    .progress
                    .println(&format!("node \"{instance}\" failed: {msg}")),
                Stop::Pending => shared
                    .opts
                    .progress
                    .println(&format!("node \"{instance}\" is pending: {msg}")),
                Stop::Cancelled => {}
            }
        }
    }
    shared.reports.lock().expect("reports lock").push(report);
    result.map_err(|(s, _)| s)
}

async fn run_node_inner(
    shared: &Arc<Shared>,
    spec: &NodeSpec,
    round: Option<u32>,
    scope: &Scope,
    instance: &str,
    report: &mut NodeReport,
) -> Result<Produced, (Stop, String)> {
    let cache = &shared.cache;
    let fail = |m: String| (Stop::Failed, m);
    let mut input_digests = BTreeMap::new();
    let mut inputs = Inputs::new();
    for (name, r) in &spec.inputs {
        let d = scope
            .lookup(r)
            .ok_or_else(|| fail(format!("input \"{name}\" ({r}) was not produced")))?;
        inputs.insert(
            name.clone(),
            Artifact {
                path: cache.object_path(&d),
                digest: d.clone(),
            },
        );
        input_digests.insert(name.clone(), d);
    }
    let manifest_dir = shared.pipeline.source.dir.clone();
    let parts = {
        let cache = cache.clone();
        let spec = spec.clone();
        let dir = manifest_dir.clone();
        tokio::task::spawn_blocking(move || {
            let digest = |p: &std::path::Path| cache.file_digest(p).map_err(|e| e.to_string());
            key_parts(&spec, round, &input_digests, &digest, &dir)
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(fail)?
    };
    let key = parts.key();
    report.key = Some(key.clone());
    report.parts = Some(parts.clone());
    let scope_name = scope_key(&shared.pipeline.name, instance);
    let store = cache.store();
    let mode = shared.opts.lock_mode;
    let locked = if mode == LockMode::Update {
        None
    } else {
        let flag = if mode == LockMode::Frozen {
            "--frozen"
        } else {
            "--locked"
        };
        let Some(l) = shared.opts.lock.as_ref().and_then(|l| l.node(instance)) else {
            return Err(fail(format!(
                "the lock would change ({flag}): it has no entry for this node instance; run without {flag} to update it"
            )));
        };
        if l.key != key {
            return Err(fail(format!(
                "the lock would change ({flag}): {}; run without {flag} to update it",
                changes(&l.parts(), &parts).join("; ")
            )));
        }
        Some(l.outputs.clone())
    };
    // The lock's digests outrank any cache's record of the same key.
    let agrees = |outputs: &BTreeMap<String, Digest>| locked.as_ref().is_none_or(|l| l == outputs);
    let forced = shared
        .opts
        .force
        .iter()
        .any(|f| f == &spec.id || spec.loop_id.as_deref() == Some(f));
    if !forced {
        let mut local = None;
        if let Ok(Some(entry)) = store.get(&key) {
            if agrees(&entry.outputs) && cache.entry_intact(&entry) {
                local = Some((entry, Status::Cached));
            }
        }
        if local.is_none() {
            if let Some(remote) = &shared.opts.remote {
                match remote.entry(&key).await {
                    Ok(Some(entry)) if agrees(&entry.outputs) => {
                        remote
                            .restore(cache, &key, &entry)
                            .await
                            .map_err(|e| fail(e.to_string()))?;
                        local = Some((entry, Status::Restored));
                    }
                    Ok(Some(_)) => tracing::warn!(
                        node = %instance,
                        "the remote's entry for this key names other outputs than the lock; it is not used"
                    ),
                    Ok(None) => {}
                    Err(e) if mode == LockMode::Frozen => return Err(fail(e.to_string())),
                    Err(e) => {
                        tracing::warn!(node = %instance, "remote cache: {e}; computing locally")
                    }
                }
            }
        }
        if let Some((entry, status)) = local {
            let paths = entry
                .outputs
                .iter()
                .map(|(k, d)| (k.clone(), cache.object_path(d)))
                .collect();
            spec.plugin
                .on_cached(&spec.config, &shared.pipeline.source.dir, &paths)
                .map_err(|e| fail(e.to_string()))?;
            let _ = store.set_last(&scope_name, &LastRecord { key, parts });
            report.status = status;
            return Ok(Produced {
                outputs: entry.outputs,
                metrics: entry.metrics,
            });
        }
    }
    if mode == LockMode::Frozen {
        let whence = if shared.opts.remote.is_some() {
            "is in neither the local cache nor the remote"
        } else {
            "is not in the local cache (and no remote is set)"
        };
        return Err(fail(format!(
            "--frozen computes nothing, and key {} {whence}{}",
            &key[..12],
            if forced { " (--force was given)" } else { "" }
        )));
    }
    let here = Here {
        cache,
        run_id: &shared.run_id,
        cancel: &shared.cancel,
        progress: &shared.opts.progress,
    };
    let entry = match &spec.executor {
        Some(exec) if spec.plugin.shards(&spec.config) > 0 => {
            let at = Elsewhere {
                shared,
                spec,
                round,
                key: &key,
                inputs: &inputs,
                exec,
            };
            let pieces = run_shards_elsewhere(&at, report).await?;
            execute_part(
                &here,
                spec,
                round,
                instance,
                inputs,
                manifest_dir,
                Part::Whole(pieces),
            )
            .await?
        }
        Some(exec) => {
            run_elsewhere(shared, spec, round, instance, &key, &inputs, exec, report).await?
        }
        None => execute(&here, spec, round, instance, inputs, manifest_dir).await?,
    };
    let outputs = entry.outputs.clone();
    let mut produced_metrics = entry.metrics.clone();
    if let Some(m) = report.metrics.get("executor").cloned() {
        produced_metrics.insert("executor".into(), m);
    }
    store.put(&key, &entry).map_err(|e| fail(e.to_string()))?;
    store
        .set_last(&scope_name, &LastRecord { key, parts })
        .map_err(|e| fail(e.to_string()))?;
    store.flush().map_err(|e| fail(e.to_string()))?;
    if !agrees(&outputs) {
        return Err(fail(
            "the lock would change (--locked): the node ran and its outputs differ from the lock's (is it deterministic?)"
                .into(),
        ));
    }
    report.status = Status::Ran;
    Ok(Produced {
        outputs,
        metrics: produced_metrics,
    })
}

/// A node instance to run elsewhere, and what it runs on.
struct Elsewhere<'a> {
    shared: &'a Arc<Shared>,
    spec: &'a NodeSpec,
    round: Option<u32>,
    key: &'a str,
    inputs: &'a Inputs,
    exec: &'a crate::executor::Executor,
}

/// The writable remote an executor needs, with the node's inputs pushed to it, and the
/// `relabel node-exec` command line that runs the node (or, with `--shard`, a piece of it)
/// from there.
async fn prepare_elsewhere<'a>(
    at: &Elsewhere<'a>,
) -> Result<(&'a crate::remote::Remote, Vec<String>), (Stop, String)> {
    let fail = |m: String| (Stop::Failed, m);
    let shared = at.shared;
    let cache = &shared.cache;
    let Some(remote) = shared.opts.remote.as_ref().filter(|r| r.writes()) else {
        return Err(fail(format!(
            "executor: {} runs the node elsewhere through the remote cache; set `remote:` (or --remote) to a writable one the cluster can reach",
            at.exec.name()
        )));
    };
    let digests: std::collections::BTreeSet<String> =
        at.inputs.values().map(|a| a.digest.clone()).collect();
    remote
        .push_objects(cache, &digests)
        .await
        .map_err(|e| fail(format!("pushing the node's inputs to the remote: {e}")))?;
    let source = &shared.pipeline.source;
    let manifest = std::fs::canonicalize(&source.name)
        .unwrap_or_else(|_| std::path::PathBuf::from(&source.name));
    let exe = std::env::current_exe().map_err(|e| fail(format!("finding relabel itself: {e}")))?;
    let mut cmd = vec![
        exe.display().to_string(),
        "node-exec".to_string(),
        manifest.display().to_string(),
        "--node".into(),
        at.spec.id.clone(),
        "--key".into(),
        at.key.to_string(),
        "--remote".into(),
        remote.url().to_string(),
    ];
    if let Some(r) = at.round {
        cmd.extend(["--round".into(), r.to_string()]);
    }
    for (name, a) in at.inputs {
        cmd.extend(["--input".into(), format!("{name}={}", a.digest)]);
    }
    for (k, v) in &source.overrides {
        cmd.extend(["--set".into(), format!("{k}={v}")]);
    }
    Ok((remote, cmd))
}

/// The last `n` lines of a job's log.
fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Why a job that did not succeed ended so, in words.
fn ended_why(ended: &crate::executor::Ended) -> &'static str {
    match ended.state.as_str() {
        "TIMEOUT" => " (its time limit ran out)",
        "OUT_OF_MEMORY" => " (out of memory)",
        "CANCELLED" => " (cancelled outside this run)",
        _ => "",
    }
}

/// Computes a node's pieces ([`crate::plugin::NodeKind::shards`]) through its executor as
/// one job array, one task per piece not already in the local cache or the remote (a run
/// resumed after the array ended), and returns every piece's folder in order; the caller
/// then runs the node here to merge them.
async fn run_shards_elsewhere(
    at: &Elsewhere<'_>,
    report: &mut NodeReport,
) -> Result<Vec<std::path::PathBuf>, (Stop, String)> {
    use crate::executor::{self, Executor};
    let fail = |m: String| (Stop::Failed, m);
    let (shared, key) = (at.shared, at.key);
    let cache = &shared.cache;
    let n = at.spec.plugin.shards(&at.spec.config);
    let instance = instance_name(&at.spec.id, at.round);
    let (remote, mut cmd) = prepare_elsewhere(at).await?;
    let piece = |e: &Entry| e.outputs.get("shard").map(|d| cache.object_path(d));
    let mut pieces: Vec<Option<std::path::PathBuf>> = vec![None; n];
    for (i, slot) in pieces.iter_mut().enumerate() {
        let sk = shard_key(key, i);
        if let Some(e) = cache.store().get(&sk).ok().flatten() {
            if cache.entry_looks_intact(&e) {
                *slot = piece(&e);
                continue;
            }
        }
        if let Some(e) = remote.entry(&sk).await.map_err(|e| fail(e.to_string()))? {
            remote
                .restore(cache, &sk, &e)
                .await
                .map_err(|e| fail(e.to_string()))?;
            *slot = piece(&e);
        }
    }
    let missing: Vec<usize> = (0..n).filter(|&i| pieces[i].is_none()).collect();
    let mut tasks_report = Vec::new();
    let mut job = serde_json::Value::Null;
    if !missing.is_empty() {
        cmd.push("--shard-from-env".into());
        let work_dir = cache.tmp_dir().join(&shared.run_id).join(&instance);
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| fail(format!("work folder {}: {e}", work_dir.display())))?;
        let Executor::Slurm(slurm) = at.exec;
        let array = executor::array_spec(&missing);
        let name = format!("relabel-{}-{instance}", shared.pipeline.name);
        let submitted = unix_now();
        let id = executor::submit(
            slurm,
            &name,
            &cmd,
            &work_dir.join("slurm-%A_%a.out"),
            Some(&array),
        )
        .await
        .map_err(|e| fail(format!("submitting to Slurm: {e}")))?;
        shared.opts.progress.println(&format!(
            "node \"{instance}\": Slurm job array {id} submitted ({} of {n} pieces: {array})",
            missing.len()
        ));
        tracing::info!(node = %instance, job = %id, array = %array, "job array submitted to Slurm");
        job = serde_json::json!(id);
        report.metrics.insert(
            "executor".into(),
            serde_json::json!({"slurm_job": id, "array": array, "pieces": n}),
        );
        let every = std::time::Duration::from_secs_f64(slurm.poll_seconds);
        let ends = tokio::select! {
            r = executor::wait_array(&id, missing.len(), every) => r.map_err(|e| fail(format!("Slurm job array {id}: {e}")))?,
            _ = shared.cancel.cancelled() => {
                executor::cancel(&id).await;
                return Err((Stop::Cancelled, format!("cancelled (Slurm job array {id} cancelled)")));
            }
        };
        let log = |t: usize| work_dir.join(format!("slurm-{id}_{t}.out"));
        if let Some(bad) = ends.iter().find(|t| !t.ended.ok()) {
            let failed = ends.iter().filter(|t| !t.ended.ok()).count();
            return Err(fail(format!(
                "Slurm job array {id}: {failed} of {} tasks failed; task {} ended {} with exit {}{}; its last lines:\n{}",
                ends.len(),
                bad.task,
                bad.ended.state,
                bad.ended.exit,
                ended_why(&bad.ended),
                log_tail(&log(bad.task), 15)
            )));
        }
        for t in &ends {
            let sk = shard_key(key, t.task);
            let e = remote
                .entry(&sk)
                .await
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| {
                    fail(format!(
                        "Slurm task {id}_{} completed, but the remote has no entry for its piece: did the job see the same manifest and files? Its last lines:\n{}",
                        t.task,
                        log_tail(&log(t.task), 15)
                    ))
                })?;
            remote
                .restore(cache, &sk, &e)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let started = e.metrics.get("job_started_unix").and_then(|v| v.as_f64());
            tasks_report.push(serde_json::json!({
                "task": t.task,
                "state": t.ended.state,
                "exit": t.ended.exit,
                "start_delay_s": started.map(|s| s - submitted),
                "seconds": e.seconds,
            }));
            pieces[t.task] = piece(&e);
        }
        let _ = crate::cache::remove_all(&work_dir);
    }
    report.metrics.insert(
        "executor".into(),
        serde_json::json!({
            "slurm_job": job,
            "pieces": n,
            "reused": n - missing.len(),
            "tasks": tasks_report,
        }),
    );
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.ok_or_else(|| fail(format!("piece {i} has no `shard` output"))))
        .collect()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs a node instance through its executor: pushes its inputs to the remote cache, submits
/// `relabel node-exec` for it, waits for the job, and restores the entry the job pushed.
#[allow(clippy::too_many_arguments)]
async fn run_elsewhere(
    shared: &Arc<Shared>,
    spec: &NodeSpec,
    round: Option<u32>,
    instance: &str,
    key: &str,
    inputs: &Inputs,
    exec: &crate::executor::Executor,
    report: &mut NodeReport,
) -> Result<Entry, (Stop, String)> {
    use crate::executor::{self, Executor};
    let fail = |m: String| (Stop::Failed, m);
    let cache = &shared.cache;
    let at = Elsewhere {
        shared,
        spec,
        round,
        key,
        inputs,
        exec,
    };
    let (remote, cmd) = prepare_elsewhere(&at).await?;
    let work_dir = cache.tmp_dir().join(&shared.run_id).join(instance);
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| fail(format!("work folder {}: {e}", work_dir.display())))?;
    let Executor::Slurm(slurm) = exec;
    let log = work_dir.join("slurm-%j.out");
    let name = format!("relabel-{}-{instance}", shared.pipeline.name);
    let id = executor::submit(slurm, &name, &cmd, &log, None)
        .await
        .map_err(|e| fail(format!("submitting to Slurm: {e}")))?;
    shared
        .opts
        .progress
        .println(&format!("node \"{instance}\": Slurm job {id} submitted"));
    tracing::info!(node = %instance, job = %id, "submitted to Slurm");
    report
        .metrics
        .insert("executor".into(), serde_json::json!({"slurm_job": id}));
    let every = std::time::Duration::from_secs_f64(slurm.poll_seconds);
    let ended = tokio::select! {
        r = executor::wait(&id, every) => r.map_err(|e| fail(format!("Slurm job {id}: {e}")))?,
        _ = shared.cancel.cancelled() => {
            executor::cancel(&id).await;
            return Err((Stop::Cancelled, format!("cancelled (Slurm job {id} cancelled)")));
        }
    };
    report.metrics.insert(
        "executor".into(),
        serde_json::json!({"slurm_job": id, "state": ended.state, "exit": ended.exit}),
    );
    let tail = log_tail(&work_dir.join(format!("slurm-{id}.out")), 15);
    if !ended.ok() {
        return Err(fail(format!(
            "Slurm job {id} ended {} with exit {}{}; its last lines:\n{tail}",
            ended.state,
            ended.exit,
            ended_why(&ended)
        )));
    }
    let entry = remote
        .entry(key)
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| {
            fail(format!(
                "Slurm job {id} completed, but the remote has no entry for key {}: did the job see the same manifest and files? Its last lines:\n{tail}",
                &key[..12.min(key.len())],
            ))
        })?;
    remote
        .restore(cache, key, &entry)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = crate::cache::remove_all(&work_dir);
    cache
        .store()
        .get(key)
        .ok()
        .flatten()
        .ok_or_else(|| fail("the restored entry is not in the local cache".into()))
}

/// Where [`execute`] runs a node: the cache, the run's id (its work folders) and its
/// cancellation and progress.
pub struct Here<'a> {
    pub cache: &'a Arc<Cache>,
    pub run_id: &'a str,
    pub cancel: &'a CancellationToken,
    pub progress: &'a ProgressSink,
}

/// Runs one node instance in this process: its work folder, the plugin, its declared outputs
/// imported into the cache; returns the entry to record (the caller records it).
pub async fn execute(
    here: &Here<'_>,
    spec: &NodeSpec,
    round: Option<u32>,
    instance: &str,
    inputs: Inputs,
    manifest_dir: std::path::PathBuf,
) -> Result<Entry, (Stop, String)> {
    execute_part(
        here,
        spec,
        round,
        instance,
        inputs,
        manifest_dir,
        Part::Whole(Vec::new()),
    )
    .await
}

/// What [`execute_part`] runs of a node.
pub enum Part {
    /// The node, given its pieces already computed elsewhere (none: it computes them).
    Whole(Vec<std::path::PathBuf>),
    /// One piece ([`crate::plugin::NodeKind::run_shard`]): its only output is `shard`.
    Shard(usize),
}

/// The key of piece `shard` of the node instance whose key is `key`.
pub fn shard_key(key: &str, shard: usize) -> String {
    blake3::hash(format!("{key}:shard:{shard}").as_bytes())
        .to_hex()
        .to_string()
}

/// [`execute`], for the whole node or one of its pieces.
pub async fn execute_part(
    here: &Here<'_>,
    spec: &NodeSpec,
    round: Option<u32>,
    instance: &str,
    inputs: Inputs,
    manifest_dir: std::path::PathBuf,
    part: Part,
) -> Result<Entry, (Stop, String)> {
    let cache = here.cache;
    let fail = |m: String| (Stop::Failed, m);
    let work_name = match &part {
        Part::Shard(i) => format!("{instance}.shard-{i}"),
        Part::Whole(_) => instance.to_string(),
    };
    let work_dir = cache.tmp_dir().join(here.run_id).join(work_name);
    std::fs::create_dir_all(work_dir.join("out"))
        .map_err(|e| fail(format!("work folder {}: {e}", work_dir.display())))?;
    let span = tracing::info_span!("node", id = %instance, kind = %spec.plugin.kind());
    let progress = here.progress.node(instance);
    let ctx = NodeContext {
        instance: instance.to_string(),
        round,
        work_dir: work_dir.clone(),
        manifest_dir,
        cancel: here.cancel.child_token(),
        progress: progress.clone(),
        store: cache.store().clone(),
        resources: spec
            .resources
            .iter()
            .map(|(section, r)| (section.clone(), (r.name.clone(), r.value.clone())))
            .collect(),
        span: span.clone(),
        shards: match &part {
            Part::Whole(s) => s.clone(),
            Part::Shard(_) => Vec::new(),
        },
    };
    let t0 = Instant::now();
    let (fut, declared) = match part {
        Part::Whole(_) => (
            spec.plugin.run(ctx, &spec.config, inputs),
            spec.outputs.clone(),
        ),
        Part::Shard(i) => (
            spec.plugin.run_shard(ctx, &spec.config, inputs, i),
            vec!["shard".to_string()],
        ),
    };
    let fut = CatchPanic(fut).instrument(span);
    let result = tokio::select! {
        r = fut => r.unwrap_or_else(|why| Err(NodeError::Failed(format!("the node panicked: {why}")))),
        _ = here.cancel.cancelled() => Err(NodeError::Cancelled),
    };
    progress.finish();
    let output = match result {
        Ok(o) => o,
        Err(NodeError::Cancelled) => {
            let _ = crate::cache::remove_all(&work_dir);
            return Err((Stop::Cancelled, "cancelled".into()));
        }
        // The work folder stays until the next run opens the cache: it may hold what the
        // node handed elsewhere (a batch's input) for a person to look at.
        Err(NodeError::Pending(why)) => return Err((Stop::Pending, why)),
        Err(e) => return Err(fail(e.to_string())),
    };
    let seconds = t0.elapsed().as_secs_f64();
    if here.cancel.is_cancelled() {
        let _ = crate::cache::remove_all(&work_dir);
        return Err((Stop::Cancelled, "cancelled".into()));
    }
    let mut outputs = BTreeMap::new();
    for name in &declared {
        let Some(path) = output.outputs.get(name) else {
            return Err(fail(format!("declared output \"{name}\" was not produced")));
        };
        if std::fs::symlink_metadata(path).is_err() {
            return Err(fail(format!(
                "declared output \"{name}\" was not written (expected {})",
                path.display()
            )));
        }
        let path = path.clone();
        let c = cache.clone();
        let d = tokio::task::spawn_blocking(move || c.import(&path))
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
        outputs.insert(name.clone(), d);
    }
    let shapes = outputs
        .values()
        .filter_map(|d| cache.shape(d).ok().map(|s| (d.clone(), s)))
        .collect();
    let entry = Entry {
        node: instance.to_string(),
        kind: spec.plugin.kind().to_string(),
        version: spec.plugin.version().to_string(),
        outputs: outputs.clone(),
        metrics: output.metrics.clone(),
        seconds,
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        shapes,
    };
    let _ = crate::cache::remove_all(&work_dir);
    Ok(entry)
}

/// What `plan` expects a node instance to do, and why.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    pub id: String,
    pub instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    pub kind: String,
    /// `run` or `cached`.
    pub action: String,
    /// `new`, `config changed`, `input changed: NAME`, `file changed: PATH`, `plugin version changed`, `cached`, ...
    pub reason: String,
}

/// What a plan compares against: a cache's entries, or a lock's records.
pub trait Basis {
    /// The outputs and metrics recorded for `instance` under `key`, if any.
    fn known(&self, instance: &str, key: &str) -> Option<(BTreeMap<String, Digest>, Metrics)>;
    /// The key `instance` had last time.
    fn last(&self, instance: &str) -> Option<LastRecord>;
    /// A referenced file's digest.
    fn digest(&self, path: &std::path::Path) -> Result<Digest, String>;
}

struct CacheBasis<'a> {
    pipeline: &'a str,
    cache: &'a Cache,
}

impl Basis for CacheBasis<'_> {
    fn known(&self, _instance: &str, key: &str) -> Option<(BTreeMap<String, Digest>, Metrics)> {
        let entry = self.cache.store().get(key).ok().flatten()?;
        self.cache
            .entry_looks_intact(&entry)
            .then_some((entry.outputs, entry.metrics))
    }
    fn last(&self, instance: &str) -> Option<LastRecord> {
        self.cache
            .store()
            .last(&scope_key(self.pipeline, instance))
            .ok()
            .flatten()
    }
    fn digest(&self, path: &std::path::Path) -> Result<Digest, String> {
        self.cache.file_digest(path).map_err(|e| e.to_string())
    }
}

/// A lock's records as a plan's basis; file digests through `cache`'s memo when given.
pub struct LockBasis<'a> {
    pub lock: &'a PipelineLock,
    pub cache: Option<&'a Cache>,
}

impl Basis for LockBasis<'_> {
    fn known(&self, instance: &str, key: &str) -> Option<(BTreeMap<String, Digest>, Metrics)> {
        let n = self.lock.node(instance)?;
        (n.key == key).then(|| (n.outputs.clone(), n.metrics.clone()))
    }
    fn last(&self, instance: &str) -> Option<LastRecord> {
        let n = self.lock.node(instance)?;
        Some(LastRecord {
            key: n.key.clone(),
            parts: n.parts(),
        })
    }
    fn digest(&self, path: &std::path::Path) -> Result<Digest, String> {
        match self.cache {
            Some(c) => c.file_digest(path).map_err(|e| e.to_string()),
            None => crate::cache::digest_path(path).map_err(|e| e.to_string()),
        }
    }
}

/// Says what a run would do, without running anything.
pub fn plan(pipeline: &Pipeline, cache: &Cache, force: &[String]) -> Vec<PlanStep> {
    plan_against(
        pipeline,
        &CacheBasis {
            pipeline: &pipeline.name,
            cache,
        },
        force,
    )
}

/// Says which node instances match `basis` (action `cached`) and which do not (`run`), and why.
pub fn plan_against(pipeline: &Pipeline, basis: &dyn Basis, force: &[String]) -> Vec<PlanStep> {
    let top: Table = Arc::default();
    let mut steps = Vec::new();
    for &i in &pipeline.dag.order {
        match &pipeline.units[i] {
            Unit::Node(spec) => {
                let scope = Scope {
                    top: top.clone(),
                    round: None,
                };
                if let Some(p) = plan_node(pipeline, basis, spec, None, &scope, force, &mut steps) {
                    top.lock().expect("table lock").insert(spec.id.clone(), p);
                }
            }
            Unit::Loop(l) => {
                if let Some(p) = plan_loop(pipeline, basis, l, &top, force, &mut steps) {
                    top.lock().expect("table lock").insert(l.id.clone(), p);
                }
            }
        }
    }
    steps
}

fn plan_loop(
    pipeline: &Pipeline,
    basis: &dyn Basis,
    l: &LoopSpec,
    top: &Table,
    force: &[String],
    steps: &mut Vec<PlanStep>,
) -> Option<Produced> {
    let scope0 = Scope {
        top: top.clone(),
        round: None,
    };
    let mut carries = BTreeMap::new();
    let mut known = true;
    for c in &l.carry {
        match scope0.lookup(&c.from) {
            Some(d) => {
                carries.insert(c.name.clone(), d);
            }
            None => known = false,
        }
    }
    for round in 1..=l.max_rounds {
        let table: Table = Arc::default();
        let scope = Scope {
            top: top.clone(),
            round: Some((l.id.clone(), table.clone(), carries.clone())),
        };
        let mut all_cached = known;
        for &j in &l.body_dag.order {
            let spec = &l.body[j];
            match plan_node(pipeline, basis, spec, Some(round), &scope, force, steps) {
                Some(p) => {
                    table.lock().expect("table lock").insert(spec.id.clone(), p);
                }
                None => all_cached = false,
            }
        }
        if !all_cached {
            if round < l.max_rounds {
                steps.push(PlanStep {
                    id: l.id.clone(),
                    instance: format!("{}@{}..{}", l.id, round + 1, l.max_rounds),
                    round: None,
                    kind: "loop".into(),
                    action: "run".into(),
                    reason: format!(
                        "rounds after {round} are decided at run time (until: {})",
                        l.until.as_deref().unwrap_or("none")
                    ),
                });
            }
            return None;
        }
        let produced = table.lock().expect("table lock").clone();
        for c in &l.carry {
            if let InputRef::Node { node, output } = &c.next {
                if let Some(d) = produced.get(node).and_then(|p| p.outputs.get(output)) {
                    carries.insert(c.name.clone(), d.clone());
                }
            }
        }
        let mut metrics = Metrics::new();
        for (id, p) in &produced {
            metrics.insert(id.clone(), serde_json::Value::Object(p.metrics.clone()));
        }
        if let Some(until) = &l.until {
            if eval_until(until, round, &metrics).unwrap_or(false) {
                break;
            }
        }
    }
    Some(Produced {
        outputs: carries,
        metrics: Metrics::new(),
    })
}

fn plan_node(
    pipeline: &Pipeline,
    basis: &dyn Basis,
    spec: &NodeSpec,
    round: Option<u32>,
    scope: &Scope,
    force: &[String],
    steps: &mut Vec<PlanStep>,
) -> Option<Produced> {
    let instance = instance_name(&spec.id, round);
    let last = basis.last(&instance);
    let mut step = PlanStep {
        id: spec.id.clone(),
        instance: instance.clone(),
        round,
        kind: spec.plugin.kind().to_string(),
        action: "run".into(),
        reason: String::new(),
    };
    let mut inputs = BTreeMap::new();
    let mut pending = Vec::new();
    for (name, r) in &spec.inputs {
        match scope.lookup(r) {
            Some(d) => {
                inputs.insert(name.clone(), d);
            }
            None => pending.push(format!("{name} ({r})")),
        }
    }
    if !pending.is_empty() {
        step.reason = if last.is_none() {
            "new".into()
        } else {
            format!("input changed: {} will be recomputed", pending.join(", "))
        };
        steps.push(step);
        return None;
    }
    let digest = |p: &std::path::Path| basis.digest(p);
    let parts = match key_parts(spec, round, &inputs, &digest, &pipeline.source.dir) {
        Ok(p) => p,
        Err(e) => {
            step.reason = format!("cannot compute its key: {e}");
            steps.push(step);
            return None;
        }
    };
    let key = parts.key();
    let forced = force
        .iter()
        .any(|f| f == &spec.id || spec.loop_id.as_deref() == Some(f));
    if !forced {
        if let Some((outputs, metrics)) = basis.known(&instance, &key) {
            step.action = "cached".into();
            step.reason = "cached".into();
            steps.push(step);
            return Some(Produced { outputs, metrics });
        }
    }
    step.reason = if forced {
        "forced".into()
    } else {
        match last {
            None => "new".into(),
            Some(l) if l.key == key => "not in cache (evicted or removed)".into(),
            Some(l) => {
                let mut why = changes(&l.parts, &parts);
                if why.is_empty() {
                    why.push("inputs or files removed".into());
                }
                why.join("; ")
            }
        }
    };
    steps.push(step);
    None
}
