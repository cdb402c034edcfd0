//! Resolution: raw items -> a checked [`Pipeline`] (kinds looked up, configs typed, inputs and loops resolved).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::diag::{did_you_mean, Diagnostics, Location};
use crate::graph::{Dag, Edge};
use crate::manifest::{self, RawItem, RawManifest, RawNode, Reporter, Source};
use crate::plugin::{Plugin, Registry, ResourceKind};
use crate::span::{Path, SpanIndex};

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputRef {
    /// An output of a node (top-level, or in the same loop body and round).
    Node { node: String, output: String },
    /// A loop's carried value: round 1 gets `from`, round k gets round k-1's `next`; after the loop, the last value.
    Carry { loop_id: String, name: String },
}

impl std::fmt::Display for InputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputRef::Node { node, output } => write!(f, "{node}.{output}"),
            InputRef::Carry { loop_id, name } => write!(f, "{loop_id}.{name}"),
        }
    }
}

/// A node ready to run.
#[derive(Clone)]
pub struct NodeSpec {
    pub id: String,
    pub plugin: Arc<dyn Plugin>,
    /// The config in canonical form (defaults filled in); part of the cache key.
    pub config: serde_json::Value,
    pub inputs: BTreeMap<String, InputRef>,
    pub outputs: Vec<String>,
    /// Files the config refers to, resolved against the manifest's folder.
    pub files: Vec<PathBuf>,
    pub loop_id: Option<String>,
    pub loc: Location,
    /// The resources the node uses, by section (absent: the manifest declares none).
    pub resources: BTreeMap<String, NodeResource>,
    /// Where it runs when not in this process (its `executor:`, else its kind's default under
    /// `executors:`). Not part of the key: where a node runs does not change what it makes.
    pub executor: Option<crate::executor::Executor>,
}

/// The entry of a resource section a node uses: its name, its declaration, and the part of it
/// that joins the cache key.
#[derive(Debug, Clone)]
pub struct NodeResource {
    pub name: String,
    pub value: serde_json::Value,
    pub key: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Carry {
    pub name: String,
    pub from: InputRef,
    /// The body node output that becomes the next round's value.
    pub next: InputRef,
}

/// A loop: its body runs round after round until `until` holds or `max_rounds` is reached.
#[derive(Clone)]
pub struct LoopSpec {
    pub id: String,
    pub max_rounds: u32,
    pub until: Option<String>,
    pub carry: Vec<Carry>,
    pub body: Vec<NodeSpec>,
    pub body_dag: Dag,
    pub loc: Location,
}

#[derive(Clone)]
pub enum Unit {
    Node(NodeSpec),
    Loop(LoopSpec),
}

impl Unit {
    pub fn id(&self) -> &str {
        match self {
            Unit::Node(n) => &n.id,
            Unit::Loop(l) => &l.id,
        }
    }
}

/// A checked pipeline: top-level units in a DAG, loops holding their own body DAGs.
#[derive(Clone)]
pub struct Pipeline {
    pub name: String,
    pub source: Source,
    pub units: Vec<Unit>,
    pub dag: Dag,
    /// Resource sections: named entries, as checked (never holding a secret: only variable
    /// names).
    pub resources: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// The manifest's remote cache URL (`remote:`); `--remote` and `$RELABEL_REMOTE` outrank it.
    pub remote: Option<String>,
}

impl Pipeline {
    pub fn unit_index(&self, id: &str) -> Option<usize> {
        self.units.iter().position(|u| u.id() == id)
    }

    /// The top-level unit holding node `id` (itself, or the loop whose body has it).
    pub fn unit_of(&self, id: &str) -> Option<usize> {
        self.units.iter().position(|u| match u {
            Unit::Node(n) => n.id == id,
            Unit::Loop(l) => l.id == id || l.body.iter().any(|n| n.id == id),
        })
    }

    /// Every node id, loop bodies included.
    pub fn all_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for u in &self.units {
            ids.push(u.id().to_string());
            if let Unit::Loop(l) = u {
                ids.extend(l.body.iter().map(|n| n.id.clone()));
            }
        }
        ids
    }
}

