//! A BERT-family encoder (all-MiniLM-L6-v2 by default) with mean pooling and a linear head.
//!
//! Weights come from the model folder's `model.safetensors` (Hugging Face names, no prefix),
//! the tokenizer from its `tokenizer.json`. The head starts random; fine-tuning uses AdamW.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use relabel_tasks::protocol::{default_encoder_dir, EncoderConfig};
use serde::Deserialize;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use crate::train::Classifier;

/// The default AdamW rate for fine-tuning.
pub const DEFAULT_LR: f64 = 5e-5;

/// What the encoder needs from the model folder's `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    #[serde(default = "two")]
    pub type_vocab_size: i64,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "drop")]
    pub hidden_dropout_prob: f64,
}

fn two() -> i64 {
    2
}
fn eps() -> f64 {
    1e-12
}
fn drop() -> f64 {
    0.1
}

struct Layer {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    attn_out: nn::Linear,
    attn_ln: nn::LayerNorm,
    inter: nn::Linear,
    out: nn::Linear,
    out_ln: nn::LayerNorm,
}

pub struct Encoder {
    pub vs: nn::VarStore,
    cfg: BertConfig,
    word: nn::Embedding,
    pos: nn::Embedding,
    tok_type: nn::Embedding,
    emb_ln: nn::LayerNorm,
    layers: Vec<Layer>,
    head: nn::Linear,
    tokenizer: Tokenizer,
    max_length: usize,
    opt: Option<nn::Optimizer>,
}

/// Token ids of each text, cut to `max_length`.
pub struct Tokens(pub Vec<Vec<i64>>);

/// The model folder an encoder config points at.
pub fn model_dir(c: &EncoderConfig) -> PathBuf {
    c.path.clone().unwrap_or_else(default_encoder_dir)
}

impl Encoder {
    /// A classifier with `classes` outputs: pretrained encoder weights from `dir` when
    /// `pretrained`, a random head (seeded).
    pub fn new(
        c: &EncoderConfig,
        classes: i64,
        device: Device,
        seed: u64,
        pretrained: bool,
    ) -> Result<Self> {
        let dir = model_dir(c);
        if !dir.join("model.safetensors").exists() {
            bail!("no encoder at {} (run `cargo xtask setup`, or set `encoder.path` to a folder with model.safetensors, config.json and tokenizer.json)", dir.display());
        }
        let cfg: BertConfig = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).context("reading the encoder's config.json")?,
        )?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("reading tokenizer.json: {e}"))?;
        // tokenizer.json may carry its own padding and truncation (all-MiniLM-L6-v2 pads to a
        // fixed length): pad tokens would then count as text in the mask. Batches pad themselves.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("tokenizer.json: {e}"))?;
        tch::manual_seed(seed as i64);
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let h = cfg.hidden_size;
        let ln = |p: nn::Path| {
            nn::layer_norm(
                p,
                vec![h],
                nn::LayerNormConfig {
                    eps: cfg.layer_norm_eps,
                    ..Default::default()
                },
            )
        };
        let e = &root / "embeddings";
        let word = nn::embedding(
            &e / "word_embeddings",
            cfg.vocab_size,
            h,
            Default::default(),
        );
        let pos = nn::embedding(
            &e / "position_embeddings",
            cfg.max_position_embeddings,
            h,
            Default::default(),
        );
        let tok_type = nn::embedding(
            &e / "token_type_embeddings",
            cfg.type_vocab_size,
            h,
            Default::default(),
        );
        let emb_ln = ln(&e / "LayerNorm");
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let l = &root / "encoder" / "layer" / i;
            let a = &l / "attention";
            layers.push(Layer {
                q: nn::linear(&a / "self" / "query", h, h, Default::default()),
                k: nn::linear(&a / "self" / "key", h, h, Default::default()),
                v: nn::linear(&a / "self" / "value", h, h, Default::default()),
                attn_out: nn::linear(&a / "output" / "dense", h, h, Default::default()),
                attn_ln: ln(&a / "output" / "LayerNorm"),
                inter: nn::linear(
                    &l / "intermediate" / "dense",
                    h,
                    cfg.intermediate_size,
                    Default::default(),
                ),
                out: nn::linear(
                    &l / "output" / "dense",
                    cfg.intermediate_size,
                    h,
                    Default::default(),
                ),
                out_ln: ln(&l / "output" / "LayerNorm"),
            });
        }
        let head = nn::linear(&root / "classifier", h, classes, Default::default());
        if pretrained {
            let missing = vs
                .load_partial(dir.join("model.safetensors"))
                .context("loading the encoder's weights")?;
            let missing: Vec<&String> = missing
                .iter()
                .filter(|m| !m.starts_with("classifier."))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "the encoder's model.safetensors lacks {} weights, e.g. {}",
                    missing.len(),
                    missing[0]
                );
            }
        }
        Ok(Encoder {
            vs,
            cfg,
            word,
            pos,
            tok_type,
            emb_ln,
            layers,
            head,
            tokenizer,
            max_length: c.max_length,
            opt: None,
        })
    }

    /// Padded ids and attention mask of `rows`.
    fn batch(&self, enc: &Tokens, rows: &[usize]) -> (Tensor, Tensor) {
        let t = rows
            .iter()
            .map(|&r| enc.0[r].len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = vec![0i64; rows.len() * t];
        let mut mask = vec![0f32; rows.len() * t];
        for (i, &r) in rows.iter().enumerate() {
            for (j, &id) in enc.0[r].iter().enumerate() {
                ids[i * t + j] = id;
                mask[i * t + j] = 1.0;
            }
        }
        let d = self.vs.device();
        let n = rows.len() as i64;
        (
            Tensor::from_slice(&ids).view([n, t as i64]).to(d),
            Tensor::from_slice(&mask).view([n, t as i64]).to(d),
        )
    }

    /// Mean-pooled sentence embeddings [batch, hidden].
    pub fn embed(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let dh = h / heads;
        let p = self.cfg.hidden_dropout_prob;
        let positions = Tensor::arange(t, (Kind::Int64, ids.device())).unsqueeze(0);
        let mut x = self.word.forward(ids)
            + self.pos.forward(&positions)
            + self.tok_type.forward(&ids.zeros_like());
        x = self.emb_ln.forward(&x).dropout(p, train);
        // Padding positions get a large negative score before the softmax.
        let bias = ((mask.ones_like() - mask) * -1e4).view([b, 1, 1, t]);
        for l in &self.layers {
            let split = |y: Tensor| y.view([b, t, heads, dh]).transpose(1, 2);
            let q = split(l.q.forward(&x));
            let k = split(l.k.forward(&x));
            let v = split(l.v.forward(&x));
            let scores = q.matmul(&k.transpose(-1, -2)) / (dh as f64).sqrt() + &bias;
            let probs = scores.softmax(-1, Kind::Float).dropout(p, train);
            let ctx = probs
                .matmul(&v)
                .transpose(1, 2)
                .contiguous()
                .view([b, t, h]);
            x = l
                .attn_ln
                .forward(&(l.attn_out.forward(&ctx).dropout(p, train) + &x));
            let y = l.inter.forward(&x).gelu("none");
            x = l
                .out_ln
                .forward(&(l.out.forward(&y).dropout(p, train) + &x));
        }
        let m = mask.unsqueeze(-1);
        (x * &m).sum_dim_intlist(1, false, Kind::Float)
            / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9)
    }

    /// Sentence embeddings of texts (no gradient), e.g. for similarity search.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Tensor> {
        let enc = self.encode(texts)?;
        let rows: Vec<usize> = (0..texts.len()).collect();
        let parts: Vec<Tensor> = rows
            .chunks(64)
            .map(|c| {
                let (ids, mask) = self.batch(&enc, c);
                tch::no_grad(|| self.embed(&ids, &mask, false))
            })
            .collect();
        Ok(Tensor::cat(&parts, 0))
    }
}

