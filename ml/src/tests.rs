//! Tests of training and self-prediction on generated data (no network).

use std::path::Path;

use relabel_tasks::data::{Dataset, LabelSpec, Split};
use relabel_tasks::predictions::SplitPredictions;
use relabel_tasks::protocol::SelfPredictorConfig;
use relabel_tasks::protocol::{checkpoint_path, TrainerConfig};
use tch::Device;

use crate::fasttext::{Encoded, FastText, DEFAULT_LR};
use crate::predict::{self, PredictRequest};
use crate::train::{evaluate, probabilities, train, Classifier, Rng};

const CLASSES: usize = 4;
const KEYWORDS: [[&str; 4]; CLASSES] = [
    ["refund", "charge", "invoice", "billed"],
    ["parcel", "courier", "delivery", "tracking"],
    ["password", "login", "account", "locked"],
    ["cancel", "subscription", "plan", "renewal"],
];
const FILLER: [&str; 8] = [
    "my", "the", "please", "help", "today", "with", "urgent", "again",
];

/// Rows of `n` texts: two class keywords among filler words; `noise` of labels flipped.
fn split(n: usize, noise: f64, rng: &mut Rng, prefix: &str) -> (Split, Vec<u32>) {
    let mut s = Split::default();
    let mut truth = Vec::new();
    for i in 0..n {
        let c = (rng.next_u64() % CLASSES as u64) as usize;
        let mut words: Vec<&str> = (0..3)
            .map(|_| FILLER[(rng.next_u64() % 8) as usize])
            .collect();
        for _ in 0..2 {
            words.insert(
                (rng.next_u64() % (words.len() as u64 + 1)) as usize,
                KEYWORDS[c][(rng.next_u64() % 4) as usize],
            );
        }
        let given = if (rng.next_u64() % 1000) as f64 / 1000.0 < noise {
            ((c as u64 + 1 + rng.next_u64() % 3) % 4) as u32
        } else {
            c as u32
        };
        s.ids.push(format!("{prefix}{i}"));
        s.texts.push(words.join(" "));
        s.labels.push(given);
        truth.push(c as u32);
    }
    (s, truth)
}

fn config(seed: u64) -> TrainerConfig {
    let mut c: TrainerConfig = serde_json::from_str("{}").unwrap();
    c.seed = seed;
    c.threads = Some(1);
    c.device = relabel_tasks::protocol::Device::Cpu;
    c.fasttext.buckets = 1 << 14;
    c.fasttext.dim = 16;
    c
}

struct Trained {
    model: FastText,
    report: crate::train::Trained,
}

fn fit(cfg: &TrainerConfig, tr: &Split, dev: &Split, ckpt: &Path) -> Trained {
    let enc = Encoded::new(&tr.texts, &cfg.fasttext);
    let dev_enc = Encoded::new(&dev.texts, &cfg.fasttext);
    let rows: Vec<usize> = (0..tr.len()).collect();
    let fresh = FastText::new(&cfg.fasttext, CLASSES as i64, Device::Cpu, cfg.seed);
    let (model, report) = train(
        fresh, cfg, tr, &enc, &rows, dev, &dev_enc, ckpt, "", DEFAULT_LR,
    )
    .unwrap();
    Trained { model, report }
}

#[test]
fn learns_a_generated_dataset_to_the_stated_accuracy() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(1);
    let (tr, _) = split(1200, 0.1, &mut rng, "tr");
    let (dev, _) = split(300, 0.0, &mut rng, "dev");
    let (test, _) = split(300, 0.0, &mut rng, "te");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1);
    let t = fit(&cfg, &tr, &dev, &dir.path().join("m.safetensors"));
    let enc = Encoded::new(&test.texts, &cfg.fasttext);
    let rows: Vec<usize> = (0..test.len()).collect();
    let (_, acc) = evaluate(&t.model, &enc, &test, &rows);
    assert!(
        acc >= 0.95,
        "test accuracy {acc:.3} below the stated 0.95 (curve: {:?})",
        t.report.curve
    );
}

