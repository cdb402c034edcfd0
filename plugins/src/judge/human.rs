//! The human path of the binary relabeler: export the flagged rows with their two candidates
//! (CSV, JSONL, Label Studio tasks) and import the filled-in answers, refusing any answer that is
//! not one of the row's two candidates.

use std::collections::HashMap;
use std::path::Path;

use relabel_engine::plugin::{Metrics, NodeContext, NodeError};
use serde_json::{json, Value};

use crate::flags::Flag;
use crate::judge::binary_relabeler::{Decision, Failure, Prompter, RelabelerConfig, Source};

const CSV_NAME: &str = "relabel.csv";
const JSONL_NAME: &str = "relabel.jsonl";
const LS_TASKS: &str = "label_studio_tasks.json";
const LS_CONFIG: &str = "label_studio_config.xml";
/// Detection: the folder of crop images, one per question.
const CROPS: &str = "crops";

/// The Label Studio interface for detection: the crop with both candidate boxes pre-annotated
/// as rectangles (`current`, `proposed`), and a choice between the two readings.
const LABEL_STUDIO_DETECTION_CONFIG: &str = r##"<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="boxes" toName="image">
    <Label value="current" background="#ff8c00"/>
    <Label value="proposed" background="#1e90ff"/>
  </RectangleLabels>
  <Header value="Current: $current_label"/>
  <Header value="Model's candidate: $model_prediction"/>
  <Choices name="answer" toName="image" choice="single" required="true" value="$options"/>
</View>
"##;

/// The Label Studio labelling interface: the text and a choice between the task's two options.
const LABEL_STUDIO_CONFIG: &str = r#"<View>
  <Text name="text" value="$text"/>
  <Header value="Current label: $current_label"/>
  <Header value="Model's candidate: $model_prediction"/>
  <Choices name="answer" toName="text" choice="single" required="true" value="$options"/>
</View>
"#;

/// The key a person's answer names its question by: the row id, and for a task with several
/// questions per row (tagging) the site too, as `ID@START-END`.
/// (detection: the issue and the annotated box, else the proposed one, as
/// `ID#ISSUE@CLASS:XMIN,YMIN,XMAX,YMAX` with the class's index).
pub fn question_key(f: &Flag) -> String {
    if let Ok(site) = serde_json::from_value::<relabel_tasks::detection::BoxSite>(f.site.clone()) {
        if let Some(b) = site.annotated.or(site.proposed) {
            return format!(
                "{}#{}@{}:{:.1},{:.1},{:.1},{:.1}",
                f.id,
                site.issue.name(),
                b.class,
                b.xmin,
                b.ymin,
                b.xmax,
                b.ymax
            );
        }
    }
    match (f.site["start"].as_u64(), f.site["end"].as_u64()) {
        (Some(s), Some(e)) => format!("{}@{s}-{e}", f.id),
        _ => f.id.clone(),
    }
}

/// Writes the export; imports `answers` when given. Returns the decisions and metrics.
pub fn run(
    ctx: &NodeContext,
    c: &RelabelerConfig,
    prompter: &Prompter,
    flags: Vec<Flag>,
    export: &Path,
    images: Option<(&crate::data::Dataset, &Path)>,
) -> Result<(Vec<Decision>, Metrics), NodeError> {
    write_export(prompter, &flags, export, images)
        .map_err(|e| NodeError::io("writing the export", e))?;
    let mut m = Metrics::new();
    if let Some(to) = &c.export_to {
        let to = ctx.resolve(to);
        copy_export(export, &to)?;
        m.insert("exported_to".into(), json!(to.display().to_string()));
    }
    let Some(answers) = &c.answers else {
        let n = flags.len();
        tracing::warn!(
            node = %ctx.instance,
            "exported {n} rows for people to judge; fill in the `answer` column and set `answers:` to import it"
        );
        m.insert("awaiting_human".into(), json!(n));
        let ds = flags
            .into_iter()
            .map(|f| pending(f, &prompter.digest))
            .collect();
        return Ok((ds, m));
    };
    let path = ctx.resolve(answers);
    let given = read_answers(&path, answers).map_err(NodeError::Failed)?;
    let decisions =
        apply_answers(answers, flags, given, &prompter.digest).map_err(NodeError::Failed)?;
    m.insert("imported_from".into(), json!(answers.display().to_string()));
    Ok((decisions, m))
}

