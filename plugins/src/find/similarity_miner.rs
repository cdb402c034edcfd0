//! The badcase side of the method: `embedder` turns a dataset's texts into sentence embeddings
//! (pretrained MiniLM, in the ML worker); `similarity_miner` finds, for each badcase (a test row
//! the model gets wrong), the most similar training rows by exact cosine kNN (over embeddings,
//! or TF-IDF when none are given) and flags them with the candidates {the badcase's human label,
//! the row's current label}, for the binary relabeler.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path as CfgPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::data::Dataset;
use crate::flags::{self, Flag};
use relabel_tasks::protocol::EncoderConfig;

/// Where embeddings come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingSource {
    /// The pretrained sentence encoder (all-MiniLM-L6-v2), mean-pooled.
    #[default]
    Pretrained,
    /// The trained model's own representation (input `model`): what its output layer reads.
    Model,
    /// An OpenAI-compatible `/v1/embeddings` endpoint (named by `llm`).
    Endpoint,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedderConfig {
    #[serde(default)]
    pub source: EmbeddingSource,
    /// `source: endpoint`: the endpoint (a name from the manifest's `llm:` section).
    #[serde(default)]
    pub llm: Option<String>,
    /// `source: endpoint`: texts per request.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// The pretrained encoder (default: all-MiniLM-L6-v2 as fetched by set-up).
    #[serde(default)]
    pub encoder: EncoderConfig,
    #[serde(default = "all_splits")]
    pub splits: Vec<String>,
    #[serde(default)]
    pub threads: Option<i32>,
}

fn default_batch() -> usize {
    64
}

fn all_splits() -> Vec<String> {
    vec![
        "train".into(),
        "dev".into(),
        "test".into(),
        "badcase".into(),
    ]
}

/// The embeddings artifact: `meta.json` (`dim`, rows per split) and `SPLIT.f32` per split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsMeta {
    pub dim: usize,
    pub rows: BTreeMap<String, usize>,
    pub model: String,
}

pub struct Embedder;

impl NodeKind for Embedder {
    type Config = EmbedderConfig;
    const KIND: &'static str = "embedder";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str =
        "Embeddings of a dataset's texts (pretrained MiniLM, or the trained model's own), for similarity mining";

    fn outputs(_: &EmbedderConfig) -> Vec<String> {
        vec!["embeddings".into()]
    }

    fn resources(c: &EmbedderConfig) -> Vec<&'static str> {
        if c.source == EmbeddingSource::Endpoint {
            vec![relabel_llm::endpoint::SECTION]
        } else {
            Vec::new()
        }
    }

    fn check(c: &EmbedderConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        match c.source {
            EmbeddingSource::Pretrained | EmbeddingSource::Endpoint => {
                crate::inputs::require_inputs(inputs, &["dataset"], "{dataset: DATA.dataset}")
            }
            EmbeddingSource::Model => crate::inputs::require_inputs(
                inputs,
                &["dataset", "model"],
                "{dataset: DATA.dataset, model: TRAIN.model}",
            ),
        }
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: EmbedderConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let ds = Dataset::read(&inputs["dataset"].path)
            .map_err(|e| NodeError::Failed(format!("dataset: {e}")))?;
        let out = ctx.output_path("embeddings");
        if c.source == EmbeddingSource::Model {
            let request = RepresentRequest {
                model: inputs["model"].path.clone(),
                dataset: inputs["dataset"].path.clone(),
                splits: c.splits.clone(),
                out: out.clone(),
            };
            let metrics = crate::model::worker::run_task(&ctx, "represent", &request).await?;
            return Ok(NodeOutput {
                outputs: [("embeddings".to_string(), out)].into(),
                metrics,
            });
        }
        std::fs::create_dir_all(&out).map_err(|e| NodeError::io("embeddings folder", e))?;
        if c.source == EmbeddingSource::Endpoint {
            return embed_by_endpoint(&ctx, &c, &ds, &out).await;
        }
        let mut meta = EmbeddingsMeta {
            dim: 0,
            rows: BTreeMap::new(),
            model: c
                .encoder
                .path
                .clone()
                .unwrap_or_else(relabel_tasks::protocol::default_encoder_dir)
                .display()
                .to_string(),
        };
        for s in &c.splits {
            let Some(split) = ds.split(s) else { continue };
            let request = EmbedRequest {
                encoder: c.encoder.clone(),
                texts: split.texts.clone(),
                out: out.join(format!("{s}.f32")),
                threads: c.threads,
            };
            let m = crate::model::worker::run_task(&ctx, "embed", &request).await?;
            meta.dim = m.get("dim").and_then(Value::as_u64).unwrap_or(0) as usize;
            meta.rows.insert(s.clone(), split.len());
        }
        std::fs::write(
            out.join("meta.json"),
            serde_json::to_vec_pretty(&meta).expect("json"),
        )
        .map_err(|e| NodeError::io("embeddings meta", e))?;
        let mut metrics = Metrics::new();
        metrics.insert("dim".into(), json!(meta.dim));
        metrics.insert("rows".into(), json!(meta.rows));
        Ok(NodeOutput {
            outputs: [("embeddings".to_string(), out)].into(),
            metrics,
        })
    }
}

