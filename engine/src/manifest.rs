//! Raw manifests: YAML text -> structurally checked items, with `${params.x}` / `${env.X}` substituted.
//!
//! This is the first of three stages (manifest -> resolve -> graph). It checks shapes and
//! names of keys only; node kinds, inputs and configs are checked by `resolve`.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Location};
use crate::span::{Path, SpanIndex};

/// The only manifest format version so far.
pub const VERSION: u64 = 1;

/// The engine's top-level keys; the registry's resource sections (`llm`, ...) go before `nodes`.
const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "params",
    "remote",
    "executors",
    "nodes",
];
const NODE_KEYS: &[&str] = &["id", "kind", "description", "inputs", "config", "executor"];
const LOOP_ITEM_KEYS: &[&str] = &["id", "description", "loop", "nodes"];
const LOOP_KEYS: &[&str] = &["max_rounds", "until", "carry"];
const CARRY_KEYS: &[&str] = &["from", "next"];
/// Words that make a variable name look like a secret anywhere in the name (`APIKEY`, `MYTOKEN`).
const SECRET_SUBSTRINGS: &[&str] = &["KEY", "TOKEN", "SECRET", "PASSW", "CREDENTIAL", "PRIVATE"];
/// Words that make it look like a secret as a whole `_`-separated part (`DB_PASS`, `GITHUB_PAT`).
const SECRET_PARTS: &[&str] = &["PASS", "PAT", "AUTH", "PWD_HASH", "DSN"];
/// Whole names that hold credentials.
const SECRET_NAMES: &[&str] = &["DATABASE_URL", "REDIS_URL", "MONGODB_URI", "NETRC"];

/// Whether an environment variable's name looks like it holds a secret (an API key, a token,
/// a password, a connection string with credentials).
pub fn looks_secret(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    SECRET_SUBSTRINGS.iter().any(|w| up.contains(w))
        || up.split('_').any(|p| SECRET_PARTS.contains(&p))
        || SECRET_NAMES.contains(&up.as_str())
}

/// A manifest's text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The name used in diagnostics (the path as the user gave it).
    pub name: String,
    /// The folder relative paths in the manifest are resolved against.
    pub dir: PathBuf,
    pub text: String,
    /// `--set NAME=VALUE` overrides of declared params (VALUE read as a YAML scalar).
    pub overrides: Vec<(String, String)>,
}

impl Source {
    pub fn read(path: &FsPath) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let b = e.as_bytes();
                let before = &b[..at];
                let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
                let line_start = before
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |i| i + 1);
                let col = String::from_utf8_lossy(&before[line_start..])
                    .chars()
                    .count()
                    + 1;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}:{line}:{col}: not UTF-8 text (byte 0x{:02x}); a manifest must be UTF-8",
                        path.display(),
                        b[at]
                    ),
                ));
            }
        };
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    FsPath::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(FsPath::new("."))
            .to_path_buf();
        let mut source = Source::from_text(&path.display().to_string(), &text);
        source.dir = dir;
        Ok(source)
    }

    pub fn from_text(name: &str, text: &str) -> Self {
        Source {
            name: name.to_string(),
            dir: PathBuf::from("."),
            text: strip_bom(text.to_string()),
            overrides: Vec::new(),
        }
    }
}

