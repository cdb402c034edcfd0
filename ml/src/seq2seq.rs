//! The generation model: a GRU encoder-decoder with attention (a bidirectional encoder, Luong
//! "general" attention over its states, a tanh combination layer), trained with teacher forcing
//! and Adam, early-stopped on dev loss per target token; greedy decoding; the target's mean
//! log-probability per token for every row. `train` and `predict` (in-sample or k-fold) for
//! `task: generation` datasets.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use relabel_tasks::data::{Dataset, Split};
use relabel_tasks::generation::{self, delexicalise, detokenize, relexicalise};
use relabel_tasks::predictions::SplitPredictions;
use relabel_tasks::protocol::{checkpoint_path, ModelMeta, PredictRequest, Seq2SeqConfig};
use relabel_tasks::protocol::{TrainRequest, TrainerConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::nn::{self, Module, OptimizerConfig, RNN};
use tch::{Device, Kind, Tensor};

use crate::progress;
use crate::train::{Epoch, Rng, Trained};

const PAD: i64 = 0;
const UNK: i64 = 1;
const BOS: i64 = 2;
const EOS: i64 = 3;
const SPECIALS: [&str; 4] = ["<pad>", "<unk>", "<s>", "</s>"];
const VOCAB_FILE: &str = "vocab.json";
/// Adam's rate when the config gives none.
pub const DEFAULT_LR: f64 = 2e-3;

/// Source and target vocabularies, built from train.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vocab {
    pub source: Vec<String>,
    pub target: Vec<String>,
}

fn build_vocab(texts: impl Iterator<Item = Vec<String>>, min_count: usize) -> Vec<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in texts {
        for w in t {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    let mut words: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(_, c)| *c >= min_count.max(1))
        .collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain(words.into_iter().map(|w| w.0))
        .collect()
}

/// One row as the model reads it: token ids of the (delexicalised) source and target, and the
/// placeholder values to put back into an output.
struct Row {
    src: Vec<i64>,
    tgt: Vec<i64>,
    subs: Vec<(String, String)>,
}

fn index(v: &[String]) -> HashMap<&str, i64> {
    v.iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i as i64))
        .collect()
}

fn source_tokens(
    cfg: &Seq2SeqConfig,
    source: &str,
    target: &str,
) -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
    let (s, t, subs) = delexicalise(source, target, &cfg.delexicalise);
    // A record's attributes are one token each (`eatType=pub`): the decoder attends to whole
    // facts, not to the pieces of `eatType [ pub ]`.
    let src = match generation::parse_record(&s) {
        Some(r) if !cfg.source_chars => r
            .into_iter()
            .map(|a| format!("{}={}", a.slot, a.value))
            .collect(),
        _ => generation::tokens(&s, cfg.source_chars),
    };
    (src, generation::tokens(&t, false), subs)
}

fn encode(cfg: &Seq2SeqConfig, vocab: &Vocab, split: &Split) -> Vec<Row> {
    let (si, ti) = (index(&vocab.source), index(&vocab.target));
    split
        .texts
        .iter()
        .zip(&split.targets)
        .map(|(s, t)| {
            let (st, tt, subs) = source_tokens(cfg, s, t);
            let mut src: Vec<i64> = st
                .iter()
                .map(|w| *si.get(w.as_str()).unwrap_or(&UNK))
                .collect();
            if src.is_empty() {
                src.push(UNK);
            }
            let mut tgt: Vec<i64> = tt
                .iter()
                .map(|w| *ti.get(w.as_str()).unwrap_or(&UNK))
                .collect();
            tgt.truncate(cfg.max_output);
            Row { src, tgt, subs }
        })
        .collect()
}

/// The network.
pub struct Seq2Seq {
    vs: nn::VarStore,
    src_emb: nn::Embedding,
    tgt_emb: nn::Embedding,
    encoder: nn::GRU,
    init: nn::Linear,
    decoder: nn::GRU,
    attn: nn::Linear,
    combine: nn::Linear,
    out: nn::Linear,
    dropout: f64,
    device: Device,
}

