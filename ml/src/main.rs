//! relabel-ml: the worker process that runs libtorch work for relabel's node kinds.
//!
//! libtorch takes ~0.2 s and ~100 MB just to load; keeping it out of the `relabel` binary keeps
//! validation, planning and cached reruns instant, and a crash in native code cannot take the
//! engine (and its cache writes) down with it. Protocol: `relabel-ml task NAME REQUEST.json`;
//! JSON lines on stdout (progress, then metrics); diagnostics on stderr; exit 0 on success.

mod detector;
mod device;
mod encoder;
mod fasttext;
mod fm;
mod knn;
mod predict;
mod progress;
mod seq2seq;
mod tagger;
mod train;

#[cfg(test)]
mod tests;

use anyhow::{bail, Context, Result};
use relabel_tasks::data::Dataset;
use relabel_tasks::protocol::{checkpoint_path, ModelKind, ModelMeta, TrainerConfig};
use relabel_tasks::protocol::{EmbedRequest, TrainRequest};
use serde_json::json;
use train::Classifier;

/// Builds an untrained model of the configured kind for `ds` (pretrained weights for the encoder).
pub fn fresh(cfg: &TrainerConfig, ds: &Dataset) -> Result<AnyModel> {
    let device = train::pick_device(cfg.device)?;
    train::set_threads(cfg);
    let classes = ds.labels.len();
    let ctr = ds.task == relabel_tasks::task::TaskKind::Ctr;
    let is_ctr_model = matches!(cfg.model, ModelKind::Fm | ModelKind::Deepfm);
    if ctr != is_ctr_model {
        bail!(
            "model: {} does not fit a {} dataset; a ctr dataset takes fm or deepfm, a classification dataset fasttext or encoder",
            serde_json::to_value(cfg.model)?.as_str().unwrap_or("?"),
            ds.task.name()
        );
    }
    Ok(match cfg.model {
        ModelKind::Fm | ModelKind::Deepfm => {
            let Some(fields) = &ds.ctr else {
                bail!("the ctr dataset records no fields (dataset.json has no `ctr`)")
            };
            let empty = Vec::new();
            let train = ds.split("train").map(|s| &s.texts).unwrap_or(&empty);
            AnyModel::Fm(Box::new(fm::Fm::new(
                cfg,
                fields,
                train,
                cfg.model == ModelKind::Deepfm,
                device,
            )?))
        }
        ModelKind::Fasttext => AnyModel::FastText(fasttext::FastText::new(
            &cfg.fasttext,
            classes as i64,
            device,
            cfg.seed,
        )),
        ModelKind::Encoder => AnyModel::Encoder(Box::new(encoder::Encoder::new(
            &cfg.encoder,
            classes as i64,
            device,
            cfg.seed,
            true,
        )?)),
        ModelKind::Centernet => bail!(
            "model: centernet is a detector, for `task: detection` datasets; a classification dataset takes fasttext or encoder"
        ),
        ModelKind::Seq2seq => bail!(
            "model: seq2seq is a generation model, for `task: generation` datasets; a classification dataset takes fasttext or encoder"
        ),
        ModelKind::Bilstm => bail!(
            "model: bilstm is a tagger, for `task: tagging` datasets; a classification dataset takes fasttext or encoder"
        ),
    })
}

/// A model of either kind, for code that dispatches once.
pub enum AnyModel {
    FastText(fasttext::FastText),
    Encoder(Box<encoder::Encoder>),
    Fm(Box<fm::Fm>),
}

fn train_task(req: TrainRequest) -> Result<serde_json::Map<String, serde_json::Value>> {
    let ds = Dataset::read(&req.dataset).context("reading the dataset")?;
    if ds.task == relabel_tasks::task::TaskKind::Tagging {
        if req.config.model != ModelKind::Bilstm {
            bail!("a tagging dataset needs a tagger: set `model: bilstm` on the trainer");
        }
        return tagger::train_task(&req, &ds);
    }
    if ds.task == relabel_tasks::task::TaskKind::Detection {
        if req.config.model != ModelKind::Centernet {
            bail!("a detection dataset needs a detector: set `model: centernet` on the trainer");
        }
        return detector::train_task(&req, &ds);
    }
    if ds.task == relabel_tasks::task::TaskKind::Generation {
        if req.config.model != ModelKind::Seq2seq {
            bail!("a generation dataset needs a sequence-to-sequence model: set `model: seq2seq` on the trainer");
        }
        return seq2seq::train_task(&req, &ds);
    }
    match fresh(&req.config, &ds)? {
        AnyModel::FastText(m) => train_with(m, fasttext::DEFAULT_LR, &req, &ds),
        AnyModel::Encoder(m) => train_with(*m, encoder::DEFAULT_LR, &req, &ds),
        AnyModel::Fm(m) => train_with(*m, fm::DEFAULT_LR, &req, &ds),
    }
}