/// The text without a leading UTF-8 byte-order mark (editors on Windows add one).
fn strip_bom(text: String) -> String {
    match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// An input reference as written: `name: node` / `name: node.output`, or a list entry.
#[derive(Debug, Clone)]
pub struct RawInput {
    pub name: String,
    pub reference: String,
    pub path: Path,
}

#[derive(Debug, Clone)]
pub struct RawNode {
    pub id: String,
    pub kind: String,
    pub kind_path: Path,
    pub inputs: Vec<RawInput>,
    pub config: Value,
    pub path: Path,
    /// Where it runs when not here (`executor:`; `null`: here), as written, and its path.
    pub executor: Option<(Value, Path)>,
}

#[derive(Debug, Clone)]
pub struct RawCarry {
    pub name: String,
    pub from: String,
    pub next: String,
    pub path: Path,
}

#[derive(Debug, Clone)]
pub struct RawLoop {
    pub id: String,
    pub max_rounds: u32,
    pub until: Option<String>,
    pub carry: Vec<RawCarry>,
    pub nodes: Vec<RawNode>,
    pub path: Path,
}

#[derive(Debug, Clone)]
pub enum RawItem {
    Node(RawNode),
    Loop(RawLoop),
}

impl RawItem {
    pub fn id(&self) -> &str {
        match self {
            RawItem::Node(n) => &n.id,
            RawItem::Loop(l) => &l.id,
        }
    }
}

/// A structurally checked manifest; the pieces that failed their checks are left out.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub source: Source,
    pub spans: SpanIndex,
    pub name: String,
    pub params: Mapping,
    /// The remote cache's URL (`remote:`), params and `${env.X}` substituted.
    pub remote: Option<String>,
    /// Resource sections by name: each entry's name, value (params substituted) and path.
    pub resources: BTreeMap<String, Vec<(String, Value, Path)>>,
    /// Default executors by node kind (`executors: {trainer: {slurm: {...}}}`), with paths.
    pub executors: BTreeMap<String, (Value, Path)>,
    pub items: Vec<RawItem>,
}

/// Collects diagnostics for one source.
pub struct Reporter<'a> {
    pub file: &'a str,
    pub spans: &'a SpanIndex,
    pub diags: Diagnostics,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a str, spans: &'a SpanIndex) -> Self {
        Reporter {
            file,
            spans,
            diags: Diagnostics::default(),
        }
    }

    pub fn at(&mut self, loc: Location, message: impl Into<String>, hint: Option<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            loc,
            message: message.into(),
            hint,
        });
    }

    /// A problem with the value at `path`.
    pub fn value(&mut self, path: &Path, message: impl Into<String>, hint: Option<String>) {
        let loc = self.spans.value(path);
        self.at(loc, message, hint);
    }

    /// A problem with the key at `path`.
    pub fn key(&mut self, path: &Path, message: impl Into<String>, hint: Option<String>) {
        let loc = self.spans.key(path);
        self.at(loc, message, hint);
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn check_keys(r: &mut Reporter, m: &Mapping, path: &Path, known: &[&str], what: &str) {
    for k in m.keys() {
        let k = key_str(k);
        if !known.contains(&k.as_str()) {
            let hint = did_you_mean(&k, known.iter().copied())
                .or_else(|| Some(format!("expected one of: {}", known.join(", "))));
            r.key(
                &path.key(&k),
                format!("{what}: unknown field \"{k}\""),
                hint,
            );
        }
    }
}

fn get<'v>(m: &'v Mapping, k: &str) -> Option<&'v Value> {
    m.get(Value::String(k.to_string()))
}

/// The line and column (1-based, lines split at `\n` as editors count them) of byte `index`.
/// The YAML parser's own line numbers also break at U+2028, U+2029 and U+0085.
fn location_at(text: &str, index: usize) -> Location {
    let mut at = index.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    Location {
        line: before.matches('\n').count() + 1,
        col: before.rsplit('\n').next().unwrap_or("").chars().count() + 1,
    }
}

/// `text` with the plain scalar starting at 1-based `line`:`col` put in double quotes.
fn quote_scalar_at(text: &str, line: usize, col: usize) -> Option<String> {
    let start_of_line: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    let rest = text.get(start_of_line..)?;
    let offset: usize = rest
        .chars()
        .take(col.checked_sub(1)?)
        .map(char::len_utf8)
        .sum();
    let at = start_of_line + offset;
    let len = text[at..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '_' | '.')))
        .unwrap_or(text.len() - at);
    if len == 0 {
        return None;
    }
    Some(format!(
        "{}\"{}\"{}",
        &text[..at],
        &text[at..at + len],
        &text[at + len..]
    ))
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing.
const MAX_FLOW_DEPTH: usize = 100;