impl Seq2Seq {
    fn new(cfg: &Seq2SeqConfig, vocab: &Vocab, device: Device, seed: u64) -> Seq2Seq {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        let (e, h) = (cfg.embedding, cfg.hidden);
        let d = 2 * h;
        let rnn = |bidirectional| nn::RNNConfig {
            bidirectional,
            batch_first: true,
            ..Default::default()
        };
        Seq2Seq {
            src_emb: nn::embedding(
                &r / "src_emb",
                vocab.source.len() as i64,
                e,
                Default::default(),
            ),
            tgt_emb: nn::embedding(
                &r / "tgt_emb",
                vocab.target.len() as i64,
                e,
                Default::default(),
            ),
            encoder: nn::gru(&r / "encoder", e, h, rnn(true)),
            init: nn::linear(&r / "init", 2 * h, d, Default::default()),
            decoder: nn::gru(&r / "decoder", e, d, rnn(false)),
            attn: nn::linear(&r / "attn", 2 * h, d, Default::default()),
            combine: nn::linear(&r / "combine", d + 2 * h, d, Default::default()),
            out: nn::linear(&r / "out", d, vocab.target.len() as i64, Default::default()),
            dropout: cfg.dropout,
            device,
            vs,
        }
    }

    /// Encoder states `[b, s, 2h]`, their attention keys `[b, s, d]` and the decoder's first
    /// state, for sources of one length.
    fn encode(&self, rows: &[&Row], train: bool) -> (Tensor, Tensor, nn::GRUState) {
        let len = rows[0].src.len() as i64;
        let ids: Vec<i64> = rows.iter().flat_map(|r| r.src.iter().copied()).collect();
        let x = Tensor::from_slice(&ids)
            .view([rows.len() as i64, len])
            .to(self.device);
        let x = self.src_emb.forward(&x).dropout(self.dropout, train);
        let (states, _) = self.encoder.seq(&x);
        let keys = self.attn.forward(&states);
        let h0 = self
            .init
            .forward(&states.mean_dim(1, false, Kind::Float))
            .tanh();
        (states, keys, nn::GRUState(h0.unsqueeze(0)))
    }

    /// Output logits `[b, t, vocab]` for decoder inputs `[b, t]`, and the decoder's last state.
    fn decode(
        &self,
        inputs: &Tensor,
        states: &Tensor,
        keys: &Tensor,
        h: &nn::GRUState,
        train: bool,
    ) -> (Tensor, nn::GRUState) {
        let y = self.tgt_emb.forward(inputs).dropout(self.dropout, train);
        let (dec, h) = self.decoder.seq_init(&y, h);
        let scores = dec.matmul(&keys.transpose(1, 2)); // [b, t, s]
        let context = scores.softmax(-1, Kind::Float).matmul(states); // [b, t, 2h]
        let c = self
            .combine
            .forward(&Tensor::cat(&[&dec, &context], 2))
            .tanh()
            .dropout(self.dropout, train);
        (self.out.forward(&c), h)
    }

