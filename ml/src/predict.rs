//! Self-prediction: probabilities for every row, in-sample or out-of-sample by k-fold.

use anyhow::{bail, Context, Result};
use relabel_tasks::data::Dataset;
use relabel_tasks::predictions::{PredictionsMeta, SplitPredictions};
use relabel_tasks::protocol::{checkpoint_path, ModelMeta};
use serde_json::{json, Map, Value};

use crate::progress;
use crate::train::{probabilities, train, Classifier, Rng};
use crate::AnyModel;

pub use relabel_tasks::protocol::PredictRequest;

/// Fold of each of `n` rows: a seeded shuffle dealt round-robin into `k` folds.
pub fn assign_folds(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut fold = vec![0; n];
    for (pos, &row) in order.iter().enumerate() {
        fold[row] = pos % k;
    }
    fold
}

pub fn run(req: PredictRequest) -> Result<Map<String, Value>> {
    let meta: ModelMeta = serde_json::from_slice(
        &std::fs::read(req.model.join("model.json")).context("reading model.json")?,
    )?;
    let ds = Dataset::read(&req.dataset).context("reading the dataset")?;
    let names: Vec<String> = ds.labels.names().iter().map(|s| s.to_string()).collect();
    if names != meta.labels {
        bail!(
            "the model was trained on labels {:?} but the dataset has {:?}",
            meta.labels,
            names
        );
    }
    if ds.task == relabel_tasks::task::TaskKind::Tagging {
        return crate::tagger::predict_task(&req, &meta, &ds);
    }
    match crate::fresh(&meta.config, &ds)? {
        AnyModel::FastText(m) => run_with(m, crate::fasttext::DEFAULT_LR, &req, &meta, &ds),
        AnyModel::Encoder(m) => run_with(*m, crate::encoder::DEFAULT_LR, &req, &meta, &ds),
        AnyModel::Fm(m) => run_with(*m, crate::fm::DEFAULT_LR, &req, &meta, &ds),
    }
}

fn unwrap_same<M: 'static>(m: AnyModel) -> M {
    let any: Box<dyn std::any::Any> = match m {
        AnyModel::FastText(m) => Box::new(m),
        AnyModel::Encoder(m) => Box::new(*m),
        AnyModel::Fm(m) => Box::new(*m),
    };
    *any.downcast::<M>()
        .expect("the same config builds the same kind of model")
}

