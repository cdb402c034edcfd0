//! The plugin API: what a node kind declares (typed config, outputs, referenced files) and how it runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cache::{Memo, Store};
use crate::progress::Progress;
use crate::span::{Path, Seg};

/// A problem in a node's config, at a path relative to the node's `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: Path,
    pub message: String,
    /// True when the problem is about a key itself (point at the key, not its value).
    pub at_key: bool,
    pub hint: Option<String>,
}

impl ConfigProblem {
    pub fn new(path: Path, message: impl Into<String>) -> Self {
        ConfigProblem {
            path,
            message: message.into(),
            at_key: false,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

/// An input artifact handed to a running node.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// A read-only file or folder in the content-addressed store.
    pub path: PathBuf,
    /// Its blake3 digest (hex).
    pub digest: String,
}

/// Inputs by the name the manifest gave them.
pub type Inputs = BTreeMap<String, Artifact>;

/// Metrics a node reports: they appear in run reports and `until` conditions read them.
pub type Metrics = serde_json::Map<String, serde_json::Value>;

/// What a node produced: each declared output as a file or folder in its work folder, and metrics.
#[derive(Debug, Default)]
pub struct NodeOutput {
    pub outputs: BTreeMap<String, PathBuf>,
    pub metrics: Metrics,
}

/// Why a node did not produce its outputs.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    /// The node handed work to a system that answers later (a batch API): nothing is
    /// recorded, its dependents wait, and the next run picks it up where it stands. The text
    /// says what it waits for.
    #[error("{0}")]
    Pending(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        NodeError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What the engine hands a running node.
#[derive(Clone)]
pub struct NodeContext {
    /// The node's id; in a loop, `id@round`.
    pub instance: String,
    /// 1-based round when the node is in a loop body.
    pub round: Option<u32>,
    /// An empty folder the node owns for this run; outputs are written here.
    pub work_dir: PathBuf,
    /// The folder of the manifest: relative paths in configs are relative to it.
    pub manifest_dir: PathBuf,
    pub cancel: CancellationToken,
    pub progress: Progress,
    /// The cache's store, for [`NodeContext::memo`] tables.
    pub store: Arc<dyn Store>,
    /// The resources the node uses ([`NodeKind::resources`]), by section: the entry's name and
    /// its declaration. A section is absent when the manifest declares none (the kind picks
    /// its default).
    pub resources: BTreeMap<String, (String, serde_json::Value)>,
    /// The tracing span the node runs in.
    pub span: tracing::Span,
    /// The node's pieces ([`NodeKind::shards`]) already computed elsewhere (a Slurm job
    /// array's tasks), by index: `run` merges them instead of computing them. Empty when the
    /// node runs whole here.
    pub shards: Vec<PathBuf>,
}

impl NodeContext {
    /// Memo table `table`, shared by every run on this cache (see [`Memo`]).
    pub fn memo(&self, table: &str) -> Memo {
        Memo::new(self.store.clone(), table)
    }

    /// The entry of resource section `section` the node uses: its name and declaration.
    pub fn resource(&self, section: &str) -> Option<(&str, &serde_json::Value)> {
        self.resources
            .get(section)
            .map(|(name, v)| (name.as_str(), v))
    }

    /// A path inside the work folder for output `name`.
    pub fn output_path(&self, name: &str) -> PathBuf {
        self.work_dir.join("out").join(name)
    }

    /// Resolves a path from a config relative to the manifest's folder.
    pub fn resolve(&self, p: &FsPath) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.manifest_dir.join(p)
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A node kind with a typed config. Implement this; the registry wraps it with [`typed`].
pub trait NodeKind: Send + Sync + 'static {
    type Config: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static;
    /// The `kind:` name in manifests.
    const KIND: &'static str;
    /// Bump when the outputs for the same config and inputs change: it is part of every cache key.
    const VERSION: &'static str;
    /// One line for `--help` and the schema.
    const ABOUT: &'static str;

    /// The names of the outputs this config produces; the first is the default output.
    fn outputs(config: &Self::Config) -> Vec<String>;

    /// The resource sections ([`ResourceKind`]) a node with this config uses. For each, the
    /// config's field of the section's name names an entry of the manifest's section of that
    /// name (optional when it declares exactly one), which the engine checks, adds to the
    /// cache key and hands to the node in [`NodeContext::resources`].
    fn resources(_config: &Self::Config) -> Vec<&'static str> {
        Vec::new()
    }

    /// Files the config refers to, relative to the manifest's folder: their contents join the cache key.
    fn files(_config: &Self::Config) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Checks beyond the types, given the names of the node's inputs.
    fn check(_config: &Self::Config, _inputs: &[String]) -> Vec<ConfigProblem> {
        Vec::new()
    }

    fn run(
        &self,
        ctx: NodeContext,
        config: Self::Config,
        inputs: Inputs,
    ) -> impl Future<Output = Result<NodeOutput, NodeError>> + Send;

    /// How many independent pieces the node's heavy work splits into (a k-fold predictor's K
    /// fold trainings); 0 (the default) for a node that does not split. Under an executor each
    /// piece runs as one task of a job array ([`NodeKind::run_shard`]), and `run` is then given
    /// their outputs in [`NodeContext::shards`] to merge; run here, `run` does it all.
    fn shards(_config: &Self::Config) -> usize {
        0
    }

    /// Computes piece `shard` (0-based, below [`NodeKind::shards`]) into a folder under the
    /// work folder, returned as the output `shard`.
    fn run_shard(
        &self,
        _ctx: NodeContext,
        _config: Self::Config,
        _inputs: Inputs,
        shard: usize,
    ) -> impl Future<Output = Result<NodeOutput, NodeError>> + Send {
        async move {
            Err(NodeError::Failed(format!(
                "node kind {} does not split into pieces (asked for piece {shard})",
                Self::KIND
            )))
        }
    }

    /// Called instead of `run` when the node's outputs come from the cache: restores what the
    /// node keeps outside the cache (a copy of an export for people, say) from the cached
    /// outputs. Most kinds keep nothing outside and do nothing.
    fn on_cached(
        _config: &Self::Config,
        _manifest_dir: &FsPath,
        _outputs: &BTreeMap<String, PathBuf>,
    ) -> Result<(), NodeError> {
        Ok(())
    }
}

/// A config that passed its kind's checks, in canonical form.
#[derive(Debug, Clone)]
pub struct CheckedConfig {
    pub canonical: serde_json::Value,
    pub outputs: Vec<String>,
    pub files: Vec<PathBuf>,
    /// See [`NodeKind::resources`].
    pub resources: Vec<&'static str>,
}

/// The object-safe face of a node kind, as the engine sees it.
pub trait Plugin: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn config_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
    /// Types and checks a config; problems carry paths relative to `config`.
    fn check(
        &self,
        config: &serde_yaml::Value,
        inputs: &[String],
    ) -> Result<CheckedConfig, Vec<ConfigProblem>>;
    fn run<'a>(
        &'a self,
        ctx: NodeContext,
        canonical: &'a serde_json::Value,
        inputs: Inputs,
    ) -> BoxFuture<'a, Result<NodeOutput, NodeError>>;
    /// See [`NodeKind::on_cached`].
    fn on_cached(
        &self,
        canonical: &serde_json::Value,
        manifest_dir: &FsPath,
        outputs: &BTreeMap<String, PathBuf>,
    ) -> Result<(), NodeError>;
    /// See [`NodeKind::shards`].
    fn shards(&self, canonical: &serde_json::Value) -> usize;
    /// See [`NodeKind::run_shard`].
    fn run_shard<'a>(
        &'a self,
        ctx: NodeContext,
        canonical: &'a serde_json::Value,
        inputs: Inputs,
        shard: usize,
    ) -> BoxFuture<'a, Result<NodeOutput, NodeError>>;
}

