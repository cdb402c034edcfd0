//! Diagnostics: located, human-readable problems found in a manifest, collected before reporting.

use std::fmt;

/// A 1-based line and column in a manifest's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub col: usize,
}

/// One problem, with where it is, what was expected and (maybe) how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub loc: Location,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.loc.line, self.loc.col, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one manifest, in source order.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// Sorts by position and removes exact repeats, so output is stable.
    pub fn finish(mut self) -> Self {
        self.0
            .sort_by(|a, b| (a.loc, &a.message).cmp(&(b.loc, &b.message)));
        self.0.dedup();
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// The closest of `known` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a, I>(word: &str, known: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    // Bounded work: a manifest with 20,000 broken references against 20,000 ids, or a
    // 100,000-character name, must not turn validation quadratic. Each call compares at most
    // MAX_CANDIDATES names of a similar length, and the process at most COMPARISON_BUDGET.
    const MAX_WORD: usize = 64;
    const MAX_CANDIDATES: usize = 512;
    const COMPARISON_BUDGET: u64 = 4_000_000;
    static SPENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = word.chars().count();
    if n == 0 || n > MAX_WORD {
        return None;
    }
    let slack = (n / 3).max(3);
    let mut best: Option<(f64, &str)> = None;
    let mut compared = 0;
    for k in known {
        let m = k.len();
        if m.abs_diff(n) > slack || m > MAX_WORD * 4 {
            continue;
        }
        compared += 1;
        if compared > MAX_CANDIDATES
            || SPENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > COMPARISON_BUDGET
        {
            break;
        }
        let score = strsim::jaro_winkler(word, k);
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, k));
        }
    }
    best.map(|(_, k)| format!("did you mean \"{k}\"?"))
}

/// GitHub Actions escapes a workflow command's message this way.
fn gh_escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// ... and a property's value this way.
fn gh_escape_property(s: &str) -> String {
    gh_escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

impl Diagnostic {
    /// The diagnostic as a GitHub Actions annotation (`::error file=..,line=..,col=..::message`).
    pub fn github(&self) -> String {
        let mut message = self.message.clone();
        if let Some(h) = &self.hint {
            message.push_str("\nhelp: ");
            message.push_str(h);
        }
        format!(
            "::error file={},line={},col={},title=relabel validate::{}",
            gh_escape_property(&self.file),
            self.loc.line,
            self.loc.col,
            gh_escape_data(&message)
        )
    }

    /// The diagnostic as a JSON object: file, line, col, message, hint.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file,
            "line": self.loc.line,
            "col": self.loc.col,
            "message": self.message,
            "hint": self.hint,
        })
    }
}

#[cfg(test)]
mod github_tests {
    use super::*;

    #[test]
    fn annotations_escape_what_github_would_misread() {
        let d = Diagnostic {
            file: "a,b:c.yaml".into(),
            loc: Location { line: 3, col: 7 },
            message: "100% wrong\nsecond line".into(),
            hint: None,
        };
        assert_eq!(
            d.github(),
            "::error file=a%2Cb%3Ac.yaml,line=3,col=7,title=relabel validate::100%25 wrong%0Asecond line"
        );
    }
}