impl Classifier for Encoder {
    type Encoded = Tokens;

    fn encode(&self, texts: &[String]) -> Result<Tokens> {
        let mut out = Vec::with_capacity(texts.len());
        for t in texts {
            let e = self
                .tokenizer
                .encode(t.as_str(), true)
                .map_err(|e| anyhow!("tokenizing: {e}"))?;
            let mut ids: Vec<i64> = e.get_ids().iter().map(|&x| x as i64).collect();
            if ids.len() > self.max_length {
                // Keep [CLS] ... and the final [SEP].
                let sep = *ids.last().expect("not empty");
                ids.truncate(self.max_length - 1);
                ids.push(sep);
            }
            out.push(ids);
        }
        Ok(Tokens(out))
    }

    fn train_step(
        &mut self,
        enc: &Tokens,
        rows: &[usize],
        labels: &Tensor,
        lr: f64,
    ) -> Result<f64> {
        if self.opt.is_none() {
            self.opt = Some(nn::AdamW::default().build(&self.vs, lr)?);
        }
        let (ids, mask) = self.batch(enc, rows);
        let logits = self.head.forward(&self.embed(&ids, &mask, true));
        let loss = logits.cross_entropy_for_logits(labels);
        let opt = self.opt.as_mut().expect("built above");
        opt.set_lr(lr);
        opt.backward_step(&loss);
        Ok(loss.double_value(&[]))
    }

    fn logits(&self, enc: &Tokens, rows: &[usize]) -> Tensor {
        let (ids, mask) = self.batch(enc, rows);
        tch::no_grad(|| self.head.forward(&self.embed(&ids, &mask, false)))
    }

    fn hidden(&self, enc: &Tokens, rows: &[usize]) -> Tensor {
        let (ids, mask) = self.batch(enc, rows);
        tch::no_grad(|| self.embed(&ids, &mask, false))
    }

    fn save(&self, path: &Path) -> Result<()> {
        self.vs
            .save(path)
            .with_context(|| format!("saving {}", path.display()))
    }

    fn reload(&mut self, path: &Path) -> Result<()> {
        self.vs
            .load(path)
            .with_context(|| format!("loading {}", path.display()))
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn eval_batch(&self) -> usize {
        128
    }
}