    /// Per-row sums of target token log-probabilities (`</s>` included) and token counts.
    fn target_logprobs(&self, rows: &[&Row], train: bool) -> (Tensor, Vec<i64>) {
        let (states, keys, h) = self.encode(rows, train);
        let t = rows.iter().map(|r| r.tgt.len() + 1).max().unwrap_or(1) as i64;
        let b = rows.len() as i64;
        let (mut inp, mut out, mut lens) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            let n = r.tgt.len() as i64 + 1;
            lens.push(n);
            inp.push(BOS);
            inp.extend(&r.tgt);
            out.extend(&r.tgt);
            out.push(EOS);
            for _ in n..t {
                inp.push(PAD);
                out.push(PAD);
            }
        }
        let inp = Tensor::from_slice(&inp).view([b, t]).to(self.device);
        let out = Tensor::from_slice(&out).view([b, t]).to(self.device);
        let (logits, _) = self.decode(&inp, &states, &keys, &h, train);
        let lp = logits
            .log_softmax(-1, Kind::Float)
            .gather(2, &out.unsqueeze(2), false)
            .squeeze_dim(2);
        let mask = out.ne(PAD).to_kind(Kind::Float);
        ((lp * mask).sum_dim_intlist(1, false, Kind::Float), lens)
    }

    /// Greedy outputs (token ids, `</s>` not included) for sources of one length.
    fn greedy(&self, rows: &[&Row], max_len: usize) -> Vec<Vec<i64>> {
        let (states, keys, mut h) = self.encode(rows, false);
        let b = rows.len();
        let mut tok = Tensor::full([b as i64, 1], BOS, (Kind::Int64, self.device));
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for _ in 0..max_len {
            let (logits, h2) = self.decode(&tok, &states, &keys, &h, false);
            h = h2;
            tok = logits.argmax(-1, false); // [b, 1]
            let ids: Vec<i64> = Vec::<i64>::try_from(tok.view([-1]).to(Device::Cpu)).expect("ids");
            for (i, &t) in ids.iter().enumerate() {
                if done[i] {
                    continue;
                }
                if t == EOS {
                    done[i] = true;
                } else {
                    out[i].push(t);
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        out
    }
}

/// Batches of row indices whose sources have one length (so the encoder reads no padding), at
/// most `size` each; shuffled when `rng` is given.
fn batches(rows: &[Row], which: &[usize], size: usize, rng: Option<&mut Rng>) -> Vec<Vec<usize>> {
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &i in which {
        by_len.entry(rows[i].src.len()).or_default().push(i);
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut rng = rng;
    for (_, mut v) in by_len {
        if let Some(r) = rng.as_deref_mut() {
            r.shuffle(&mut v);
        }
        out.extend(v.chunks(size.max(1)).map(<[usize]>::to_vec));
    }
    if let Some(r) = rng {
        r.shuffle(&mut out);
    }
    out
}

/// Mean loss per target token over `which`.
fn dev_loss(m: &Seq2Seq, rows: &[Row], which: &[usize]) -> f64 {
    let (mut sum, mut n) = (0.0, 0i64);
    tch::no_grad(|| {
        for b in batches(rows, which, 256, None) {
            let rs: Vec<&Row> = b.iter().map(|&i| &rows[i]).collect();
            let (lp, lens) = m.target_logprobs(&rs, false);
            sum -= lp.sum(Kind::Double).double_value(&[]);
            n += lens.iter().sum::<i64>();
        }
    });
    sum / n.max(1) as f64
}

#[allow(clippy::too_many_arguments)]
fn fit(
    cfg: &TrainerConfig,
    vocab: &Vocab,
    train: (&[Row], &[usize]),
    dev: &[Row],
    ckpt: &Path,
    label: &str,
) -> Result<(Seq2Seq, Trained)> {
    let (rows, which) = train;
    if which.is_empty() {
        bail!("the train split has no rows");
    }
    let device = crate::train::pick_device(cfg.device)?;
    let threads = crate::train::set_threads(cfg);
    let m = Seq2Seq::new(&cfg.seq2seq, vocab, device, cfg.seed);
    let mut opt = nn::Adam::default().build(&m.vs, cfg.learning_rate.unwrap_or(DEFAULT_LR))?;
    let dev_rows: Vec<usize> = (0..dev.len()).collect();
    let tokens: i64 = which.iter().map(|&i| rows[i].tgt.len() as i64 + 1).sum();
    let mut rng = Rng::new(cfg.seed);
    let (mut best, mut best_epoch, mut since) = (f64::INFINITY, 0, 0);
    let mut curve = Vec::new();
    let mut stopped_early = false;
    progress::len(cfg.epochs as u64);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut sum = 0.0;
        for b in batches(rows, which, cfg.batch_size, Some(&mut rng)) {
            let rs: Vec<&Row> = b.iter().map(|&i| &rows[i]).collect();
            let (lp, lens) = m.target_logprobs(&rs, true);
            let n: i64 = lens.iter().sum();
            let loss = -lp.sum(Kind::Float) / n as f64;
            opt.backward_step_clip(&loss, 5.0);
            sum += loss.double_value(&[]) * n as f64;
        }
        let seconds = t0.elapsed().as_secs_f64();
        if !sum.is_finite() {
            bail!("training diverged in epoch {epoch}: lower `learning_rate`");
        }
        let dl = if dev_rows.is_empty() {
            sum / tokens as f64
        } else {
            dev_loss(&m, dev, &dev_rows)
        };
        curve.push(Epoch {
            epoch,
            train_loss: sum / tokens as f64,
            dev_loss: dl,
            dev_accuracy: 0.0,
            seconds,
            rows_per_s: which.len() as f64 / seconds.max(1e-9),
        });
        progress::step(&format!(
            "{label}epoch {epoch}: dev loss {dl:.4} per token ({:.0} target tokens/s)",
            tokens as f64 / seconds.max(1e-9)
        ));
        if dl < best - 1e-7 {
            (best, best_epoch, since) = (dl, epoch, 0);
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
    let mut m = m;
    m.vs.load(ckpt)
        .with_context(|| format!("loading {}", ckpt.display()))?;
    Ok((
        m,
        Trained {
            curve,
            best_epoch,
            best_dev_loss: best,
            best_dev_accuracy: 0.0,
            stopped_early,
            device: format!("{device:?}"),
            threads,
        },
    ))
}

/// Outputs (relexicalised text) and target mean log-probabilities of rows `which`; each
/// distinct source is decoded once.
fn predict_rows(
    m: &Seq2Seq,
    cfg: &Seq2SeqConfig,
    vocab: &Vocab,
    split: &Split,
    rows: &[Row],
    which: &[usize],
) -> (Vec<String>, Vec<f32>) {
    let mut lp = vec![0f32; rows.len()];
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut to_decode = Vec::new();
    for &i in which {
        first.entry(split.texts[i].as_str()).or_insert_with(|| {
            to_decode.push(i);
            i
        });
    }
    let mut decoded: HashMap<usize, Vec<i64>> = HashMap::new();
    tch::no_grad(|| {
        for b in batches(rows, which, 256, None) {
            let rs: Vec<&Row> = b.iter().map(|&i| &rows[i]).collect();
            let (sum, lens) = m.target_logprobs(&rs, false);
            let sum: Vec<f32> = Vec::<f32>::try_from(sum.to(Device::Cpu)).expect("floats");
            for ((&i, s), n) in b.iter().zip(sum).zip(lens) {
                lp[i] = s / n as f32;
            }
        }
        for b in batches(rows, &to_decode, 256, None) {
            let rs: Vec<&Row> = b.iter().map(|&i| &rows[i]).collect();
            for (&i, ids) in b.iter().zip(m.greedy(&rs, cfg.max_output)) {
                decoded.insert(i, ids);
            }
        }
    });
    let outputs = which
        .iter()
        .map(|&i| {
            let src_row = first[split.texts[i].as_str()];
            let toks: Vec<String> = decoded[&src_row]
                .iter()
                .map(|&t| vocab.target[t as usize].clone())
                .collect();
            // The placeholders of the decoded row's own source (all rows of one source share them).
            relexicalise(&detokenize(&toks), &rows[i].subs)
        })
        .collect();
    (outputs, which.iter().map(|&i| lp[i]).collect())
}

/// Multi-reference scores of a split's outputs (one per distinct source).
fn scores_of(split: &Split, outputs: &[String]) -> generation::GenScores {
    let groups = generation::group_by_source(&split.texts, &split.targets);
    let srcs: Vec<String> = groups
        .iter()
        .map(|(i, _)| split.texts[*i].clone())
        .collect();
    let outs: Vec<String> = groups.iter().map(|(i, _)| outputs[*i].clone()).collect();
    let refs: Vec<Vec<String>> = groups.into_iter().map(|(_, r)| r).collect();
    generation::score_outputs(&srcs, &outs, &refs)
}

/// `train` for a generation dataset.
pub fn train_task(req: &TrainRequest, ds: &Dataset) -> Result<Map<String, Value>> {
    let cfg = &req.config;
    let s2s = &cfg.seq2seq;
    let Some(tr) = ds.split("train") else {
        bail!("the dataset has no train split")
    };
    let empty = Split::default();
    let dev = ds.split("dev").unwrap_or(&empty);
    let toks: Vec<_> = tr
        .texts
        .iter()
        .zip(&tr.targets)
        .map(|(s, t)| source_tokens(s2s, s, t))
        .collect();
    let vocab = Vocab {
        source: build_vocab(toks.iter().map(|t| t.0.clone()), s2s.min_count),
        target: build_vocab(toks.iter().map(|t| t.1.clone()), s2s.min_count),
    };
    let (tr_rows, dev_rows) = (encode(s2s, &vocab, tr), encode(s2s, &vocab, dev));
    std::fs::create_dir_all(&req.out)?;
    let which: Vec<usize> = (0..tr.len()).collect();
    let t0 = Instant::now();
    let (m, trained) = fit(
        cfg,
        &vocab,
        (&tr_rows, &which),
        &dev_rows,
        &checkpoint_path(&req.out),
        "",
    )?;
    let train_secs = t0.elapsed().as_secs_f64();
    std::fs::write(req.out.join(VOCAB_FILE), serde_json::to_vec(&vocab)?)?;
    let meta = ModelMeta {
        model: cfg.model,
        labels: Vec::new(),
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
    let epochs = trained.curve.len().max(1) as f64;
    let tokens: usize = tr_rows.iter().map(|r| r.tgt.len() + 1).sum();
    out.insert("train_rows".into(), json!(tr.len()));
    out.insert("source_vocabulary".into(), json!(vocab.source.len()));
    out.insert("target_vocabulary".into(), json!(vocab.target.len()));
    let epoch_secs: f64 = trained.curve.iter().map(|e| e.seconds).sum::<f64>() / epochs;
    out.insert("seconds_per_epoch".into(), json!(epoch_secs));
    out.insert(
        "train_target_tokens_per_s".into(),
        json!(tokens as f64 / epoch_secs.max(1e-9)),
    );
    out.insert("train_seconds".into(), json!(train_secs));
    for (name, split) in [("dev", Some(dev)), ("test", ds.split("test"))] {
        let Some(split) = split.filter(|s| !s.is_empty()) else {
            continue;
        };
        let rows = encode(s2s, &vocab, split);
        let which: Vec<usize> = (0..split.len()).collect();
        let t0 = Instant::now();
        let (outputs, _) = predict_rows(&m, s2s, &vocab, split, &rows, &which);
        let secs = t0.elapsed().as_secs_f64();
        let sc = scores_of(split, &outputs);
        // The test scores are reported for honesty only: the test split never picks a checkpoint.
        out.insert(format!("{name}_bleu"), json!(sc.bleu));
        out.insert(format!("{name}_chrf"), json!(sc.chrf));
        if let Some(ser) = sc.slot_error_rate {
            out.insert(format!("{name}_slot_error_rate"), json!(ser));
        }
        let out_tokens: usize = outputs
            .iter()
            .map(|o| generation::tokens(o, false).len())
            .sum();
        out.insert(
            format!("{name}_decode_tokens_per_s"),
            json!(out_tokens as f64 / secs.max(1e-9)),
        );
    }
    Ok(out)
}

/// `predict` for a generation dataset: every split's outputs and target log-probabilities
/// (train k-fold out-of-sample when asked).
pub fn predict_task(
    req: &PredictRequest,
    meta: &ModelMeta,
    ds: &Dataset,
) -> Result<Map<String, Value>> {
    let cfg = &meta.config;
    let s2s = &cfg.seq2seq;
    let vocab: Vocab = serde_json::from_slice(
        &std::fs::read(req.model.join(VOCAB_FILE)).context("reading the model's vocab.json")?,
    )?;
    let device = crate::train::pick_device(cfg.device)?;
    crate::train::set_threads(cfg);
    let mut m = Seq2Seq::new(s2s, &vocab, device, cfg.seed);
    m.vs.load(checkpoint_path(&req.model))
        .context("loading the seq2seq checkpoint")?;
    std::fs::create_dir_all(&req.out)?;
    let k = req.config.kfold;
    if req.fold.is_some() && k.is_none() {
        bail!("a k-fold piece was asked for, but kfold is not set");
    }
    let training = if req.folds.is_empty() { k } else { None };
    progress::len(
        training
            .map(|k| if req.fold.is_some() { 1 } else { k } * cfg.epochs)
            .unwrap_or(0) as u64
            + ds.splits.len() as u64,
    );
    let mut metrics = Map::new();
    for (name, split) in &ds.splits {
        if req.fold.is_some() && name != "train" {
            continue;
        }
        let rows = encode(s2s, &vocab, split);
        let all: Vec<usize> = (0..split.len()).collect();
        let (mut outputs, mut lp) = if req.fold.is_some() {
            (vec![String::new(); split.len()], vec![0f32; split.len()])
        } else {
            predict_rows(&m, s2s, &vocab, split, &rows, &all)
        };
        let mut fold = vec![-1i32; split.len()];
        if let (Some(k), "train") = (k, name.as_str()) {
            let empty = Split::default();
            let dev = ds.split("dev").unwrap_or(&empty);
            let dev_rows = encode(s2s, &vocab, dev);
            let mut texts: HashMap<usize, Vec<String>> = HashMap::new();
            let mut pieces = crate::predict::kfold_pieces(req, split.len(), k, |f, seen, held| {
                let ckpt = req.work.join(format!("fold-{f}.safetensors"));
                let (fm, t) = fit(
                    cfg,
                    &vocab,
                    (&rows, seen),
                    &dev_rows,
                    &ckpt,
                    &format!("fold {}/{k}: ", f + 1),
                )?;
                let (o, l) = predict_rows(&fm, s2s, &vocab, split, &rows, held);
                texts.insert(f, o);
                Ok((t.best_epoch, l.into_iter().map(|x| vec![x]).collect()))
            })?;
            for p in &mut pieces {
                if let Some(o) = texts.remove(&p.fold) {
                    p.outputs = o;
                }
                if p.outputs.len() != p.held.len() {
                    bail!(
                        "k-fold piece {} holds {} outputs for {} rows",
                        p.fold,
                        p.outputs.len(),
                        p.held.len()
                    );
                }
            }
            if req.fold.is_some() {
                return crate::predict::write_piece(req, &pieces);
            }
            for piece in &pieces {
                for ((&r, p), o) in piece.held.iter().zip(&piece.probs).zip(&piece.outputs) {
                    lp[r] = p[0];
                    outputs[r] = o.clone();
                    fold[r] = piece.fold as i32;
                }
            }
            let best: Vec<usize> = pieces.iter().map(|p| p.best_epoch).collect();
            metrics.insert("fold_best_epochs".into(), json!(best));
        }
        let sc = scores_of(split, &outputs);
        let preds = SplitPredictions::from_outputs(outputs, &lp, fold);
        preds.write(
            &req.out.join(relabel_tasks::data::split_file(name)),
            &split.ids,
            &[],
        )?;
        metrics.insert(format!("{name}_bleu"), json!(sc.bleu));
        metrics.insert(format!("{name}_chrf"), json!(sc.chrf));
        metrics.insert(format!("{name}_mean_loss"), json!(preds.mean_loss()));
        if let Some(ser) = sc.slot_error_rate {
            metrics.insert(format!("{name}_slot_error_rate"), json!(ser));
        }
        progress::step(&format!(
            "predicted {name}: BLEU {:.2}, chrF {:.2}",
            sc.bleu, sc.chrf
        ));
    }
    crate::predict::write_meta(req, Vec::new(), ds, &mut metrics)?;
    Ok(metrics)
}
