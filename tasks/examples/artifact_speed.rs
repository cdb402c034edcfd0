//! Artifact reload timing for `cargo xtask bench artifacts` (xtask is a debug build, so the
//! timed code runs here, built in release).
//!
//! Usage: `artifact_speed DIR ROWS CLASSES PRED_ROWS` writes DIR/train.parquet (a ROWS-row split)
//! and DIR/pred.parquet (PRED_ROWS x CLASSES predictions), reloads each three times, and prints
//! `{write_split_s, read_split_s, write_pred_s, read_pred_s, split_bytes, pred_bytes}` (best of
//! three reads) as JSON.

use std::time::Instant;

use relabel_tasks::data::{LabelSpec, Split};
use relabel_tasks::predictions::SplitPredictions;
use relabel_tasks::task::TaskKind;

fn best_of_three(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(&args[0]);
    let n: usize = args[1].parse().expect("rows");
    let c: usize = args[2].parse().expect("classes");
    let pn: usize = args[3].parse().expect("prediction rows");
    let spec = LabelSpec::from_names((0..c).map(|i| format!("class_{i}")));
    let split = Split {
        ids: (0..n).map(|i| format!("row{i}")).collect(),
        texts: (0..n)
            .map(|i| format!("how do I top up my card with {i} pounds please"))
            .collect(),
        labels: (0..n).map(|i| (i % c) as u32).collect(),
        ..Default::default()
    };
    let sp = dir.join("train.parquet");
    let t = Instant::now();
    split
        .write(&sp, &spec, TaskKind::Classification)
        .expect("write split");
    let write_split = t.elapsed().as_secs_f64();
    let read_split = best_of_three(|| {
        let back = Split::read(&sp, &spec, TaskKind::Classification).expect("read split");
        assert_eq!(back.len(), n);
    });
    let head = Split {
        ids: split.ids[..pn].to_vec(),
        texts: split.texts[..pn].to_vec(),
        labels: split.labels[..pn].to_vec(),
        ..Default::default()
    };
    let mut probs = vec![0.1 / (c as f32 - 1.0); pn * c];
    for i in 0..pn {
        probs[i * c + (i * 7) % c] = 0.9;
    }
    let p = SplitPredictions::from_probs(c, probs, head.labels.clone(), vec![-1; pn]);
    let pp = dir.join("pred.parquet");
    let t = Instant::now();
    p.write(&pp, &head.ids, &spec.names())
        .expect("write predictions");
    let write_pred = t.elapsed().as_secs_f64();
    let read_pred = best_of_three(|| {
        let back = SplitPredictions::read(&pp, &head, c).expect("read predictions");
        assert_eq!(back.rows(), pn);
    });
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "write_split_s": write_split, "read_split_s": read_split,
            "write_pred_s": write_pred, "read_pred_s": read_pred,
            "split_bytes": size(&sp), "pred_bytes": size(&pp),
        })
    );
}