struct Typed<K>(K);

/// Wraps a typed node kind as a [`Plugin`] for the registry.
pub fn typed<K: NodeKind>(kind: K) -> Arc<dyn Plugin> {
    Arc::new(Typed(kind))
}

/// Deserializes `value` as `T`, reporting every top-level field that is wrong, not just the
/// first: after a problem in field `k`, `k` is set aside and the rest is tried again.
fn deserialize_all<T: DeserializeOwned>(
    value: &serde_yaml::Value,
) -> Result<T, Vec<ConfigProblem>> {
    let first = match deserialize_at(value) {
        Ok(t) => return Ok(t),
        Err(p) => p,
    };
    let mut problems = vec![first];
    let mut rest = value.clone();
    let mut set_aside: Vec<String> = Vec::new();
    for _ in 0..32 {
        let Some(Seg::Key(k)) = problems.last().and_then(|p| p.path.0.first()).cloned() else {
            break;
        };
        let Some(map) = rest.as_mapping_mut() else {
            break;
        };
        if map.remove(serde_yaml::Value::String(k.clone())).is_none() {
            break;
        }
        set_aside.push(k);
        match deserialize_at::<T>(&rest) {
            Ok(_) => break,
            Err(p) => {
                // A field set aside may be required: its absence is no new problem.
                let missing_set_aside = set_aside
                    .iter()
                    .any(|k| p.message.starts_with(&format!("missing field `{k}`")));
                if missing_set_aside || problems.iter().any(|q| q.path == p.path) {
                    break;
                }
                problems.push(p);
            }
        }
    }
    Err(problems)
}

