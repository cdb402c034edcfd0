//! Training with early stopping on dev loss; the checkpoint kept is the one with the lowest dev loss.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use relabel_tasks::data::Split;
use relabel_tasks::protocol::{Device as DeviceChoice, TrainerConfig};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::progress;

/// A trainable text classifier, as the training loop sees it.
pub trait Classifier {
    /// Texts in the model's input form (computed once per split).
    type Encoded;
    fn encode(&self, texts: &[String]) -> Result<Self::Encoded>;
    /// One optimisation step on `rows`; returns the batch's mean loss. `lr` is the scheduled
    /// rate (the model decides what it means: per example for fasttext, AdamW's for the encoder).
    fn train_step(
        &mut self,
        enc: &Self::Encoded,
        rows: &[usize],
        labels: &Tensor,
        lr: f64,
    ) -> Result<f64>;
    /// Class logits of `rows`, without gradients or dropout.
    fn logits(&self, enc: &Self::Encoded, rows: &[usize]) -> Tensor;
    /// The representation the output layer reads (for similarity search), without gradients.
    fn hidden(&self, enc: &Self::Encoded, rows: &[usize]) -> Tensor;
    fn save(&self, path: &Path) -> Result<()>;
    fn reload(&mut self, path: &Path) -> Result<()>;
    fn device(&self) -> Device;
    /// Rows per evaluation batch.
    fn eval_batch(&self) -> usize {
        4096
    }
}

/// One epoch of the learning curve.
#[derive(Debug, Clone, Serialize)]
pub struct Epoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub dev_loss: f64,
    pub dev_accuracy: f64,
    pub seconds: f64,
    pub rows_per_s: f64,
}

/// What training did.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    pub curve: Vec<Epoch>,
    /// 1-based epoch of the kept checkpoint.
    pub best_epoch: usize,
    pub best_dev_loss: f64,
    pub best_dev_accuracy: f64,
    pub stopped_early: bool,
    pub device: String,
    pub threads: i32,
}

/// A small, seedable generator (splitmix64) for shuffles and fold assignment.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E3779B97F4A7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            xs.swap(i, j);
        }
    }
}

pub fn pick_device(choice: DeviceChoice) -> Result<Device> {
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
        DeviceChoice::Cuda => bail!("device: cuda was asked for, but libtorch sees no CUDA device (this build of libtorch may be CPU-only)"),
    })
}

pub fn set_threads(cfg: &TrainerConfig) -> i32 {
    let n = cfg.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as i32)
            .unwrap_or(1)
    });
    tch::set_num_threads(n.max(1));
    n.max(1)
}

/// Mean loss and accuracy of `model` on `rows` of `split`.
pub fn evaluate<M: Classifier>(
    model: &M,
    enc: &M::Encoded,
    split: &Split,
    rows: &[usize],
) -> (f64, f64) {
    if rows.is_empty() {
        return (0.0, 0.0);
    }
    let device = model.device();
    let (mut loss, mut correct) = (0.0, 0i64);
    for chunk in rows.chunks(model.eval_batch()) {
        let labels: Vec<i64> = chunk.iter().map(|&r| split.labels[r] as i64).collect();
        let labels = Tensor::from_slice(&labels).to(device);
        let logits = model.logits(enc, chunk);
        let l = logits.cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Sum, -100, 0.0);
        loss += l.double_value(&[]);
        correct += logits
            .argmax(-1, false)
            .eq_tensor(&labels)
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    (loss / rows.len() as f64, correct as f64 / rows.len() as f64)
}

/// Class probabilities of `rows` of `enc`, row-major.
pub fn probabilities<M: Classifier>(model: &M, enc: &M::Encoded, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::new();
    for chunk in rows.chunks(model.eval_batch()) {
        let p = model
            .logits(enc, chunk)
            .softmax(-1, Kind::Float)
            .to(Device::Cpu)
            .contiguous();
        let v: Vec<f32> = Vec::<f32>::try_from(p.flatten(0, -1)).expect("float tensor");
        out.extend(v);
    }
    out
}

/// Trains on `rows` of `train`, early-stopping on all of `dev`. The best checkpoint is saved
/// at `checkpoint` and loaded back into the returned model.
#[allow(clippy::too_many_arguments)]
pub fn train<M: Classifier>(
    mut model: M,
    cfg: &TrainerConfig,
    train: &Split,
    train_enc: &M::Encoded,
    rows: &[usize],
    dev: &Split,
    dev_enc: &M::Encoded,
    checkpoint: &Path,
    label: &str,
    default_lr: f64,
) -> Result<(M, Trained)> {
    if rows.is_empty() {
        bail!("the train split is empty");
    }
    let device = model.device();
    let threads = set_threads(cfg);
    let dev_rows: Vec<usize> = (0..dev.len()).collect();
    let lr0 = cfg.learning_rate.unwrap_or(default_lr);
    let steps_per_epoch = rows.len().div_ceil(cfg.batch_size);
    let total_steps = (steps_per_epoch * cfg.epochs) as f64;
    let mut rng = Rng::new(cfg.seed);
    let mut order = rows.to_vec();
    let mut curve = Vec::new();
    let (mut best, mut best_epoch, mut best_acc, mut since_best) = (f64::INFINITY, 0, 0.0, 0);
    let mut step = 0usize;
    let mut stopped_early = false;
    progress::len(cfg.epochs as u64);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            let labels: Vec<i64> = batch.iter().map(|&r| train.labels[r] as i64).collect();
            let labels = Tensor::from_slice(&labels).to(device);
            let lr = lr0 * (1.0 - step as f64 / total_steps).max(0.0);
            loss_sum += model.train_step(train_enc, batch, &labels, lr)? * batch.len() as f64;
            step += 1;
        }
        let seconds = t0.elapsed().as_secs_f64();
        if !loss_sum.is_finite() {
            bail!("training diverged in epoch {epoch} (the loss is not finite): lower `learning_rate` (now {lr0})");
        }
        let (dev_loss, dev_acc) = if dev.is_empty() {
            (loss_sum / order.len() as f64, 0.0)
        } else {
            evaluate(&model, dev_enc, dev, &dev_rows)
        };
        curve.push(Epoch {
            epoch,
            train_loss: loss_sum / order.len() as f64,
            dev_loss,
            dev_accuracy: dev_acc,
            seconds,
            rows_per_s: order.len() as f64 / seconds.max(1e-9),
        });
        progress::step(&format!(
            "{label}epoch {epoch}: dev loss {dev_loss:.4}, dev accuracy {dev_acc:.4}"
        ));
        if dev_loss < best - 1e-7 {
            best = dev_loss;
            best_epoch = epoch;
            best_acc = dev_acc;
            since_best = 0;
            model.save(checkpoint)?;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                stopped_early = epoch < cfg.epochs;
                break;
            }
        }
    }
    model.reload(checkpoint)?;
    Ok((
        model,
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