/// Embeds every split's texts through the node's endpoint, `batch` texts per request.
async fn embed_by_endpoint(
    ctx: &NodeContext,
    c: &EmbedderConfig,
    ds: &Dataset,
    out: &Path,
) -> Result<NodeOutput, NodeError> {
    if ctx.resource(relabel_llm::endpoint::SECTION).is_none() {
        return Err(NodeError::Failed(
            "source: endpoint needs an endpoint: declare one under the manifest's `llm:` and name it in `llm`".into(),
        ));
    }
    let client = relabel_llm::client::Client::for_node(ctx).map_err(NodeError::Failed)?;
    let mut meta = EmbeddingsMeta {
        dim: 0,
        rows: BTreeMap::new(),
        model: client.describe(),
    };
    for s in &c.splits {
        let Some(split) = ds.split(s) else { continue };
        let mut bytes = Vec::with_capacity(split.len() * 4 * 384);
        for chunk in split.texts.chunks(c.batch.max(1)) {
            let vs = client
                .embed(chunk)
                .await
                .map_err(|e| NodeError::Failed(format!("embedding {s}: {e}")))?;
            for v in vs {
                if meta.dim == 0 {
                    meta.dim = v.len();
                } else if v.len() != meta.dim {
                    return Err(NodeError::Failed(format!(
                        "the endpoint returned embeddings of {} and {} dimensions",
                        meta.dim,
                        v.len()
                    )));
                }
                bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            }
        }
        std::fs::write(out.join(format!("{s}.f32")), bytes)
            .map_err(|e| NodeError::io("writing embeddings", e))?;
        meta.rows.insert(s.clone(), split.len());
    }
    std::fs::write(
        out.join("meta.json"),
        serde_json::to_vec_pretty(&meta).expect("json"),
    )
    .map_err(|e| NodeError::io("embeddings meta", e))?;
    let mut m = client.metrics();
    m.insert("dim".into(), json!(meta.dim));
    m.insert("rows".into(), json!(meta.rows));
    Ok(NodeOutput {
        outputs: [("embeddings".to_string(), out.to_path_buf())].into(),
        metrics: m,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MinerConfig {
    /// Training rows mined per badcase.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// The least cosine similarity a mined row must have.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Per-round thresholds (round 1 first; the last one holds after), overriding `threshold`
    /// inside a loop: e.g. `[0.8, 0.7, 0.6]` mines closer rows first.
    #[serde(default)]
    pub threshold_schedule: Vec<f64>,
    /// Splits whose rows may be mined (never test).
    #[serde(default = "train_only")]
    pub splits: Vec<String>,
    /// At most this many flags, the most similar first.
    #[serde(default)]
    pub max_flags: Option<usize>,
    #[serde(default)]
    pub threads: Option<i32>,
}

fn default_top_k() -> usize {
    5
}

fn default_threshold() -> f64 {
    0.6
}

fn train_only() -> Vec<String> {
    vec!["train".into()]
}

/// A badcase as the evaluator writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Badcase {
    pub split: String,
    /// The row's index in its split.
    pub row: usize,
    pub id: String,
    pub text: String,
    /// The human label.
    pub label: String,
    #[serde(default)]
    pub predicted: String,
}

pub fn read_badcases(path: &Path) -> Result<Vec<Badcase>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("badcases line {}: {e}", i + 1)))
        .collect()
}

