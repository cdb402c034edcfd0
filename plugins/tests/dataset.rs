//! The dataset node's reading and checking: formats, row-numbered errors, skip-and-report, stable ids.

use std::path::Path;

use relabel_plugins::data::Dataset;
use relabel_plugins::sources::dataset::{build, DatasetConfig, OnBadRow};

fn config(yaml: &str) -> DatasetConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const LABELS: &str = "labels:\n  - name: billing\n    definition: Money we charged\n    examples: [refund my charge]\n  - name: shipping\n    definition: Getting the parcel\n";

#[test]
fn reads_jsonl_with_a_label_spec_and_keeps_ids() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "labels.yaml", LABELS);
    write(d.path(), "train.jsonl", "{\"id\": 7, \"text\": \"refund please\", \"label\": \"billing\"}\n\n{\"id\": \"x\", \"text\": \"where is my parcel\", \"label\": \"shipping\"}\n");
    write(
        d.path(),
        "test.jsonl",
        "{\"id\": \"t1\", \"text\": \"charged twice\", \"label\": \"billing\"}\n",
    );
    let c = config("train: train.jsonl\ntest: test.jsonl\nlabels: labels.yaml\nid_column: id\ndev_fraction: 0.1\n");
    let (ds, m) = build(&c, d.path()).unwrap();
    let all: Vec<&String> = ds
        .split("train")
        .unwrap()
        .ids
        .iter()
        .chain(&ds.split("dev").unwrap().ids)
        .collect();
    assert_eq!(all.len(), 2);
    assert!(all.contains(&&"7".to_string()) && all.contains(&&"x".to_string()));
    assert_eq!(ds.split("test").unwrap().labels, vec![0]);
    assert_eq!(ds.labels.labels[0].definition, "Money we charged");
    assert_eq!(m["bad_rows"], 0);
    // The artifact round-trips.
    ds.write(&d.path().join("out")).unwrap();
    assert_eq!(Dataset::read(&d.path().join("out")).unwrap(), ds);
}

#[test]
fn bad_rows_are_named_by_file_and_row_number() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "labels.yaml", LABELS);
    write(
        d.path(),
        "train.jsonl",
        concat!(
            "{\"id\": 1, \"text\": \"refund please\", \"label\": \"billing\"}\n",
            "{\"id\": 2, \"text\": \"   \", \"label\": \"billing\"}\n",
            "{\"id\": 3, \"text\": \"late parcel\", \"label\": \"shiping\"}\n",
            "{\"id\": 1, \"text\": \"duplicate\", \"label\": \"billing\"}\n",
            "{\"id\": 5, \"label\": \"billing\"}\n",
            "{\"id\": 6, \"text\": \"fine\", \"label\": \"shipping\"}\n",
        ),
    );
    let c = config("train: train.jsonl\nlabels: labels.yaml\nid_column: id\n");
    let err = build(&c, d.path()).unwrap_err();
    assert!(err.starts_with("4 bad rows"), "{err}");
    assert!(err.contains("train.jsonl:2: empty text"), "{err}");
    assert!(
        err.contains("train.jsonl:3: unknown label \"shiping\" (did you mean \"shipping\"?)"),
        "{err}"
    );
    assert!(
        err.contains("train.jsonl:4: duplicate id \"1\" (first at train.jsonl:1)"),
        "{err}"
    );
    assert!(
        err.contains("train.jsonl:5: missing column \"text\""),
        "{err}"
    );

    let mut skip = c.clone();
    skip.on_bad_row = OnBadRow::Skip;
    let (ds, m) = build(&skip, d.path()).unwrap();
    let rows = ds.split("train").unwrap().len() + ds.split("dev").unwrap().len();
    assert_eq!(rows, 2);
    assert_eq!(m["bad_rows"], 4);
    assert_eq!(m["bad_row_examples"].as_array().unwrap().len(), 4);
}

#[test]
fn csv_and_tsv_with_configured_columns_and_a_missing_header() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "train.csv", "utterance,intent\n\"refund, please\",billing\nwhere is it,shipping\nparcel late,shipping\n");
    write(
        d.path(),
        "dev.tsv",
        // Banking77's TSV has quoted texts spanning lines.
        "utterance\tintent\nmy \"card\" charge\tbilling\n\"\nHow do I unblock my PIN?\"\tshipping\n",
    );
    let c =
        config("train: train.csv\ndev: dev.tsv\ntext_column: utterance\nlabel_column: intent\n");
    let (ds, _) = build(&c, d.path()).unwrap();
    assert_eq!(ds.split("train").unwrap().texts[0], "refund, please");
    assert_eq!(
        ds.split("dev").unwrap().texts,
        vec!["my \"card\" charge", "\nHow do I unblock my PIN?"]
    );
    assert_eq!(ds.labels.names(), vec!["billing", "shipping"]);
    let bad = config("train: train.csv\ntext_column: text\nlabel_column: intent\n");
    let err = build(&bad, d.path()).unwrap_err();
    assert!(
        err.contains(
            "train.csv:1: missing column \"text\" (the header has 2 columns: utterance, intent)"
        ),
        "{err}"
    );
}

