//! The disagreement filter on probabilities with planted noise: each rule flags what it must and
//! nothing it must not; the budget is exact; candidates differ; ties are ordered deterministically.

use relabel_engine::plugin::Metrics;
use relabel_plugins::find::disagreement_filter::{
    budget_for, confident_learning, estimated_issues, filter, fired, ClMethod, Combine,
    FilterConfig, Rule,
};
use relabel_plugins::predictions::SplitPredictions;

/// Kinds of planted rows.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Label right, model confident (0.8).
    Clean,
    /// Label wrong: the model puts 0.85 on the true class, 0.05 on the label.
    Noisy,
    /// Label right but the model hesitates: 0.45 on it, 0.40 on another class.
    Borderline,
}

fn planted(kinds: &[Kind]) -> SplitPredictions {
    let c = 3;
    let mut probs = Vec::new();
    let mut labels = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        let label = (i % c) as u32;
        let other = (label as usize + 1) % c;
        let mut row = vec![0.0f32; c];
        match k {
            Kind::Clean => {
                row[label as usize] = 0.8;
                row[other] = 0.1;
                row[(other + 1) % c] = 0.1;
            }
            Kind::Noisy => {
                row[label as usize] = 0.05;
                row[other] = 0.85;
                row[(other + 1) % c] = 0.1;
            }
            Kind::Borderline => {
                row[label as usize] = 0.45;
                row[other] = 0.40;
                row[(other + 1) % c] = 0.15;
            }
        }
        probs.extend(row);
        labels.push(label);
    }
    SplitPredictions::from_probs(c, probs, labels, vec![-1; kinds.len()])
}

fn kinds() -> Vec<Kind> {
    // 300 rows: every 10th noisy, every 10th (offset 5) borderline.
    (0..300)
        .map(|i| {
            if i % 10 == 0 {
                Kind::Noisy
            } else if i % 10 == 5 {
                Kind::Borderline
            } else {
                Kind::Clean
            }
        })
        .collect()
}

fn rows_where(kinds: &[Kind], pred: impl Fn(Kind) -> bool) -> Vec<usize> {
    kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| pred(**k))
        .map(|(i, _)| i)
        .collect()
}

fn flagged(p: &SplitPredictions, rule: Rule) -> Vec<usize> {
    fired(p, &[rule], Combine::Any)
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_some())
        .map(|(i, _)| i)
        .collect()
}