/// Reads, checks and resolves a manifest; every problem found is returned together.
pub fn load_pipeline(source: Source, registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let (raw, mut diags) = manifest::load(source, registry.resources());
    let Some(raw) = raw else {
        return Err(diags.finish());
    };
    match resolve(&raw, registry) {
        Ok(p) if diags.is_empty() => Ok(p),
        Ok(_) => Err(diags.finish()),
        Err(more) => {
            diags.0.extend(more.0);
            Err(diags.finish())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    Top(usize),
    Loop(usize),
    Body(usize, usize),
}

struct Checked {
    outputs: Option<Vec<String>>,
    spec: Option<NodeSpec>,
}

/// Resolves a structurally checked manifest.
pub fn resolve(raw: &RawManifest, registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let spans: &SpanIndex = &raw.spans;
    let mut r = Reporter::new(&raw.source.name, spans);

    // 1. ids: unique across the whole manifest, loop bodies included.
    let mut places: HashMap<String, (Place, Path)> = HashMap::new();
    let mut claim = |r: &mut Reporter, id: &str, place: Place, path: &Path| {
        if let Some((_, first)) = places.get(id) {
            let at = spans.value(&first.key("id"));
            r.value(
                &path.key("id"),
                format!(
                    "duplicate id \"{id}\" (first defined at line {}:{})",
                    at.line, at.col
                ),
                Some("every node and loop needs its own id".into()),
            );
        } else {
            places.insert(id.to_string(), (place, path.clone()));
        }
    };
    for (i, item) in raw.items.iter().enumerate() {
        match item {
            RawItem::Node(n) => claim(&mut r, &n.id, Place::Top(i), &n.path),
            RawItem::Loop(l) => {
                claim(&mut r, &l.id, Place::Loop(i), &l.path);
                for (j, n) in l.nodes.iter().enumerate() {
                    claim(&mut r, &n.id, Place::Body(i, j), &n.path);
                }
            }
        }
    }
    let mut all_ids: Vec<&str> = places.keys().map(String::as_str).collect();
    all_ids.sort();

    // 2. kinds and configs.
    let known: Vec<&str> = registry.kinds().collect();
    let check_node = |r: &mut Reporter, n: &RawNode| -> Checked {
        let Some(plugin) = registry.get(&n.kind) else {
            let hint = did_you_mean(&n.kind, known.iter().copied())
                .map(|h| format!("{h} known kinds: {}", known.join(", ")))
                .unwrap_or_else(|| format!("known kinds: {}", known.join(", ")));
            r.value(
                &n.kind_path,
                format!("node \"{}\": unknown kind \"{}\"", n.id, n.kind),
                Some(hint),
            );
            return Checked {
                outputs: None,
                spec: None,
            };
        };
        let executor = match n.executor.as_ref().or_else(|| raw.executors.get(&n.kind)) {
            None => None,
            Some((v, _)) if v.is_null() => None,
            Some((v, p)) => {
                let json = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
                match crate::executor::Executor::parse(&json) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        r.value(p, format!("node \"{}\": executor: {e}", n.id), None);
                        None
                    }
                }
            }
        };
        let input_names: Vec<String> = n.inputs.iter().map(|i| i.name.clone()).collect();
        match plugin.check(&n.config, &input_names) {
            Ok(c) => Checked {
                outputs: Some(c.outputs.clone()),
                spec: Some(NodeSpec {
                    resources: c
                        .resources
                        .iter()
                        .filter_map(|section| {
                            let kind = registry.resource(section)?;
                            let res = node_resource(r, raw, kind, n, &c.canonical)?;
                            Some((section.to_string(), res))
                        })
                        .collect(),
                    id: n.id.clone(),
                    plugin: plugin.clone(),
                    config: c.canonical,
                    inputs: BTreeMap::new(),
                    outputs: c.outputs,
                    files: c.files.iter().map(|f| raw.source.dir.join(f)).collect(),
                    loop_id: None,
                    loc: spans.value(&n.path),
                    executor,
                }),
            },
            Err(problems) => {
                for p in problems {
                    let path = n.path.key("config").join(&p.path);
                    let msg = if p.path.0.is_empty() {
                        format!("node \"{}\" ({}): config: {}", n.id, n.kind, p.message)
                    } else {
                        format!(
                            "node \"{}\" ({}): config.{}: {}",
                            n.id, n.kind, p.path, p.message
                        )
                    };
                    if p.at_key {
                        r.key(&path, msg, p.hint);
                    } else {
                        r.value(&path, msg, p.hint);
                    }
                }
                Checked {
                    outputs: None,
                    spec: None,
                }
            }
        }
    };
    let mut checked: HashMap<String, Checked> = HashMap::new();
    for item in &raw.items {
        match item {
            RawItem::Node(n) => {
                let c = check_node(&mut r, n);
                checked.entry(n.id.clone()).or_insert(c);
            }
            RawItem::Loop(l) => {
                for n in &l.nodes {
                    let c = check_node(&mut r, n);
                    checked.entry(n.id.clone()).or_insert(c);
                }
            }
        }
    }
    let loop_carries: HashMap<&str, Vec<&str>> = raw
        .items
        .iter()
        .filter_map(|it| match it {
            RawItem::Loop(l) => Some((
                l.id.as_str(),
                l.carry.iter().map(|c| c.name.as_str()).collect(),
            )),
            _ => None,
        })
        .collect();

    // 3. input references.
    let outputs_of: HashMap<String, Option<Vec<String>>> = checked
        .iter()
        .map(|(k, c)| (k.clone(), c.outputs.clone()))
        .collect();
    let resolve_ref = |r: &mut Reporter,
                       who: &str,
                       from_loop: Option<usize>,
                       reference: &str,
                       path: &Path|
     -> Option<InputRef> {
        let (target, output) = match reference.split_once('.') {
            Some((t, o)) => (t, Some(o)),
            None => (reference, None),
        };
        let Some((place, _)) = places.get(target) else {
            let hint = did_you_mean(target, all_ids.iter().copied());
            r.value(
                path,
                format!("node \"{who}\": input \"{reference}\" refers to no node"),
                hint,
            );
            return None;
        };
        match *place {
            Place::Loop(li) => {
                let carries = &loop_carries[target];
                let name = match output {
                    Some(o) => o,
                    None if carries.len() == 1 => carries[0],
                    None => {
                        r.value(
                            path,
                            format!("node \"{who}\": loop \"{target}\" carries {}; name one, as `{target}.NAME`", list_or_none(carries)),
                            None,
                        );
                        return None;
                    }
                };
                if !carries.contains(&name) {
                    r.value(
                        path,
                        format!("node \"{who}\": loop \"{target}\" carries no value \"{name}\""),
                        did_you_mean(name, carries.iter().copied())
                            .or_else(|| Some(format!("it carries: {}", list_or_none(carries)))),
                    );
                    return None;
                }
                let _ = li;
                Some(InputRef::Carry {
                    loop_id: target.to_string(),
                    name: name.to_string(),
                })
            }
            Place::Body(li, _) if from_loop != Some(li) => {
                let loop_id = raw.items[li].id();
                r.value(
                    path,
                    format!("node \"{who}\": input \"{reference}\" refers to node \"{target}\" inside loop \"{loop_id}\""),
                    Some(format!("outside a loop's body, use what it carries: `{loop_id}.NAME`")),
                );
                None
            }
            Place::Top(_) | Place::Body(..) => {
                let outputs = outputs_of.get(target).cloned().flatten();
                let Some(outputs) = outputs else {
                    // The target is broken; its own diagnostics say why.
                    return Some(InputRef::Node {
                        node: target.to_string(),
                        output: output.unwrap_or("").to_string(),
                    });
                };
                let output = match output {
                    Some(o) => o.to_string(),
                    None if outputs.len() == 1 => outputs[0].clone(),
                    None => {
                        r.value(
                            path,
                            format!(
                                "node \"{who}\": node \"{target}\" has {}; name one, as `{target}.OUTPUT`",
                                if outputs.is_empty() { "no outputs".to_string() } else { format!("outputs {}", outputs.join(", ")) }
                            ),
                            None,
                        );
                        return None;
                    }
                };
                if !outputs.contains(&output) {
                    r.value(
                        path,
                        format!("node \"{who}\": node \"{target}\" has no output \"{output}\""),
                        did_you_mean(&output, outputs.iter().map(String::as_str)).or_else(|| {
                            Some(format!(
                                "its outputs: {}",
                                list_or_none(
                                    &outputs.iter().map(String::as_str).collect::<Vec<_>>()
                                )
                            ))
                        }),
                    );
                    return None;
                }
                Some(InputRef::Node {
                    node: target.to_string(),
                    output,
                })
            }
        }
    };

    let mut units: Vec<Option<Unit>> = Vec::new();
    let mut top_edges: Vec<(String, String, Path)> = Vec::new(); // (from unit id, to unit id, path)
    let fill_inputs = |r: &mut Reporter,
                       n: &RawNode,
                       from_loop: Option<usize>,
                       checked: &mut HashMap<String, Checked>,
                       top_edges: &mut Vec<(String, String, Path)>,
                       body_edges: &mut Vec<(String, String, Path)>|
     -> Option<NodeSpec> {
        let mut inputs = BTreeMap::new();
        let mut ok = true;
        for inp in &n.inputs {
            if inputs.contains_key(&inp.name) {
                r.value(
                    &inp.path,
                    format!("node \"{}\": two inputs are named \"{}\"", n.id, inp.name),
                    Some(
                        "use the mapping form `inputs: {name: node.output}` to name them apart"
                            .into(),
                    ),
                );
                ok = false;
                continue;
            }
            match resolve_ref(r, &n.id, from_loop, &inp.reference, &inp.path) {
                Some(rf) => {
                    let target = match &rf {
                        InputRef::Node { node, .. } => node.clone(),
                        InputRef::Carry { loop_id, .. } => loop_id.clone(),
                    };
                    match (from_loop, places.get(&target).map(|p| p.0)) {
                        (Some(li), Some(Place::Body(tl, _))) if tl == li => {
                            body_edges.push((target, n.id.clone(), inp.path.clone()))
                        }
                        (Some(li), Some(Place::Loop(tl))) if tl == li => {} // the loop's own carry
                        (Some(li), _) => top_edges.push((
                            target,
                            raw.items[li].id().to_string(),
                            inp.path.clone(),
                        )),
                        (None, _) => top_edges.push((target, n.id.clone(), inp.path.clone())),
                    }
                    inputs.insert(inp.name.clone(), rf);
                }
                None => ok = false,
            }
        }
        let mut spec = checked.remove(&n.id).and_then(|c| c.spec)?;
        spec.inputs = inputs;
        ok.then_some(spec)
    };

    for (i, item) in raw.items.iter().enumerate() {
        match item {
            RawItem::Node(n) => {
                let mut unused = Vec::new();
                let spec = fill_inputs(&mut r, n, None, &mut checked, &mut top_edges, &mut unused);
                units.push(spec.map(Unit::Node));
            }
            RawItem::Loop(l) => {
                let mut body_edges = Vec::new();
                let mut body = Vec::new();
                let mut ok = true;
                for n in &l.nodes {
                    match fill_inputs(
                        &mut r,
                        n,
                        Some(i),
                        &mut checked,
                        &mut top_edges,
                        &mut body_edges,
                    ) {
                        Some(mut s) => {
                            s.loop_id = Some(l.id.clone());
                            body.push(s);
                        }
                        None => ok = false,
                    }
                }
                let mut carry = Vec::new();
                for c in &l.carry {
                    let from = resolve_ref(&mut r, &l.id, None, &c.from, &c.path.key("from"));
                    if let Some(
                        InputRef::Node { node, .. } | InputRef::Carry { loop_id: node, .. },
                    ) = &from
                    {
                        if node == &l.id {
                            r.value(
                                &c.path.key("from"),
                                format!(
                                    "loop \"{}\": carry \"{}\" starts from the loop itself",
                                    l.id, c.name
                                ),
                                None,
                            );
                            ok = false;
                        } else {
                            top_edges.push((node.clone(), l.id.clone(), c.path.key("from")));
                        }
                    }
                    let next_target = c.next.split('.').next().unwrap_or("");
                    let next = match places.get(next_target) {
                        Some((Place::Body(li, _), _)) if *li == i => {
                            resolve_ref(&mut r, &l.id, Some(i), &c.next, &c.path.key("next"))
                        }
                        _ => {
                            let body_ids: Vec<&str> =
                                l.nodes.iter().map(|n| n.id.as_str()).collect();
                            r.value(
                                &c.path.key("next"),
                                format!("loop \"{}\": carry \"{}\": `next` must name a node in the loop's body; \"{}\" is not one", l.id, c.name, c.next),
                                did_you_mean(next_target, body_ids.iter().copied())
                                    .or_else(|| Some(format!("body nodes: {}", body_ids.join(", ")))),
                            );
                            None
                        }
                    };
                    if body.iter().any(|n: &NodeSpec| n.id == c.name) {
                        r.key(
                            &c.path,
                            format!(
                                "loop \"{}\": carry \"{}\" has the name of a body node",
                                l.id, c.name
                            ),
                            Some("give the carried value its own name".into()),
                        );
                        ok = false;
                    }
                    match (from, next) {
                        (Some(from), Some(next)) => carry.push(Carry {
                            name: c.name.clone(),
                            from,
                            next,
                        }),
                        _ => ok = false,
                    }
                }
                if let Some(until) = &l.until {
                    let env = minijinja::Environment::new();
                    let upath = l.path.key("loop").key("until");
                    match env.compile_expression(until) {
                        Err(e) => {
                            r.value(
                                &upath,
                                format!(
                                    "loop \"{}\": `until` is not a valid expression: {}",
                                    l.id,
                                    e.detail().unwrap_or(&e.to_string())
                                ),
                                None,
                            );
                            ok = false;
                        }
                        Ok(expr) => {
                            let body_ids: Vec<&str> =
                                l.nodes.iter().map(|n| n.id.as_str()).collect();
                            let mut names: Vec<String> =
                                expr.undeclared_variables(false).into_iter().collect();
                            names.sort();
                            for name in names {
                                if name != "round" && !body_ids.contains(&name.as_str()) {
                                    let mut known = body_ids.clone();
                                    known.push("round");
                                    r.value(
                                        &upath,
                                        format!("loop \"{}\": `until` reads \"{name}\", which is neither `round` nor a node of the loop's body", l.id),
                                        did_you_mean(&name, known.iter().copied()).or_else(|| Some(format!("it can read: {}", known.join(", ")))),
                                    );
                                    ok = false;
                                }
                            }
                        }
                    }
                }
                // The body's own DAG.
                let body_index: HashMap<&str, usize> = body
                    .iter()
                    .enumerate()
                    .map(|(k, n)| (n.id.as_str(), k))
                    .collect();
                let edges: Vec<Edge> = body_edges
                    .iter()
                    .filter_map(|(f, t, p)| {
                        Some(Edge {
                            from: *body_index.get(f.as_str())?,
                            to: *body_index.get(t.as_str())?,
                            path: p.clone(),
                        })
                    })
                    .collect();
                let body_dag = match Dag::build(body.len(), &edges) {
                    Ok(d) => d,
                    Err(cycles) => {
                        for c in cycles {
                            let names: Vec<&str> =
                                c.members.iter().map(|m| body[*m].id.as_str()).collect();
                            r.value(&c.path, format!("loop \"{}\": its body has a cycle: {}", l.id, names.join(" -> ")), Some("within a round data must flow one way; feed a value to the next round with `carry`".into()));
                        }
                        ok = false;
                        Dag::default()
                    }
                };
                units.push((ok && body.len() == l.nodes.len()).then(|| {
                    Unit::Loop(LoopSpec {
                        id: l.id.clone(),
                        max_rounds: l.max_rounds,
                        until: l.until.clone(),
                        carry,
                        body,
                        body_dag,
                        loc: spans.value(&l.path),
                    })
                }));
            }
        }
    }

    // 4. resource sections.
    let mut resources = BTreeMap::new();
    for kind in registry.resources() {
        let mut checked = BTreeMap::new();
        for (name, v, path) in raw.resources.get(kind.section).into_iter().flatten() {
            if let Err(p) = (kind.check)(v) {
                let at = path.join(&p.path);
                let msg = format!(
                    "{} \"{name}\": {}{}",
                    kind.noun,
                    if p.path.0.is_empty() {
                        String::new()
                    } else {
                        format!("{}: ", p.path)
                    },
                    p.message
                );
                if p.at_key {
                    r.key(&at, msg, p.hint)
                } else {
                    r.value(&at, msg, p.hint)
                }
                continue;
            }
            checked.insert(
                name.clone(),
                serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
            );
        }
        resources.insert(kind.section.to_string(), checked);
    }

    // 5. the top-level DAG.
    let index: HashMap<&str, usize> = raw
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id(), i))
        .collect();
    let edges: Vec<Edge> = top_edges
        .iter()
        .filter_map(|(f, t, p)| {
            Some(Edge {
                from: *index.get(f.as_str())?,
                to: *index.get(t.as_str())?,
                path: p.clone(),
            })
        })
        .collect();
    let dag = match Dag::build(raw.items.len(), &edges) {
        Ok(d) => Some(d),
        Err(cycles) => {
            for c in cycles {
                let names: Vec<&str> = c.members.iter().map(|m| raw.items[*m].id()).collect();
                r.value(
                    &c.path,
                    format!("the pipeline has a cycle: {}", names.join(" -> ")),
                    Some(
                        "data must flow one way; to repeat work, use a `loop` with `carry`".into(),
                    ),
                );
            }
            None
        }
    };

    if !r.diags.is_empty() {
        return Err(r.diags.finish());
    }
    let units: Vec<Unit> = units
        .into_iter()
        .map(|u| u.expect("no diagnostics means every unit resolved"))
        .collect();
    Ok(Pipeline {
        name: raw.name.clone(),
        source: raw.source.clone(),
        units,
        dag: dag.expect("no diagnostics means the DAG was built"),
        resources,
        remote: raw.remote.clone(),
    })
}

