//! Clipping what a data file holds before it reaches an error or a report: a path pointing at
//! a system file must not copy its content into report.json.

/// A header's shape for an error message: how many columns, and their names clipped (at most
/// eight names of at most 24 characters each).
pub fn header_shape(names: &[&str]) -> String {
    let shown: Vec<String> = names.iter().take(8).map(|n| clip(n, 24)).collect();
    let more = names.len().saturating_sub(8);
    format!(
        "the header has {} column{}: {}{}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// At most `n` characters of `s`, with `...` when cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_first_line_is_clipped() {
        let line = "root:x:0:0:root:/root:/bin/bash-and-a-great-deal-more-text-here";
        let s = super::header_shape(&[line]);
        assert!(
            s.starts_with("the header has 1 column: root:x:0:0:root:/root:/b..."),
            "{s}"
        );
        assert!(!s.contains("great-deal"));
    }
}