fn cfg(yaml: &str) -> FilterConfig {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn each_rule_flags_what_it_must_and_nothing_it_must_not() {
    let k = kinds();
    let p = planted(&k);
    let noisy = rows_where(&k, |x| x == Kind::Noisy);
    let doubtful = rows_where(&k, |x| x != Kind::Clean);
    assert_eq!(flagged(&p, Rule::PredNeqLabel), noisy);
    assert_eq!(flagged(&p, Rule::LossAbove(2.0)), noisy); // -ln(0.05) = 3.0; -ln(0.45) = 0.8
    assert_eq!(flagged(&p, Rule::SelfConfidenceBelow(0.5)), doubtful);
    assert_eq!(flagged(&p, Rule::MarginBelow(0.1)), doubtful);
    // Confident learning on clean + noisy rows: exactly the noisy ones.
    let k2: Vec<Kind> = (0..300)
        .map(|i| {
            if i % 10 == 0 {
                Kind::Noisy
            } else {
                Kind::Clean
            }
        })
        .collect();
    let p2 = planted(&k2);
    for m in [
        ClMethod::PruneByNoiseRate,
        ClMethod::PruneByClass,
        ClMethod::Both,
    ] {
        let f: Vec<usize> = confident_learning(&p2, m)
            .iter()
            .enumerate()
            .filter(|(_, x)| **x)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(f, noisy, "{m:?}");
    }
    // With hesitant rows, which are confident in no class, cleanlab's calibration scales each
    // class's 10 confidently-wrong rows up to its 100 rows (10 * 100 / 90 -> 11 per cell): the
    // extra row per cell is the one with the largest margin, a borderline row.
    let cl: Vec<usize> = confident_learning(&p, ClMethod::PruneByNoiseRate)
        .iter()
        .enumerate()
        .filter(|(_, x)| **x)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(cl.len(), noisy.len() + 3);
    assert!(noisy.iter().all(|r| cl.contains(r)));
    // `all` needs every rule.
    let both: Vec<usize> = fired(
        &p,
        &[Rule::SelfConfidenceBelow(0.5), Rule::LossAbove(2.0)],
        Combine::All,
    )
    .iter()
    .enumerate()
    .filter(|(_, f)| f.is_some())
    .map(|(i, _)| i)
    .collect();
    assert_eq!(both, noisy);
}

#[test]
fn the_budget_is_exact_and_keeps_the_most_suspicious() {
    let k = kinds();
    let p = planted(&k);
    // 60 rows fire self_confidence_below 0.5; 5% of 300 = 15 may be flagged.
    let c = cfg("rules: [{self_confidence_below: 0.5}]\nmax_fraction: 0.05\n");
    let chosen = filter(&[("train", &p)], &c);
    assert_eq!(chosen.len(), 15);
    // Ranked by self-confidence: the noisy rows (p = 0.05) come before the borderline ones.
    assert!(chosen.iter().all(|c| k[c.row] == Kind::Noisy));
    let c = cfg("rules: [{self_confidence_below: 0.5}]\nmax_fraction: 0.5\n");
    assert_eq!(
        filter(&[("train", &p)], &c).len(),
        60,
        "never more than the rules flagged"
    );
}

/// `n` rows with every `every`-th one noisy (the rest clean): a noise rate of 1/every.
fn noisy_every(n: usize, every: usize) -> Vec<Kind> {
    (0..n)
        .map(|i| {
            if i % every == 0 {
                Kind::Noisy
            } else {
                Kind::Clean
            }
        })
        .collect()
}

#[test]
fn an_estimated_budget_follows_the_noise_and_stays_under_the_cap() {
    let rules = "rules: [pred_neq_label, {loss_above: 1.0}]\nbudget: estimated\n";
    // 10% noise with a 30% cap: the estimate (30 of 300), not the cap (90), sizes the round.
    let p = planted(&noisy_every(300, 10));
    assert_eq!(estimated_issues(&p), 30);
    let c = cfg(&format!("{rules}max_fraction: 0.3\n"));
    assert_eq!(budget_for(&[("train", &p)], &c), (30, Some(30)));
    let chosen = filter(&[("train", &p)], &c);
    assert_eq!(chosen.len(), 30);
    assert!(
        chosen.iter().all(|c| c.row % 10 == 0),
        "only the noisy rows"
    );
    // 50% noise: the estimate (150) is capped at 20% (60).
    let p = planted(&noisy_every(300, 2));
    assert_eq!(estimated_issues(&p), 150);
    let c = cfg(&format!("{rules}max_fraction: 0.2\n"));
    assert_eq!(budget_for(&[("train", &p)], &c), (60, Some(150)));
    assert_eq!(filter(&[("train", &p)], &c).len(), 60);
    // The fixed budget is unchanged: max_fraction of the rows.
    let c = cfg("rules: [pred_neq_label]\nmax_fraction: 0.3\n");
    assert_eq!(budget_for(&[("train", &p)], &c), (90, None));
}

#[test]
fn per_class_caps_and_minimums() {
    let k = kinds();
    let p = planted(&k);
    let capped = filter(&[("train", &p)], &cfg("rules: [{self_confidence_below: 0.5}]\nmax_fraction: 1.0\nper_class_max_fraction: 0.05\n"));
    for class in 0..3 {
        assert_eq!(
            capped.iter().filter(|c| c.class == class).count(),
            5,
            "5% of 100 rows of class {class}"
        );
    }
    // With a budget of 3 and a minimum of 1 per class, each class gets one.
    let min = filter(
        &[("train", &p)],
        &cfg("rules: [{self_confidence_below: 0.5}]\nmax_fraction: 0.01\nper_class_min: 1\n"),
    );
    let mut classes: Vec<usize> = min.iter().map(|c| c.class).collect();
    classes.sort();
    assert_eq!(classes, vec![0, 1, 2]);
}

#[test]
fn ties_are_ordered_by_split_then_row_whatever_the_input_order() {
    let k = vec![Kind::Noisy; 40];
    let p = planted(&k);
    let c = cfg("max_fraction: 0.25\n");
    let a = filter(&[("train", &p), ("dev", &p)], &c);
    let b = filter(&[("train", &p), ("dev", &p)], &c);
    let order: Vec<(usize, usize)> = a.iter().map(|c| (c.split, c.row)).collect();
    assert_eq!(
        order,
        b.iter().map(|c| (c.split, c.row)).collect::<Vec<_>>()
    );
    assert_eq!(order.len(), 20);
    assert_eq!(
        order,
        (0..20).map(|r| (0, r)).collect::<Vec<_>>(),
        "equal scores: train first, by row"
    );
}

#[test]
fn all_rows_mode_flags_every_row() {
    let k = kinds();
    let p = planted(&k);
    let all = filter(
        &[("train", &p)],
        &cfg("all_rows: true\nmax_fraction: 1.0\n"),
    );
    assert_eq!(all.len(), 300);
    assert!(all.iter().all(|c| &*c.rule == "all_rows"));
}

#[test]
fn the_node_writes_flags_with_two_different_candidates() {
    use relabel_plugins::data::{Dataset, LabelSpec, Split};
    let k = kinds();
    let p = planted(&k);
    let dir = tempfile::tempdir().unwrap();
    let split = Split {
        ids: (0..300).map(|i| format!("r{i}")).collect(),
        texts: (0..300).map(|i| format!("text {i}")).collect(),
        labels: p.label.clone(),
        ..Default::default()
    };
    let ds = Dataset {
        task: Default::default(),
        labels: LabelSpec::from_names(["a", "b", "c"].map(String::from)),
        splits: [("train".to_string(), split)].into(),
        ctr: None,
    };
    ds.write(&dir.path().join("ds")).unwrap();
    std::fs::create_dir_all(dir.path().join("pred")).unwrap();
    p.write(
        &dir.path().join("pred/train.parquet"),
        &ds.splits["train"].ids,
        &ds.labels.names(),
    )
    .unwrap();
    let out = dir.path().join("flags.jsonl");
    let c = cfg("rules: [{margin_below: 0.1}]\nmax_fraction: 0.2\n");
    let m = relabel_plugins::find::disagreement_filter::run_filter(
        &c,
        &dir.path().join("pred"),
        &dir.path().join("ds"),
        &out,
    )
    .unwrap();
    let flags = relabel_plugins::flags::read(&out).unwrap();
    assert_eq!(flags.len(), 60);
    assert_eq!(m["flags"], 60);
    for f in &flags {
        assert_ne!(f.label, f.candidate, "{f:?}");
        // A borderline row's label is the prediction: its candidate is the runner-up.
        if k[f.row] == Kind::Borderline {
            assert!((f.label_prob - 0.45).abs() < 1e-6 && (f.candidate_prob - 0.40).abs() < 1e-6);
        }
    }
    assert_eq!(flags[0].id, format!("r{}", flags[0].row));
}

/// The planted 300-row, 3-class dataset and its predictions written under `dir` (`ds`, `pred`).
fn write_planted(dir: &std::path::Path) {
    use relabel_plugins::data::{Dataset, LabelSpec, Split};
    let p = planted(&kinds());
    let ds = Dataset {
        task: Default::default(),
        labels: LabelSpec::from_names(["a", "b", "c"].map(String::from)),
        splits: [(
            "train".to_string(),
            Split {
                ids: (0..300).map(|i| format!("r{i}")).collect(),
                texts: (0..300).map(|i| format!("text {i}")).collect(),
                labels: p.label.clone(),
                ..Default::default()
            },
        )]
        .into(),
        ctr: None,
    };
    ds.write(&dir.join("ds")).unwrap();
    std::fs::create_dir_all(dir.join("pred")).unwrap();
    p.write(
        &dir.join("pred/train.parquet"),
        &ds.splits["train"].ids,
        &ds.labels.names(),
    )
    .unwrap();
}

/// The filter node's flags and metrics over [`write_planted`]'s data under `dir`.
fn run_planted(dir: &std::path::Path, yaml: &str) -> (Vec<relabel_plugins::flags::Flag>, Metrics) {
    let out = dir.join("flags.jsonl");
    let m = relabel_plugins::find::disagreement_filter::run_filter(
        &cfg(yaml),
        &dir.join("pred"),
        &dir.join("ds"),
        &out,
    )
    .unwrap();
    (relabel_plugins::flags::read(&out).unwrap(), m)
}

/// Records that a judge chose each flag's label over `pair`'s other class.
fn write_judged(dir: &std::path::Path, judged: &[(&relabel_plugins::flags::Flag, [String; 2])]) {
    use relabel_plugins::data::{Judged, JUDGED_FILE};
    let mut text = String::new();
    for (f, pair) in judged {
        let j = Judged {
            split: "train".into(),
            id: f.id.clone(),
            pair: pair.clone(),
            chosen: f.label.clone(),
        };
        text.push_str(&serde_json::to_string(&j).unwrap());
        text.push('\n');
    }
    std::fs::write(dir.join("ds").join(JUDGED_FILE), text).unwrap();
}

#[test]
fn pairs_a_judge_already_decided_are_not_asked_again_and_free_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    write_planted(dir.path());
    let run = |yaml: &str| run_planted(dir.path(), yaml);
    let (first, _) = run("max_fraction: 0.05\n");
    assert_eq!(first.len(), 15);
    // A judge decided the first five (in either order of the pair); a sixth was asked about a
    // different pair, which does not count.
    let judged: Vec<_> = first
        .iter()
        .take(6)
        .enumerate()
        .map(|(n, f)| {
            let pair = match n {
                5 => [f.label.clone(), "zzz".to_string()],
                n if n % 2 == 0 => [f.label.clone(), f.candidate.clone()],
                _ => [f.candidate.clone(), f.label.clone()],
            };
            (f, pair)
        })
        .collect();
    write_judged(dir.path(), &judged);
    let (second, m) = run("max_fraction: 0.05\nskip_judged: true\n");
    assert_eq!(second.len(), 15, "the budget is spent on other rows");
    assert_eq!(m["judged_pairs_skipped"], 5);
    let ids: Vec<&str> = second.iter().map(|f| f.id.as_str()).collect();
    for f in first.iter().take(5) {
        assert!(!ids.contains(&f.id.as_str()), "{} asked again", f.id);
    }
    assert!(ids.contains(&first[5].id.as_str()));
    assert_eq!(second[0].id, first[5].id);
    // Off (the default): the same flags as before.
    let (again, m) = run("max_fraction: 0.05\n");
    assert_eq!(again, first);
    assert_eq!(m["judged_pairs_skipped"], 0);
}