fn run_with<M: Classifier + 'static>(
    mut model: M,
    default_lr: f64,
    req: &PredictRequest,
    meta: &ModelMeta,
    ds: &Dataset,
) -> Result<Map<String, Value>> {
    model.reload(&checkpoint_path(&req.model))?;
    let classes = meta.labels.len();
    std::fs::create_dir_all(&req.out)?;
    let mut metrics = Map::new();
    let k = req.config.kfold;
    progress::len(k.map(|k| k * meta.config.epochs).unwrap_or(0) as u64 + ds.splits.len() as u64);
    for (name, split) in &ds.splits {
        let enc = model.encode(&split.texts)?;
        let rows: Vec<usize> = (0..split.len()).collect();
        let mut probs = probabilities(&model, &enc, &rows);
        let mut fold = vec![-1i32; split.len()];
        if let (Some(k), "train") = (k, name.as_str()) {
            let dev = ds.split("dev").cloned().unwrap_or_default();
            let dev_enc = model.encode(&dev.texts)?;
            let assignment = assign_folds(split.len(), k, req.config.seed);
            let mut best_epochs = Vec::new();
            for f in 0..k {
                let seen: Vec<usize> = rows
                    .iter()
                    .copied()
                    .filter(|&r| assignment[r] != f)
                    .collect();
                let held: Vec<usize> = rows
                    .iter()
                    .copied()
                    .filter(|&r| assignment[r] == f)
                    .collect();
                let ckpt = req.work.join(format!("fold-{f}.safetensors"));
                let fresh: M = unwrap_same(crate::fresh(&meta.config, ds)?);
                let (m, t) = train(
                    fresh,
                    &meta.config,
                    split,
                    &enc,
                    &seen,
                    &dev,
                    &dev_enc,
                    &ckpt,
                    &format!("fold {}/{k}: ", f + 1),
                    default_lr,
                )?;
                best_epochs.push(t.best_epoch);
                let p = probabilities(&m, &enc, &held);
                for (j, &r) in held.iter().enumerate() {
                    probs[r * classes..(r + 1) * classes]
                        .copy_from_slice(&p[j * classes..(j + 1) * classes]);
                    fold[r] = f as i32;
                }
            }
            metrics.insert("fold_best_epochs".into(), json!(best_epochs));
        }
        let preds = SplitPredictions::from_probs(classes, probs, split.labels.clone(), fold);
        preds.write(
            &req.out.join(relabel_tasks::data::split_file(name)),
            &split.ids,
            &ds.labels.names(),
        )?;
        metrics.insert(format!("{name}_accuracy"), json!(preds.accuracy()));
        metrics.insert(format!("{name}_mean_loss"), json!(preds.mean_loss()));
        metrics.insert(
            format!("{name}_disagreement"),
            json!(1.0 - preds.accuracy()),
        );
        progress::step(&format!(
            "predicted {name}: accuracy {:.4}",
            preds.accuracy()
        ));
    }
    let pm = PredictionsMeta {
        labels: meta.labels.clone(),
        mode: if k.is_some() {
            "kfold".into()
        } else {
            "in_sample".into()
        },
        kfold: k,
        splits: ds.splits.keys().cloned().collect(),
    };
    std::fs::write(req.out.join("meta.json"), serde_json::to_vec_pretty(&pm)?)?;
    metrics.insert("mode".into(), json!(pm.mode));
    Ok(metrics)
}

pub use relabel_tasks::protocol::RepresentRequest;

pub fn represent(req: RepresentRequest) -> Result<Map<String, Value>> {
    let meta: ModelMeta = serde_json::from_slice(
        &std::fs::read(req.model.join("model.json")).context("reading model.json")?,
    )?;
    let ds = Dataset::read(&req.dataset).context("reading the dataset")?;
    match crate::fresh(&meta.config, &ds)? {
        AnyModel::FastText(m) => represent_with(m, &req, &ds),
        AnyModel::Encoder(m) => represent_with(*m, &req, &ds),
        AnyModel::Fm(m) => represent_with(*m, &req, &ds),
    }
}

fn represent_with<M: Classifier>(
    mut model: M,
    req: &RepresentRequest,
    ds: &Dataset,
) -> Result<Map<String, Value>> {
    model.reload(&checkpoint_path(&req.model))?;
    std::fs::create_dir_all(&req.out)?;
    let mut rows_per = serde_json::Map::new();
    let mut dim = 0i64;
    for s in &req.splits {
        let Some(split) = ds.split(s) else { continue };
        let enc = model.encode(&split.texts)?;
        let rows: Vec<usize> = (0..split.len()).collect();
        let mut bytes = Vec::new();
        for chunk in rows.chunks(model.eval_batch()) {
            let h = model.hidden(&enc, chunk).to(tch::Device::Cpu).contiguous();
            dim = h.size()[1];
            let v: Vec<f32> = Vec::<f32>::try_from(h.flatten(0, -1))?;
            bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
        std::fs::write(req.out.join(format!("{s}.f32")), bytes)?;
        rows_per.insert(s.clone(), json!(split.len()));
    }
    let meta = json!({"dim": dim, "rows": rows_per, "model": req.model.display().to_string()});
    std::fs::write(req.out.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    let mut m = Map::new();
    m.insert("dim".into(), json!(dim));
    m.insert("rows".into(), Value::Object(rows_per));
    Ok(m)
}