/// Deserializes `value` as `T`, turning a failure into a problem with the path where it happened.
pub fn deserialize_at<T: DeserializeOwned>(value: &serde_yaml::Value) -> Result<T, ConfigProblem> {
    serde_path_to_error::deserialize::<_, T>(value.clone()).map_err(|e| {
        let mut path = Path::root();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => path.0.push(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => path.0.push(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = e.inner().to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        let mut problem = ConfigProblem::new(path.clone(), message.clone());
        if message.starts_with("missing field `") {
            // serde reports it after reading the whole mapping: point at the mapping's key.
            problem.path = Path::root();
            problem.at_key = true;
        }
        if let Some(rest) = message.strip_prefix("unknown field `") {
            if let Some(name) = rest.split('`').next() {
                if path.0.last() != Some(&Seg::Key(name.to_string())) {
                    path = path.key(name);
                }
                problem.path = path.clone();
                problem.at_key = true;
                let expected: Vec<&str> = rest
                    .split("expected ")
                    .nth(1)
                    .map(|s| s.split('`').skip(1).step_by(2).collect())
                    .unwrap_or_default();
                problem.hint = crate::diag::did_you_mean(name, expected.iter().copied());
            }
        }
        problem
    })
}

impl<K: NodeKind> Plugin for Typed<K> {
    fn kind(&self) -> &'static str {
        K::KIND
    }

    fn version(&self) -> &'static str {
        K::VERSION
    }

    fn about(&self) -> &'static str {
        K::ABOUT
    }

    fn config_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<K::Config>()
    }

    fn check(
        &self,
        config: &serde_yaml::Value,
        inputs: &[String],
    ) -> Result<CheckedConfig, Vec<ConfigProblem>> {
        let typed: K::Config = deserialize_all(config)?;
        let problems = K::check(&typed, inputs);
        if !problems.is_empty() {
            return Err(problems);
        }
        let canonical = serde_json::to_value(&typed)
            .map_err(|e| vec![ConfigProblem::new(Path::root(), e.to_string())])?;
        Ok(CheckedConfig {
            canonical,
            outputs: K::outputs(&typed),
            files: K::files(&typed),
            resources: K::resources(&typed),
        })
    }

    fn run<'a>(
        &'a self,
        ctx: NodeContext,
        canonical: &'a serde_json::Value,
        inputs: Inputs,
    ) -> BoxFuture<'a, Result<NodeOutput, NodeError>> {
        Box::pin(async move {
            let config: K::Config = serde_json::from_value(canonical.clone())
                .map_err(|e| NodeError::Failed(format!("config: {e}")))?;
            self.0.run(ctx, config, inputs).await
        })
    }

    fn on_cached(
        &self,
        canonical: &serde_json::Value,
        manifest_dir: &FsPath,
        outputs: &BTreeMap<String, PathBuf>,
    ) -> Result<(), NodeError> {
        let config: K::Config = serde_json::from_value(canonical.clone())
            .map_err(|e| NodeError::Failed(format!("config: {e}")))?;
        K::on_cached(&config, manifest_dir, outputs)
    }

    fn shards(&self, canonical: &serde_json::Value) -> usize {
        serde_json::from_value::<K::Config>(canonical.clone())
            .map(|c| K::shards(&c))
            .unwrap_or(0)
    }

    fn run_shard<'a>(
        &'a self,
        ctx: NodeContext,
        canonical: &'a serde_json::Value,
        inputs: Inputs,
        shard: usize,
    ) -> BoxFuture<'a, Result<NodeOutput, NodeError>> {
        Box::pin(async move {
            let config: K::Config = serde_json::from_value(canonical.clone())
                .map_err(|e| NodeError::Failed(format!("config: {e}")))?;
            self.0.run_shard(ctx, config, inputs, shard).await
        })
    }
}

/// A kind of shared resource: a manifest declares named entries in a top-level section (an
/// LLM endpoint under `llm:`), and node configs name one with a field of the same name. The
/// engine checks entries, joins their answer-affecting part to the keys of the nodes using
/// them, and hands them to those nodes; what an entry is belongs to whoever registers it.
#[derive(Clone, Copy)]
pub struct ResourceKind {
    /// The top-level section, and the config field naming an entry (`llm`).
    pub section: &'static str,
    /// What one entry is called in messages ("LLM endpoint").
    pub noun: &'static str,
    /// How a node does without one, for the hint on an unknown name.
    pub without: &'static str,
    /// Checks one entry.
    pub check: fn(&serde_yaml::Value) -> Result<(), ConfigProblem>,
    /// One entry's JSON schema.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// The part of an entry that can change outputs: it joins the cache keys of the nodes
    /// using it.
    pub key: fn(&serde_json::Value) -> serde_json::Value,
}

/// Every node kind the program knows, in one explicit list, and the resource kinds they use.
#[derive(Clone)]
pub struct Registry {
    plugins: Vec<Arc<dyn Plugin>>,
    resources: Vec<ResourceKind>,
}

impl Registry {
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        Registry {
            plugins,
            resources: Vec::new(),
        }
    }

    /// Adds a resource kind (a top-level manifest section).
    pub fn with_resource(mut self, kind: ResourceKind) -> Self {
        self.resources.push(kind);
        self
    }

    pub fn resources(&self) -> &[ResourceKind] {
        &self.resources
    }

    pub fn resource(&self, section: &str) -> Option<&ResourceKind> {
        self.resources.iter().find(|r| r.section == section)
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.iter().find(|p| p.kind() == kind)
    }

    pub fn plugins(&self) -> &[Arc<dyn Plugin>] {
        &self.plugins
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.iter().map(|p| p.kind())
    }
}