/// Exact top-k by cosine over TF-IDF vectors (an inverted index): `[query][rank] = (row, score)`.
pub fn tfidf_knn(corpus: &[String], queries: &[String], k: usize) -> Vec<Vec<(usize, f32)>> {
    fn tokens(t: &str) -> Vec<String> {
        t.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    }
    let mut df: HashMap<String, usize> = HashMap::new();
    let docs: Vec<Vec<String>> = corpus.iter().map(|t| tokens(t)).collect();
    for d in &docs {
        let mut seen: Vec<&String> = d.iter().collect();
        seen.sort();
        seen.dedup();
        for w in seen {
            *df.entry(w.clone()).or_default() += 1;
        }
    }
    let n = corpus.len() as f32;
    let idf = |w: &str| ((1.0 + n) / (1.0 + *df.get(w).unwrap_or(&0) as f32)).ln() + 1.0;
    let vector = |toks: &[String]| -> Vec<(String, f32)> {
        let mut tf: BTreeMap<&str, f32> = BTreeMap::new();
        for w in toks {
            *tf.entry(w.as_str()).or_default() += 1.0;
        }
        let v: Vec<(String, f32)> = tf
            .into_iter()
            .map(|(w, c)| (w.to_string(), c * idf(w)))
            .collect();
        let norm = v.iter().map(|x| x.1 * x.1).sum::<f32>().sqrt().max(1e-12);
        v.into_iter().map(|(w, x)| (w, x / norm)).collect()
    };
    let mut index: HashMap<String, Vec<(u32, f32)>> = HashMap::new();
    for (i, d) in docs.iter().enumerate() {
        for (w, x) in vector(d) {
            index.entry(w).or_default().push((i as u32, x));
        }
    }
    queries
        .iter()
        .map(|q| {
            let mut acc: HashMap<u32, f32> = HashMap::new();
            for (w, x) in vector(&tokens(q)) {
                if let Some(post) = index.get(&w) {
                    for &(i, y) in post {
                        *acc.entry(i).or_default() += x * y;
                    }
                }
            }
            let mut v: Vec<(usize, f32)> = acc.into_iter().map(|(i, s)| (i as usize, s)).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(k);
            v
        })
        .collect()
}

pub struct SimilarityMiner;

impl NodeKind for SimilarityMiner {
    type Config = MinerConfig;
    const KIND: &'static str = "similarity_miner";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "For each badcase, flags the most similar training rows with candidates {its human label, their label}";

    fn outputs(_: &MinerConfig) -> Vec<String> {
        vec!["flags".into()]
    }

