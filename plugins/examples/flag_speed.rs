//! The disagreement filter run as a program for `cargo xtask bench flag` (xtask links no node
//! kinds): times confident learning on synthetic probabilities, or flags given predictions.
//!
//! Usage: `flag_speed DIR ROWS CLASSES` writes DIR/probs.f32, DIR/labels.i64 (for cleanlab) and
//! DIR/relabel_METHOD.u32 (the flagged rows), and prints the timings as JSON.
//! `flag_speed rank PREDICTIONS.parquet DATASET_DIR CONFIGS.json` prints `{name: [flagged train rows]}` for each
//! `{name: filter config YAML}` of CONFIGS.json.

use std::time::Instant;

use relabel_plugins::find::disagreement_filter::{filter, FilterConfig};
use relabel_plugins::predictions::SplitPredictions;

fn rank(predictions: &str, dataset: &str, configs: &str) {
    let ds = relabel_plugins::data::Dataset::read(std::path::Path::new(dataset)).expect("dataset");
    let p = SplitPredictions::read(
        std::path::Path::new(predictions),
        &ds.splits["train"],
        ds.labels.len(),
    )
    .expect("predictions");
    let configs: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(configs).expect("configs")).expect("configs JSON");
    let mut out = serde_json::Map::new();
    for (name, yaml) in configs {
        let cfg: FilterConfig = serde_yaml::from_str(&yaml).expect("a filter config");
        let rows: Vec<usize> = filter(&[("train", &p)], &cfg)
            .iter()
            .map(|f| f.row)
            .collect();
        out.insert(name, serde_json::json!(rows));
    }
    println!("{}", serde_json::Value::Object(out));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("rank") {
        return rank(&args[1], &args[2], &args[3]);
    }
    let dir = std::path::PathBuf::from(&args[0]);
    let n: usize = args[1].parse().expect("rows");
    let c: usize = args[2].parse().expect("classes");
    // Rows of a noisy 20%-mislabelled set: a softmax of N(0,1) logits with +4 on the true class.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let unit = |x: u64| (x >> 11) as f64 / (1u64 << 53) as f64;
    let mut probs = Vec::with_capacity(n * c);
    let mut labels = Vec::with_capacity(n);
    let mut logits = vec![0f64; c];
    for _ in 0..n {
        let truth = (next() % c as u64) as usize;
        let given = if unit(next()) < 0.2 {
            (truth + 1 + (next() % (c as u64 - 1)) as usize) % c
        } else {
            truth
        };
        for (j, l) in logits.iter_mut().enumerate() {
            let (u, v) = (unit(next()).max(1e-12), unit(next()));
            *l = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
                + if j == truth { 4.0 } else { 0.0 };
        }
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        probs.extend(logits.iter().map(|l| ((l - m).exp() / z) as f32));
        labels.push(given as u32);
    }
    let p = SplitPredictions::from_probs(c, probs, labels, vec![-1; n]);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("probs.f32"),
        bytemuck::cast_slice::<f32, u8>(&p.probs),
    )
    .expect("write");
    let l64: Vec<i64> = p.label.iter().map(|&l| l as i64).collect();
    std::fs::write(
        dir.join("labels.i64"),
        bytemuck::cast_slice::<i64, u8>(&l64),
    )
    .expect("write");
    let mut out = serde_json::Map::new();
    for method in ["prune_by_noise_rate", "prune_by_class"] {
        let cfg: FilterConfig = serde_yaml::from_str(&format!(
            "rules: [{{confident_learning: {method}}}]\nmax_fraction: 1.0\nsplits: [train]\n"
        ))
        .expect("config");
        let mut times = Vec::new();
        let mut rows = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            let flagged = filter(&[("train", &p)], &cfg);
            times.push(t0.elapsed().as_secs_f64());
            rows = flagged.iter().map(|f| f.row as u32).collect::<Vec<_>>();
        }
        times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        std::fs::write(
            dir.join(format!("relabel_{method}.u32")),
            bytemuck::cast_slice::<u32, u8>(&rows),
        )
        .expect("write");
        out.insert(
            method.into(),
            serde_json::json!({"seconds": times[times.len() / 2], "issues": rows.len()}),
        );
    }
    println!("{}", serde_json::Value::Object(out));
}
