//! The ML worker's protocol: the request of each task (`relabel-ml task TASK REQUEST.json`) and
//! the lines it prints, typed on both sides of the process boundary, and the node configs the
//! requests carry.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// Tagging: a BiLSTM over GloVe word vectors, casing and character-CNN features, a softmax
    /// per token (no CRF, so per-token probabilities are exact), trained with Adam.
    Bilstm,
    /// CTR: a factorization machine over hashed categorical features (and scaled numeric ones):
    /// bias + linear terms + pairwise interactions of learned factors; one logit, p(click).
    Fm,
    /// CTR: DeepFM, the factorization machine plus a feed-forward network over the fields'
    /// factors, summed into one logit.
    Deepfm,
    /// Generation: a GRU encoder-decoder with attention (bidirectional encoder, Luong
    /// attention), trained with teacher forcing and Adam, decoded greedily.
    Seq2seq,
    /// Detection: a small CenterNet (a per-class centre heatmap plus size and offset heads on a
    /// few convolutions, stride 4), trained with a focal loss and Adam.
    Centernet,
}

/// Settings of the CenterNet detector (`model: centernet`, detection datasets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Images are resized to this many pixels a side (a multiple of 4).
    #[serde(default = "d_det_input")]
    pub input_size: i64,
    /// Channels of the widest convolutions.
    #[serde(default = "d_det_width")]
    pub width: i64,
    /// Most boxes kept per image.
    #[serde(default = "d_det_max")]
    pub max_detections: usize,
    /// Boxes scored below this are dropped.
    #[serde(default = "d_det_min_score")]
    pub min_score: f32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            input_size: d_det_input(),
            width: d_det_width(),
            max_detections: d_det_max(),
            min_score: d_det_min_score(),
        }
    }
}

fn d_det_input() -> i64 {
    64
}
fn d_det_width() -> i64 {
    48
}
fn d_det_max() -> usize {
    30
}
fn d_det_min_score() -> f32 {
    0.02
}

/// Settings of the seq2seq model (`model: seq2seq`, generation datasets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqConfig {
    /// Token embedding size (source and target).
    #[serde(default = "d_s2s_emb")]
    pub embedding: i64,
    /// GRU units per encoder direction; the decoder has twice as many.
    #[serde(default = "d_s2s_hidden")]
    pub hidden: i64,
    #[serde(default = "d_s2s_dropout")]
    pub dropout: f64,
    /// Most output tokens per row.
    #[serde(default = "d_s2s_max_output")]
    pub max_output: usize,
    /// Record sources (`slot[value], ...`): the slots whose values become placeholders in the
    /// source and the target (E2E: `[name, near]`), put back into outputs.
    #[serde(default)]
    pub delexicalise: Vec<String>,
    /// Source tokens are characters (G2P: a word's letters) instead of words and punctuation.
    #[serde(default)]
    pub source_chars: bool,
    /// Tokens seen fewer times in train are unknown.
    #[serde(default = "d_s2s_min_count")]
    pub min_count: usize,
}

impl Default for Seq2SeqConfig {
    fn default() -> Self {
        Seq2SeqConfig {
            embedding: d_s2s_emb(),
            hidden: d_s2s_hidden(),
            dropout: d_s2s_dropout(),
            max_output: d_s2s_max_output(),
            delexicalise: Vec::new(),
            source_chars: false,
            min_count: d_s2s_min_count(),
        }
    }
}

fn d_s2s_emb() -> i64 {
    64
}
fn d_s2s_hidden() -> i64 {
    128
}
fn d_s2s_dropout() -> f64 {
    0.2
}
fn d_s2s_max_output() -> usize {
    60
}
fn d_s2s_min_count() -> usize {
    1
}

/// Settings of the CTR models (`fm`, `deepfm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CtrModelConfig {
    /// Factor size per feature.
    #[serde(default = "d_factors")]
    pub dim: i64,
    /// Hash buckets shared by every field's values (memory: (dim + 1) x buckets x 8 bytes).
    #[serde(default = "d_ctr_buckets")]
    pub buckets: i64,
    /// DeepFM: the hidden layers' widths.
    #[serde(default = "d_deep")]
    pub hidden: Vec<i64>,
    /// DeepFM: the feed-forward network's (and the global bias's) Adam rate; the factor and
    /// linear tables use sparse Adagrad at `learning_rate`.
    #[serde(default = "d_deep_lr")]
    pub deep_learning_rate: f64,
    /// The truncated loss of Wang et al. 2021 (T-CE): each batch leaves out its largest-loss
    /// clicks, a fraction rising linearly from 0 to `max_drop_rate` over `warmup_steps` (the
    /// clicks a model cannot fit early are likely false positives). Off by default.
    #[serde(default)]
    pub truncated_loss: Option<TruncatedLoss>,
}

impl Default for CtrModelConfig {
    fn default() -> Self {
        CtrModelConfig {
            dim: d_factors(),
            buckets: d_ctr_buckets(),
            hidden: d_deep(),
            deep_learning_rate: d_deep_lr(),
            truncated_loss: None,
        }
    }
}

/// T-CE's schedule (see [`CtrModelConfig::truncated_loss`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TruncatedLoss {
    #[serde(default = "d_max_drop")]
    pub max_drop_rate: f64,
    #[serde(default = "d_warmup")]
    pub warmup_steps: usize,
}

fn d_factors() -> i64 {
    16
}
fn d_ctr_buckets() -> i64 {
    1 << 18
}
fn d_deep() -> Vec<i64> {
    vec![64, 32]
}
fn d_deep_lr() -> f64 {
    1e-3
}
fn d_max_drop() -> f64 {
    0.2
}
fn d_warmup() -> usize {
    1000
}