#[test]
fn early_stopping_keeps_the_epoch_with_the_lowest_dev_loss() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(2);
    // Heavy noise and a high rate: dev loss falls, then rises as the model fits the noise.
    let (tr, _) = split(600, 0.35, &mut rng, "tr");
    let (dev, _) = split(300, 0.0, &mut rng, "dev");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(3);
    cfg.learning_rate = Some(0.5);
    cfg.epochs = 40;
    cfg.patience = 3;
    let ckpt = dir.path().join("m.safetensors");
    let t = fit(&cfg, &tr, &dev, &ckpt);
    let curve = &t.report.curve;
    let argmin = curve
        .iter()
        .min_by(|a, b| a.dev_loss.partial_cmp(&b.dev_loss).unwrap())
        .unwrap()
        .epoch;
    assert_eq!(t.report.best_epoch, argmin, "{curve:?}");
    assert!(
        t.report.stopped_early,
        "expected overfitting to stop training: {curve:?}"
    );
    assert_eq!(curve.len(), t.report.best_epoch + cfg.patience);
    assert!(curve.last().unwrap().dev_loss > t.report.best_dev_loss);
    // The kept checkpoint is the best epoch's, not the last one's.
    let dev_enc = Encoded::new(&dev.texts, &cfg.fasttext);
    let rows: Vec<usize> = (0..dev.len()).collect();
    let reloaded = FastText::load(&cfg.fasttext, CLASSES as i64, Device::Cpu, &ckpt).unwrap();
    let (loss, _) = evaluate(&reloaded, &dev_enc, &dev, &rows);
    assert!(
        (loss - curve[argmin - 1].dev_loss).abs() < 1e-5,
        "checkpoint dev loss {loss} vs best {}",
        curve[argmin - 1].dev_loss
    );
}

#[test]
fn the_checkpoint_reloads_to_identical_predictions() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(4);
    let (tr, _) = split(400, 0.1, &mut rng, "tr");
    let (dev, _) = split(100, 0.0, &mut rng, "dev");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(5);
    let ckpt = dir.path().join("m.safetensors");
    let t = fit(&cfg, &tr, &dev, &ckpt);
    let enc = Encoded::new(&dev.texts, &cfg.fasttext);
    let rows: Vec<usize> = (0..dev.len()).collect();
    let a = probabilities(&t.model, &enc, &rows);
    let b = probabilities(
        &FastText::load(&cfg.fasttext, CLASSES as i64, Device::Cpu, &ckpt).unwrap(),
        &enc,
        &rows,
    );
    assert_eq!(a, b);
}

/// libtorch's thread count is process-wide and every training sets it, and a reduction's result
/// depends on it: the tests of this module run one at a time (a determinism test once saw the
/// model bytes differ while another test trained beside it).
pub(crate) static TORCH_THREADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_same_seed_on_cpu_gives_the_same_model() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(6);
    let (tr, _) = split(400, 0.1, &mut rng, "tr");
    let (dev, _) = split(100, 0.0, &mut rng, "dev");
    let dir = tempfile::tempdir().unwrap();
    let bytes = |seed: u64, name: &str| {
        let p = dir.path().join(name);
        fit(&config(seed), &tr, &dev, &p);
        std::fs::read(p).unwrap()
    };
    assert_eq!(bytes(7, "a.safetensors"), bytes(7, "b.safetensors"));
    assert_ne!(bytes(7, "a.safetensors"), bytes(8, "c.safetensors"));
}

