//! Reading tagged sentences (NER) for `dataset` with `task: tagging`: CoNLL column files (one
//! token per line, the tag in a column, blank lines between sentences, `-DOCSTART-` skipped) and
//! JSON lines `{"tokens": [...], "tags": [...]}`; every problem is named by file and line.

use std::path::Path;

use relabel_engine::diag::did_you_mean;
use relabel_tasks::data::LabelSpec;
use relabel_tasks::tagging::{read_tags, Scheme};

/// A sentence as read, before its tags are checked against the spec.
#[derive(Debug, Clone)]
pub struct RawSentence {
    /// The line (CoNLL: of its first token) it starts at, 1-based.
    pub line: usize,
    pub tokens: Vec<String>,
    pub tags: Vec<String>,
    /// CoNLL: each token's line, for messages about one token.
    pub lines: Vec<usize>,
    /// Why it cannot be read at all (ragged columns, a malformed JSON line).
    pub unreadable: Option<String>,
}

/// Whether a file is JSON lines (by its name); everything else is read as CoNLL columns.
fn is_jsonl(path: &Path) -> bool {
    let n = path.to_string_lossy().to_ascii_lowercase();
    n.ends_with(".jsonl") || n.ends_with(".ndjson") || n.ends_with(".json")
}

/// Reads a file's sentences. `tag_column`: CoNLL's column of the tag (0-based; default: the last).
pub fn read_sentences(path: &Path, tag_column: Option<usize>) -> Result<Vec<RawSentence>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    if is_jsonl(path) {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |why: String| RawSentence {
                line: i + 1,
                tokens: Vec::new(),
                tags: Vec::new(),
                lines: Vec::new(),
                unreadable: Some(why),
            };
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    out.push(bad(format!("not a JSON object ({e})")));
                    continue;
                }
            };
            let list = |k: &str| -> Option<Vec<String>> {
                v.get(k)?
                    .as_array()?
                    .iter()
                    .map(|x| x.as_str().map(String::from))
                    .collect()
            };
            match (list("tokens"), list("tags")) {
                (Some(tokens), Some(tags)) if tokens.len() == tags.len() => out.push(RawSentence {
                    line: i + 1,
                    lines: vec![i + 1; tokens.len()],
                    tokens,
                    tags,
                    unreadable: None,
                }),
                (Some(t), Some(g)) => {
                    out.push(bad(format!("{} tokens but {} tags", t.len(), g.len())))
                }
                _ => out.push(bad(
                    "expected {\"tokens\": [strings], \"tags\": [strings]}".to_string()
                )),
            }
        }
        return Ok(out);
    }
    let mut cur: Option<RawSentence> = None;
    let mut width: Option<(usize, usize)> = None; // (columns, the line that set it)
    let flush = |cur: &mut Option<RawSentence>, out: &mut Vec<RawSentence>| {
        if let Some(s) = cur.take() {
            if !s.tokens.is_empty() || s.unreadable.is_some() {
                out.push(s);
            }
        }
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            flush(&mut cur, &mut out);
            continue;
        }
        if cols[0] == "-DOCSTART-" {
            flush(&mut cur, &mut out);
            continue;
        }
        let s = cur.get_or_insert_with(|| RawSentence {
            line: n,
            tokens: Vec::new(),
            tags: Vec::new(),
            lines: Vec::new(),
            unreadable: None,
        });
        match width {
            None => width = Some((cols.len(), n)),
            Some((w, at)) if w != cols.len() => {
                s.unreadable.get_or_insert(format!(
                    "line {n}: {} columns, but line {at} has {w} (ragged columns)",
                    cols.len()
                ));
                continue;
            }
            _ => {}
        }
        let tc = tag_column.unwrap_or(cols.len() - 1);
        if cols.len() < 2 || tc >= cols.len() || tc == 0 {
            s.unreadable.get_or_insert(format!(
                "line {n}: {} column(s); expected a token, then a tag in column {} (`tag_column`)",
                cols.len(),
                tc
            ));
            continue;
        }
        s.tokens.push(cols[0].to_string());
        s.tags.push(cols[tc].to_string());
        s.lines.push(n);
    }
    flush(&mut cur, &mut out);
    Ok(out)
}

/// The entity types a file's tags name, sorted (for a dataset without a labels file).
pub fn types_in(sentences: &[RawSentence]) -> Vec<String> {
    let mut t: Vec<String> = sentences
        .iter()
        .flat_map(|s| s.tags.iter())
        .filter_map(|t| t.split_once('-').map(|(_, k)| k.to_string()))
        .collect();
    t.sort();
    t.dedup();
    t
}

/// A sentence's tags checked against `spec` in `scheme`: IOB2 tag ids, or the problems as
/// `line N: ...` messages. Ill-formed sequences pass (repaired) when `repair`; unknown types and
/// malformed tags never do.
pub fn check_sentence(
    s: &RawSentence,
    scheme: Scheme,
    spec: &LabelSpec,
    repair: bool,
) -> (Option<Vec<u32>>, Vec<String>, usize) {
    if let Some(why) = &s.unreadable {
        return (None, vec![why.clone()], 0);
    }
    let names = spec.names();
    let suggest = |n: &str| did_you_mean(n, names.iter().copied());
    let raw: Vec<&str> = s.tags.iter().map(String::as_str).collect();
    let (tags, problems) = read_tags(&raw, scheme, spec, &suggest);
    let msgs: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "line {}: {}",
                s.lines.get(p.token).copied().unwrap_or(s.line),
                p.message
            )
        })
        .collect();
    let any_fatal = problems.iter().any(|p| !p.repairable);
    if problems.is_empty() || (repair && !any_fatal) {
        (
            Some(tags),
            if repair { Vec::new() } else { msgs },
            problems.len(),
        )
    } else {
        (None, msgs, 0)
    }
}
