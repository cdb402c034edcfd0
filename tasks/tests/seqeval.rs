//! The tagging scores agree with seqeval 1.2.2 (its default conlleval-style `classification_report`)
//! on the same tag sequences, ill-formed ones included: run in the tests' Python venv.

use std::path::PathBuf;
use std::process::Command;

use relabel_tasks::data::LabelSpec;
use relabel_tasks::tagging::{read_tags, score, Scheme};

/// The Python `cargo xtask test` installs pyarrow and seqeval into (`RELABEL_TEST_PYTHON`).
fn python() -> PathBuf {
    let p = std::env::var_os("RELABEL_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            relabel_tasks::home::relabel_home().join("bench/pyarrow-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask test` installs seqeval into it",
        p.display()
    );
    p
}

/// Seeded sequences: mostly well-formed entities, with stray I- tags and type changes.
fn sequences(seed: u64, n: usize, types: &[&str]) -> Vec<Vec<String>> {
    let mut x = seed;
    let mut next = move |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    (0..n)
        .map(|_| {
            let len = 1 + next(12) as usize;
            (0..len)
                .map(|_| match next(10) {
                    0..=4 => "O".to_string(),
                    5..=6 => format!("B-{}", types[next(types.len() as u64) as usize]),
                    _ => format!("I-{}", types[next(types.len() as u64) as usize]),
                })
                .collect()
        })
        .collect()
}

#[test]
fn entity_scores_agree_with_seqeval() {
    let types = ["PER", "LOC", "ORG", "MISC"];
    let spec = LabelSpec::from_names(types.map(String::from));
    let gold = sequences(1, 400, &types);
    // Predictions: the gold with a third of the tags redrawn (same lengths).
    let noise = sequences(2, 400, &types);
    let pred: Vec<Vec<String>> = gold
        .iter()
        .zip(&noise)
        .enumerate()
        .map(|(i, (g, n))| {
            g.iter()
                .enumerate()
                .map(|(j, t)| {
                    if (i + j) % 3 == 0 {
                        n.get(j).cloned().unwrap_or_else(|| "O".into())
                    } else {
                        t.clone()
                    }
                })
                .collect()
        })
        .collect();
    let ids = |seqs: &[Vec<String>]| -> Vec<Vec<u32>> {
        seqs.iter()
            .map(|s| {
                let v: Vec<&str> = s.iter().map(String::as_str).collect();
                read_tags(&v, Scheme::Iob2, &spec, &|_| None).0
            })
            .collect()
    };
    let ours = score(&spec, &ids(&gold), &ids(&pred));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("seqs.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&serde_json::json!({"gold": gold, "pred": pred})).unwrap(),
    )
    .unwrap();
    let script = r#"
import json, sys
from seqeval.metrics import classification_report
d = json.load(open(sys.argv[1]))
r = classification_report(d["gold"], d["pred"], output_dict=True, zero_division=0)
print(json.dumps({k: {m: float(v) for m, v in row.items()} for k, row in r.items()}))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seqeval: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let close = |a: f64, b: &serde_json::Value, what: &str| {
        let b = b.as_f64().unwrap_or(f64::NAN);
        assert!((a - b).abs() < 1e-9, "{what}: ours {a}, seqeval {b}");
    };
    for t in types {
        let (o, s) = (&ours.per_type[t], &theirs[t]);
        close(o.precision, &s["precision"], &format!("{t} precision"));
        close(o.recall, &s["recall"], &format!("{t} recall"));
        close(o.f1, &s["f1-score"], &format!("{t} f1"));
        close(o.support as f64, &s["support"], &format!("{t} support"));
    }
    let m = &theirs["micro avg"];
    close(ours.precision, &m["precision"], "micro precision");
    close(ours.recall, &m["recall"], "micro recall");
    close(ours.f1, &m["f1-score"], "micro f1");
    // The data is not trivial: some but not all entities match.
    assert!(ours.f1 > 0.2 && ours.f1 < 0.95, "{}", ours.f1);
}