    fn check(c: &MinerConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = crate::inputs::require_inputs(
            inputs,
            &["badcases", "dataset"],
            "{badcases: EVAL.badcases, dataset: DATA.dataset, embeddings: EMBED.embeddings}",
        );
        if c.top_k == 0 {
            p.push(ConfigProblem::new(
                CfgPath::root().key("top_k"),
                "must be at least 1",
            ));
        }
        for (i, t) in std::iter::once(c.threshold)
            .chain(c.threshold_schedule.iter().copied())
            .enumerate()
        {
            if !(-1.0..=1.0).contains(&t) {
                let at = if i == 0 {
                    CfgPath::root().key("threshold")
                } else {
                    CfgPath::root().key("threshold_schedule").index(i - 1)
                };
                p.push(ConfigProblem::new(
                    at,
                    format!("a cosine similarity is between -1 and 1; found {t}"),
                ));
            }
        }
        if let Some(e) = c.splits.iter().find_map(|s| relabelable(s).err()) {
            p.push(ConfigProblem::new(
                CfgPath::root().key("splits"),
                format!("{e}: mine train (and dev) only"),
            ));
        }
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: MinerConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let fail = NodeError::Failed;
        let ds =
            Dataset::read(&inputs["dataset"].path).map_err(|e| fail(format!("dataset: {e}")))?;
        if ds.task != relabel_tasks::task::TaskKind::Classification {
            return Err(fail(format!(
                "the similarity miner mines rows for classification datasets; this dataset's task is {} (its badcases are sentences with span differences, which mining does not read yet)",
                ds.task.name()
            )));
        }
        let badcases = read_badcases(&inputs["badcases"].path).map_err(fail)?;
        let threshold = match (ctx.round, c.threshold_schedule.last()) {
            (Some(r), Some(last)) => *c.threshold_schedule.get(r as usize - 1).unwrap_or(last),
            _ => c.threshold,
        };
        // Corpus: the rows of the mined splits, in order.
        let mut corpus: Vec<(String, usize)> = Vec::new();
        for s in &c.splits {
            if let Some(split) = ds.split(s) {
                corpus.extend((0..split.len()).map(|i| (s.clone(), i)));
            }
        }
        let names = ds.labels.names();
        let neighbours: Vec<Vec<(usize, f32)>> = if badcases.is_empty() || corpus.is_empty() {
            Vec::new()
        } else if let Some(emb) = inputs.get("embeddings") {
            embedding_knn(&ctx, &emb.path, &c, &corpus, &badcases).await?
        } else {
            let texts: Vec<String> = corpus
                .iter()
                .map(|(s, i)| ds.split(s).expect("listed").texts[*i].clone())
                .collect();
            let q: Vec<String> = badcases.iter().map(|b| b.text.clone()).collect();
            tfidf_knn(&texts, &q, c.top_k)
        };
        // Each mined row once, with its most similar badcase.
        let mut best: HashMap<usize, (f32, usize)> = HashMap::new();
        let (mut equal, mut below) = (0usize, 0usize);
        for (b, hits) in neighbours.iter().enumerate() {
            let Some(human) = ds.labels.index(&badcases[b].label) else {
                return Err(fail(format!(
                    "badcase {} has label \"{}\", which is not in the dataset's label set",
                    badcases[b].id, badcases[b].label
                )));
            };
            for &(j, s) in hits.iter().take(c.top_k) {
                if (s as f64) < threshold {
                    below += 1;
                    continue;
                }
                let (split, i) = &corpus[j];
                if ds.split(split).expect("listed").labels[*i] == human {
                    equal += 1; // the row already has the badcase's label: nothing to choose
                    continue;
                }
                let e = best.entry(j).or_insert((s, b));
                if s > e.0 {
                    *e = (s, b);
                }
            }
        }
        let mut chosen: Vec<(usize, f32, usize)> =
            best.into_iter().map(|(j, (s, b))| (j, s, b)).collect();
        chosen.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(m) = c.max_flags {
            chosen.truncate(m);
        }
        let mut out_flags = Vec::with_capacity(chosen.len());
        let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
        for (j, s, b) in &chosen {
            let (split, i) = &corpus[*j];
            let sp = ds.split(split).expect("listed");
            let label = names[sp.labels[*i] as usize].to_string();
            *per_class.entry(badcases[*b].label.clone()).or_default() += 1;
            out_flags.push(Flag {
                split: split.clone(),
                row: *i,
                id: sp.ids[*i].clone(),
                text: sp.texts[*i].clone(),
                label,
                candidate: badcases[*b].label.clone(),
                label_prob: f32::NAN,
                candidate_prob: f32::NAN,
                score: *s as f64,
                rule: format!("similar_to:{}", badcases[*b].id),
                site: serde_json::Value::Null,
            });
        }
        let out = ctx.output_path("flags");
        flags::write(&out, &out_flags).map_err(|e| NodeError::io("writing flags", e))?;
        let mut m = Metrics::new();
        m.insert("badcases".into(), json!(badcases.len()));
        if let Some(w) = fixed_test_warning(&badcases) {
            tracing::warn!("{w}");
            m.insert("warning".into(), json!(w));
        }
        m.insert("flags".into(), json!(out_flags.len()));
        m.insert("threshold".into(), json!(threshold));
        m.insert("skipped_same_label".into(), json!(equal));
        m.insert("skipped_below_threshold".into(), json!(below));
        m.insert("flags_per_candidate".into(), json!(per_class));
        m.insert(
            "by".into(),
            json!(if inputs.contains_key("embeddings") {
                "embeddings"
            } else {
                "tfidf"
            }),
        );
        Ok(NodeOutput {
            outputs: [("flags".to_string(), out)].into(),
            metrics: m,
        })
    }
}