#[test]
fn a_rejected_candidate_makes_way_for_the_next_most_probable_class() {
    let dir = tempfile::tempdir().unwrap();
    write_planted(dir.path());
    let run = |yaml: &str| run_planted(dir.path(), yaml);
    let all = "max_fraction: 1.0\n";
    let (first, _) = run(all);
    // The judge kept the label against the model's candidate on the first four rows.
    let kept: Vec<_> = first
        .iter()
        .take(4)
        .map(|f| (f, [f.label.clone(), f.candidate.clone()]))
        .collect();
    write_judged(dir.path(), &kept);
    let (next, m) = run("max_fraction: 1.0\nnext_candidates: 1\n");
    assert_eq!(m["judged_pairs_skipped"], 0);
    assert_eq!(m["next_candidates_flagged"], 4);
    for f in first.iter().take(4) {
        let again = next.iter().find(|g| g.id == f.id).expect("offered again");
        // Three classes: the only other pair is the label against the third class.
        let third = ["a", "b", "c"]
            .into_iter()
            .find(|c| *c != f.label && *c != f.candidate)
            .unwrap();
        assert_eq!(
            (again.label.as_str(), again.candidate.as_str()),
            (f.label.as_str(), third)
        );
        assert!(
            again.candidate_prob <= f.candidate_prob,
            "{again:?} vs {f:?}"
        );
        // The margin is taken against the class offered, so the row ranks no higher than before.
        assert!(again.score <= f.score + 1e-12, "{again:?} vs {f:?}");
    }
    // Every other flag is as it was.
    for f in first.iter().skip(4) {
        assert!(next.contains(f), "{f:?}");
    }
    // Once the third class was judged too, the row has nothing left to ask.
    let mut both = kept.clone();
    let thirds: Vec<_> = next
        .iter()
        .filter(|g| first.iter().take(4).any(|f| f.id == g.id))
        .cloned()
        .collect();
    both.extend(
        thirds
            .iter()
            .map(|g| (g, [g.label.clone(), g.candidate.clone()])),
    );
    write_judged(dir.path(), &both);
    let (last, m) = run("max_fraction: 1.0\nnext_candidates: 1\n");
    assert_eq!(m["judged_pairs_skipped"], 4);
    assert_eq!(m["next_candidates_flagged"], 0);
    assert_eq!(last.len(), first.len() - 4);
}

