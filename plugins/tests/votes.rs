//! Vote aggregation on generated annotators of known accuracy: Dawid-Skene recovers the
//! accuracies and beats majority vote when one annotator is adversarial; files in long and
//! wide form read to the same table.

use relabel_plugins::sources::votes::{dawid_skene, majority, read_votes, VoteTable, VotesConfig};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `items` items of `k` classes; annotator a is right with probability `acc[a]`, else picks a
/// uniformly random wrong label; the adversary (if any) answers (truth + 1) mod k 90% of the time.
fn generate(
    items: usize,
    k: usize,
    acc: &[f64],
    adversary: bool,
    seed: u64,
) -> (VoteTable, Vec<usize>) {
    let mut r = Rng(seed);
    let mut t = VoteTable {
        labels: (0..k).map(|c| format!("c{c}")).collect(),
        annotators: (0..acc.len() + usize::from(adversary))
            .map(|a| format!("a{a}"))
            .collect(),
        ..VoteTable::default()
    };
    let mut truth = Vec::new();
    for i in 0..items {
        let y = (r.next() % k as u64) as usize;
        truth.push(y);
        t.items.push(format!("i{i}"));
        t.texts.push(format!("i{i}"));
        let mut vs = Vec::new();
        for (a, &p) in acc.iter().enumerate() {
            if r.unit() < 0.15 {
                continue; // missing vote
            }
            let l = if r.unit() < p {
                y
            } else {
                (y + 1 + (r.next() % (k as u64 - 1)) as usize) % k
            };
            vs.push((a as u32, l as u32));
        }
        if adversary {
            let l = if r.unit() < 0.9 { (y + 1) % k } else { y };
            vs.push((acc.len() as u32, l as u32));
        }
        t.votes.push(vs);
    }
    (t, truth)
}

fn accuracy(post: &[Vec<f64>], truth: &[usize]) -> f64 {
    let right = post
        .iter()
        .zip(truth)
        .filter(|(p, y)| {
            let best = (0..p.len()).fold(0, |b, i| if p[i] > p[b] { i } else { b });
            best == **y
        })
        .count();
    right as f64 / truth.len() as f64
}

#[test]
fn dawid_skene_recovers_planted_annotator_accuracies() {
    let acc = [0.9, 0.8, 0.7, 0.6, 0.55];
    let (t, truth) = generate(4000, 5, &acc, false, 7);
    let ds = dawid_skene(&t, 200, 1e-7);
    for (a, (&want, &got)) in acc.iter().zip(&ds.annotator_accuracy).enumerate() {
        assert!(
            (want - got).abs() < 0.03,
            "annotator {a}: planted {want}, estimated {got}"
        );
    }
    assert!(accuracy(&ds.posterior, &truth) >= accuracy(&majority(&t).posterior, &truth));
}

#[test]
fn dawid_skene_beats_majority_against_an_adversarial_annotator() {
    let (t, truth) = generate(4000, 4, &[0.75, 0.65, 0.6], true, 11);
    let maj = accuracy(&majority(&t).posterior, &truth);
    let ds = dawid_skene(&t, 200, 1e-7);
    let dsa = accuracy(&ds.posterior, &truth);
    assert!(
        dsa > maj + 0.05,
        "Dawid-Skene {dsa:.3} vs majority {maj:.3}"
    );
    // The adversary is recognised: its estimated accuracy is near its planted 10%.
    assert!(
        ds.annotator_accuracy[3] < 0.2,
        "{:?}",
        ds.annotator_accuracy
    );
}

#[test]
fn long_and_wide_files_read_to_the_same_votes() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.csv");
    std::fs::write(
        &long,
        "item,annotator,label\nq1,ann,yes\nq1,bob,no\nq2,ann,yes\nq2,bob,\nq3,bob,no\n",
    )
    .unwrap();
    let wide = dir.path().join("wide.txt");
    std::fs::write(&wide, "yes no\nyes -1\n-1 no\n").unwrap();
    let cfg = |yaml: &str| -> VotesConfig { serde_yaml::from_str(yaml).unwrap() };
    let a = read_votes(&long, &long, &cfg("file: long.csv")).unwrap();
    let b = read_votes(
        &wide,
        &wide,
        &cfg("file: wide.txt\nformat: wide\nno_header: true"),
    )
    .unwrap();
    assert_eq!(a.votes, b.votes);
    assert_eq!(a.labels, b.labels);
    // Errors name the file and line.
    std::fs::write(&long, "item,annotator,label\nq1,ann\n").unwrap();
    let err = read_votes(
        &long,
        std::path::Path::new("long.csv"),
        &cfg("file: long.csv"),
    )
    .unwrap_err();
    assert!(err.starts_with("long.csv:2: expected 3 columns"), "{err}");
}