/// The warning for mining the fixed test split's badcases: its accuracy then overstates the
/// model, since rows like its errors were relabelled to its labels.
pub fn fixed_test_warning(badcases: &[Badcase]) -> Option<String> {
    let n = badcases
        .iter()
        .filter(|b| b.split == crate::data::FIXED_SPLIT)
        .count();
    (n > 0).then(|| format!(
        "{n} badcases come from the fixed {} split: after mining them its accuracy overstates the model (the paper: annotate a new test set once it improves); mine a separate `{}` split instead (dataset: badcase or badcase_fraction)",
        crate::data::FIXED_SPLIT,
        crate::data::BADCASE_SPLIT
    ))
}

/// kNN over embeddings in the ML worker: corpus = the mined splits' rows, queries = the
/// badcases' rows (looked up by id in their split's embeddings).
async fn embedding_knn(
    ctx: &NodeContext,
    dir: &Path,
    c: &MinerConfig,
    corpus: &[(String, usize)],
    badcases: &[Badcase],
) -> Result<Vec<Vec<(usize, f32)>>, NodeError> {
    let fail = NodeError::Failed;
    let meta: EmbeddingsMeta = serde_json::from_slice(
        &std::fs::read(dir.join("meta.json")).map_err(|e| NodeError::io("embeddings meta", e))?,
    )
    .map_err(|e| fail(format!("embeddings meta: {e}")))?;
    let d = meta.dim;
    let load = |s: &str| -> Result<Vec<u8>, NodeError> {
        std::fs::read(dir.join(format!("{s}.f32")))
            .map_err(|e| fail(format!("the embeddings have no split {s}: {e}")))
    };
    // The corpus: the mined splits' embedding files in corpus order. One split (the usual
    // case) is read by the worker where it lies; several are concatenated into the work folder.
    let mut splits_seen: Vec<&str> = Vec::new();
    for (s, _) in corpus {
        if !splits_seen.contains(&s.as_str()) {
            splits_seen.push(s);
        }
    }
    let files: Vec<PathBuf> = splits_seen
        .iter()
        .map(|s| dir.join(format!("{s}.f32")))
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()
        .map_err(|e| {
            fail(format!(
                "the embeddings lack a split of {splits_seen:?}: {e}"
            ))
        })?;
    if bytes != (corpus.len() * d * 4) as u64 {
        return Err(fail(format!(
            "the embeddings hold {} rows for {:?}; the dataset has {} (made from another dataset?)",
            bytes / (d * 4).max(1) as u64,
            splits_seen,
            corpus.len()
        )));
    }
    let corpus_path = match files.as_slice() {
        [one] => one.clone(),
        _ => {
            let joined = ctx.work_dir.join("corpus.f32");
            let mut all = Vec::with_capacity(bytes as usize);
            for s in &splits_seen {
                all.extend(load(s)?);
            }
            std::fs::write(&joined, all).map_err(|e| NodeError::io("corpus", e))?;
            joined
        }
    };
    // Queries: each badcase's row in its split's embeddings.
    let mut by_split: HashMap<String, Vec<u8>> = HashMap::new();
    let mut q = Vec::with_capacity(badcases.len() * d * 4);
    for b in badcases {
        if !by_split.contains_key(&b.split) {
            by_split.insert(b.split.clone(), load(&b.split)?);
        }
        let bytes = &by_split[&b.split];
        let Some(v) = bytes.get(b.row * d * 4..(b.row + 1) * d * 4) else {
            return Err(fail(format!(
                "badcase {} (row {} of {}) is beyond the embedded rows",
                b.id, b.row, b.split
            )));
        };
        q.extend_from_slice(v);
    }
    let queries_path = ctx.work_dir.join("queries.f32");
    let out = ctx.work_dir.join("knn.bin");
    std::fs::write(&queries_path, q).map_err(|e| NodeError::io("queries", e))?;
    let request = KnnRequest {
        corpus: corpus_path,
        queries: queries_path,
        dim: d,
        k: c.top_k,
        normalize: true,
        block_rows: 65_536,
        query_batch: 2_048,
        threads: c.threads,
        out: out.clone(),
    };
    crate::model::worker::run_task(ctx, "knn", &request).await?;
    read_knn(&out, badcases.len(), c.top_k.min(corpus.len())).map_err(fail)
}

