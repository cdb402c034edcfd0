//! Run reports: JSON for machines, Markdown for people (CI summaries, pull-request comments).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::runner::{RunReport, Status};

/// Writes `report.json` and `report.md` into `dir`; returns their paths.
pub fn write(report: &RunReport, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("report.json");
    let md = dir.join("report.md");
    write_atomic(&json, serde_json::to_string_pretty(report)?.as_bytes())?;
    write_atomic(&md, markdown(report).as_bytes())?;
    Ok((json, md))
}

/// Writes a file through a temporary name, so readers never see half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn figure(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => Some(match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        }),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::String(s) if s.len() <= 40 => Some(s.clone()),
        _ => None,
    }
}

/// The key figures of a node: its scalar metrics, at most six.
pub fn key_figures(metrics: &serde_json::Map<String, serde_json::Value>) -> String {
    metrics
        .iter()
        .filter_map(|(k, v)| figure(v).map(|f| format!("{k}={f}")))
        .take(6)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text safe inside Markdown (a table cell included) and the HTML a Markdown renderer passes
/// through: `<script>` in a label or pipeline name stays text in a pull-request comment.
pub fn md_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            // `_` inside words is no emphasis in GitHub's Markdown: left as is, so the table
            // printed on a terminal stays readable.
            '\\' | '`' | '*' | '[' | ']' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

pub fn markdown(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# relabel run: {} ({})\n",
        md_text(&r.pipeline),
        r.status
    );
    let _ = writeln!(
        s,
        "Manifest {}, run `{}`, started {}, {:.2} s. Nodes: {} ran, {} cached, {} restored, {} failed, {} pending, {} skipped.\n",
        md_text(&r.manifest),
        r.run_id,
        r.started,
        r.seconds,
        r.count(Status::Ran),
        r.count(Status::Cached),
        r.count(Status::Restored),
        r.count(Status::Failed),
        r.count(Status::Pending),
        r.count(Status::Skipped)
    );
    if let Some(rr) = &r.remote {
        let _ = writeln!(
            s,
            "Remote {}{}: {} entries restored ({} artifacts, {} bytes); {} entries pushed ({} artifacts, {} bytes); LLM memo {} pulled, {} pushed.{}\n",
            md_text(&rr.url),
            if rr.write { "" } else { " (read-only)" },
            rr.restored_entries,
            rr.pulled_objects,
            rr.pulled_bytes,
            rr.pushed_entries,
            rr.pushed_objects,
            rr.pushed_bytes,
            rr.memo_pulled,
            rr.memo_pushed,
            if rr.errors.is_empty() {
                String::new()
            } else {
                format!(" {} problem(s): {}", rr.errors.len(), md_text(&rr.errors.join("; ")))
            }
        );
    }
    let _ = writeln!(s, "| node | kind | status | time (s) | key figures |");
    let _ = writeln!(s, "|---|---|---|---:|---|");
    for n in &r.nodes {
        let figures = match &n.error {
            Some(e) => format!("error: {}", md_text(e.lines().next().unwrap_or(""))),
            None => md_text(&key_figures(&n.metrics)),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {} |",
            md_text(&n.instance),
            md_text(&n.kind),
            serde_json::to_value(n.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            n.seconds,
            figures
        );
    }
    if !r.loops.is_empty() {
        let _ = writeln!(s, "\n| loop | rounds | stopped by |\n|---|---:|---|");
        for l in &r.loops {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                md_text(&l.id),
                l.rounds,
                md_text(&l.stopped_by)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn markdown_text_cannot_open_html_or_break_a_table() {
        let t = super::md_text("<script>alert(1)</script> a|b *x* [l](u)");
        assert!(!t.contains('<') && !t.contains('>'), "{t}");
        assert!(t.contains("&lt;script&gt;"));
        assert!(t.contains("a\\|b") && t.contains("\\*x\\*") && t.contains("\\[l\\]"));
    }
}