/// Settings of the BiLSTM tagger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaggerConfig {
    /// A folder with `glove_6B_50d_emb.npy` and `glove_6B_index.parquet` [default: GloVe 6B 50d
    /// as `cargo xtask setup` fetched it into ~/.cache/relabel/models/glove-6b-50d].
    #[serde(default)]
    pub vectors: Option<PathBuf>,
    /// LSTM units per direction.
    #[serde(default = "d_hidden")]
    pub hidden: i64,
    /// Character embedding size and character-CNN filters.
    #[serde(default = "d_char_dim")]
    pub char_dim: i64,
    #[serde(default = "d_char_filters")]
    pub char_filters: i64,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
}

impl Default for TaggerConfig {
    fn default() -> Self {
        TaggerConfig {
            vectors: None,
            hidden: d_hidden(),
            char_dim: d_char_dim(),
            char_filters: d_char_filters(),
            dropout: d_dropout(),
        }
    }
}

fn d_hidden() -> i64 {
    100
}
fn d_char_dim() -> i64 {
    25
}
fn d_char_filters() -> i64 {
    50
}
fn d_dropout() -> f64 {
    0.5
}

/// Where `cargo xtask setup` puts GloVe 6B 50d.
pub fn default_vectors_dir() -> PathBuf {
    crate::home::relabel_home().join("models/glove-6b-50d")
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
    crate::home::relabel_home().join("models/all-MiniLM-L6-v2")
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
    #[serde(default)]
    pub tagger: TaggerConfig,
    #[serde(default)]
    pub ctr: CtrModelConfig,
    #[serde(default)]
    pub seq2seq: Seq2SeqConfig,
    #[serde(default)]
    pub detector: DetectorConfig,
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

/// Config of a `self_predictor` node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfPredictorConfig {
    /// Out-of-sample mode: train K models, each on K-1 folds of train (same settings as the
    /// input model, early-stopped on dev), and predict each train row with the model that did
    /// not see it. Without it (the paper's way), train rows are predicted in-sample by the
    /// input model. Dev and test rows are always predicted by the input model.
    #[serde(default)]
    pub kfold: Option<usize>,
    /// Seed of the fold assignment.
    #[serde(default)]
    pub seed: u64,
}

/// One line the worker prints on stdout.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerLine {
    /// Progress: a new total, and/or steps done, and/or a message.
    Progress {
        #[serde(default)]
        len: Option<u64>,
        #[serde(default)]
        inc: Option<u64>,
        #[serde(default)]
        msg: Option<String>,
    },
    /// The task's metrics; the last line of a successful task.
    Metrics(serde_json::Map<String, serde_json::Value>),
}

/// `train`: fit a model on a dataset artifact, early-stopped on dev loss.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRequest {
    pub config: TrainerConfig,
    pub dataset: PathBuf,
    pub out: PathBuf,
}

/// `predict`: class probabilities for every row, in-sample or k-fold out-of-sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PredictRequest {
    pub config: SelfPredictorConfig,
    pub model: PathBuf,
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub work: PathBuf,
    /// Compute only this k-fold piece (train fold F's held-out predictions) into `out`, for
    /// a task of a job array; nothing else is predicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
    /// The k-fold pieces already computed elsewhere, fold by fold: they are read instead of
    /// trained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<PathBuf>,
}

/// `embed`: a pretrained encoder's sentence embeddings of `texts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedRequest {
    #[serde(default)]
    pub encoder: EncoderConfig,
    pub texts: Vec<String>,
    /// Row-major little-endian f32 [texts x hidden].
    pub out: PathBuf,
    #[serde(default)]
    pub threads: Option<i32>,
}

/// `represent`: the trained model's own representation of a dataset's texts (what its output
/// layer reads), written as `SPLIT.f32` + `meta.json` like the embedder's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepresentRequest {
    pub model: PathBuf,
    pub dataset: PathBuf,
    pub splits: Vec<String>,
    pub out: PathBuf,
}

/// `knn`: exact top-k by inner product, the corpus streamed in blocks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnnRequest {
    /// Row-major little-endian f32 [rows x dim].
    pub corpus: PathBuf,
    /// Row-major little-endian f32 [queries x dim].
    pub queries: PathBuf,
    pub dim: usize,
    pub k: usize,
    /// L2-normalise both sides first (cosine similarity).
    #[serde(default)]
    pub normalize: bool,
    /// Corpus rows per block.
    #[serde(default = "default_block")]
    pub block_rows: usize,
    /// Queries per matrix product.
    #[serde(default = "default_query_batch")]
    pub query_batch: usize,
    #[serde(default)]
    pub threads: Option<i32>,
    /// i64 ids [queries x k] then f32 scores [queries x k], little-endian; -1 pads.
    pub out: PathBuf,
}

fn default_block() -> usize {
    65_536
}

fn default_query_batch() -> usize {
    2_048
}

/// Reads the worker's kNN output: i64 ids [q x k] then f32 scores [q x k].
pub fn read_knn(path: &Path, q: usize, k: usize) -> Result<Vec<Vec<(usize, f32)>>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if b.len() != q * k * 12 {
        return Err(format!(
            "kNN output has {} bytes, expected {}",
            b.len(),
            q * k * 12
        ));
    }
    let (ids, scores) = b.split_at(q * k * 8);
    Ok((0..q)
        .map(|i| {
            (0..k)
                .map(|j| {
                    let t = i * k + j;
                    let id = i64::from_le_bytes(ids[t * 8..t * 8 + 8].try_into().expect("8 bytes"));
                    let s =
                        f32::from_le_bytes(scores[t * 4..t * 4 + 4].try_into().expect("4 bytes"));
                    (id as usize, s)
                })
                .filter(|(id, _)| *id != usize::MAX)
                .collect()
        })
        .collect())
}
