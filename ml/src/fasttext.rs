//! The fastText-style classifier: hashed word unigrams + bigrams -> embedding bag (mean) -> linear.
//!
//! Training updates only the embedding rows a batch uses (sparse SGD, as fastText does): the
//! batch's rows are gathered into a small leaf tensor, autograd runs on that, and the gradient
//! is scattered back with `index_add_`. A dense gradient over all buckets would cost a full
//! pass over the table per step.

use std::path::Path;

use anyhow::{Context, Result};
use relabel_tasks::protocol::FastTextConfig;
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use crate::train::Classifier;

/// The default per-example SGD rate.
pub const DEFAULT_LR: f64 = 0.2;

pub struct FastText {
    pub vs: VarStore,
    emb: Tensor,
    w: Tensor,
    b: Tensor,
    cfg: FastTextConfig,
}

const FNV_OFFSET: u64 = 0xcbf29ce484222325;
const FNV_PRIME: u64 = 0x100000001b3;

fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Lower-cased words: runs of letters and digits.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// Bucket indices of a text: every word, every word pair (when `word_ngrams` is 2), and an
/// end-of-text marker (so no bag is empty).
pub fn features(text: &str, cfg: &FastTextConfig, out: &mut Vec<i64>) {
    let ws = words(text);
    let buckets = cfg.buckets as u64;
    let hashes: Vec<u64> = ws.iter().map(|w| fnv(w.as_bytes(), FNV_OFFSET)).collect();
    for h in &hashes {
        out.push((h % buckets) as i64);
    }
    if cfg.word_ngrams >= 2 {
        for pair in hashes.windows(2) {
            let h = fnv(&pair[1].to_le_bytes(), pair[0].wrapping_mul(116049371));
            out.push((h % buckets) as i64);
        }
    }
    out.push((fnv(b"</s>", FNV_OFFSET) % buckets) as i64);
}

/// Features of many texts, flattened, with each text's start offset.
pub struct Encoded {
    pub flat: Vec<u32>,
    pub starts: Vec<usize>,
}

impl Encoded {
    pub fn new(texts: &[String], cfg: &FastTextConfig) -> Self {
        let mut flat = Vec::new();
        let mut starts = Vec::with_capacity(texts.len() + 1);
        let mut buf = Vec::new();
        for t in texts {
            starts.push(flat.len());
            buf.clear();
            features(t, cfg, &mut buf);
            flat.extend(buf.iter().map(|&x| x as u32));
        }
        starts.push(flat.len());
        Encoded { flat, starts }
    }

    /// Index and offset tensors for the rows `rows`.
    pub fn batch(&self, rows: &[usize], device: Device) -> (Tensor, Tensor) {
        let mut idx = Vec::new();
        let mut offs = Vec::with_capacity(rows.len());
        for &r in rows {
            offs.push(idx.len() as i64);
            idx.extend(
                self.flat[self.starts[r]..self.starts[r + 1]]
                    .iter()
                    .map(|&x| x as i64),
            );
        }
        (
            Tensor::from_slice(&idx).to(device),
            Tensor::from_slice(&offs).to(device),
        )
    }
}

impl FastText {
    pub fn new(cfg: &FastTextConfig, classes: i64, device: Device, seed: u64) -> Self {
        tch::manual_seed(seed as i64);
        let vs = VarStore::new(device);
        let root = vs.root();
        let bound = 1.0 / cfg.dim as f64;
        let emb = root.var(
            "embedding",
            &[cfg.buckets, cfg.dim],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let lin = &root / "linear";
        let w = lin.var("weight", &[cfg.dim, classes], Init::Const(0.0));
        let b = lin.var("bias", &[classes], Init::Const(0.0));
        FastText {
            vs,
            emb,
            w,
            b,
            cfg: cfg.clone(),
        }
    }

    pub fn load(cfg: &FastTextConfig, classes: i64, device: Device, path: &Path) -> Result<Self> {
        let mut m = FastText::new(cfg, classes, device, 0);
        m.vs.load(path)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(m)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.vs
            .save(path)
            .with_context(|| format!("saving {}", path.display()))
    }

    /// Class logits of a batch (no gradient).
    pub fn logits_of(&self, idx: &Tensor, offs: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let (h, _, _, _) =
                Tensor::embedding_bag::<Tensor>(&self.emb, idx, offs, false, 1, false, None, false);
            h.matmul(&self.w) + &self.b
        })
    }

    /// One SGD step on a batch at step size `lr`; returns the batch's mean loss.
    pub fn sgd_step(&mut self, idx: &Tensor, offs: &Tensor, labels: &Tensor, lr: f64) -> f64 {
        let n = idx.size()[0];
        let sub = tch::no_grad(|| self.emb.index_select(0, idx)).set_requires_grad(true);
        let local = Tensor::arange(n, (Kind::Int64, idx.device()));
        let (h, _, _, _) =
            Tensor::embedding_bag::<Tensor>(&sub, &local, offs, false, 1, false, None, false);
        let logits = h.matmul(&self.w) + &self.b;
        let loss = logits.cross_entropy_for_logits(labels);
        loss.backward();
        tch::no_grad(|| {
            let g = sub.grad();
            let _ = self.emb.index_add_(0, idx, &(g * -lr));
            let gw = self.w.grad();
            let _ = self.w.g_sub_(&(gw * lr));
            let gb = self.b.grad();
            let _ = self.b.g_sub_(&(gb * lr));
        });
        self.w.zero_grad();
        self.b.zero_grad();
        loss.double_value(&[])
    }
}

impl Classifier for FastText {
    type Encoded = Encoded;

    fn encode(&self, texts: &[String]) -> Result<Encoded> {
        Ok(Encoded::new(texts, &self.cfg))
    }

    fn train_step(
        &mut self,
        enc: &Encoded,
        rows: &[usize],
        labels: &Tensor,
        lr: f64,
    ) -> Result<f64> {
        let (idx, offs) = enc.batch(rows, self.vs.device());
        // A per-example rate, as in fastText: the batch's mean gradient is scaled back up to a sum.
        Ok(self.sgd_step(&idx, &offs, labels, lr * rows.len() as f64))
    }

    fn logits(&self, enc: &Encoded, rows: &[usize]) -> Tensor {
        let (idx, offs) = enc.batch(rows, self.vs.device());
        self.logits_of(&idx, &offs)
    }

    fn hidden(&self, enc: &Encoded, rows: &[usize]) -> Tensor {
        let (idx, offs) = enc.batch(rows, self.vs.device());
        tch::no_grad(|| {
            Tensor::embedding_bag::<Tensor>(&self.emb, &idx, &offs, false, 1, false, None, false).0
        })
    }

    fn save(&self, path: &Path) -> Result<()> {
        FastText::save(self, path)
    }

    fn reload(&mut self, path: &Path) -> Result<()> {
        self.vs
            .load(path)
            .with_context(|| format!("loading {}", path.display()))
    }

    fn device(&self) -> Device {
        self.vs.device()
    }
}