/// Where flow brackets first nest deeper than [`MAX_FLOW_DEPTH`] (quoted text and comments
/// aside), in one linear pass.
fn too_deep(text: &str) -> Option<Location> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for (col, c) in line.chars().enumerate() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '\'' | '"' => quote = Some(c),
                    '#' if prev.is_whitespace() => break,
                    '[' | '{' => {
                        depth += 1;
                        if depth > MAX_FLOW_DEPTH {
                            return Some(Location {
                                line: n + 1,
                                col: col + 1,
                            });
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    None
}

/// Parses and structurally checks a manifest; returns what could be read and every problem found.
/// `resources` are the registry's resource kinds: their sections are top-level keys too.
pub fn load(
    source: Source,
    resources: &[crate::plugin::ResourceKind],
) -> (Option<RawManifest>, Diagnostics) {
    let spans = SpanIndex::build(&source.text);
    let mut r = Reporter::new(&source.name, &spans);
    if let Some(i) = source.text.find('\0') {
        let before = &source.text[..i];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        r.at(
            Location { line, col },
            "invalid YAML: a NUL byte; a manifest is text",
            None,
        );
        return (None, r.diags);
    }
    if let Some(at) = too_deep(&source.text) {
        // The YAML parser takes minutes to give up on 100,000 nested brackets.
        r.at(
            at,
            format!("invalid YAML: brackets nested deeper than {MAX_FLOW_DEPTH} levels"),
            None,
        );
        return (None, r.diags);
    }
    let mut text = std::borrow::Cow::Borrowed(source.text.as_str());
    let parsed = loop {
        match serde_yaml::from_str::<Value>(&text) {
            // An integer beyond 64 bits: report it, read it as text, and go on checking the rest.
            Err(e) if e.to_string().contains(" as u128") || e.to_string().contains(" as i128") => {
                let Some(l) = e.location() else {
                    break Err(e);
                };
                let Some(patched) = quote_scalar_at(&text, l.line(), l.column()) else {
                    break Err(e);
                };
                r.at(
                    location_at(&text, l.index()),
                    "integer out of range (at most 64 bits)",
                    Some("quote it if it is meant as text".into()),
                );
                text = std::borrow::Cow::Owned(patched);
            }
            other => break other,
        }
    };
    let mut root: Value = match parsed {
        Ok(v) => v,
        Err(e) => {
            let loc = e
                .location()
                .map(|l| location_at(&text, l.index()))
                .unwrap_or(Location { line: 1, col: 1 });
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            // Point at the repeated key itself (serde_yaml names the mapping, or 1:1).
            let loc = match spans.duplicate_key() {
                Some(d) if msg.contains("duplicate entry") => d,
                _ => loc,
            };
            r.at(loc, format!("invalid YAML: {msg}"), None);
            return (None, r.diags);
        }
    };
    let top = Path::root();
    let Value::Mapping(map) = &mut root else {
        let what = type_name(&root);
        r.value(
            &top,
            format!("a manifest must be a mapping with version, name and nodes; found {what}"),
            None,
        );
        return (None, r.diags);
    };
    let mut top_keys: Vec<&str> = TOP_KEYS[..TOP_KEYS.len() - 1].to_vec();
    top_keys.extend(resources.iter().map(|k| k.section));
    top_keys.push("nodes");
    check_keys(&mut r, map, &top, &top_keys, "manifest");

    match get(map, "version") {
        None => r.value(
            &top,
            format!("missing \"version\" (expected {VERSION})"),
            None,
        ),
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(v) => r.value(
            &top.key("version"),
            format!("unsupported version {}; expected {VERSION}", key_str(v)),
            None,
        ),
    }
    let name = match get(map, "name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(v) => {
            r.value(
                &top.key("name"),
                format!(
                    "\"name\" must be a non-empty string; found {}",
                    type_name(v)
                ),
                None,
            );
            String::new()
        }
        None => {
            r.value(&top, "missing \"name\" (the pipeline's name)", None);
            String::new()
        }
    };

    // Params first: they may use ${env.X}, never other params.
    let mut params = Mapping::new();
    match get(map, "params").cloned() {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(mut m)) => {
            for (k, v) in m.iter_mut() {
                let p = top.key("params").key(key_str(k));
                substitute(&mut r, v, &p, None);
            }
            params = m;
        }
        Some(v) => r.value(
            &top.key("params"),
            format!(
                "\"params\" must be a mapping of names to values; found {}",
                type_name(&v)
            ),
            None,
        ),
    }

    for (k, v) in &source.overrides {
        let key = Value::String(k.clone());
        if params.contains_key(&key) {
            let value = serde_yaml::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
            params.insert(key, value);
        } else {
            let names: Vec<&str> = params.keys().filter_map(Value::as_str).collect();
            r.value(
                &top.key("params"),
                format!("--set {k}={v}: the manifest declares no param \"{k}\""),
                did_you_mean(k, names.iter().copied())
                    .or_else(|| Some(format!("declared params: {}", names.join(", ")))),
            );
        }
    }

    let mut sections = BTreeMap::new();
    for kind in resources {
        let section = kind.section;
        let mut entries = Vec::new();
        match get(map, section).cloned() {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                for (k, mut v) in m {
                    let name = key_str(&k);
                    let p = top.key(section).key(&name);
                    substitute(&mut r, &mut v, &p, Some(&params));
                    entries.push((name, v, p));
                }
            }
            Some(v) => r.value(
                &top.key(section),
                format!(
                    "\"{section}\" must be a mapping of names to {}s; found {}",
                    kind.noun,
                    type_name(&v)
                ),
                None,
            ),
        }
        sections.insert(section.to_string(), entries);
    }

    let mut remote = None;
    if let Some(mut v) = get(map, "remote").cloned() {
        let p = top.key("remote");
        substitute(&mut r, &mut v, &p, Some(&params));
        match v {
            Value::Null => {}
            Value::String(url)
                if ["s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "file://"]
                    .iter()
                    .any(|s| url.starts_with(s)) =>
            {
                remote = Some(url)
            }
            other => r.value(
                &p,
                format!(
                    "\"remote\" must be a URL: s3://BUCKET/PREFIX, gs://, az:// or file:///PATH; found {}",
                    match &other {
                        Value::String(s) => format!("\"{s}\""),
                        v => type_name(v).to_string(),
                    }
                ),
                None,
            ),
        }
    }

    let mut executors = BTreeMap::new();
    match get(map, "executors").cloned() {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, mut v) in m {
                let kind = key_str(&k);
                let p = top.key("executors").key(&kind);
                substitute(&mut r, &mut v, &p, Some(&params));
                executors.insert(kind, (v, p));
            }
        }
        Some(v) => r.value(
            &top.key("executors"),
            format!(
                "\"executors\" must map node kinds to executors, like `trainer: {{slurm: {{cpus: 2}}}}`; found {}",
                type_name(&v)
            ),
            None,
        ),
    }

    let mut items = Vec::new();
    match get(map, "nodes").cloned() {
        None => r.value(&top, "missing \"nodes\" (the list of pipeline nodes)", None),
        Some(Value::Sequence(seq)) => {
            if seq.is_empty() {
                r.value(
                    &top.key("nodes"),
                    "\"nodes\" is empty; a pipeline needs at least one node",
                    None,
                );
            }
            for (i, mut item) in seq.into_iter().enumerate() {
                let p = top.key("nodes").index(i);
                substitute(&mut r, &mut item, &p, Some(&params));
                if let Some(it) = read_item(&mut r, &item, &p, true) {
                    items.push(it);
                }
            }
        }
        Some(v) => r.value(
            &top.key("nodes"),
            format!("\"nodes\" must be a list of nodes; found {}", type_name(&v)),
            None,
        ),
    }
    let diags = r.diags;
    let manifest = RawManifest {
        source,
        spans,
        name,
        params,
        remote,
        executors,
        resources: sections,
        items,
    };
    (Some(manifest), diags)
}