use relabel_tasks::data::relabelable;
use relabel_tasks::protocol::{read_knn, EmbedRequest, KnnRequest, RepresentRequest};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tfidf_knn_equals_a_brute_force_cosine() {
        let corpus: Vec<String> = [
            "my card was stolen",
            "card lost yesterday",
            "refund my order please",
            "i want a refund",
            "exchange rate for euros",
            "what is the euro rate",
            "my pin is blocked",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let queries = vec!["stolen card".to_string(), "euro exchange".to_string()];
        let got = tfidf_knn(&corpus, &queries, 3);
        // Brute force with the same weighting, dense.
        let tok = |t: &str| -> Vec<String> { t.split_whitespace().map(String::from).collect() };
        let mut vocab: Vec<String> = corpus.iter().flat_map(|t| tok(t)).collect();
        vocab.sort();
        vocab.dedup();
        let n = corpus.len() as f32;
        let idf: Vec<f32> = vocab
            .iter()
            .map(|w| {
                let df = corpus.iter().filter(|t| tok(t).contains(w)).count() as f32;
                ((1.0 + n) / (1.0 + df)).ln() + 1.0
            })
            .collect();
        let vec = |t: &str| -> Vec<f32> {
            let toks = tok(t);
            let v: Vec<f32> = vocab
                .iter()
                .zip(&idf)
                .map(|(w, i)| toks.iter().filter(|x| *x == w).count() as f32 * i)
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.into_iter().map(|x| x / norm).collect()
        };
        for (qi, q) in queries.iter().enumerate() {
            let qv = vec(q);
            let mut all: Vec<(usize, f32)> = corpus
                .iter()
                .enumerate()
                .map(|(i, t)| (i, vec(t).iter().zip(&qv).map(|(a, b)| a * b).sum()))
                .filter(|(_, s)| *s > 0.0)
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(3);
            assert_eq!(
                got[qi].iter().map(|x| x.0).collect::<Vec<_>>(),
                all.iter().map(|x| x.0).collect::<Vec<_>>()
            );
            for (g, w) in got[qi].iter().zip(&all) {
                assert!((g.1 - w.1).abs() < 1e-5);
            }
        }
    }
}