/// Copies the export's files into `to` (made writable: the cached ones are read-only).
pub fn copy_export(export: &Path, to: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(to).map_err(|e| NodeError::io(format!("{}", to.display()), e))?;
    let crops = export.join(CROPS);
    let mut files: Vec<String> = [CSV_NAME, JSONL_NAME, LS_TASKS, LS_CONFIG]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if crops.is_dir() {
        std::fs::create_dir_all(to.join(CROPS))
            .map_err(|e| NodeError::io(format!("{}", to.display()), e))?;
        for e in std::fs::read_dir(&crops).map_err(|e| NodeError::io("reading crops", e))? {
            let e = e.map_err(|e| NodeError::io("reading crops", e))?;
            files.push(format!("{CROPS}/{}", e.file_name().to_string_lossy()));
        }
    }
    for f in &files {
        let dest = to.join(f);
        let _ = std::fs::remove_file(&dest);
        std::fs::copy(export.join(f), &dest)
            .map_err(|e| NodeError::io(format!("copying {f} to {}", to.display()), e))?;
        let mut perm = std::fs::metadata(&dest)
            .map_err(|e| NodeError::io(format!("{}", dest.display()), e))?
            .permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&dest, perm)
            .map_err(|e| NodeError::io(format!("{}", dest.display()), e))?;
    }
    Ok(())
}

/// On a cache hit: re-creates `export_to` when its files are gone (the folder was deleted).
pub fn restore_export(
    c: &RelabelerConfig,
    manifest_dir: &Path,
    export: &Path,
) -> Result<(), NodeError> {
    let Some(to) = &c.export_to else {
        return Ok(());
    };
    let to = if to.is_absolute() {
        to.clone()
    } else {
        manifest_dir.join(to)
    };
    if [CSV_NAME, JSONL_NAME, LS_TASKS, LS_CONFIG]
        .iter()
        .all(|f| to.join(f).exists())
    {
        return Ok(());
    }
    copy_export(export, &to)
}

fn pending(flag: Flag, digest: &str) -> Decision {
    let mut d = Decision::undecided(flag, Source::Human, Failure::AwaitingHuman);
    d.template_digest = Some(digest.to_string());
    d
}

/// A detection flag's crop: writes `crops/N.png` and returns its name and the Label Studio
/// rectangles of both boxes (in percent of the crop, as Label Studio wants them).
fn crop_of(
    f: &Flag,
    n: usize,
    ds: &crate::data::Dataset,
    ds_dir: &Path,
    dir: &Path,
) -> std::io::Result<(String, Value)> {
    let (image, site) =
        crate::judge::crops::image_of(f, ds, ds_dir).map_err(std::io::Error::other)?;
    let name = format!("{CROPS}/{n:05}.png");
    let (r, _) = crate::judge::crops::write_crop(&image, &site, &dir.join(&name))
        .map_err(std::io::Error::other)?;
    let (w, h) = ((r[2] - r[0]) as f64, (r[3] - r[1]) as f64);
    let rect = |b: &relabel_tasks::detection::BBox, label: &str| {
        json!({
            "from_name": "boxes", "to_name": "image", "type": "rectanglelabels",
            "original_width": w, "original_height": h,
            "value": {
                "x": (b.xmin as f64 - r[0] as f64) / w * 100.0,
                "y": (b.ymin as f64 - r[1] as f64) / h * 100.0,
                "width": b.width() / w * 100.0,
                "height": b.height() / h * 100.0,
                "rectanglelabels": [label],
            }
        })
    };
    let mut result = Vec::new();
    if let Some(b) = &site.annotated {
        result.push(rect(b, "current"));
    }
    if let Some(b) = &site.proposed {
        result.push(rect(b, "proposed"));
    }
    Ok((
        name,
        json!([{"model_version": "relabel", "result": result}]),
    ))
}

