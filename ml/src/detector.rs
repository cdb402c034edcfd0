//! The detection model: a small CenterNet. Images are resized to a square, a few convolutions
//! (two stride-2 steps, then dilated ones for context) feed three heads at stride 4: a centre
//! heatmap per class (penalty-reduced focal loss against Gaussian peaks), the box's size and
//! the centre's sub-cell offset (L1 at the centres). Adam, early-stopped on dev loss. Decoding
//! keeps local maxima of the heatmap (3x3) as scored boxes. `train` and `predict` (in-sample
//! or k-fold) for `task: detection` datasets.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use relabel_tasks::data::{Dataset, Split};
use relabel_tasks::detection::{coco_map, BBox, ScoredBox};
use relabel_tasks::predictions::SplitPredictions;
use relabel_tasks::protocol::{checkpoint_path, DetectorConfig, ModelMeta, PredictRequest};
use relabel_tasks::protocol::{TrainRequest, TrainerConfig};
use serde_json::{json, Map, Value};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::progress;
use crate::train::{Epoch, Rng, Trained};

/// Adam's rate when the config gives none.
pub const DEFAULT_LR: f64 = 2e-3;
const STRIDE: i64 = 4;
/// The size head predicts log(box side in output cells).
const SIZE_WEIGHT: f64 = 1.0;
const OFFSET_WEIGHT: f64 = 1.0;

/// The images of a split, resized, as one u8 tensor `[n, 3, s, s]`, and each image's scale
/// (original pixels per input pixel, x and y).
struct Images {
    pixels: Tensor,
    scale: Vec<[f32; 2]>,
}

fn load_images(ds_dir: &Path, split: &Split, size: i64) -> Result<Images> {
    let n = split.len();
    let s = size as u32;
    let mut buf: Vec<u8> = Vec::with_capacity(n * 3 * (s * s) as usize);
    let mut scale = Vec::with_capacity(n);
    for (i, p) in split.texts.iter().enumerate() {
        let path = if Path::new(p).is_absolute() {
            Path::new(p).to_path_buf()
        } else {
            ds_dir.join(p)
        };
        let img = image::open(&path)
            .with_context(|| format!("row {i} ({}): reading {}", split.ids[i], path.display()))?
            .to_rgb8();
        let (w, h) = img.dimensions();
        scale.push([w as f32 / s as f32, h as f32 / s as f32]);
        let r = image::imageops::resize(&img, s, s, image::imageops::FilterType::Triangle);
        // Channel-major.
        let raw = r.as_raw();
        for c in 0..3 {
            buf.extend(raw.iter().skip(c).step_by(3));
        }
    }
    let pixels = Tensor::from_slice(&buf).view([n as i64, 3, size, size]);
    Ok(Images { pixels, scale })
}

/// Training targets of one image on the output grid: the heatmap `[c, g, g]`, and at each box's
/// centre cell its log size and offset.
struct Targets {
    heat: Vec<f32>,
    /// (cell index y*g+x, log w, log h, dx, dy) per box.
    centres: Vec<(i64, [f32; 4])>,
}

fn gaussian_radius(w: f32, h: f32) -> f32 {
    // A radius that keeps IoU >= 0.7 for a corner shifted within it (CenterNet's rule, the
    // smallest of its three cases, simplified): a fraction of the smaller side.
    (0.15 * w.min(h)).max(0.0)
}

fn targets(boxes: &[BBox], scale: [f32; 2], classes: i64, grid: i64) -> Targets {
    let g = grid as usize;
    let mut heat = vec![0f32; classes as usize * g * g];
    let mut centres = Vec::new();
    for b in boxes {
        let (x0, y0) = (
            b.xmin / scale[0] / STRIDE as f32,
            b.ymin / scale[1] / STRIDE as f32,
        );
        let (x1, y1) = (
            b.xmax / scale[0] / STRIDE as f32,
            b.ymax / scale[1] / STRIDE as f32,
        );
        let (w, h) = ((x1 - x0).max(1e-3), (y1 - y0).max(1e-3));
        let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        let (ix, iy) = (
            (cx.floor() as i64).clamp(0, grid - 1),
            (cy.floor() as i64).clamp(0, grid - 1),
        );
        let sigma = (2.0 * gaussian_radius(w, h) + 1.0) / 6.0;
        let r = (3.0 * sigma).ceil() as i64;
        let base = b.class as usize * g * g;
        for y in (iy - r).max(0)..=(iy + r).min(grid - 1) {
            for x in (ix - r).max(0)..=(ix + r).min(grid - 1) {
                let d2 = ((x - ix).pow(2) + (y - iy).pow(2)) as f32;
                let v = (-d2 / (2.0 * sigma * sigma)).exp();
                let cell = &mut heat[base + y as usize * g + x as usize];
                *cell = cell.max(v);
            }
        }
        centres.push((
            iy * grid + ix,
            [w.ln(), h.ln(), cx - ix as f32, cy - iy as f32],
        ));
    }
    Targets { heat, centres }
}