fn read_item(r: &mut Reporter, v: &Value, path: &Path, top_level: bool) -> Option<RawItem> {
    let Value::Mapping(m) = v else {
        r.value(
            path,
            format!(
                "a node must be a mapping with id, kind and config; found {}",
                type_name(v)
            ),
            None,
        );
        return None;
    };
    if get(m, "loop").is_some() {
        if !top_level {
            r.key(
                &path.key("loop"),
                "loops cannot be nested inside a loop",
                None,
            );
            return None;
        }
        return read_loop(r, m, path).map(RawItem::Loop);
    }
    read_node(r, m, path).map(RawItem::Node)
}

fn read_id(r: &mut Reporter, m: &Mapping, path: &Path, what: &str) -> Option<String> {
    match get(m, "id") {
        None => {
            r.value(path, format!("{what} has no \"id\""), None);
            None
        }
        Some(Value::String(s)) => {
            if !is_identifier(s) {
                r.value(
                    &path.key("id"),
                    format!("invalid id \"{s}\": ids are letters, digits and _, not starting with a digit"),
                    Some("ids are used in `until` expressions and input references like `node.output`".into()),
                );
                return None;
            }
            Some(s.clone())
        }
        Some(v) => {
            r.value(
                &path.key("id"),
                format!("\"id\" must be a string; found {}", type_name(v)),
                None,
            );
            None
        }
    }
}