fn write_export(
    prompter: &Prompter,
    flags: &[Flag],
    dir: &Path,
    images: Option<(&crate::data::Dataset, &Path)>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let detection = images.filter(|(ds, _)| ds.task == relabel_tasks::task::TaskKind::Detection);
    let mut csv = csv::Writer::from_path(dir.join(CSV_NAME))?;
    let mut header = vec![
        "id",
        "split",
        "text",
        "current_label",
        "model_prediction",
        "current_definition",
        "prediction_definition",
    ];
    if detection.is_some() {
        header.push("crop");
    }
    header.push("answer");
    csv.write_record(&header)?;
    let mut jsonl = String::new();
    let mut tasks = Vec::new();
    for (n, f) in flags.iter().enumerate() {
        let key = question_key(f);
        let [a, b] = prompter
            .shown(f, [&f.label, &f.candidate])
            .map_err(std::io::Error::other)?
            .1;
        let crop = match detection {
            Some((ds, ds_dir)) => Some(crop_of(f, n, ds, ds_dir, dir)?),
            None => None,
        };
        let mut rec = vec![
            key.as_str(),
            &f.split,
            &f.text,
            &f.label,
            &f.candidate,
            &a.definition,
            &b.definition,
        ];
        if let Some((name, _)) = &crop {
            rec.push(name);
        }
        rec.push("");
        csv.write_record(&rec)?;
        let mut row = json!({
            "id": key, "split": f.split, "text": f.text,
            "current_label": f.label, "model_prediction": f.candidate,
            "current_definition": a.definition, "prediction_definition": b.definition,
            "current_examples": a.examples, "prediction_examples": b.examples,
            "answer": null,
        });
        let mut task = json!({"data": {
            "id": key, "text": f.text,
            "current_label": f.label, "model_prediction": f.candidate,
            "options": [{"value": f.label}, {"value": f.candidate}],
        }});
        if let Some((name, pre)) = crop {
            row["crop"] = json!(name);
            task["data"]["image"] = json!(name);
            task["predictions"] = pre;
        }
        jsonl.push_str(&row.to_string());
        jsonl.push('\n');
        tasks.push(task);
    }
    csv.flush()?;
    std::fs::write(dir.join(JSONL_NAME), jsonl)?;
    std::fs::write(dir.join(LS_TASKS), serde_json::to_string_pretty(&tasks)?)?;
    std::fs::write(
        dir.join(LS_CONFIG),
        if detection.is_some() {
            LABEL_STUDIO_DETECTION_CONFIG
        } else {
            LABEL_STUDIO_CONFIG
        },
    )
}

/// An answer as read: where it was (for errors), the row id, and the answer (empty: skipped).
#[derive(Debug, Clone)]
pub struct Given {
    pub line: usize,
    pub id: String,
    pub answer: String,
}

