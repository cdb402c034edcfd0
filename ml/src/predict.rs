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

/// One k-fold piece: fold `fold`'s held-out train rows and their probabilities (one vector a
/// row: the classes, or for tagging the tokens x tags), as a folder (`piece.json` +
/// `probs.f32`, little-endian) that a job array's task writes and the merging run reads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FoldPiece {
    pub fold: usize,
    pub kfold: usize,
    pub best_epoch: usize,
    pub held: Vec<usize>,
    /// Floats per held row.
    pub lens: Vec<usize>,
    #[serde(skip)]
    pub probs: Vec<Vec<f32>>,
    /// Generation: the held rows' decoded outputs (`probs` holds each one's target
    /// log-probability).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

const PIECE_FILE: &str = "piece.json";
const PIECE_PROBS: &str = "probs.f32";

impl FoldPiece {
    pub fn write(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut bytes = Vec::with_capacity(self.lens.iter().sum::<usize>() * 4);
        for p in &self.probs {
            for x in p {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        std::fs::write(dir.join(PIECE_PROBS), bytes)?;
        std::fs::write(dir.join(PIECE_FILE), serde_json::to_vec(self)?)?;
        Ok(())
    }

    pub fn read(dir: &std::path::Path) -> Result<FoldPiece> {
        let mut piece: FoldPiece = serde_json::from_slice(
            &std::fs::read(dir.join(PIECE_FILE))
                .with_context(|| format!("reading the k-fold piece {}", dir.display()))?,
        )?;
        let bytes = std::fs::read(dir.join(PIECE_PROBS))?;
        let total: usize = piece.lens.iter().sum();
        if bytes.len() != total * 4 || piece.lens.len() != piece.held.len() {
            bail!(
                "k-fold piece {} is damaged: {} bytes of probabilities for {total} floats",
                dir.display(),
                bytes.len()
            );
        }
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut at = 0;
        piece.probs = piece
            .lens
            .iter()
            .map(|&n| {
                at += n;
                floats[at - n..at].to_vec()
            })
            .collect();
        Ok(piece)
    }
}

/// Train's k-fold pieces for `req`: read from `req.folds` when they were computed elsewhere
/// (checked against this fold assignment), else computed here by `fit(fold, seen, held)`
/// (the fold's best epoch and a probability vector per held row); only `req.fold` when the
/// request asks for one piece.
pub fn kfold_pieces(
    req: &PredictRequest,
    n: usize,
    k: usize,
    mut fit: impl FnMut(usize, &[usize], &[usize]) -> Result<(usize, Vec<Vec<f32>>)>,
) -> Result<Vec<FoldPiece>> {
    let assignment = assign_folds(n, k, req.config.seed);
    let split =
        |f: usize| -> (Vec<usize>, Vec<usize>) { (0..n).partition(|&r| assignment[r] != f) };
    if !req.folds.is_empty() {
        if req.folds.len() != k {
            bail!("{} k-fold pieces given for kfold {k}", req.folds.len());
        }
        return req
            .folds
            .iter()
            .enumerate()
            .map(|(f, dir)| {
                let piece = FoldPiece::read(dir)?;
                if piece.fold != f || piece.kfold != k || piece.held != split(f).1 {
                    bail!(
                        "k-fold piece {} is fold {} of {} over other rows, not fold {f} of {k} of this train split",
                        dir.display(),
                        piece.fold,
                        piece.kfold
                    );
                }
                Ok(piece)
            })
            .collect();
    }
    let folds: Vec<usize> = match req.fold {
        Some(f) if f >= k => bail!("fold {f} asked for, but kfold is {k}"),
        Some(f) => vec![f],
        None => (0..k).collect(),
    };
    folds
        .into_iter()
        .map(|f| {
            let (seen, held) = split(f);
            let (best_epoch, probs) = fit(f, &seen, &held)?;
            Ok(FoldPiece {
                fold: f,
                kfold: k,
                best_epoch,
                lens: probs.iter().map(Vec::len).collect(),
                held,
                probs,
                outputs: Vec::new(),
            })
        })
        .collect()
}

/// For a one-piece request: writes it to `req.out` and returns its metrics.
pub fn write_piece(req: &PredictRequest, pieces: &[FoldPiece]) -> Result<Map<String, Value>> {
    let [piece] = pieces else {
        bail!("one k-fold piece expected, {} computed", pieces.len());
    };
    piece.write(&req.out)?;
    let mut m = Map::new();
    m.insert("fold".into(), json!(piece.fold));
    m.insert("best_epoch".into(), json!(piece.best_epoch));
    m.insert("held_rows".into(), json!(piece.held.len()));
    Ok(m)
}

/// Writes a predictions artifact's `meta.json` (labels, mode, k, splits) and puts the mode
/// into `metrics`.
pub fn write_meta(
    req: &PredictRequest,
    labels: Vec<String>,
    ds: &Dataset,
    metrics: &mut Map<String, Value>,
) -> Result<()> {
    let k = req.config.kfold;
    let pm = PredictionsMeta {
        labels,
        mode: if k.is_some() { "kfold" } else { "in_sample" }.into(),
        kfold: k,
        splits: ds.splits.keys().cloned().collect(),
    };
    std::fs::write(req.out.join("meta.json"), serde_json::to_vec_pretty(&pm)?)?;
    metrics.insert("mode".into(), json!(pm.mode));
    Ok(())
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
    if ds.task == relabel_tasks::task::TaskKind::Detection {
        return crate::detector::predict_task(&req, &meta, &ds);
    }
    if ds.task == relabel_tasks::task::TaskKind::Generation {
        return crate::seq2seq::predict_task(&req, &meta, &ds);
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
    if req.fold.is_some() && k.is_none() {
        bail!("a k-fold piece was asked for, but kfold is not set");
    }
    let training = if req.folds.is_empty() { k } else { None };
    progress::len(
        training
            .map(|k| if req.fold.is_some() { 1 } else { k } * meta.config.epochs)
            .unwrap_or(0) as u64
            + ds.splits.len() as u64,
    );
    for (name, split) in &ds.splits {
        if req.fold.is_some() && name != "train" {
            continue;
        }
        let enc = model.encode(&split.texts)?;
        let rows: Vec<usize> = (0..split.len()).collect();
        let mut probs = if req.fold.is_some() {
            Vec::new()
        } else {
            probabilities(&model, &enc, &rows)
        };
        let mut fold = vec![-1i32; split.len()];
        if let (Some(k), "train") = (k, name.as_str()) {
            let dev = ds.split("dev").cloned().unwrap_or_default();
            let dev_enc = model.encode(&dev.texts)?;
            let pieces = kfold_pieces(req, split.len(), k, |f, seen, held| {
                let ckpt = req.work.join(format!("fold-{f}.safetensors"));
                let fresh: M = unwrap_same(crate::fresh(&meta.config, ds)?);
                let (m, t) = train(
                    fresh,
                    &meta.config,
                    split,
                    &enc,
                    seen,
                    &dev,
                    &dev_enc,
                    &ckpt,
                    &format!("fold {}/{k}: ", f + 1),
                    default_lr,
                )?;
                let p = probabilities(&m, &enc, held);
                Ok((
                    t.best_epoch,
                    p.chunks(classes).map(<[f32]>::to_vec).collect(),
                ))
            })?;
            if req.fold.is_some() {
                return write_piece(req, &pieces);
            }
            for piece in &pieces {
                for (&r, p) in piece.held.iter().zip(&piece.probs) {
                    probs[r * classes..(r + 1) * classes].copy_from_slice(p);
                    fold[r] = piece.fold as i32;
                }
            }
            let best_epochs: Vec<usize> = pieces.iter().map(|p| p.best_epoch).collect();
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
    write_meta(req, meta.labels.clone(), ds, &mut metrics)?;
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