#[test]
fn kfold_predictions_never_come_from_a_model_that_saw_the_row() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    // 60 rows of unique nonsense words with random labels: a model can only get them right by
    // having seen them. In-sample predictions do; out-of-sample ones cannot.
    let mut rng = Rng::new(9);
    let (mut tr, _) = split(500, 0.0, &mut rng, "tr");
    let memo: Vec<usize> = (tr.len()..tr.len() + 60).collect();
    for i in 0..60 {
        tr.ids.push(format!("memo{i}"));
        tr.texts.push(format!("zq{i}x kv{}y wr{}z", i * 7, i * 13));
        tr.labels.push((rng.next_u64() % CLASSES as u64) as u32);
    }
    let (dev, _) = split(200, 0.0, &mut rng, "dev");
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset {
        task: Default::default(),
        labels: LabelSpec::from_names((0..CLASSES).map(|c| format!("c{c}"))),
        splits: [("train".to_string(), tr.clone()), ("dev".to_string(), dev)].into(),
        ctr: None,
    };
    let ds_dir = dir.path().join("ds");
    ds.write(&ds_dir).unwrap();
    let model_dir = dir.path().join("model");
    let mut cfg = config(10);
    cfg.learning_rate = Some(0.5);
    cfg.epochs = 15;
    cfg.patience = 15;
    let req = serde_json::json!({"config": cfg, "dataset": ds_dir, "out": model_dir});
    crate::train_task(serde_json::from_value(req).unwrap()).unwrap();
    assert!(checkpoint_path(&model_dir).exists());
    let request = |k: Option<usize>, name: &str| {
        let work = dir.path().join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        PredictRequest {
            config: SelfPredictorConfig { kfold: k, seed: 3 },
            model: model_dir.clone(),
            dataset: ds_dir.clone(),
            out: dir.path().join(name),
            work,
            fold: None,
            folds: Vec::new(),
        }
    };
    let read = |out: &std::path::Path| {
        (
            SplitPredictions::read(&out.join("train.parquet"), &ds.splits["train"], CLASSES)
                .unwrap(),
            SplitPredictions::read(&out.join("dev.parquet"), &ds.splits["dev"], CLASSES).unwrap(),
        )
    };
    let run = |k: Option<usize>, name: &str| {
        let req = request(k, name);
        let out = req.out.clone();
        predict::run(req).unwrap();
        (
            SplitPredictions::read(&out.join("train.parquet"), &ds.splits["train"], CLASSES)
                .unwrap(),
            SplitPredictions::read(&out.join("dev.parquet"), &ds.splits["dev"], CLASSES).unwrap(),
        )
    };
    let (ins, _) = run(None, "in");
    let (oos, oos_dev) = run(Some(4), "oos");
    let mean = |p: &SplitPredictions| {
        memo.iter().map(|&r| p.label_prob[r] as f64).sum::<f64>() / memo.len() as f64
    };
    let (m_in, m_oos) = (mean(&ins), mean(&oos));
    assert!(
        m_in > 0.5,
        "in-sample predictions should fit the memorised rows: {m_in:.3}"
    );
    assert!(
        m_oos < 0.4,
        "out-of-sample predictions must not have seen the rows: {m_oos:.3}"
    );
    // Every train row was predicted by some fold's model; dev rows by the input model.
    assert!(oos.fold.iter().all(|&f| (0..4).contains(&f)));
    for f in 0..4 {
        assert!(oos.fold.iter().filter(|&&x| x == f).count() >= 100);
    }
    assert!(ins.fold.iter().all(|&f| f == -1) && oos_dev.fold.iter().all(|&f| f == -1));
    assert_eq!(
        predict::assign_folds(tr.len(), 4, 3),
        oos.fold.iter().map(|&f| f as usize).collect::<Vec<_>>()
    );

    // The same four folds computed one piece at a time (as a job array's tasks do), then
    // merged: the same predictions as the one-process run.
    let pieces: Vec<std::path::PathBuf> = (0..4)
        .map(|f| {
            let mut req = request(Some(4), &format!("piece-{f}"));
            req.fold = Some(f);
            let m = predict::run(req.clone()).unwrap();
            assert_eq!(m["fold"], f);
            assert!(
                !req.out.join("train.parquet").exists(),
                "a piece predicts nothing else"
            );
            req.out
        })
        .collect();
    let mut req = request(Some(4), "merged");
    req.folds = pieces.clone();
    let out = req.out.clone();
    predict::run(req).unwrap();
    let (merged, merged_dev) = read(&out);
    assert_eq!(merged.fold, oos.fold);
    assert_eq!(merged.probs, oos.probs);
    assert_eq!(merged_dev.probs, oos_dev.probs);
    // A piece of another fold, or for another kfold, is refused.
    let mut req = request(Some(4), "mixed");
    req.folds = vec![
        pieces[1].clone(),
        pieces[0].clone(),
        pieces[2].clone(),
        pieces[3].clone(),
    ];
    let err = predict::run(req).unwrap_err().to_string();
    assert!(err.contains("not fold 0 of 4"), "{err}");
    let mut req = request(Some(3), "short");
    req.folds = pieces[..3].to_vec();
    assert!(predict::run(req).is_err());
}

#[test]
fn a_diverging_rate_is_an_error_not_a_nan_model() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(11);
    let (tr, _) = split(200, 0.0, &mut rng, "tr");
    let (dev, _) = split(50, 0.0, &mut rng, "dev");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1);
    cfg.learning_rate = Some(1e6);
    let enc = Encoded::new(&tr.texts, &cfg.fasttext);
    let dev_enc = Encoded::new(&dev.texts, &cfg.fasttext);
    let rows: Vec<usize> = (0..tr.len()).collect();
    let fresh = FastText::new(&cfg.fasttext, CLASSES as i64, Device::Cpu, cfg.seed);
    let err = train(
        fresh,
        &cfg,
        &tr,
        &enc,
        &rows,
        &dev,
        &dev_enc,
        &dir.path().join("m.safetensors"),
        "",
        DEFAULT_LR,
    )
    .err()
    .expect("training should fail");
    assert!(err.to_string().contains("diverged"), "{err}");
}

fn encoder_config() -> TrainerConfig {
    let mut c = config(1);
    c.model = relabel_tasks::protocol::ModelKind::Encoder;
    c.encoder.max_length = 24;
    c.batch_size = 16;
    c
}

