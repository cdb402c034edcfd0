//! The relabel command line: parses arguments and wires the engine to the built-in plugins.

mod gitops;
mod html_report;
mod node_exec;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use relabel_engine::cache::{Cache, CacheError, LockWait};
use relabel_engine::lock::{LockFile, LockMode, PipelineLock};
use relabel_engine::manifest::Source;
use relabel_engine::progress::ProgressSink;
use relabel_engine::runner::{self, RunOptions, RunStatus};
use relabel_engine::{load_pipeline, report, schema, view, Pipeline, Registry};
use tokio_util::sync::CancellationToken;

/// Exit codes, so scripts and CI can tell failures apart.
pub(crate) mod code {
    pub const FAILED: u8 = 1;
    pub const INVALID: u8 = 2;
    /// Nothing failed, but a node waits on a batch it submitted: run again later to collect.
    pub const PENDING: u8 = 3;
    pub const BUSY: u8 = 75;
    pub const CANCELLED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "relabel",
    version,
    about = "Find the wrong labels in a training set and fix them in batches, as cached YAML pipelines",
    after_help = kinds_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct CacheArgs {
    /// The cache folder [default: $RELABEL_CACHE, else ./.relabel]
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    /// Fail at once (exit 75) instead of waiting when another run holds the cache
    #[arg(long, global = true)]
    no_wait: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: what is cached is skipped, the rest runs concurrently
    Run {
        file: PathBuf,
        /// Run only this node (and what it needs); repeatable
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Run this node even when it is cached; repeatable
        #[arg(long)]
        force: Vec<String>,
        /// Most nodes running at once [default: the number of cores]
        #[arg(long, short)]
        jobs: Option<usize>,
        /// Also write the run report (JSON) here
        #[arg(long)]
        report: Option<PathBuf>,
        /// Override a declared param: NAME=VALUE (VALUE read as YAML); repeatable
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
        /// Fail as soon as the lock would change (a node's key or outputs differ from relabel.lock)
        #[arg(long)]
        locked: bool,
        /// Like --locked, and compute nothing: every node comes from the local cache or the remote
        #[arg(long)]
        frozen: bool,
        /// Do not write relabel.lock
        #[arg(long, conflicts_with_all = ["locked", "frozen"])]
        no_lock: bool,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Say which nodes are stale against relabel.lock and why, without running anything
    Status {
        file: PathBuf,
        /// Exit 1 when anything is stale (0 up to date, 2 error)
        #[arg(long)]
        exit_code: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Override a declared param: NAME=VALUE (VALUE read as YAML); repeatable
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Say what a run would do and why, without running anything
    Plan {
        file: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Plan as if these nodes were forced
        #[arg(long)]
        force: Vec<String>,
        /// Override a declared param: NAME=VALUE (VALUE read as YAML); repeatable
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Draw the pipeline's graph
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Check manifests; print every problem as FILE:LINE:COL: message
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// text, github (Actions annotations) or json
        #[arg(long, value_enum, default_value_t = DiagFormat::Text)]
        format: DiagFormat,
        /// Override a declared param: NAME=VALUE (VALUE read as YAML); repeatable
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
    },
    /// Print the manifests' JSON Schema
    Schema,
    /// Print what this machine offers relabel (libtorch, CUDA, threads), as JSON
    Env,
    /// Run one node instance for a run elsewhere (an executor's job): pull its inputs from the
    /// remote cache, check its key, run it, push its entry
    NodeExec(node_exec::Job),
    /// Summarise label changes between two dataset versions (per class, counts and examples)
    Diff {
        /// A dataset folder, or NODE[@ROUND][.OUTPUT] from the last run of --manifest
        a: String,
        /// A dataset folder, or NODE[@ROUND][.OUTPUT] from the last run of --manifest
        b: String,
        /// The manifest whose node outputs A and B name
        #[arg(long, short)]
        manifest: Option<PathBuf>,
        /// Example texts per change
        #[arg(long, default_value_t = 3)]
        examples: usize,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Render a run as a static HTML page (charts, no network) and a Markdown summary
    Report {
        /// A run id (a folder under CACHE/runs), `latest`, or a report.json path
        #[arg(default_value = "latest")]
        run: String,
        /// Write report.html and summary.md here [default: the run's folder]
        #[arg(long)]
        out: Option<PathBuf>,
        /// html (a page), or markdown (a summary on stdout, for a pull-request comment)
        #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
        format: ReportFormat,
        /// Compare with relabel.lock at this git ref (markdown): nodes changed and why, metrics with deltas
        #[arg(long)]
        baseline: Option<String>,
        /// The manifest whose relabel.lock to compare [default: the run's manifest]
        #[arg(long, short)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Inspect and maintain the cache
    Cache {
        #[command(subcommand)]
        action: CacheCmd,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List cached node entries
    Ls,
    /// Remove artifacts no entry refers to (and, with --only-latest, entries superseded by newer runs)
    Gc {
        #[arg(long)]
        only_latest: bool,
    },
    /// Re-hash every artifact; evict entries whose artifacts are missing or corrupt
    Verify,
}

#[derive(clap::Args, Clone)]
struct RemoteArgs {
    /// A remote cache: s3://BUCKET/PREFIX, gs://, az:// or file:///PATH [default: $RELABEL_REMOTE, else the manifest's remote:]
    #[arg(long)]
    remote: Option<String>,
    /// Also write this run's entries to the remote (for trusted jobs, e.g. the main branch)
    #[arg(long)]
    remote_write: bool,
    /// Ignore the remote (and $RELABEL_REMOTE)
    #[arg(long, conflicts_with = "remote")]
    no_remote: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DiagFormat {
    Text,
    Github,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Html,
    Markdown,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

fn kinds_help() -> String {
    let r = relabel_plugins::registry();
    let mut s = String::from("Node kinds:\n");
    for p in r.plugins() {
        s.push_str(&format!("  {:<20} {}\n", p.kind(), p.about()));
    }
    s.push_str("\nExit codes: 0 ok, 1 a node failed, 2 invalid manifest or arguments, 75 cache busy (--no-wait), 130 interrupted.");
    s
}

fn cache_dir(args: &CacheArgs) -> PathBuf {
    args.cache
        .clone()
        .or_else(|| std::env::var_os("RELABEL_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".relabel"))
}

fn open_cache(args: &CacheArgs) -> Result<Cache, ExitCode> {
    let wait = if args.no_wait {
        LockWait::NoWait
    } else {
        LockWait::Wait
    };
    Cache::open(&cache_dir(args), wait).map_err(|e| {
        eprintln!("relabel: {e}");
        match e {
            CacheError::Busy(_) => ExitCode::from(code::BUSY),
            _ => ExitCode::from(code::FAILED),
        }
    })
}

/// A dataset folder given as a path, or as NODE[@ROUND][.OUTPUT] of the manifest's last run.
fn dataset_ref(
    r: &str,
    manifest: Option<&Path>,
    cache: &CacheArgs,
    registry: &Registry,
) -> Result<PathBuf, ExitCode> {
    let as_path = PathBuf::from(r);
    if as_path.is_dir() {
        return Ok(as_path);
    }
    let Some(manifest) = manifest else {
        eprintln!("relabel: {r} is not a folder; to name a node's output (NODE.OUTPUT), give --manifest FILE");
        return Err(ExitCode::from(code::INVALID));
    };
    let p = load(manifest, registry)?;
    let (instance, output) = r.split_once('.').unwrap_or((r, "dataset"));
    let c = open_cache(cache)?;
    let missing = |why: String| {
        eprintln!("relabel: {r}: {why}");
        ExitCode::from(code::FAILED)
    };
    let last = c
        .store()
        .last(&format!("{}/{instance}", p.name))
        .map_err(|e| missing(e.to_string()))?
        .ok_or_else(|| {
            missing(format!(
                "no run of {instance} in this cache (run `relabel run {}` first)",
                manifest.display()
            ))
        })?;
    let entry = c
        .store()
        .get(&last.key)
        .map_err(|e| missing(e.to_string()))?
        .ok_or_else(|| missing("its cache entry is gone (gc?); rerun the pipeline".into()))?;
    let digest = entry.outputs.get(output).ok_or_else(|| {
        missing(format!(
            "{instance} has no output \"{output}\" (it has: {})",
            entry.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    Ok(c.object_path(digest))
}

fn diff_text(a: &str, b: &str, d: &serde_json::Value) -> String {
    let mut s = format!("{a} -> {b}: {} labels changed\n", d["changed"]);
    if let Some(splits) = d["splits"].as_object() {
        for (name, sp) in splits {
            s.push_str(&format!(
                "\n{name}: {} of {} rows changed\n",
                sp["changed"], sp["rows"]
            ));
            for ch in sp["changes"].as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "  {:>5}  {} -> {}\n",
                    ch["rows"],
                    ch["from"].as_str().unwrap_or(""),
                    ch["to"].as_str().unwrap_or("")
                ));
                for e in ch["examples"].as_array().into_iter().flatten() {
                    s.push_str(&format!("         e.g. {}\n", e.as_str().unwrap_or("")));
                }
            }
        }
    }
    s
}

/// `NAME=VALUE` of `--set`.
pub(crate) fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, found \"{s}\"")),
    }
}

fn load(file: &Path, registry: &Registry) -> Result<Pipeline, ExitCode> {
    load_with(file, registry, &[])
}

pub(crate) fn load_with(
    file: &Path,
    registry: &Registry,
    sets: &[(String, String)],
) -> Result<Pipeline, ExitCode> {
    let mut source = Source::read(file).map_err(|e| {
        eprintln!("relabel: cannot read {}: {e}", file.display());
        ExitCode::from(code::INVALID)
    })?;
    source.overrides = sets.to_vec();
    load_pipeline(source, registry).map_err(|d| {
        eprintln!("{d}");
        eprintln!(
            "{} problem{} found",
            d.len(),
            if d.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(code::INVALID)
    })
}

fn init_logging() {
    let default = if std::io::stderr().is_terminal() {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELABEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let registry = relabel_plugins::registry();
    match real_main(cli, &registry) {
        Ok(c) | Err(c) => c,
    }
}

fn real_main(cli: Cli, registry: &Registry) -> Result<ExitCode, ExitCode> {
    match cli.command {
        Cmd::Validate {
            files,
            sets,
            format,
        } => {
            let mut bad = 0;
            let mut json = Vec::new();
            for f in &files {
                let checked = Source::read(f)
                    .map_err(|e| {
                        relabel_engine::Diagnostics(vec![relabel_engine::Diagnostic {
                            file: f.display().to_string(),
                            loc: relabel_engine::diag::Location { line: 1, col: 1 },
                            message: format!("cannot read it: {e}"),
                            hint: None,
                        }])
                    })
                    .and_then(|mut source| {
                        source.overrides = sets.clone();
                        load_pipeline(source, registry)
                    });
                let (nodes, diags) = match checked {
                    Ok(p) => (Some(p.all_ids().len()), Vec::new()),
                    Err(d) => {
                        bad += 1;
                        (None, d.0)
                    }
                };
                match format {
                    DiagFormat::Text => match nodes {
                        Some(n) => println!("{}: ok ({n} nodes)", f.display()),
                        None => {
                            for d in &diags {
                                eprintln!("{d}");
                            }
                            eprintln!(
                                "{} problem{} found",
                                diags.len(),
                                if diags.len() == 1 { "" } else { "s" }
                            );
                        }
                    },
                    DiagFormat::Github => {
                        for d in &diags {
                            println!("{}", d.github());
                        }
                        if let Some(n) = nodes {
                            println!("{}: ok ({n} nodes)", f.display());
                        }
                    }
                    DiagFormat::Json => json.push(serde_json::json!({
                        "file": f.display().to_string(),
                        "ok": nodes.is_some(),
                        "nodes": nodes,
                        "diagnostics": diags.iter().map(|d| d.json()).collect::<Vec<_>>(),
                    })),
                }
            }
            if format == DiagFormat::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).expect("diagnostics serialize")
                );
            }
            Ok(ExitCode::from(if bad == 0 { 0 } else { code::INVALID }))
        }
        Cmd::Status {
            file,
            exit_code,
            json,
            sets,
            cache,
        } => {
            let p = load_with(&file, registry, &sets)?;
            gitops::status(&p, &cache_dir(&cache), exit_code, json)
        }
        Cmd::NodeExec(job) => node_exec::run(job, registry),
        Cmd::Env => {
            let worker = relabel_plugins::model::worker::path();
            let device = match std::process::Command::new(&worker).arg("env").output() {
                Ok(o) if o.status.success() => {
                    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
                }
                Ok(o) => {
                    serde_json::json!({"error": String::from_utf8_lossy(&o.stderr).trim().to_string()})
                }
                Err(e) => {
                    serde_json::json!({"error": format!("cannot start {}: {e}", worker.display())})
                }
            };
            let info = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "worker": worker.display().to_string(),
                "device": device,
                "kinds": registry.kinds().collect::<Vec<_>>(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&info).expect("env serializes")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Schema => {
            let s = schema::json_schema(registry);
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("schema serializes")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Graph { file, format } => {
            let p = load(&file, registry)?;
            print!(
                "{}",
                match format {
                    GraphFormat::Dot => view::dot(&p),
                    GraphFormat::Mermaid => view::mermaid(&p),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Plan {
            file,
            json,
            force,
            sets,
            cache,
        } => {
            let p = load_with(&file, registry, &sets)?;
            let c = open_cache(&cache)?;
            let steps = runner::plan(&p, &c, &force);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&steps).expect("plan serializes")
                );
            } else {
                let runs = steps.iter().filter(|s| s.action == "run").count();
                println!("{:<28} {:<20} {:<7} reason", "node", "kind", "action");
                for s in &steps {
                    println!(
                        "{:<28} {:<20} {:<7} {}",
                        s.instance, s.kind, s.action, s.reason
                    );
                }
                println!("{runs} to run, {} cached", steps.len() - runs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            file,
            targets,
            force,
            jobs,
            report: report_path,
            sets,
            locked,
            frozen,
            no_lock,
            remote,
            cache,
        } => {
            let p = Arc::new(load_with(&file, registry, &sets)?);
            let lock_path = relabel_engine::lock::path_for(&p.source.dir);
            let lock_file = relabel_engine::lock::LockFile::read(&lock_path).map_err(|e| {
                eprintln!("relabel: {e}");
                ExitCode::from(code::INVALID)
            })?;
            let lock_mode = if frozen {
                LockMode::Frozen
            } else if locked {
                LockMode::Locked
            } else {
                LockMode::Update
            };
            let section = lock_file
                .as_ref()
                .and_then(|l| l.pipelines.get(&p.name))
                .cloned();
            if lock_mode != LockMode::Update && section.is_none() {
                eprintln!(
                    "relabel: {} has no lock for pipeline \"{}\"; run without --locked/--frozen to write it",
                    lock_path.display(),
                    p.name
                );
                return Err(ExitCode::from(code::FAILED));
            }
            let remote = gitops::open_remote(&remote, p.remote.as_deref())?;
            let c = Arc::new(open_cache(&cache)?);
            let mut opts = RunOptions {
                targets,
                force,
                progress: ProgressSink::auto(),
                lock: section.clone().map(Arc::new),
                lock_mode,
                remote,
                ..RunOptions::default()
            };
            if let Some(j) = jobs {
                opts.jobs = j.max(1);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    eprintln!("relabel: {e}");
                    ExitCode::from(code::FAILED)
                })?;
            let cancel = CancellationToken::new();
            let result = rt.block_on(async {
                let watcher = cancel.clone();
                tokio::spawn(async move {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
                    }
                    eprintln!("relabel: interrupted; stopping running nodes (finished ones stay cached)");
                    watcher.cancel();
                });
                runner::run(p.clone(), c.clone(), opts, cancel.clone()).await
            });
            let rep = result.map_err(|e| {
                eprintln!("relabel: {e}");
                ExitCode::from(code::INVALID)
            })?;
            let dir = c.runs_dir().join(&rep.run_id);
            let written = report::write(&rep, &dir);
            if let Some(path) = &report_path {
                let text = serde_json::to_string_pretty(&rep).expect("report serializes");
                if let Err(e) = report::write_atomic(path, text.as_bytes()) {
                    eprintln!("relabel: cannot write {}: {e}", path.display());
                }
            }
            print!("{}", report::markdown(&rep));
            match written {
                Ok((json, md)) => println!("\nreport: {} and {}", json.display(), md.display()),
                Err(e) => eprintln!("relabel: cannot write the report in {}: {e}", dir.display()),
            }
            let mut failed = false;
            if let Some(r) = &rep.remote {
                for e in &r.errors {
                    eprintln!("relabel: {e}");
                }
                failed |= !r.errors.is_empty();
            }
            if !no_lock && lock_mode == LockMode::Update {
                if let Some(new) = PipelineLock::from_run(
                    &rep,
                    &p,
                    &gitops::manifest_name(&file),
                    section.as_ref(),
                ) {
                    let mut all = lock_file.unwrap_or_else(|| LockFile {
                        version: relabel_engine::lock::LOCK_VERSION,
                        ..LockFile::default()
                    });
                    if all.pipelines.get(&p.name) != Some(&new) {
                        all.pipelines.insert(p.name.clone(), new);
                        if let Err(e) = all.write(&lock_path) {
                            eprintln!("relabel: cannot write {}: {e}", lock_path.display());
                            failed = true;
                        }
                    }
                }
            }
            Ok(ExitCode::from(match rep.status {
                RunStatus::Ok if failed => code::FAILED,
                RunStatus::Ok => 0,
                RunStatus::Cancelled => code::CANCELLED,
                RunStatus::Failed => code::FAILED,
                RunStatus::Pending => {
                    eprintln!(
                        "relabel: pending: a node waits on a batch it submitted; nothing it would compute is recorded yet. Run the same command again to collect (exit {})",
                        code::PENDING
                    );
                    code::PENDING
                }
            }))
        }
        Cmd::Diff {
            a,
            b,
            manifest,
            examples,
            json,
            cache,
        } => {
            let pa = dataset_ref(&a, manifest.as_deref(), &cache, registry)?;
            let pb = dataset_ref(&b, manifest.as_deref(), &cache, registry)?;
            let read = |p: &PathBuf| {
                relabel_plugins::apply::apply_labels::read_dataset(p).map_err(|e| {
                    eprintln!("relabel: {e}");
                    ExitCode::from(code::INVALID)
                })
            };
            let d = relabel_plugins::apply::apply_labels::diff(&read(&pa)?, &read(&pb)?, examples);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&d).expect("diff serializes")
                );
            } else {
                print!("{}", diff_text(&a, &b, &d));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report {
            run,
            out,
            format,
            baseline,
            manifest,
            cache,
        } => {
            let fail = |msg: String| {
                eprintln!("relabel: {msg}");
                ExitCode::from(code::FAILED)
            };
            let read_report = || -> Result<(PathBuf, serde_json::Value), String> {
                let path = if run.ends_with(".json") {
                    PathBuf::from(&run)
                } else {
                    let runs = cache_dir(&cache).join("runs");
                    let id = if run == "latest" {
                        // The run whose report was written last: run ids are a second and
                        // a pid, so two runs in one second sort by pid, which wraps.
                        let mut ids: Vec<(Option<std::time::SystemTime>, String)> =
                            std::fs::read_dir(&runs)
                                .map_err(|e| format!("{}: {e}", runs.display()))?
                                .flatten()
                                .map(|e| {
                                    let written = std::fs::metadata(e.path().join("report.json"))
                                        .and_then(|m| m.modified())
                                        .ok();
                                    (written, e.file_name().to_string_lossy().to_string())
                                })
                                .collect();
                        ids.sort();
                        ids.pop()
                            .map(|(_, id)| id)
                            .ok_or_else(|| format!("no runs in {}", runs.display()))?
                    } else {
                        run.clone()
                    };
                    runs.join(id).join("report.json")
                };
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let v = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok((path, v))
            };
            if format == ReportFormat::Markdown {
                // With --manifest the lock alone is enough: a missing run report is no error.
                let report = match read_report() {
                    Ok((_, v)) => Some(v),
                    Err(_) if manifest.is_some() => None,
                    Err(e) => return Err(fail(e)),
                };
                let md = gitops::summary(report.as_ref(), manifest.as_deref(), baseline.as_deref())
                    .map_err(fail)?;
                print!("{md}");
                return Ok(ExitCode::SUCCESS);
            }
            if baseline.is_some() {
                return Err(fail("--baseline needs --format markdown".into()));
            }
            let (path, report) = read_report().map_err(fail)?;
            let dir = out.unwrap_or_else(|| path.parent().map(PathBuf::from).unwrap_or_default());
            let page = html_report::write(&report, &dir).map_err(fail)?;
            println!("{}", std::fs::canonicalize(&page).unwrap_or(page).display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cache { action, cache } => {
            let c = open_cache(&cache)?;
            match action {
                CacheCmd::Ls => {
                    let mut rows = Vec::new();
                    for (key, e) in c.store().entries().map_err(|e| {
                        eprintln!("relabel: {e}");
                        ExitCode::from(code::FAILED)
                    })? {
                        match e {
                            Ok(e) => {
                                let size: u64 = e
                                    .outputs
                                    .values()
                                    .map(|d| relabel_engine::cache::size_of_path(&c.object_path(d)))
                                    .sum();
                                rows.push((
                                    e.created.clone(),
                                    format!(
                                        "{:<12} {:<28} {:<16} {:>12} {}",
                                        &key[..12],
                                        e.node,
                                        e.kind,
                                        size,
                                        e.created
                                    ),
                                ));
                            }
                            Err(why) => rows.push((
                                String::new(),
                                format!("{:<12} (unreadable: {why})", &key[..key.len().min(12)]),
                            )),
                        }
                    }
                    rows.sort();
                    println!(
                        "{:<12} {:<28} {:<16} {:>12} created",
                        "key", "node", "kind", "bytes"
                    );
                    for (_, r) in &rows {
                        println!("{r}");
                    }
                    println!(
                        "{} entries, {} LLM responses",
                        rows.len(),
                        c.store().memo_len(relabel_llm::endpoint::SECTION)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                CacheCmd::Gc { only_latest } => {
                    let r = c.gc(only_latest).map_err(|e| {
                        eprintln!("relabel: {e}");
                        ExitCode::from(code::FAILED)
                    })?;
                    println!(
                        "removed {} entries and {} artifacts, freed {} bytes",
                        r.entries_removed, r.objects_removed, r.bytes_freed
                    );
                    Ok(ExitCode::SUCCESS)
                }
                CacheCmd::Verify => {
                    let r = c.verify().map_err(|e| {
                        eprintln!("relabel: {e}");
                        ExitCode::from(code::FAILED)
                    })?;
                    for (key, node, why) in &r.evicted {
                        println!("evicted {} ({node}): {why}", &key[..key.len().min(12)]);
                    }
                    println!(
                        "checked {} entries and {} artifacts; evicted {}",
                        r.entries,
                        r.objects,
                        r.evicted.len()
                    );
                    Ok(ExitCode::from(if r.evicted.is_empty() {
                        0
                    } else {
                        code::FAILED
                    }))
                }
            }
        }
    }
}