/// Reads a filled-in CSV, JSONL, or Label Studio export (JSON array of annotated tasks);
/// errors name the file as `shown`.
pub fn read_answers(path: &Path, shown: &Path) -> Result<Vec<Given>, String> {
    let shown = shown.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("answers {shown}: {e}"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let name = path.to_string_lossy().to_ascii_lowercase();
    let mut out = Vec::new();
    if name.ends_with(".csv") {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let headers = r.headers().map_err(|e| format!("{shown}: {e}"))?.clone();
        let col = |n: &str| headers.iter().position(|h| h.trim() == n);
        let (Some(id), Some(ans)) = (col("id"), col("answer")) else {
            return Err(format!(
                "{shown}:1: the header needs `id` and `answer` columns ({})",
                crate::clip::header_shape(&headers.iter().collect::<Vec<_>>())
            ));
        };
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| format!("{shown}:{}: {e}", i + 2))?;
            // The record's own line: a quoted field may span several lines.
            let line = rec.position().map_or(i + 2, |p| p.line() as usize);
            out.push(Given {
                line,
                id: rec.get(id).unwrap_or("").to_string(),
                answer: rec.get(ans).unwrap_or("").trim().to_string(),
            });
        }
    } else if name.ends_with(".jsonl") {
        let mut problems = Vec::new();
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(l).map_err(|e| format!("{shown}:{}: {e}", i + 1))?;
            // `"answer": null` (as exported) skips the row; a missing or non-text answer is a
            // mistake, not a skip: nothing is imported until it is fixed.
            let answer = match v.get("answer") {
                Some(Value::String(a)) => a.trim().to_string(),
                Some(Value::Null) => String::new(),
                None => {
                    problems.push(format!(
                        "{shown}:{}: no `answer` field (expected \"answer\": one of the row's two candidates, or null to skip)",
                        i + 1
                    ));
                    continue;
                }
                Some(other) => {
                    problems.push(format!(
                        "{shown}:{}: `answer` must be a string (one of the row's two candidates) or null; found {}",
                        i + 1,
                        json_type(other)
                    ));
                    continue;
                }
            };
            out.push(Given {
                line: i + 1,
                id: scalar(&v["id"]),
                answer,
            });
        }
        if !problems.is_empty() {
            return Err(format!(
                "{} problem(s) in the answers; nothing was imported:\n{}",
                problems.len(),
                problems.join("\n")
            ));
        }
    } else if name.ends_with(".json") {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{shown}: {e}"))?;
        let tasks = v.as_array().ok_or_else(|| {
            format!("{shown}: expected a Label Studio export (a JSON array of tasks)")
        })?;
        for (i, t) in tasks.iter().enumerate() {
            let answer = t
                .get("annotations")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .rev()
                        .find(|x| !x["was_cancelled"].as_bool().unwrap_or(false))
                })
                .and_then(|a| a["result"].as_array())
                .and_then(|r| {
                    r.iter()
                        .find_map(|x| x.pointer("/value/choices/0").and_then(Value::as_str))
                })
                .unwrap_or("")
                .to_string();
            out.push(Given {
                line: i + 1,
                id: scalar(&t["data"]["id"]),
                answer,
            });
        }
    } else {
        return Err(format!(
            "answers {shown}: expected a .csv, .jsonl or Label Studio .json file"
        ));
    }
    Ok(out)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Checks every answer against its row's two candidates; all problems are reported at once.
