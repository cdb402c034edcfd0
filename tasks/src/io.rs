//! One reader and one writer for JSON lines, used for every JSONL artifact: a problem names
//! the file and line; blank lines and a leading byte-order mark are ignored.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads one `T` per non-blank line of `path`.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> io::Result<Vec<T>> {
    let text = std::fs::read_to_string(path)?;
    parse_jsonl(&text, &path.display().to_string())
}

/// Parses JSON lines from `text`; errors say `shown:LINE: ...`.
pub fn parse_jsonl<T: DeserializeOwned>(text: &str, shown: &str) -> io::Result<Vec<T>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{shown}:{}: {e}", i + 1),
            )
        })?);
    }
    Ok(out)
}

/// Writes one line of JSON per item.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> io::Result<()> {
    let mut f = BufWriter::new(std::fs::File::create(path)?);
    for item in items {
        serde_json::to_writer(&mut f, item)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        write_jsonl(
            &p,
            &[serde_json::json!({"a": 1}), serde_json::json!({"a": 2})],
        )
        .unwrap();
        let back: Vec<serde_json::Value> = read_jsonl(&p).unwrap();
        assert_eq!(back.len(), 2);
        let e = parse_jsonl::<serde_json::Value>("\u{feff}{\"a\": 1}\n\n{\"a\": \n", "f.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.jsonl:3:"), "{e}");
    }
}