#[test]
fn content_ids_are_stable_and_distinct_for_repeated_texts() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "train.jsonl", "{\"text\": \"a b\", \"label\": \"x\"}\n{\"text\": \"a b\", \"label\": \"y\"}\n{\"text\": \"c\", \"label\": \"y\"}\n");
    write(
        d.path(),
        "dev.jsonl",
        "{\"text\": \"d\", \"label\": \"x\"}\n",
    );
    let c = config("train: train.jsonl\ndev: dev.jsonl\n");
    let (a, _) = build(&c, d.path()).unwrap();
    let (b, _) = build(&c, d.path()).unwrap();
    let ids = &a.split("train").unwrap().ids;
    assert_eq!(ids, &b.split("train").unwrap().ids);
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn reads_parquet() {
    use std::sync::Arc;

    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let d = tempfile::tempdir().unwrap();
    let schema = Arc::new(
        parse_message_type(
            "message m { REQUIRED BYTE_ARRAY text (UTF8); REQUIRED BYTE_ARRAY label (UTF8); }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(d.path().join("train.parquet")).unwrap();
    let mut w =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let columns: [Vec<&str>; 2] = [
        vec!["refund", "parcel", "late box"],
        vec!["billing", "shipping", "shipping"],
    ];
    let mut i = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        let vals: Vec<ByteArray> = columns[i].iter().map(|s| ByteArray::from(*s)).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&vals, None, None)
            .unwrap();
        col.close().unwrap();
        i += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
    write(
        d.path(),
        "dev.jsonl",
        "{\"text\": \"charge\", \"label\": \"billing\"}\n",
    );
    let c = config("train: train.parquet\ndev: dev.jsonl\n");
    let (ds, _) = build(&c, d.path()).unwrap();
    assert_eq!(
        ds.split("train").unwrap().texts,
        vec!["refund", "parcel", "late box"]
    );
    assert_eq!(ds.split("train").unwrap().labels, vec![0, 1, 1]);
}

#[test]
fn an_empty_train_split_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "labels.yaml", LABELS);
    write(d.path(), "header.csv", "text,label\n");
    let err = build(
        &config("train: header.csv\nlabels: labels.yaml\n"),
        d.path(),
    )
    .unwrap_err();
    assert!(err.contains("the train split has no rows"), "{err}");
    write(
        d.path(),
        "two.jsonl",
        "{\"text\": \"a\", \"label\": \"billing\"}\n{\"text\": \"b\", \"label\": \"shipping\"}\n",
    );
    let err = build(
        &config("train: two.jsonl\nlabels: labels.yaml\ndev_fraction: 0.999\n"),
        d.path(),
    )
    .unwrap_err();
    assert!(
        err.contains("after holding out dev_fraction 0.999"),
        "{err}"
    );
}

#[test]
fn a_truncated_jsonl_line_is_a_bad_row_that_skip_leaves_out() {
    let d = tempfile::tempdir().unwrap();
    // A byte-order mark, two good rows, one line cut off mid-object.
    write(
        d.path(),
        "train.jsonl",
        "\u{feff}{\"text\": \"refund please\", \"label\": \"billing\"}\n{\"text\": \"where is my par\n{\"text\": \"where is my parcel\", \"label\": \"shipping\"}\n{\"text\": \"parcel late\", \"label\": \"shipping\"}\n",
    );
    let err = build(
        &config("train: train.jsonl\ndev_fraction: 0.01\n"),
        d.path(),
    )
    .unwrap_err();
    assert!(err.contains("train.jsonl:2: not a JSON object"), "{err}");
    let c = config("train: train.jsonl\ndev_fraction: 0.01\non_bad_row: skip\n");
    assert_eq!(c.on_bad_row, OnBadRow::Skip);
    let (ds, m) = build(&c, d.path()).unwrap();
    let rows = ds.split("train").unwrap().len() + ds.split("dev").unwrap().len();
    assert_eq!(rows, 3);
    assert_eq!(m["bad_rows"], 1);
}

