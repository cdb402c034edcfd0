//! The CTR models: a factorization machine (Rendle 2010) and DeepFM (Guo et al. 2017) over hashed
//! features, one logit per row (p(click) = sigmoid), trained by the shared early-stopping loop.
//!
//! A row's text is `field=value` pairs ([`relabel_tasks::ctr`]); each categorical value hashes to
//! a bucket with value 1, each numeric field to its own bucket scaled by the standardised number.
//! The factor and linear tables are updated sparsely (only the rows a batch touches, Adagrad, as
//! `torch.nn.Embedding(sparse=True)` with `torch.optim.Adagrad` does); the global bias and
//! DeepFM's feed-forward network use Adam. The optional truncated loss (T-CE) leaves out each
//! batch's largest-loss clicks.

use std::path::Path;

use anyhow::{bail, Context, Result};
use relabel_tasks::ctr::CtrFields;
use relabel_tasks::protocol::{CtrModelConfig, TrainerConfig};
use tch::nn::{self, Module, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use crate::train::Classifier;

/// The default Adagrad rate of the factor and linear tables.
pub const DEFAULT_LR: f64 = 0.05;

/// A row's features: bucket, value and field index of each.
pub struct Encoded {
    idx: Vec<i64>,
    val: Vec<f32>,
    fld: Vec<i64>,
    starts: Vec<usize>,
}

pub struct Fm {
    vs: VarStore,
    /// [buckets, dim] factors and [buckets, 1] linear weights: not trained by the optimiser but
    /// by the sparse Adagrad step; saved with the rest.
    v: Tensor,
    w: Tensor,
    /// Adagrad's accumulated squared gradients of `v` and `w` (not saved: a checkpoint is for
    /// predicting, not for resuming).
    acc_v: Tensor,
    acc_w: Tensor,
    bias: Tensor,
    deep: Option<nn::Sequential>,
    opt: nn::Optimizer,
    /// Numeric fields' mean and standard deviation on the train split (saved).
    num_mean: Tensor,
    num_std: Tensor,
    fields: Vec<String>,
    numeric: Vec<Option<usize>>,
    multi: Vec<Option<char>>,
    cfg: CtrModelConfig,
    steps: usize,
}

const FNV_OFFSET: u64 = 0xcbf29ce484222325;
const FNV_PRIME: u64 = 0x100000001b3;

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for (k, p) in parts.iter().enumerate() {
        if k > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(FNV_PRIME);
        }
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

impl Fm {
    /// An untrained model for `fields`; numeric fields are standardised by their mean and
    /// deviation over `train_texts`.
    pub fn new(
        cfg: &TrainerConfig,
        fields: &CtrFields,
        train_texts: &[String],
        deep: bool,
        device: Device,
    ) -> Result<Fm> {
        tch::manual_seed(cfg.seed as i64);
        let c = cfg.ctr.clone();
        if c.dim < 1 || c.buckets < 2 {
            bail!("ctr.dim must be at least 1 and ctr.buckets at least 2");
        }
        let vs = VarStore::new(device);
        let root = vs.root();
        let v = root.zeros_no_train("factors", &[c.buckets, c.dim]);
        let w = root.zeros_no_train("linear", &[c.buckets, 1]);
        tch::no_grad(|| {
            v.shallow_clone()
                .copy_(&(Tensor::randn([c.buckets, c.dim], (Kind::Float, device)) * 0.01));
        });
        let names: Vec<String> = fields.fields().iter().map(|s| s.to_string()).collect();
        let numeric_names: Vec<&String> = names
            .iter()
            .filter(|n| fields.numeric.contains(n))
            .collect();
        let numeric: Vec<Option<usize>> = names
            .iter()
            .map(|n| numeric_names.iter().position(|m| *m == n))
            .collect();
        let multi = names.iter().map(|n| fields.multi.get(n).copied()).collect();
        let k = numeric_names.len() as i64;
        let num_mean = root.zeros_no_train("numeric_mean", &[k.max(1)]);
        let num_std = root.zeros_no_train("numeric_std", &[k.max(1)]);
        // Standardise numeric fields by the train split.
        let mut sums = vec![(0.0f64, 0.0f64, 0usize); numeric_names.len()];
        for t in train_texts {
            for (f, x) in relabel_tasks::ctr::pairs(t) {
                if let Some(j) = numeric_names.iter().position(|m| *m == f) {
                    if let Ok(x) = x.parse::<f64>() {
                        sums[j].0 += x;
                        sums[j].1 += x * x;
                        sums[j].2 += 1;
                    }
                }
            }
        }
        let (means, stds): (Vec<f32>, Vec<f32>) = sums
            .iter()
            .map(|&(s, q, n)| {
                let n = n.max(1) as f64;
                let m = s / n;
                let sd = (q / n - m * m).max(0.0).sqrt();
                (m as f32, if sd > 1e-12 { sd as f32 } else { 1.0 })
            })
            .chain(std::iter::repeat((0.0, 1.0)))
            .take(k.max(1) as usize)
            .unzip();
        tch::no_grad(|| {
            num_mean
                .shallow_clone()
                .copy_(&Tensor::from_slice(&means).to(device));
            num_std
                .shallow_clone()
                .copy_(&Tensor::from_slice(&stds).to(device));
        });
        let bias = root.zeros("bias", &[1]);
        let deep = deep.then(|| {
            let d = &root / "deep";
            let mut seq = nn::seq();
            let mut width = names.len() as i64 * c.dim;
            for (i, &h) in c.hidden.iter().enumerate() {
                seq = seq
                    .add(nn::linear(
                        &d / format!("layer{i}"),
                        width,
                        h,
                        Default::default(),
                    ))
                    .add_fn(|x| x.relu());
                width = h;
            }
            seq.add(nn::linear(&d / "out", width, 1, Default::default()))
        });
        let opt = nn::Adam::default().build(&vs, c.deep_learning_rate)?;
        Ok(Fm {
            acc_v: Tensor::zeros([c.buckets, c.dim], (Kind::Float, device)),
            acc_w: Tensor::zeros([c.buckets, 1], (Kind::Float, device)),
            vs,
            v,
            w,
            bias,
            deep,
            opt,
            num_mean,
            num_std,
            fields: names,
            numeric,
            multi,
            cfg: c,
            steps: 0,
        })
    }

    fn batch(&self, enc: &Encoded, rows: &[usize]) -> (Tensor, Tensor, Tensor, i64) {
        let t = rows
            .iter()
            .map(|&r| enc.starts[r + 1] - enc.starts[r])
            .max()
            .unwrap_or(0)
            .max(1);
        let n = rows.len() * t;
        let (mut idx, mut val, mut fld) = (vec![0i64; n], vec![0f32; n], vec![0i64; n]);
        for (b, &r) in rows.iter().enumerate() {
            let (s, e) = (enc.starts[r], enc.starts[r + 1]);
            idx[b * t..b * t + e - s].copy_from_slice(&enc.idx[s..e]);
            val[b * t..b * t + e - s].copy_from_slice(&enc.val[s..e]);
            fld[b * t..b * t + e - s].copy_from_slice(&enc.fld[s..e]);
        }
        let d = self.vs.device();
        let shape = [rows.len() as i64, t as i64];
        let val = Tensor::from_slice(&val).view(shape).to(d);
        (
            Tensor::from_slice(&idx).view(shape).to(d),
            val,
            Tensor::from_slice(&fld).view(shape).to(d),
            t as i64,
        )
    }

    /// The logit of each row, from the gathered factor rows `v` [B, T, dim] and linear weights
    /// `w` [B, T] of the batch's features, their values `val` and fields `fld`.
    fn score(&self, v: &Tensor, w: &Tensor, val: &Tensor, fld: &Tensor) -> Tensor {
        let e = v * val.unsqueeze(-1);
        let lin = (w * val).sum_dim_intlist(1, false, Kind::Float);
        let s1 = e.sum_dim_intlist(1, false, Kind::Float);
        let inter = (s1.pow_tensor_scalar(2)
            - e.pow_tensor_scalar(2)
                .sum_dim_intlist(1, false, Kind::Float))
        .sum_dim_intlist(-1, false, Kind::Float)
            * 0.5;
        let mut s = lin + inter + &self.bias;
        if let Some(deep) = &self.deep {
            // Each field's factors (a multi-valued field's summed), concatenated.
            let onehot = fld.one_hot(self.fields.len() as i64).to_kind(Kind::Float)
                * val.ne(0.0).to_kind(Kind::Float).unsqueeze(-1);
            let per_field = onehot.transpose(1, 2).bmm(&e);
            s += deep.forward(&per_field.flatten(1, -1)).squeeze_dim(-1);
        }
        s
    }

    fn forward_no_grad(&self, enc: &Encoded, rows: &[usize]) -> Tensor {
        tch::no_grad(|| {
            let (idx, val, fld, t) = self.batch(enc, rows);
            let b = rows.len() as i64;
            let flat = idx.view([-1]);
            let v = self.v.index_select(0, &flat).view([b, t, self.cfg.dim]);
            let w = self.w.index_select(0, &flat).view([b, t]);
            self.score(&v, &w, &val, &fld)
        })
    }
}

impl Fm {
    /// T-CE's drop rate at the current step: from 0 up to `max_drop_rate` over `warmup_steps`
    /// (0 without a truncated loss).
    pub fn truncation_rate(&self) -> f64 {
        self.cfg.truncated_loss.as_ref().map_or(0.0, |tl| {
            tl.max_drop_rate * (self.steps as f64 / tl.warmup_steps.max(1) as f64).min(1.0)
        })
    }
}

impl Classifier for Fm {
    type Encoded = Encoded;

    fn encode(&self, texts: &[String]) -> Result<Encoded> {
        let buckets = self.cfg.buckets as u64;
        let mean = Vec::<f32>::try_from(self.num_mean.to(Device::Cpu))?;
        let std = Vec::<f32>::try_from(self.num_std.to(Device::Cpu))?;
        let mut e = Encoded {
            idx: Vec::new(),
            val: Vec::new(),
            fld: Vec::new(),
            starts: Vec::with_capacity(texts.len() + 1),
        };
        for (row, t) in texts.iter().enumerate() {
            e.starts.push(e.idx.len());
            for (f, x) in relabel_tasks::ctr::pairs(t) {
                let Some(fi) = self.fields.iter().position(|n| n == f) else {
                    continue; // a field the model was not built for
                };
                if let Some(j) = self.numeric[fi] {
                    let Ok(x) = x.parse::<f32>() else {
                        bail!("row {row}: numeric field \"{f}\" holds \"{x}\"");
                    };
                    // Standardised by the train split; never exactly 0 (0 marks padding).
                    let z = (x - mean[j]) / std[j];
                    e.idx.push((fnv(&[f.as_bytes()]) % buckets) as i64);
                    e.val.push(if z == 0.0 { f32::MIN_POSITIVE } else { z });
                    e.fld.push(fi as i64);
                    continue;
                }
                let mut push = |v: &str| {
                    e.idx
                        .push((fnv(&[f.as_bytes(), v.as_bytes()]) % buckets) as i64);
                    e.val.push(1.0);
                    e.fld.push(fi as i64);
                };
                match self.multi[fi] {
                    Some(sep) => x.split(sep).filter(|v| !v.is_empty()).for_each(&mut push),
                    None => push(x),
                }
            }
        }
        e.starts.push(e.idx.len());
        Ok(e)
    }

    fn train_step(
        &mut self,
        enc: &Encoded,
        rows: &[usize],
        labels: &Tensor,
        lr: f64,
    ) -> Result<f64> {
        let (idx, val, fld, t) = self.batch(enc, rows);
        let b = rows.len() as i64;
        let flat = idx.view([-1]);
        let (uniq, inv) = flat.internal_unique(false, true);
        let dim = self.cfg.dim;
        let sub_v = tch::no_grad(|| self.v.index_select(0, &uniq)).set_requires_grad(true);
        let sub_w = tch::no_grad(|| self.w.index_select(0, &uniq)).set_requires_grad(true);
        let v = sub_v.index_select(0, &inv).view([b, t, dim]);
        let w = sub_w.index_select(0, &inv).view([b, t]);
        let s = self.score(&v, &w, &val, &fld);
        let y = labels.to_kind(Kind::Float);
        let per_row =
            s.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::None);
        let keep = match self.cfg.truncated_loss {
            Some(_) => truncation_mask(&per_row, &y, self.truncation_rate()),
            None => Tensor::ones_like(&per_row),
        };
        let loss = (&per_row * &keep).sum(Kind::Float) / keep.sum(Kind::Float).clamp_min(1.0);
        self.opt.zero_grad();
        loss.backward();
        self.opt.step();
        tch::no_grad(|| {
            for (table, acc, sub) in [
                (&self.v, &self.acc_v, &sub_v),
                (&self.w, &self.acc_w, &sub_w),
            ] {
                let g = sub.grad();
                let a = acc.index_select(0, &uniq) + &g * &g;
                let _ = acc.shallow_clone().index_copy_(0, &uniq, &a);
                let step = g * lr / (a.sqrt() + 1e-10);
                let _ = table.shallow_clone().index_add_(0, &uniq, &(-step));
            }
        });
        self.steps += 1;
        // The reported loss is the batch's whole mean (what dev loss measures too).
        Ok(per_row.mean(Kind::Float).double_value(&[]))
    }

    fn logits(&self, enc: &Encoded, rows: &[usize]) -> Tensor {
        let s = self.forward_no_grad(enc, rows);
        Tensor::stack(&[s.zeros_like(), s], -1)
    }

    fn hidden(&self, enc: &Encoded, rows: &[usize]) -> Tensor {
        tch::no_grad(|| {
            let (idx, val, _, t) = self.batch(enc, rows);
            let b = rows.len() as i64;
            let v = self
                .v
                .index_select(0, &idx.view([-1]))
                .view([b, t, self.cfg.dim]);
            (v * val.unsqueeze(-1)).sum_dim_intlist(1, false, Kind::Float)
        })
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
        8192
    }
}