/// The network.
pub struct CenterNet {
    vs: nn::VarStore,
    body: nn::Sequential,
    heat: nn::Conv2D,
    size: nn::Conv2D,
    offset: nn::Conv2D,
    classes: i64,
    device: Device,
}

impl CenterNet {
    fn new(cfg: &DetectorConfig, classes: i64, device: Device, seed: u64) -> CenterNet {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        let w = cfg.width;
        let conv = |name: &str, i: i64, o: i64, stride: i64, dilation: i64| {
            nn::conv2d(
                &r / name,
                i,
                o,
                3,
                nn::ConvConfig {
                    stride,
                    padding: dilation,
                    dilation,
                    ..Default::default()
                },
            )
        };
        let body = nn::seq()
            .add(conv("c1", 3, w / 3, 1, 1))
            .add_fn(|x| x.relu())
            .add(conv("c2", w / 3, w / 2, 2, 1))
            .add_fn(|x| x.relu())
            .add(conv("c3", w / 2, w / 2, 1, 1))
            .add_fn(|x| x.relu())
            .add(conv("c4", w / 2, w, 2, 1))
            .add_fn(|x| x.relu())
            .add(conv("c5", w, w, 1, 1))
            .add_fn(|x| x.relu())
            .add(conv("c6", w, w, 1, 2))
            .add_fn(|x| x.relu())
            .add(conv("c7", w, w, 1, 4))
            .add_fn(|x| x.relu());
        let head = |name: &str, o: i64, bias: f64| {
            nn::conv2d(
                &r / name,
                w,
                o,
                1,
                nn::ConvConfig {
                    bs_init: nn::Init::Const(bias),
                    ..Default::default()
                },
            )
        };
        CenterNet {
            body,
            heat: head("heat", classes, -2.19),
            size: head("size", 2, 1.0),
            offset: head("offset", 2, 0.5),
            classes,
            device,
            vs,
        }
    }

    /// Heatmap logits `[b, c, g, g]`, sizes and offsets `[b, 2, g, g]`.
    fn forward(&self, pixels: &Tensor) -> (Tensor, Tensor, Tensor) {
        let x = pixels.to_device(self.device).to_kind(Kind::Float) / 255.0 - 0.5;
        let f = self.body.forward(&x);
        (
            self.heat.forward(&f),
            self.size.forward(&f),
            self.offset.forward(&f),
        )
    }

    /// The mean loss of a batch (summed over images, divided by their boxes).
    fn loss(&self, pixels: &Tensor, ts: &[&Targets], grid: i64) -> Tensor {
        let (heat, size, offset) = self.forward(pixels);
        let b = ts.len() as i64;
        let flat: Vec<f32> = ts.iter().flat_map(|t| t.heat.iter().copied()).collect();
        let gt = Tensor::from_slice(&flat)
            .view([b, self.classes, grid, grid])
            .to_device(self.device);
        let p = heat.sigmoid().clamp(1e-4, 1.0 - 1e-4);
        let pos = gt.eq(1.0).to_kind(Kind::Float);
        let neg: Tensor = 1.0 - &pos;
        let one_minus_p: Tensor = 1.0 - &p;
        let one_minus_gt: Tensor = 1.0 - &gt;
        let pos_loss = (p.log() * one_minus_p.pow_tensor_scalar(2) * &pos).sum(Kind::Float);
        let neg_loss =
            (one_minus_p.log() * p.pow_tensor_scalar(2) * one_minus_gt.pow_tensor_scalar(4) * neg)
                .sum(Kind::Float);
        let npos: usize = ts.iter().map(|t| t.centres.len()).sum();
        let mut loss = -(pos_loss + neg_loss) / (npos.max(1) as f64);
        if npos > 0 {
            let mut idx = Vec::with_capacity(npos);
            let mut want = Vec::with_capacity(npos * 4);
            for (i, t) in ts.iter().enumerate() {
                for (cell, v) in &t.centres {
                    idx.push(i as i64 * grid * grid + cell);
                    want.extend_from_slice(v);
                }
            }
            let idx = Tensor::from_slice(&idx).to_device(self.device);
            let want = Tensor::from_slice(&want)
                .view([npos as i64, 4])
                .to_device(self.device);
            let pick = |t: &Tensor| {
                t.permute([0, 2, 3, 1])
                    .reshape([-1, 2])
                    .index_select(0, &idx)
            };
            let (ps, po) = (pick(&size), pick(&offset));
            let l_size = (ps - want.narrow(1, 0, 2)).abs().sum(Kind::Float) / npos as f64;
            let l_off = (po - want.narrow(1, 2, 2)).abs().sum(Kind::Float) / npos as f64;
            loss = loss + l_size * SIZE_WEIGHT + l_off * OFFSET_WEIGHT;
        }
        loss
    }