#[test]
fn a_hundred_thousand_labels_without_a_spec_read_in_linear_time() {
    let d = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..100_000 {
        text.push_str(&format!(
            "{{\"text\": \"row {i}\", \"label\": \"label{i}\"}}\n"
        ));
    }
    write(d.path(), "train.jsonl", &text);
    let t0 = std::time::Instant::now();
    let (ds, _) = build(
        &config("train: train.jsonl\ndev_fraction: 0.01\n"),
        d.path(),
    )
    .unwrap();
    assert_eq!(ds.labels.len(), 100_000);
    assert!(t0.elapsed().as_secs_f64() < 10.0, "took {:?}", t0.elapsed());
}

#[test]
fn the_dataset_artifact_records_its_task() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "labels.yaml", LABELS);
    write(
        d.path(),
        "train.jsonl",
        "{\"text\": \"a\", \"label\": \"billing\"}\n{\"text\": \"b\", \"label\": \"shipping\"}\n",
    );
    let c = config(
        "train: train.jsonl\nlabels: labels.yaml\ndev_fraction: 0.01\ntask: classification\n",
    );
    let (ds, _) = build(&c, d.path()).unwrap();
    let out = d.path().join("out");
    ds.write(&out).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(meta["task"], "classification");
    assert_eq!(
        Dataset::read(&out).unwrap().task,
        relabel_tasks::task::TaskKind::Classification
    );
}

#[test]
fn a_badcase_split_is_held_out_of_test_by_id_and_never_relabelled() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "labels.yaml", LABELS);
    write(
        d.path(),
        "train.jsonl",
        "{\"id\": 1, \"text\": \"refund please\", \"label\": \"billing\"}\n{\"id\": 2, \"text\": \"late parcel\", \"label\": \"shipping\"}\n",
    );
    let test: String = (0..400)
        .map(|i| {
            format!("{{\"id\": \"t{i}\", \"text\": \"question {i}\", \"label\": \"billing\"}}\n")
        })
        .collect();
    write(d.path(), "test.jsonl", &test);
    write(
        d.path(),
        "dev.jsonl",
        "{\"id\": \"d1\", \"text\": \"charged twice\", \"label\": \"billing\"}\n",
    );
    let base = "train: train.jsonl\ndev: dev.jsonl\ntest: test.jsonl\nlabels: labels.yaml\nid_column: id\n";
    let (ds, m) = build(&config(&format!("{base}badcase_fraction: 0.5\n")), d.path()).unwrap();
    let (t, b) = (ds.split("test").unwrap(), ds.split("badcase").unwrap());
    assert_eq!(t.len() + b.len(), 400);
    assert!((150..250).contains(&b.len()), "about half: {}", b.len());
    assert!(t.ids.iter().all(|id| !b.ids.contains(id)), "disjoint");
    assert_eq!(m["badcase_rows"], b.len());
    // Stable: the same rows again, and the artifact round-trips with its fourth split.
    let (again, _) = build(&config(&format!("{base}badcase_fraction: 0.5\n")), d.path()).unwrap();
    assert_eq!(again.split("badcase").unwrap().ids, b.ids);
    ds.write(&d.path().join("out")).unwrap();
    assert_eq!(Dataset::read(&d.path().join("out")).unwrap(), ds);
    // Without it, no badcase split; with a file, that file.
    let (plain, _) = build(&config(base), d.path()).unwrap();
    assert!(plain.split("badcase").is_none());
    assert_eq!(plain.split("test").unwrap().len(), 400);
    write(
        d.path(),
        "badcase.jsonl",
        "{\"id\": \"b1\", \"text\": \"money back\", \"label\": \"billing\"}\n",
    );
    let (file, _) = build(
        &config(&format!("{base}badcase: badcase.jsonl\n")),
        d.path(),
    )
    .unwrap();
    assert_eq!(file.split("badcase").unwrap().ids, vec!["b1".to_string()]);
    // Its rows are human gold, like test's: never relabelled.
    let e = relabel_plugins::data::relabelable("badcase").unwrap_err();
    assert!(e.to_string().contains("never relabelled"), "{e}");
    // Both at once, or a fraction out of range, is a config problem at its key.
    use relabel_engine::plugin::NodeKind;
    let both = config(&format!(
        "{base}badcase: badcase.jsonl\nbadcase_fraction: 0.5\n"
    ));
    let p = relabel_plugins::sources::dataset::DatasetNode::check(&both, &[]);
    assert!(
        p.iter()
            .any(|x| format!("{x:?}").contains("badcase_fraction")),
        "{p:?}"
    );
    let out_of_range = config(&format!("{base}badcase_fraction: 1.5\n"));
    assert!(!relabel_plugins::sources::dataset::DatasetNode::check(&out_of_range, &[]).is_empty());
}