/// T-CE's mask of a batch: 0 for the `rate` fraction of its clicks (label 1) with the largest
/// loss, 1 for every other row.
pub fn truncation_mask(loss: &Tensor, y: &Tensor, rate: f64) -> Tensor {
    let clicks = y.sum(Kind::Float).double_value(&[]);
    let drop = (rate * clicks).floor() as i64;
    let keep = Tensor::ones_like(loss);
    if drop <= 0 {
        return keep;
    }
    tch::no_grad(|| {
        // Non-clicks get -inf so that only clicks are dropped.
        let ranked = loss
            .detach()
            .where_self(&y.gt(0.5), &Tensor::full_like(loss, f64::NEG_INFINITY));
        let (_, worst) = ranked.topk(drop, 0, true, false);
        keep.index_fill(0, &worst, 0.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{probabilities, train, Rng};
    use relabel_tasks::ctr::{auc, row_text};
    use relabel_tasks::data::Split;
    use relabel_tasks::protocol::TruncatedLoss;

    /// Rows of users u0..u19 and items i0..i39 whose click depends only on whether the user's and
    /// the item's hidden group agree (each user and each item clicks half the time, so no linear
    /// weight can tell), plus a numeric `age` whose size raises the click odds.
    fn rows(n: usize, rng: &mut Rng, prefix: &str) -> Split {
        let mut s = Split::default();
        let fields = ["user", "item", "age"];
        for i in 0..n {
            let (u, it) = (rng.next_u64() % 20, rng.next_u64() % 40);
            let age = 18 + rng.next_u64() % 50;
            let agree = u % 2 == it % 2;
            let p = if agree { 0.9 } else { 0.1 } * if age > 42 { 1.0 } else { 0.7 };
            let click = (rng.next_u64() % 10_000) as f64 / 10_000.0 < p;
            let values = [format!("u{u}"), format!("i{it}"), age.to_string()];
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            s.ids.push(format!("{prefix}{i}"));
            s.texts.push(row_text(&fields, &values));
            s.labels.push(click as u32);
        }
        s
    }

    fn fields() -> CtrFields {
        CtrFields {
            user: vec!["user".into(), "age".into()],
            item: vec!["item".into()],
            numeric: vec!["age".into()],
            ..Default::default()
        }
    }

    fn config() -> TrainerConfig {
        let mut c: TrainerConfig = serde_json::from_str("{}").unwrap();
        c.seed = 3;
        c.threads = Some(1);
        c.epochs = 15;
        c.batch_size = 128;
        c.ctr.buckets = 1 << 12;
        c.ctr.dim = 8;
        c
    }

    fn fit(cfg: &TrainerConfig, deep: bool, dir: &Path) -> (Fm, Split) {
        let mut rng = Rng::new(7);
        let (tr, dev, test) = (
            rows(6000, &mut rng, "tr"),
            rows(1000, &mut rng, "dev"),
            rows(2000, &mut rng, "te"),
        );
        let fresh = Fm::new(cfg, &fields(), &tr.texts, deep, Device::Cpu).unwrap();
        let (enc, dev_enc) = (
            fresh.encode(&tr.texts).unwrap(),
            fresh.encode(&dev.texts).unwrap(),
        );
        let all: Vec<usize> = (0..tr.len()).collect();
        let (m, _) = train(
            fresh,
            cfg,
            &tr,
            &enc,
            &all,
            &dev,
            &dev_enc,
            &dir.join("m.safetensors"),
            "",
            DEFAULT_LR,
        )
        .unwrap();
        (m, test)
    }

    fn test_auc(m: &Fm, test: &Split) -> f64 {
        let enc = m.encode(&test.texts).unwrap();
        let rows: Vec<usize> = (0..test.len()).collect();
        let p = probabilities(m, &enc, &rows);
        // Two columns per row: p(no_click), p(click).
        let clicks: Vec<f64> = p.chunks(2).map(|c| c[1] as f64).collect();
        let y: Vec<bool> = test.labels.iter().map(|&l| l == 1).collect();
        auc(&y, &clicks).unwrap()
    }

    #[test]
    fn the_fm_learns_an_interaction_no_linear_weight_holds_and_deepfm_too() {
        let _serial = crate::tests::TORCH_THREADS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The Bayes rule's AUC on these rows is about 0.89; a linear model's about 0.6.
        for deep in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (m, test) = fit(&config(), deep, dir.path());
            let a = test_auc(&m, &test);
            assert!(a > 0.84, "deep={deep}: test AUC {a:.3}");
        }
    }

    #[test]
    fn a_reloaded_checkpoint_predicts_the_same_and_keeps_the_numeric_scaling() {
        let _serial = crate::tests::TORCH_THREADS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config();
        cfg.epochs = 2;
        let (m, test) = fit(&cfg, false, dir.path());
        // A model built on other train texts (other numeric means) gets the saved ones back.
        let mut again = Fm::new(&cfg, &fields(), &test.texts[..3], false, Device::Cpu).unwrap();
        again.reload(&dir.path().join("m.safetensors")).unwrap();
        let rows: Vec<usize> = (0..test.len()).collect();
        let (a, b) = (
            probabilities(&m, &m.encode(&test.texts).unwrap(), &rows),
            probabilities(&again, &again.encode(&test.texts).unwrap(), &rows),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn a_numeric_field_holding_text_is_an_error_naming_the_row() {
        let m = Fm::new(&config(), &fields(), &[], false, Device::Cpu).unwrap();
        let texts = vec![
            row_text(&["user", "item", "age"], &["u1", "i1", "30"]),
            row_text(&["user", "item", "age"], &["u1", "i1", "old"]),
        ];
        let e = m.encode(&texts).err().unwrap().to_string();
        assert_eq!(e, "row 1: numeric field \"age\" holds \"old\"");
    }

    #[test]
    fn the_truncation_mask_drops_only_the_largest_loss_clicks() {
        let loss = Tensor::from_slice(&[0.1f32, 5.0, 3.0, 9.0, 0.2, 4.0]);
        let y = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0, 1.0, 1.0]);
        let mask = |rate| Vec::<f32>::try_from(truncation_mask(&loss, &y, rate)).unwrap();
        // 5 clicks: a rate of 0.4 drops 2 of them, the two largest-loss clicks (5.0 and 4.0);
        // the non-click with the largest loss of all stays.
        assert_eq!(mask(0.4), vec![1.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
        assert_eq!(mask(0.0), vec![1.0; 6]);
        // Under one click's worth drops nothing.
        assert_eq!(mask(0.15), vec![1.0; 6]);
    }

    #[test]
    fn t_ce_warms_up_from_dropping_nothing_to_its_maximum_rate() {
        let _serial = crate::tests::TORCH_THREADS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut cfg = config();
        cfg.ctr.truncated_loss = Some(TruncatedLoss {
            max_drop_rate: 0.5,
            warmup_steps: 4,
        });
        let mut rng = Rng::new(2);
        let tr = rows(64, &mut rng, "tr");
        let mut m = Fm::new(&cfg, &fields(), &tr.texts, false, Device::Cpu).unwrap();
        let enc = m.encode(&tr.texts).unwrap();
        let all: Vec<usize> = (0..tr.len()).collect();
        let labels = Tensor::from_slice(&tr.labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
        // The dropped share of clicks at each step: none at step 0, then 0.5 * step / 4 up to 0.5.
        for step in 0..6 {
            let rate = 0.5 * (step as f64 / 4.0).min(1.0);
            assert_eq!(m.truncation_rate(), rate, "step {step}");
            m.train_step(&enc, &all, &labels, 0.05).unwrap();
        }
    }
}