/// Confident learning's prune-by-noise-rate written the plain way: for every class i and every
/// other class j, the cj[i][j] rows labelled i with the largest margin p_j - p_i (ties: lower row).
fn reference_noise_rate(p: &SplitPredictions) -> Vec<bool> {
    let c = p.classes;
    let cj = relabel_plugins::find::disagreement_filter::confident_joint(p);
    let mut out = vec![false; p.rows()];
    for (i, cj_i) in cj.iter().enumerate() {
        let rows: Vec<usize> = (0..p.rows())
            .filter(|&r| p.label[r] as usize == i)
            .collect();
        for j in (0..c).filter(|&j| j != i) {
            let mut m: Vec<(f32, usize)> = rows
                .iter()
                .map(|&r| (p.row(r)[j] - p.row(r)[i], r))
                .collect();
            m.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, r) in m.iter().take(cj_i[j]) {
                out[r] = true;
            }
        }
    }
    out
}

#[test]
fn noise_rate_pruning_equals_the_plain_reference_on_random_probabilities() {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for (n, c, coarse) in [
        (5000usize, 7usize, false),
        (3000, 13, true),
        (20_000, 37, false),
        (500, 2, true),
    ] {
        let mut probs = Vec::with_capacity(n * c);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let truth = (next() % c as u64) as usize;
            let given = if next() % 5 == 0 {
                (next() % c as u64) as usize
            } else {
                truth
            };
            // Coarse values (multiples of 1/8) make many exact ties.
            let mut row: Vec<f32> = (0..c)
                .map(|j| {
                    let u = (next() >> 40) as f32 / (1u64 << 24) as f32;
                    let u = if coarse { (u * 8.0).floor() / 8.0 } else { u };
                    u + if j == truth { 2.0 } else { 0.0 }
                })
                .collect();
            let z: f32 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= z);
            probs.extend(row);
            labels.push(given as u32);
        }
        let p = SplitPredictions::from_probs(c, probs, labels, vec![-1; n]);
        let want = reference_noise_rate(&p);
        let got = confident_learning(&p, ClMethod::PruneByNoiseRate);
        let diff: Vec<usize> = (0..n).filter(|&r| want[r] != got[r]).collect();
        assert!(
            diff.is_empty(),
            "n={n} c={c}: {} rows differ, e.g. {:?}",
            diff.len(),
            &diff[..diff.len().min(5)]
        );
        assert!(want.iter().any(|x| *x));
    }
}
