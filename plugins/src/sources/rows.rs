//! Reading a source file's rows (JSON lines, CSV/TSV, Parquet) by column name, before any
//! checks: shared by the source node kinds.

use std::path::Path;

use relabel_engine::diag::did_you_mean;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a data file is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// From the file name: .jsonl/.ndjson, .csv, .tsv, .parquet.
    #[default]
    Auto,
    Jsonl,
    Csv,
    Tsv,
    Parquet,
}

/// Which columns hold a row's text, label and (optionally) id.
#[derive(Debug, Clone)]
pub struct Columns {
    pub text: String,
    pub label: String,
    pub id: Option<String>,
    /// More columns to read, in order (a CTR row's feature fields); [`RawRow::extra`] holds them.
    pub extra: Vec<String>,
}

/// A row as read from a file, before checks. `row` is 1-based (the line number for JSONL/CSV).
#[derive(Debug, Clone)]
pub struct RawRow {
    pub row: usize,
    pub id: Option<String>,
    pub text: Option<String>,
    pub label: Option<String>,
    /// The [`Columns::extra`] values, in order (None: absent or null).
    pub extra: Vec<Option<String>>,
    /// Why the row could not be read at all (a truncated or malformed JSON line): a bad row,
    /// skipped or refused per `on_bad_row` like any other.
    pub unreadable: Option<String>,
}

impl RawRow {
    fn unreadable(row: usize, why: String) -> RawRow {
        RawRow {
            row,
            id: None,
            text: None,
            label: None,
            extra: Vec::new(),
            unreadable: Some(why),
        }
    }
}

fn format_of(path: &Path, f: Format) -> Result<Format, String> {
    if f != Format::Auto {
        return Ok(f);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json") {
        Ok(Format::Jsonl)
    } else if name.ends_with(".csv") {
        Ok(Format::Csv)
    } else if name.ends_with(".tsv") || name.ends_with(".txt") {
        Ok(Format::Tsv)
    } else if name.contains(".parquet") {
        Ok(Format::Parquet)
    } else {
        Err(format!(
            "{}: cannot tell the format from the name; set `format: jsonl | csv | tsv | parquet`",
            path.display()
        ))
    }
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads every row of a data file. A file-level problem (unreadable, missing column in a
/// header) is an error; row-level problems are left for [`check_rows`].
pub fn read_rows(path: &Path, format: Format, c: &Columns) -> Result<Vec<RawRow>, String> {
    let shown = path.display();
    match format_of(path, format)? {
        Format::Jsonl => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let mut rows = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = match serde_json::from_str(line) {
                    Ok(v @ serde_json::Value::Object(_)) => v,
                    Ok(_) => {
                        rows.push(RawRow::unreadable(i + 1, "not a JSON object".into()));
                        continue;
                    }
                    Err(e) => {
                        rows.push(RawRow::unreadable(i + 1, format!("not a JSON object: {e}")));
                        continue;
                    }
                };
                let get = |k: &str| v.get(k).and_then(scalar);
                rows.push(RawRow {
                    row: i + 1,
                    id: c.id.as_deref().and_then(get),
                    text: get(&c.text),
                    label: get(&c.label),
                    extra: c.extra.iter().map(|k| get(k)).collect(),
                    unreadable: None,
                });
            }
            Ok(rows)
        }
        f @ (Format::Csv | Format::Tsv) => {
            let mut rdr = csv::ReaderBuilder::new()
                .delimiter(if f == Format::Tsv { b'\t' } else { b',' })
                .flexible(true)
                .from_path(path)
                .map_err(|e| format!("{shown}: {e}"))?;
            let headers = rdr.headers().map_err(|e| format!("{shown}: {e}"))?.clone();
            let col = |name: &str| -> Result<usize, String> {
                headers.iter().position(|h| h == name).ok_or_else(|| {
                    let have: Vec<&str> = headers.iter().collect();
                    format!(
                        "{shown}:1: missing column \"{name}\" ({}){}",
                        crate::clip::header_shape(&have),
                        did_you_mean(name, have.iter().copied())
                            .map(|h| format!("; {h}"))
                            .unwrap_or_default()
                    )
                })
            };
            // A CTR row has no text column: its text is made of the feature fields.
            let ti = if c.text.is_empty() {
                usize::MAX
            } else {
                col(&c.text)?
            };
            let ei: Vec<usize> = c.extra.iter().map(|k| col(k)).collect::<Result<_, _>>()?;
            let li = col(&c.label)?;
            let ii = c.id.as_deref().map(col).transpose()?;
            let mut rows = Vec::new();
            for rec in rdr.records() {
                let rec = rec.map_err(|e| format!("{shown}: {e}"))?;
                let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
                let get = |i: usize| rec.get(i).map(str::to_string);
                rows.push(RawRow {
                    row: line,
                    id: ii.and_then(get),
                    text: get(ti),
                    label: get(li),
                    extra: ei.iter().map(|&i| get(i)).collect(),
                    unreadable: None,
                });
            }
            Ok(rows)
        }
        Format::Parquet => read_parquet(path, c),
        Format::Auto => unreachable!("resolved above"),
    }
}

fn read_parquet(path: &Path, c: &Columns) -> Result<Vec<RawRow>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("{shown}: {e}"))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let names: Vec<String> = schema
        .columns()
        .iter()
        .map(|col| col.name().to_string())
        .collect();
    for name in [Some(&c.text), Some(&c.label), c.id.as_ref()]
        .into_iter()
        .flatten()
        .filter(|n| !n.is_empty())
        .chain(&c.extra)
    {
        if !names.contains(name) {
            return Err(format!(
                "{shown}: missing column \"{name}\" (columns: {})",
                names.join(", ")
            ));
        }
    }
    let mut rows = Vec::new();
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| format!("{shown}: {e}"))?;
    for (i, row) in iter.enumerate() {
        let row = row.map_err(|e| format!("{shown}: row {}: {e}", i + 1))?;
        let mut r = RawRow {
            row: i + 1,
            id: None,
            text: None,
            label: None,
            extra: vec![None; c.extra.len()],
            unreadable: None,
        };
        for (name, field) in row.get_column_iter() {
            let v = match field {
                Field::Null => None,
                Field::Str(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            if name == &c.text {
                r.text = v;
            } else if name == &c.label {
                r.label = v;
            } else if Some(name) == c.id.as_ref() {
                r.id = v;
            } else if let Some(k) = c.extra.iter().position(|e| e == name) {
                r.extra[k] = v;
            }
        }
        rows.push(r);
    }
    Ok(rows)
}