    /// Scored boxes per image, in original pixels.
    fn detect(&self, imgs: &Images, which: &[usize], cfg: &DetectorConfig) -> Vec<Vec<ScoredBox>> {
        let grid = cfg.input_size / STRIDE;
        let mut out = Vec::with_capacity(which.len());
        tch::no_grad(|| {
            for chunk in which.chunks(64) {
                let ix = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
                let (heat, size, offset) = self.forward(&imgs.pixels.index_select(0, &ix));
                let p = heat.sigmoid();
                let peaks = p.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false);
                let keep = p.eq_tensor(&peaks).to_kind(Kind::Float);
                let p = (p * keep).to_device(Device::Cpu);
                let size = size.to_device(Device::Cpu);
                let offset = offset.to_device(Device::Cpu);
                let c = self.classes;
                for (j, &row) in chunk.iter().enumerate() {
                    let scores = p.get(j as i64).reshape([-1]);
                    let k = (cfg.max_detections as i64).min(c * grid * grid);
                    let (top, at) = scores.topk(k, 0, true, true);
                    let top: Vec<f32> = Vec::try_from(&top).unwrap_or_default();
                    let at: Vec<i64> = Vec::try_from(&at).unwrap_or_default();
                    let sz: Vec<f32> =
                        Vec::try_from(&size.get(j as i64).reshape([-1])).unwrap_or_default();
                    let of: Vec<f32> =
                        Vec::try_from(&offset.get(j as i64).reshape([-1])).unwrap_or_default();
                    let cells = (grid * grid) as usize;
                    let [sx, sy] = imgs.scale[row];
                    let mut boxes = Vec::new();
                    for (&score, &a) in top.iter().zip(&at) {
                        if score < cfg.min_score {
                            break;
                        }
                        let class = (a as usize / cells) as u32;
                        let cell = a as usize % cells;
                        let (gy, gx) = (cell / grid as usize, cell % grid as usize);
                        let (w, h) = (sz[cell].exp(), sz[cells + cell].exp());
                        let cx = gx as f32 + of[cell];
                        let cy = gy as f32 + of[cells + cell];
                        let st = STRIDE as f32;
                        let (iw, ih) = (cfg.input_size as f32 * sx, cfg.input_size as f32 * sy);
                        let bb = BBox {
                            class,
                            xmin: ((cx - w / 2.0) * st * sx).clamp(0.0, iw),
                            ymin: ((cy - h / 2.0) * st * sy).clamp(0.0, ih),
                            xmax: ((cx + w / 2.0) * st * sx).clamp(0.0, iw),
                            ymax: ((cy + h / 2.0) * st * sy).clamp(0.0, ih),
                        };
                        if bb.xmax > bb.xmin && bb.ymax > bb.ymin {
                            boxes.push(ScoredBox { bbox: bb, score });
                        }
                    }
                    out.push(boxes);
                }
            }
        });
        out
    }
}

fn check_cfg(cfg: &DetectorConfig) -> Result<()> {
    if cfg.input_size < 16 || cfg.input_size % STRIDE != 0 {
        bail!(
            "detector.input_size must be a multiple of {STRIDE} and at least 16; it is {}",
            cfg.input_size
        );
    }
    if cfg.width < 6 {
        bail!("detector.width must be at least 6; it is {}", cfg.width);
    }
    Ok(())
}

fn dev_loss(m: &CenterNet, imgs: &Images, ts: &[Targets], grid: i64) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    tch::no_grad(|| {
        let all: Vec<usize> = (0..ts.len()).collect();
        for chunk in all.chunks(64) {
            let ix = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let refs: Vec<&Targets> = chunk.iter().map(|&i| &ts[i]).collect();
            let boxes: usize = refs.iter().map(|t| t.centres.len()).sum();
            let l = m.loss(&imgs.pixels.index_select(0, &ix), &refs, grid);
            sum += l.double_value(&[]) * boxes.max(1) as f64;
            n += boxes.max(1);
        }
    });
    sum / n.max(1) as f64
}