#[test]
fn the_pretrained_encoder_puts_paraphrases_closer_than_unrelated_texts() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    // Fails (does not skip) without the weights: `cargo xtask setup` fetches them.
    let enc =
        crate::encoder::Encoder::new(&encoder_config().encoder, 2, Device::Cpu, 0, true).unwrap();
    let texts: Vec<String> = [
        "How do I reset my PIN?",
        "I forgot my PIN number",
        "My parcel has not arrived yet",
        "Where is my package delivery?",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let e = enc.embed_texts(&texts).unwrap();
    let e = &e / e.norm_scalaropt_dim(2, [1], true);
    let sim = |i: i64, j: i64| e.get(i).dot(&e.get(j)).double_value(&[]);
    assert!(
        sim(0, 1) > sim(0, 2) + 0.2,
        "pin/pin {:.3} vs pin/parcel {:.3}",
        sim(0, 1),
        sim(0, 2)
    );
    assert!(
        sim(2, 3) > sim(1, 3) + 0.2,
        "parcel/package {:.3} vs pin/package {:.3}",
        sim(2, 3),
        sim(1, 3)
    );
}

#[test]
fn the_encoder_fine_tunes_and_its_checkpoint_reloads() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(21);
    let (tr, _) = split(96, 0.0, &mut rng, "tr");
    let (dev, _) = split(48, 0.0, &mut rng, "dev");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = encoder_config();
    cfg.epochs = 3;
    cfg.learning_rate = Some(1e-4);
    let model =
        crate::encoder::Encoder::new(&cfg.encoder, CLASSES as i64, Device::Cpu, 1, true).unwrap();
    let enc = model.encode(&tr.texts).unwrap();
    let dev_enc = model.encode(&dev.texts).unwrap();
    let rows: Vec<usize> = (0..tr.len()).collect();
    let ckpt = dir.path().join("enc.safetensors");
    let (model, report) = train(
        model,
        &cfg,
        &tr,
        &enc,
        &rows,
        &dev,
        &dev_enc,
        &ckpt,
        "",
        crate::encoder::DEFAULT_LR,
    )
    .unwrap();
    assert!(report.best_dev_accuracy >= 0.9, "{:?}", report.curve);
    let mut again =
        crate::encoder::Encoder::new(&cfg.encoder, CLASSES as i64, Device::Cpu, 99, false).unwrap();
    again.reload(&ckpt).unwrap();
    let dev_rows: Vec<usize> = (0..dev.len()).collect();
    assert_eq!(
        probabilities(&model, &dev_enc, &dev_rows),
        probabilities(&again, &dev_enc, &dev_rows)
    );
}

#[test]
fn encoder_batches_pad_without_changing_embeddings() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let enc =
        crate::encoder::Encoder::new(&encoder_config().encoder, 2, Device::Cpu, 0, true).unwrap();
    let texts: Vec<String> = [
        "Hi",
        "My parcel has not arrived yet, where is it?",
        "PIN blocked",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // No pad tokens from tokenizer.json's own padding: every text ends with [SEP].
    let toks = enc.encode(&texts).unwrap();
    assert!(
        toks.0
            .iter()
            .all(|t| t.last() == Some(&102) && t.first() == Some(&101)),
        "{:?}",
        toks.0
    );
    assert_eq!(toks.0[0].len(), 3);
    let together = enc.embed_texts(&texts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let alone = enc.embed_texts(std::slice::from_ref(t)).unwrap();
        let diff = (together.get(i as i64) - alone.get(0))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-4, "text {i}: batched and alone differ by {diff}");
    }
}

#[test]
fn blocked_knn_equals_brute_force() {
    let _serial = TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (n, q, d, k) = (3001usize, 37usize, 16usize, 7usize);
    let mut rng = Rng::new(5);
    let mut gen = |m: usize| -> Vec<f32> {
        (0..m * d)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 * 2.0 - 1.0)
            .collect()
    };
    let corpus = gen(n);
    let queries = gen(q);
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.path().join("c.f32"), bytes(&corpus)).unwrap();
    std::fs::write(dir.path().join("q.f32"), bytes(&queries)).unwrap();
    let out = dir.path().join("out.bin");
    let req: crate::knn::KnnRequest = serde_json::from_value(serde_json::json!({
        "corpus": dir.path().join("c.f32"), "queries": dir.path().join("q.f32"), "dim": d, "k": k,
        "normalize": true, "block_rows": 700, "query_batch": 10, "threads": 1, "out": out,
    }))
    .unwrap();
    crate::knn::run(req).unwrap();
    let got = relabel_tasks::protocol::read_knn(&out, q, k).unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for qi in 0..q {
        let qv = &queries[qi * d..(qi + 1) * d];
        let mut all: Vec<(usize, f32)> = (0..n)
            .map(|j| {
                let cv = &corpus[j * d..(j + 1) * d];
                let dot: f32 = qv.iter().zip(cv).map(|(a, b)| a * b).sum();
                (j, dot / (norm(qv) * norm(cv)))
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        let want: Vec<usize> = all[..k].iter().map(|x| x.0).collect();
        let have: Vec<usize> = got[qi].iter().map(|x| x.0).collect();
        assert_eq!(have, want, "query {qi}");
        for (h, w) in got[qi].iter().zip(&all[..k]) {
            assert!((h.1 - w.1).abs() < 1e-4);
        }
    }
}