/// True for names usable as ids: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn read_node(r: &mut Reporter, m: &Mapping, path: &Path) -> Option<RawNode> {
    let id = read_id(r, m, path, "node");
    let label = id.clone().unwrap_or_else(|| "?".into());
    check_keys(r, m, path, NODE_KEYS, &format!("node \"{label}\""));
    let kind = match get(m, "kind") {
        None => {
            r.value(
                path,
                format!("node \"{label}\" has no \"kind\""),
                Some("every node needs a kind; `relabel schema` lists them, or use `loop:` for a loop".into()),
            );
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            r.value(
                &path.key("kind"),
                format!(
                    "node \"{label}\": \"kind\" must be a string; found {}",
                    type_name(v)
                ),
                None,
            );
            None
        }
    };
    let mut inputs = Vec::new();
    let ipath = path.key("inputs");
    match get(m, "inputs") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(seq)) => {
            for (i, e) in seq.iter().enumerate() {
                let p = ipath.index(i);
                match e {
                    Value::String(s) => {
                        let name = s.rsplit('.').next().unwrap_or(s).to_string();
                        inputs.push(RawInput {
                            name,
                            reference: s.clone(),
                            path: p,
                        });
                    }
                    other => r.value(
                        &p,
                        format!(
                            "node \"{label}\": an input must be a reference like `node` or `node.output`; found {}",
                            type_name(other)
                        ),
                        None,
                    ),
                }
            }
        }
        Some(Value::Mapping(im)) => {
            for (k, e) in im {
                let name = key_str(k);
                let p = ipath.key(&name);
                match e {
                    Value::String(s) if is_identifier(&name) => inputs.push(RawInput {
                        name,
                        reference: s.clone(),
                        path: p,
                    }),
                    Value::String(_) => r.key(
                        &p,
                        format!("node \"{label}\": invalid input name \"{name}\""),
                        Some("input names are letters, digits and _".into()),
                    ),
                    other => r.value(
                        &p,
                        format!(
                            "node \"{label}\": input \"{name}\" must be a reference like `node` or `node.output`; found {}",
                            type_name(other)
                        ),
                        None,
                    ),
                }
            }
        }
        Some(v) => r.value(
            &ipath,
            format!(
                "node \"{label}\": \"inputs\" must be a list of references or a mapping of names to references; found {}",
                type_name(v)
            ),
            None,
        ),
    }
    let config = match get(m, "config") {
        None | Some(Value::Null) => Value::Mapping(Mapping::new()),
        Some(v @ Value::Mapping(_)) => v.clone(),
        Some(v) => {
            r.value(
                &path.key("config"),
                format!(
                    "node \"{label}\": \"config\" must be a mapping; found {}",
                    type_name(v)
                ),
                None,
            );
            return None;
        }
    };
    // `executor: null` is kept: it means "here", overriding a default for the kind.
    let executor = get(m, "executor").map(|v| (v.clone(), path.key("executor")));
    Some(RawNode {
        id: id?,
        kind: kind?,
        kind_path: path.key("kind"),
        inputs,
        config,
        path: path.clone(),
        executor,
    })
}