/// Training data of one split: its images and targets.
struct Prepared {
    imgs: Images,
    targets: Vec<Targets>,
}

fn prepare(ds_dir: &Path, split: &Split, classes: i64, cfg: &DetectorConfig) -> Result<Prepared> {
    let imgs = load_images(ds_dir, split, cfg.input_size)?;
    let grid = cfg.input_size / STRIDE;
    let targets = split
        .boxes
        .iter()
        .zip(&imgs.scale)
        .map(|(b, &s)| targets(b, s, classes, grid))
        .collect();
    Ok(Prepared { imgs, targets })
}

fn fit(
    cfg: &TrainerConfig,
    classes: i64,
    train: (&Prepared, &[usize]),
    dev: &Prepared,
    ckpt: &Path,
    label: &str,
) -> Result<(CenterNet, Trained)> {
    let (tr, which) = train;
    if which.is_empty() {
        bail!("the train split has no images");
    }
    let dc = &cfg.detector;
    let grid = dc.input_size / STRIDE;
    let device = crate::train::pick_device(cfg.device)?;
    let threads = crate::train::set_threads(cfg);
    let m = CenterNet::new(dc, classes, device, cfg.seed);
    let mut opt = nn::Adam::default().build(&m.vs, cfg.learning_rate.unwrap_or(DEFAULT_LR))?;
    let mut rng = Rng::new(cfg.seed);
    let (mut best, mut best_epoch, mut since) = (f64::INFINITY, 0, 0);
    let mut curve = Vec::new();
    let mut stopped_early = false;
    progress::len(cfg.epochs as u64);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut order = which.to_vec();
        rng.shuffle(&mut order);
        let (mut sum, mut seen) = (0.0, 0usize);
        for chunk in order.chunks(cfg.batch_size.max(1)) {
            let ix = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let refs: Vec<&Targets> = chunk.iter().map(|&i| &tr.targets[i]).collect();
            let loss = m.loss(&tr.imgs.pixels.index_select(0, &ix), &refs, grid);
            opt.backward_step_clip(&loss, 10.0);
            sum += loss.double_value(&[]) * chunk.len() as f64;
            seen += chunk.len();
        }
        let seconds = t0.elapsed().as_secs_f64();
        let train_loss = sum / seen.max(1) as f64;
        if !train_loss.is_finite() {
            bail!("training diverged in epoch {epoch}: lower `learning_rate`");
        }
        let dl = if dev.targets.is_empty() {
            train_loss
        } else {
            dev_loss(&m, &dev.imgs, &dev.targets, grid)
        };
        curve.push(Epoch {
            epoch,
            train_loss,
            dev_loss: dl,
            dev_accuracy: 0.0,
            seconds,
            rows_per_s: which.len() as f64 / seconds.max(1e-9),
        });
        progress::step(&format!(
            "{label}epoch {epoch}: dev loss {dl:.4} ({:.0} images/s)",
            which.len() as f64 / seconds.max(1e-9)
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

/// `train` for a detection dataset.
pub fn train_task(req: &TrainRequest, ds: &Dataset) -> Result<Map<String, Value>> {
    let cfg = &req.config;
    check_cfg(&cfg.detector)?;
    let classes = ds.labels.len() as i64;
    let Some(tr) = ds.split("train") else {
        bail!("the dataset has no train split")
    };
    let empty = Split::default();
    let dev = ds.split("dev").unwrap_or(&empty);
    let (ptr, pdev) = (
        prepare(&req.dataset, tr, classes, &cfg.detector)?,
        prepare(&req.dataset, dev, classes, &cfg.detector)?,
    );
    std::fs::create_dir_all(&req.out)?;
    let which: Vec<usize> = (0..tr.len()).collect();
    let t0 = Instant::now();
    let (m, trained) = fit(
        cfg,
        classes,
        (&ptr, &which),
        &pdev,
        &checkpoint_path(&req.out),
        "",
    )?;
    let train_secs = t0.elapsed().as_secs_f64();
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
    let epochs = trained.curve.len().max(1) as f64;
    let epoch_secs: f64 = trained.curve.iter().map(|e| e.seconds).sum::<f64>() / epochs;
    out.insert("train_images".into(), json!(tr.len()));
    out.insert("seconds_per_epoch".into(), json!(epoch_secs));
    out.insert(
        "train_images_per_s".into(),
        json!(tr.len() as f64 / epoch_secs.max(1e-9)),
    );
    out.insert("train_seconds".into(), json!(train_secs));
    for (name, split) in [("dev", Some(dev)), ("test", ds.split("test"))] {
        let Some(split) = split.filter(|s| !s.is_empty()) else {
            continue;
        };
        let imgs = load_images(&req.dataset, split, cfg.detector.input_size)?;
        let all: Vec<usize> = (0..split.len()).collect();
        let dets = m.detect(&imgs, &all, &cfg.detector);
        let sc = coco_map(&split.boxes, &dets, classes as usize);
        // The test scores are reported for honesty only: the test split never picks a checkpoint.
        out.insert(format!("{name}_map"), json!(sc.map));
        out.insert(format!("{name}_map50"), json!(sc.map50));
    }
    Ok(out)
}

/// Detections flattened for a k-fold piece: 6 floats a box (class, corners, score).
fn flatten(boxes: &[ScoredBox]) -> Vec<f32> {
    boxes
        .iter()
        .flat_map(|d| {
            let b = &d.bbox;
            [b.class as f32, b.xmin, b.ymin, b.xmax, b.ymax, d.score]
        })
        .collect()
}

fn unflatten(xs: &[f32]) -> Vec<ScoredBox> {
    xs.chunks_exact(6)
        .map(|c| ScoredBox {
            bbox: BBox {
                class: c[0] as u32,
                xmin: c[1],
                ymin: c[2],
                xmax: c[3],
                ymax: c[4],
            },
            score: c[5],
        })
        .collect()
}

/// `predict` for a detection dataset: every split's scored boxes (train k-fold out-of-sample
/// when asked).
pub fn predict_task(
    req: &PredictRequest,
    meta: &ModelMeta,
    ds: &Dataset,
) -> Result<Map<String, Value>> {
    let cfg = &meta.config;
    let dc = &cfg.detector;
    check_cfg(dc)?;
    let classes = ds.labels.len() as i64;
    let device = crate::train::pick_device(cfg.device)?;
    crate::train::set_threads(cfg);
    let mut m = CenterNet::new(dc, classes, device, cfg.seed);
    m.vs.load(checkpoint_path(&req.model))
        .context("loading the detector's checkpoint")?;
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
    let names: Vec<&str> = ds.labels.names();
    for (name, split) in &ds.splits {
        if req.fold.is_some() && name != "train" {
            continue;
        }
        let all: Vec<usize> = (0..split.len()).collect();
        let mut fold = vec![-1i32; split.len()];
        let mut dets = if req.fold.is_some() {
            vec![Vec::new(); split.len()]
        } else {
            let imgs = load_images(&req.dataset, split, dc.input_size)?;
            m.detect(&imgs, &all, dc)
        };
        if let (Some(k), "train") = (k, name.as_str()) {
            let empty = Split::default();
            let dev = ds.split("dev").unwrap_or(&empty);
            let ptr = prepare(&req.dataset, split, classes, dc)?;
            let pdev = prepare(&req.dataset, dev, classes, dc)?;
            let pieces = crate::predict::kfold_pieces(req, split.len(), k, |f, seen, held| {
                let ckpt = req.work.join(format!("fold-{f}.safetensors"));
                let (fm, t) = fit(
                    cfg,
                    classes,
                    (&ptr, seen),
                    &pdev,
                    &ckpt,
                    &format!("fold {}/{k}: ", f + 1),
                )?;
                let d = fm.detect(&ptr.imgs, held, dc);
                Ok((t.best_epoch, d.iter().map(|b| flatten(b)).collect()))
            })?;
            if req.fold.is_some() {
                return crate::predict::write_piece(req, &pieces);
            }
            for piece in &pieces {
                for (&r, p) in piece.held.iter().zip(&piece.probs) {
                    dets[r] = unflatten(p);
                    fold[r] = piece.fold as i32;
                }
            }
            let best: Vec<usize> = pieces.iter().map(|p| p.best_epoch).collect();
            metrics.insert("fold_best_epochs".into(), json!(best));
        }
        let sc = coco_map(&split.boxes, &dets, classes as usize);
        let preds = SplitPredictions {
            classes: classes as usize,
            detections: dets,
            fold,
            ..Default::default()
        };
        preds.write_detections(
            &req.out.join(relabel_tasks::data::split_file(name)),
            &split.ids,
            &names,
        )?;
        metrics.insert(format!("{name}_map"), json!(sc.map));
        metrics.insert(format!("{name}_map50"), json!(sc.map50));
        progress::step(&format!(
            "predicted {name}: mAP {:.3}, mAP@0.5 {:.3}",
            sc.map, sc.map50
        ));
    }
    crate::predict::write_meta(
        req,
        names.iter().map(|s| s.to_string()).collect(),
        ds,
        &mut metrics,
    )?;
    Ok(metrics)
}