fn train_with<M: Classifier>(
    model: M,
    default_lr: f64,
    req: &TrainRequest,
    ds: &Dataset,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let Some(tr) = ds.split("train") else {
        bail!("the dataset has no train split")
    };
    let empty = Default::default();
    let dev = ds.split("dev").unwrap_or(&empty);
    let cfg = &req.config;
    let enc = model.encode(&tr.texts)?;
    let dev_enc = model.encode(&dev.texts)?;
    std::fs::create_dir_all(&req.out)?;
    let rows: Vec<usize> = (0..tr.len()).collect();
    let (model, trained) = train::train(
        model,
        cfg,
        tr,
        &enc,
        &rows,
        dev,
        &dev_enc,
        &checkpoint_path(&req.out),
        "",
        default_lr,
    )?;
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
    let mut m = match serde_json::to_value(&trained)? {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a struct serializes to an object"),
    };
    m.insert("train_rows".into(), json!(tr.len()));
    let mean_rate =
        trained.curve.iter().map(|e| e.rows_per_s).sum::<f64>() / trained.curve.len().max(1) as f64;
    m.insert("train_rows_per_s".into(), json!(mean_rate));
    if let Some(test) = ds.split("test") {
        // Reported for honesty only: the test split never picks a checkpoint.
        let test_enc = model.encode(&test.texts)?;
        let rows: Vec<usize> = (0..test.len()).collect();
        let (loss, acc) = train::evaluate(&model, &test_enc, test, &rows);
        m.insert("test_accuracy".into(), json!(acc));
        m.insert("test_loss".into(), json!(loss));
    }
    Ok(m)
}

/// Mean-pooled sentence embeddings of the pretrained encoder (no head).
fn embed_task(req: EmbedRequest) -> Result<serde_json::Map<String, serde_json::Value>> {
    tch::set_num_threads(req.threads.unwrap_or(1).max(1));
    let enc = encoder::Encoder::new(&req.encoder, 2, tch::Device::cuda_if_available(), 0, true)?;
    let e = enc
        .embed_texts(&req.texts)?
        .to(tch::Device::Cpu)
        .contiguous();
    let dim = e.size()[1];
    let v: Vec<f32> = Vec::<f32>::try_from(e.flatten(0, -1))?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&req.out, bytes)?;
    let mut m = serde_json::Map::new();
    m.insert("rows".into(), json!(req.texts.len()));
    m.insert("dim".into(), json!(dim));
    Ok(m)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A backtrace (RUST_BACKTRACE=1) first, the error itself last: the node's report
            // shows the log's last lines, which must name what went wrong.
            let bt = e.backtrace();
            if bt.status() == std::backtrace::BacktraceStatus::Captured {
                eprintln!("{bt}");
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["env"] => {
            println!("{}", serde_json::to_string_pretty(&device::probe())?);
            Ok(())
        }
        ["task", task, request] => {
            let text = std::fs::read(request).with_context(|| format!("reading {request}"))?;
            let metrics = match *task {
                "train" => train_task(serde_json::from_slice(&text)?)?,
                "predict" => predict::run(serde_json::from_slice(&text)?)?,
                "embed" => embed_task(serde_json::from_slice(&text)?)?,
                "knn" => knn::run(serde_json::from_slice(&text)?)?,
                "represent" => predict::represent(serde_json::from_slice(&text)?)?,
                other => bail!("unknown task \"{other}\" (known: train, predict, embed, knn, represent)"),
            };
            progress::metrics(metrics);
            Ok(())
        }
        _ => bail!("usage: relabel-ml env | relabel-ml task train|predict|embed|knn|represent REQUEST.json"),
    }
}
