//! The `trainer` node kind: trains a text classifier in the ML worker, early-stopped on dev loss.

use std::path::PathBuf;

use relabel_engine::plugin::{ConfigProblem, Inputs, NodeContext, NodeError, NodeKind, NodeOutput};
use relabel_engine::span::Path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Which model to train.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Hashed word unigrams + bigrams -> embedding bag (mean) -> linear; fast on a CPU.
    #[default]
    Fasttext,
    /// A pretrained BERT-family encoder (all-MiniLM-L6-v2 by default), mean pooling, a linear
    /// head, fine-tuned with AdamW. Small sets on a CPU; large ones want CUDA.
    Encoder,
}

/// Settings of the pretrained encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// A folder with `model.safetensors`, `config.json` and `tokenizer.json`
    /// [default: all-MiniLM-L6-v2 as `cargo xtask setup` fetched it into ~/.cache/relabel].
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Tokens per text; longer texts are cut.
    #[serde(default = "d_max_length")]
    pub max_length: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            path: None,
            max_length: d_max_length(),
        }
    }
}

fn d_max_length() -> usize {
    64
}

/// Where `cargo xtask setup` puts the default encoder: `$RELABEL_HOME/models/all-MiniLM-L6-v2`,
/// else `~/.cache/relabel/models/all-MiniLM-L6-v2`.
pub fn default_encoder_dir() -> PathBuf {
    crate::endpoint::relabel_home().join("models/all-MiniLM-L6-v2")
}

/// Where to compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Settings of the fastText-style model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FastTextConfig {
    /// Embedding size.
    #[serde(default = "d_dim")]
    pub dim: i64,
    /// Hash buckets shared by unigrams and bigrams (memory: dim x buckets x 4 bytes).
    #[serde(default = "d_buckets")]
    pub buckets: i64,
    /// 1: unigrams only; 2: unigrams and bigrams.
    #[serde(default = "d_ngrams")]
    pub word_ngrams: u8,
}

impl Default for FastTextConfig {
    fn default() -> Self {
        FastTextConfig {
            dim: d_dim(),
            buckets: d_buckets(),
            word_ngrams: d_ngrams(),
        }
    }
}

fn d_dim() -> i64 {
    64
}
fn d_buckets() -> i64 {
    1 << 18
}
fn d_ngrams() -> u8 {
    2
}
fn d_batch() -> usize {
    32
}
fn d_epochs() -> usize {
    20
}
fn d_patience() -> usize {
    3
}

/// Config of a `trainer` node (and the training part of `self_predictor`'s k-fold mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    #[serde(default)]
    pub model: ModelKind,
    #[serde(default)]
    pub device: Device,
    /// CPU threads [default: the machine's cores].
    #[serde(default)]
    pub threads: Option<i32>,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// fasttext: per-example SGD rate, decaying linearly to 0 over `epochs` (as in fastText)
    /// [default: 0.2]; encoder: AdamW rate, decaying linearly [default: 5e-5]
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Most epochs.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Stop after this many epochs without a lower dev loss; the checkpoint kept is the best one.
    #[serde(default = "d_patience")]
    pub patience: usize,
    /// Same seed, same data, CPU: the same model.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub fasttext: FastTextConfig,
    #[serde(default)]
    pub encoder: EncoderConfig,
}

impl TrainerConfig {
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let r = Path::root();
        let mut p = Vec::new();
        if self.batch_size == 0 {
            p.push(ConfigProblem::new(
                r.key("batch_size"),
                "must be at least 1",
            ));
        }
        if self.epochs == 0 {
            p.push(ConfigProblem::new(r.key("epochs"), "must be at least 1"));
        }
        if let Some(lr) = self.learning_rate {
            if !(lr > 0.0 && lr.is_finite()) {
                p.push(ConfigProblem::new(
                    r.key("learning_rate"),
                    "must be a positive number",
                ));
            }
        }
        if self.fasttext.dim < 1 || self.fasttext.buckets < 1 {
            p.push(ConfigProblem::new(
                r.key("fasttext"),
                "dim and buckets must be at least 1",
            ));
        }
        if !(1..=2).contains(&self.fasttext.word_ngrams) {
            p.push(ConfigProblem::new(
                r.key("fasttext").key("word_ngrams"),
                "must be 1 or 2",
            ));
        }
        p
    }
}

/// The `trainer` node kind.
pub struct Trainer;

impl NodeKind for Trainer {
    type Config = TrainerConfig;
    const KIND: &'static str = "trainer";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "Trains a text classifier (tch) on a dataset's train split; keeps the checkpoint with the lowest dev loss.";

    fn outputs(_: &TrainerConfig) -> Vec<String> {
        vec!["model".into()]
    }

    fn check(c: &TrainerConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = c.problems();
        if inputs.len() != 1 {
            p.push(ConfigProblem::new(
                Path::root(),
                format!(
                    "a trainer takes exactly one input, a dataset; it has {}",
                    inputs.len()
                ),
            ));
        }
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: TrainerConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let dataset = inputs
            .values()
            .next()
            .ok_or_else(|| NodeError::Failed("no dataset input".into()))?;
        let out = ctx.output_path("model");
        let request = json!({"config": c, "dataset": dataset.path, "out": out});
        let metrics = crate::worker::run_task(&ctx, "train", &request).await?;
        Ok(NodeOutput {
            outputs: [("model".to_string(), out)].into(),
            metrics,
        })
    }
}

/// What `model.json` beside a checkpoint says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta {
    pub model: ModelKind,
    pub labels: Vec<String>,
    pub config: TrainerConfig,
    pub best_epoch: usize,
}

/// The checkpoint file inside a model artifact.
pub fn checkpoint_path(model_dir: &std::path::Path) -> PathBuf {
    model_dir.join("model.safetensors")
}