fn read_loop(r: &mut Reporter, m: &Mapping, path: &Path) -> Option<RawLoop> {
    let id = read_id(r, m, path, "loop");
    let label = id.clone().unwrap_or_else(|| "?".into());
    check_keys(r, m, path, LOOP_ITEM_KEYS, &format!("loop \"{label}\""));
    let lpath = path.key("loop");
    let mut max_rounds = None;
    let mut until = None;
    let mut carry = Vec::new();
    match get(m, "loop") {
        Some(Value::Mapping(lm)) => {
            check_keys(r, lm, &lpath, LOOP_KEYS, &format!("loop \"{label}\""));
            match get(lm, "max_rounds") {
                Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=1000).contains(&n)) => {
                    max_rounds = n.as_u64().map(|n| n as u32);
                }
                Some(v) => r.value(
                    &lpath.key("max_rounds"),
                    format!(
                        "loop \"{label}\": \"max_rounds\" must be a whole number from 1 to 1000; found {}",
                        key_str(v)
                    ),
                    None,
                ),
                None => r.value(
                    &lpath,
                    format!("loop \"{label}\" has no \"max_rounds\""),
                    Some("every loop needs an upper bound on its rounds".into()),
                ),
            }
            match get(lm, "until") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => until = Some(s.clone()),
                Some(v) => r.value(
                    &lpath.key("until"),
                    format!(
                        "loop \"{label}\": \"until\" must be an expression string like \"filter.flag_rate < 0.02\"; found {}",
                        type_name(v)
                    ),
                    None,
                ),
            }
            match get(lm, "carry") {
                None | Some(Value::Null) => {}
                Some(Value::Mapping(cm)) => {
                    for (k, cv) in cm {
                        let name = key_str(k);
                        let cp = lpath.key("carry").key(&name);
                        let Value::Mapping(cvm) = cv else {
                            r.value(
                                &cp,
                                format!("loop \"{label}\": carry \"{name}\" must be a mapping with `from` and `next`"),
                                None,
                            );
                            continue;
                        };
                        check_keys(r, cvm, &cp, CARRY_KEYS, &format!("loop \"{label}\": carry \"{name}\""));
                        let from = get(cvm, "from").and_then(Value::as_str);
                        let next = get(cvm, "next").and_then(Value::as_str);
                        if from.is_none() {
                            r.value(
                                &cp,
                                format!("loop \"{label}\": carry \"{name}\" needs `from` (the node giving round 1's value)"),
                                None,
                            );
                        }
                        if next.is_none() {
                            r.value(
                                &cp,
                                format!("loop \"{label}\": carry \"{name}\" needs `next` (the body node giving the next round's value)"),
                                None,
                            );
                        }
                        if !is_identifier(&name) {
                            r.key(&cp, format!("loop \"{label}\": invalid carry name \"{name}\""), None);
                            continue;
                        }
                        if let (Some(from), Some(next)) = (from, next) {
                            carry.push(RawCarry {
                                name,
                                from: from.to_string(),
                                next: next.to_string(),
                                path: cp,
                            });
                        }
                    }
                }
                Some(v) => r.value(
                    &lpath.key("carry"),
                    format!("loop \"{label}\": \"carry\" must be a mapping; found {}", type_name(v)),
                    None,
                ),
            }
        }
        Some(v) => r.value(
            &lpath,
            format!(
                "loop \"{label}\": \"loop\" must be a mapping with max_rounds, until and carry; found {}",
                type_name(v)
            ),
            None,
        ),
        None => unreachable!("read_loop is called only when `loop` is present"),
    }
    let mut nodes = Vec::new();
    match get(m, "nodes") {
        Some(Value::Sequence(seq)) if !seq.is_empty() => {
            for (i, e) in seq.iter().enumerate() {
                let p = path.key("nodes").index(i);
                match read_item(r, e, &p, false) {
                    Some(RawItem::Node(n)) => nodes.push(n),
                    Some(RawItem::Loop(_)) | None => {}
                }
            }
        }
        Some(v) => r.value(
            &path.key("nodes"),
            format!(
                "loop \"{label}\": \"nodes\" must be a non-empty list of nodes; found {}",
                type_name(v)
            ),
            None,
        ),
        None => r.value(
            path,
            format!("loop \"{label}\" has no \"nodes\" (its body)"),
            None,
        ),
    }
    Some(RawLoop {
        id: id?,
        max_rounds: max_rounds?,
        until,
        carry,
        nodes,
        path: path.clone(),
    })
}