/// The entry of `kind`'s section a node uses: the one its config field names, else the
/// manifest's only entry, else none (the kind's default). Unknown names are reported.
fn node_resource(
    r: &mut Reporter,
    raw: &RawManifest,
    kind: &ResourceKind,
    n: &RawNode,
    canonical: &serde_json::Value,
) -> Option<NodeResource> {
    let section = kind.section;
    let entries = raw.resources.get(section).map(Vec::as_slice).unwrap_or(&[]);
    let declared: Vec<&str> = entries.iter().map(|(name, _, _)| name.as_str()).collect();
    let named = canonical.get(section).and_then(|v| v.as_str());
    let name = match named {
        Some(name) => {
            if !declared.contains(&name) {
                let hint = if declared.is_empty() {
                    format!(
                        "declare it under the manifest's top-level `{section}:` section, or leave `{section}` out to {}",
                        kind.without
                    )
                } else {
                    did_you_mean(name, declared.iter().copied())
                        .map(|h| format!("{h} declared: {}", declared.join(", ")))
                        .unwrap_or_else(|| format!("declared: {}", declared.join(", ")))
                };
                r.value(
                    &n.path.key("config").key(section),
                    format!(
                        "node \"{}\" ({}): unknown {} \"{name}\"",
                        n.id, n.kind, kind.noun
                    ),
                    Some(hint),
                );
                return None;
            }
            name
        }
        None if declared.len() == 1 => declared[0],
        None if declared.is_empty() => return None,
        None => {
            r.key(
                &n.path.key("kind"),
                format!(
                    "node \"{}\" ({}): the manifest declares several {}s ({}); name one",
                    n.id,
                    n.kind,
                    kind.noun,
                    declared.join(", ")
                ),
                Some(format!("add `{section}: NAME` to the node's config")),
            );
            return None;
        }
    };
    let (_, v, _) = entries.iter().find(|(n, _, _)| n == name)?;
    let value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    Some(NodeResource {
        name: name.to_string(),
        key: (kind.key)(&value),
        value,
    })
}

fn list_or_none(xs: &[&str]) -> String {
    if xs.is_empty() {
        "nothing".to_string()
    } else {
        xs.join(", ")
    }
}
