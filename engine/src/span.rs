//! Where each key and value of a YAML document sits in its text, so any problem can name file:line:col.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diag::Location;

/// One step into a YAML document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root to a key or value, e.g. `nodes[2].config.run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<Seg>);

impl Path {
    pub fn root() -> Self {
        Path(Vec::new())
    }

    pub fn key(&self, k: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }

    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    pub fn join(&self, other: &Path) -> Self {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }

    /// The path below `prefix`, if this path starts with it.
    pub fn strip_prefix(&self, prefix: &Path) -> Option<Path> {
        self.0
            .starts_with(&prefix.0)
            .then(|| Path(self.0[prefix.0.len()..].to_vec()))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    key: Option<Location>,
    value: Location,
}

/// Positions of every key and value of the first document in a YAML text.
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    spans: HashMap<Path, Span>,
    /// Where a key first repeats an earlier key of the same mapping.
    duplicate: Option<Location>,
}

impl SpanIndex {
    /// Indexes `text`; a text that does not parse gives an index of what was read before the error.
    pub fn build(text: &str) -> Self {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut b, false);
        SpanIndex {
            spans: b.spans,
            duplicate: b.duplicate,
        }
    }

    /// Where the first repeated key of a mapping is (the repetition, not the first one).
    pub fn duplicate_key(&self) -> Option<Location> {
        self.duplicate
    }

    /// Where the value at `path` starts, or where its nearest existing ancestor does.
    pub fn value(&self, path: &Path) -> Location {
        self.nearest(path, false)
    }

    /// Where the key of the entry at `path` starts (falls back to the value, then ancestors).
    pub fn key(&self, path: &Path) -> Location {
        self.nearest(path, true)
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.spans.contains_key(path)
    }

    fn nearest(&self, path: &Path, want_key: bool) -> Location {
        let mut p = path.0.as_slice();
        loop {
            if let Some(s) = self.spans.get(&Path(p.to_vec())) {
                return if want_key {
                    s.key.unwrap_or(s.value)
                } else {
                    s.value
                };
            }
            if p.is_empty() {
                return Location { line: 1, col: 1 };
            }
            p = &p[..p.len() - 1];
        }
    }
}

enum Frame {
    Map {
        path: Path,
        pending: Option<(String, Location)>,
    },
    Seq {
        path: Path,
        next: usize,
    },
    /// A complex key (a mapping or sequence used as a key): indexed nowhere.
    Skip,
}

/// How deep the index records positions; a manifest never needs more than a dozen levels.
const MAX_DEPTH: usize = 64;

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    spans: HashMap<Path, Span>,
    duplicate: Option<Location>,
    done: bool,
}

fn loc(m: Marker) -> Location {
    Location {
        line: m.line(),
        col: m.col() + 1,
    }
}

impl Builder {
    /// Registers a value starting at `at`; returns its path, or None when it is a key or skipped.
    fn value(&mut self, at: Location, scalar: Option<&str>) -> Option<Path> {
        match self.stack.last_mut() {
            None => {
                self.spans.insert(
                    Path::root(),
                    Span {
                        key: None,
                        value: at,
                    },
                );
                Some(Path::root())
            }
            Some(Frame::Skip) => None,
            Some(Frame::Seq { path, next }) => {
                let p = path.index(*next);
                *next += 1;
                self.spans.insert(
                    p.clone(),
                    Span {
                        key: None,
                        value: at,
                    },
                );
                Some(p)
            }
            Some(Frame::Map { path, pending }) => match pending.take() {
                Some((k, kat)) => {
                    let p = path.key(k);
                    if self.duplicate.is_none() && self.spans.contains_key(&p) {
                        self.duplicate = Some(kat);
                    }
                    self.spans.insert(
                        p.clone(),
                        Span {
                            key: Some(kat),
                            value: at,
                        },
                    );
                    Some(p)
                }
                None => {
                    // This is a key. Block mappings are announced at their first key's `:`;
                    // the first key's own position is where a reader sees the mapping start.
                    if let Some(span) = self.spans.get_mut(path) {
                        if at < span.value {
                            span.value = at;
                        }
                    }
                    if let Some(s) = scalar {
                        *pending = Some((s.to_string(), at));
                    } else {
                        *pending = Some(("<complex key>".to_string(), at));
                    }
                    None
                }
            },
        }
    }

    fn is_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { pending: None, .. }))
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let at = loc(mark);
        match ev {
            Event::Scalar(s, ..) => {
                self.value(at, Some(&s));
            }
            Event::Alias(_) => {
                self.value(at, Some("<alias>"));
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                if self.is_key_position() {
                    self.value(at, None);
                    self.stack.push(Frame::Skip);
                    return;
                }
                // Below MAX_DEPTH nothing is indexed (problems there point at the nearest
                // indexed ancestor): cloning ever longer paths made deep nesting quadratic.
                if self.stack.len() >= MAX_DEPTH {
                    self.value(at, None);
                    self.stack.push(Frame::Skip);
                    return;
                }
                match self.value(at, None) {
                    Some(path) if is_map => self.stack.push(Frame::Map {
                        path,
                        pending: None,
                    }),
                    Some(path) => self.stack.push(Frame::Seq { path, next: 0 }),
                    None => self.stack.push(Frame::Skip),
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_and_values() {
        let text = "a: 1\nnodes:\n  - id: x\n    config:\n      run: echo\n";
        let idx = SpanIndex::build(text);
        let p = Path::root().key("nodes").index(0).key("config").key("run");
        assert_eq!(idx.value(&p), Location { line: 5, col: 12 });
        assert_eq!(idx.key(&p), Location { line: 5, col: 7 });
        assert_eq!(
            idx.value(&Path::root().key("nodes").index(0)),
            Location { line: 3, col: 5 }
        );
        // A missing path falls back to its nearest ancestor.
        assert_eq!(
            idx.value(&Path::root().key("nodes").index(0).key("nope")),
            Location { line: 3, col: 5 }
        );
    }

    #[test]
    fn flow_style_and_complex_keys_do_not_confuse_it() {
        let text = "x: {a: [1, 2], b: c}\n? [k]\n: v\ny: 3\n";
        let idx = SpanIndex::build(text);
        assert_eq!(
            idx.value(&Path::root().key("x").key("a").index(1)),
            Location { line: 1, col: 12 }
        );
        assert_eq!(
            idx.value(&Path::root().key("y")),
            Location { line: 4, col: 4 }
        );
    }
}