/// Replaces `${params.x}` (when `params` is given) and `${env.X}` in every string under `v`.
/// `$${` (an escaped `${`) and other `${...}` forms are left for the node kinds.
fn substitute(r: &mut Reporter, v: &mut Value, path: &Path, params: Option<&Mapping>) {
    match v {
        Value::String(s) => {
            if let Some(new) = substitute_str(r, s, path, params) {
                *v = new;
            }
        }
        Value::Sequence(seq) => {
            for (i, e) in seq.iter_mut().enumerate() {
                substitute(r, e, &path.index(i), params);
            }
        }
        Value::Mapping(m) => {
            for (k, e) in m.iter_mut() {
                let p = path.key(key_str(k));
                substitute(r, e, &p, params);
            }
        }
        Value::Tagged(t) => substitute(r, &mut t.value, path, params),
        _ => {}
    }
}

fn lookup_param<'m>(params: &'m Mapping, dotted: &str) -> Option<&'m Value> {
    let mut parts = dotted.split('.');
    let mut cur = get(params, parts.next()?)?;
    for p in parts {
        cur = match cur {
            Value::Mapping(m) => get(m, p)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn substitute_str(
    r: &mut Reporter,
    s: &str,
    path: &Path,
    params: Option<&Mapping>,
) -> Option<Value> {
    if !s.contains("${") {
        return None;
    }
    let mut out = String::new();
    let mut rest = s;
    let mut changed = false;
    while let Some(pos) = rest.find("${") {
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            // `$${` is an escape for the node kind to undo: keep it, and skip what it escapes.
            out.push_str(&rest[..pos + 2]);
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[pos..]);
            rest = "";
            break;
        };
        let expr = &after[..end];
        let whole = pos == 0 && end + 3 == rest.len() && out.is_empty();
        let replacement: Option<Value> = if let Some(name) = expr.strip_prefix("params.") {
            match params {
                None => {
                    r.value(
                        path,
                        format!("`${{params.{name}}}` cannot be used here: params may only refer to `${{env.X}}`"),
                        None,
                    );
                    Some(Value::String(String::new()))
                }
                Some(params) => match lookup_param(params, name) {
                    Some(v) => Some(v.clone()),
                    None => {
                        let known: Vec<String> = params.keys().map(key_str).collect();
                        let hint =
                            did_you_mean(name, known.iter().map(String::as_str)).or_else(|| {
                                Some(if known.is_empty() {
                                    "this manifest defines no params".to_string()
                                } else {
                                    format!("defined params: {}", known.join(", "))
                                })
                            });
                        r.value(
                            path,
                            format!("unknown param \"{name}\" in `${{params.{name}}}`"),
                            hint,
                        );
                        Some(Value::String(String::new()))
                    }
                },
            }
        } else if let Some(spec) = expr.strip_prefix("env.") {
            let (name, default) = match spec.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (spec, None),
            };
            if looks_secret(name) {
                r.value(
                    path,
                    format!("`${{env.{name}}}` looks like a secret; secrets must not be copied into manifests, caches or reports"),
                    Some("name the variable in the endpoint's `api_key_env` instead; the key is read only when a request is sent".into()),
                );
                Some(Value::String(String::new()))
            } else {
                match (std::env::var(name), default) {
                    (Ok(v), _) => Some(Value::String(v)),
                    (Err(_), Some(d)) => Some(Value::String(d.to_string())),
                    (Err(_), None) => {
                        r.value(
                            path,
                            format!("environment variable \"{name}\" is not set (used as `${{env.{name}}}`)"),
                            Some(format!("set it, or give a default: `${{env.{name}:-value}}`")),
                        );
                        Some(Value::String(String::new()))
                    }
                }
            }
        } else {
            None
        };
        match replacement {
            Some(v) if whole => return Some(v),
            Some(v) => {
                changed = true;
                match scalar_text(&v) {
                    Some(t) => out.push_str(&t),
                    None => r.value(
                        path,
                        format!(
                            "`${{{expr}}}` is {} and cannot be placed inside a string",
                            type_name(&v)
                        ),
                        Some("use it as the whole value instead".into()),
                    ),
                }
            }
            None => out.push_str(&rest[pos..pos + 3 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    changed.then_some(Value::String(out))
}