pub fn apply_answers(
    path: &Path,
    flags: Vec<Flag>,
    given: Vec<Given>,
    digest: &str,
) -> Result<Vec<Decision>, String> {
    let shown = path.display();
    let keys: Vec<String> = flags.iter().map(question_key).collect();
    let index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut answers: Vec<Option<(usize, String)>> = vec![None; flags.len()];
    let mut problems = Vec::new();
    for g in &given {
        let Some(&i) = index.get(g.id.as_str()) else {
            problems.push(format!(
                "{shown}:{}: row id \"{}\" is not one of the flagged rows",
                g.line, g.id
            ));
            continue;
        };
        if let Some((first, _)) = &answers[i] {
            problems.push(format!(
                "{shown}:{}: row \"{}\" is answered twice (first at line {first})",
                g.line, g.id
            ));
            continue;
        }
        let a = g.answer.as_str();
        let f = &flags[i];
        let skip =
            a.is_empty() || a.eq_ignore_ascii_case("skip") || a.eq_ignore_ascii_case("undecided");
        if !skip && a != f.label && a != f.candidate {
            problems.push(format!(
                "{shown}:{}: row \"{}\": answer \"{a}\" is not one of its two candidates \"{}\" / \"{}\" (or empty to skip)",
                g.line, g.id, f.label, f.candidate
            ));
            continue;
        }
        answers[i] = Some((g.line, if skip { String::new() } else { a.to_string() }));
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(20);
        return Err(format!(
            "{n} problem(s) in the answers; nothing was imported:\n  {}",
            problems.join("\n  ")
        ));
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    Ok(flags
        .into_iter()
        .zip(answers)
        .map(|(f, a)| {
            let mut d = pending(f, digest);
            match a {
                Some((_, ans)) if !ans.is_empty() => {
                    d.answer = Some(ans.clone());
                    d.at = Some(now.clone());
                    d.decide(&ans);
                }
                Some(_) => d.failure = Some(Failure::Skipped),
                None => {}
            }
            d
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, text: &str) -> Result<Vec<Given>, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        read_answers(&p, Path::new(name))
    }

    #[test]
    fn two_spans_of_one_sentence_are_answered_apart_and_other_answers_refused() {
        let span = |s: u64, e: u64, label: &str, cand: &str| Flag {
            split: "train".into(),
            row: 0,
            id: "s1".into(),
            text: "x".into(),
            label: label.into(),
            candidate: cand.into(),
            label_prob: 0.5,
            candidate_prob: 0.5,
            score: 1.0,
            rule: "type_swap".into(),
            site: json!({"start": s, "end": e, "kind": "type_swap", "readings": [[1], [3]]}),
        };
        let flags = vec![
            span(0, 1, "LOC: Acme", "ORG: Acme"),
            span(3, 4, "PER: Ann", "not an entity"),
        ];
        assert_eq!(question_key(&flags[1]), "s1@3-4");
        let given = read(
            "a.csv",
            "id,answer\ns1@3-4,not an entity\ns1@0-1,ORG: Acme\n",
        )
        .unwrap();
        let d = apply_answers(Path::new("a.csv"), flags.clone(), given, "t").unwrap();
        assert_eq!(d[0].chosen.as_deref(), Some("ORG: Acme"));
        assert_eq!(d[1].chosen.as_deref(), Some("not an entity"));
        let given = read("a.csv", "id,answer\ns1,ORG: Acme\ns1@0-1,LOC: Paris\n").unwrap();
        let e = apply_answers(Path::new("a.csv"), flags, given, "t").unwrap_err();
        assert!(
            e.contains("a.csv:2: row id \"s1\" is not one of the flagged rows"),
            "{e}"
        );
        assert!(
            e.contains("a.csv:3") && e.contains("\"LOC: Paris\" is not one of its two candidates"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_answers_without_an_answer_field_or_with_a_non_string_are_refused() {
        let e = read(
            "a.jsonl",
            "{\"id\": \"r1\", \"answer\": \"refund\"}\n{\"id\": \"r2\"}\n{\"id\": \"r3\", \"answer\": 3}\n{\"id\": \"r4\", \"answer\": null}\n",
        )
        .unwrap_err();
        assert!(e.contains("a.jsonl:2: no `answer` field"), "{e}");
        assert!(e.contains("a.jsonl:3: `answer` must be a string"), "{e}");
        assert!(e.contains("nothing was imported"), "{e}");
        // null (as exported) skips; a BOM is ignored.
        let ok = read(
            "b.jsonl",
            "\u{feff}{\"id\": \"r1\", \"answer\": \"refund\"}\n{\"id\": \"r4\", \"answer\": null}\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].answer, "refund");
        assert_eq!(ok[1].answer, "");
    }

    #[test]
    fn csv_answer_lines_count_the_lines_of_quoted_fields() {
        let got = read(
            "a.csv",
            "id,text,answer\nr1,\"two\nlines\",refund\nr2,one,top_up\n",
        )
        .unwrap();
        assert_eq!(got[0].line, 2);
        assert_eq!(got[1].line, 4, "row r2 starts on line 4 of the file");
    }
}
