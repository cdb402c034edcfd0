//! Pictures of a pipeline's graph: Graphviz dot and Mermaid, loops drawn as clusters.

use std::fmt::Write as _;

use crate::resolve::{InputRef, NodeSpec, Pipeline, Unit};

fn source_of(r: &InputRef, p: &Pipeline, inside: Option<&str>) -> (String, String) {
    match r {
        InputRef::Node { node, output } => (node.clone(), output.clone()),
        InputRef::Carry { loop_id, name } => {
            if Some(loop_id.as_str()) == inside {
                // Inside the loop the carried value comes from `from` (round 1) or `next`.
                if let Some(Unit::Loop(l)) = p.unit_index(loop_id).map(|i| &p.units[i]) {
                    if let Some(c) = l.carry.iter().find(|c| &c.name == name) {
                        let (InputRef::Node { node, .. } | InputRef::Carry { loop_id: node, .. }) =
                            &c.from;
                        return (node.clone(), name.clone());
                    }
                }
            }
            (format!("{loop_id}_out"), name.clone())
        }
    }
}

/// Edges that feed a loop's carried value back into its body for the next round.
fn feedback(p: &Pipeline) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for u in &p.units {
        if let Unit::Loop(l) = u {
            for n in &l.body {
                for r in n.inputs.values() {
                    if let InputRef::Carry { loop_id, name } = r {
                        if loop_id == &l.id {
                            out.push((
                                format!("{}_out", l.id),
                                n.id.clone(),
                                format!("{name}, next round"),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

fn edges(p: &Pipeline) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let add = |out: &mut Vec<(String, String, String)>, n: &NodeSpec, inside: Option<&str>| {
        for (name, r) in &n.inputs {
            let (from, output) = source_of(r, p, inside);
            let label = if &output == name {
                output
            } else {
                format!("{output} as {name}")
            };
            out.push((from, n.id.clone(), label));
        }
    };
    for u in &p.units {
        match u {
            Unit::Node(n) => add(&mut out, n, None),
            Unit::Loop(l) => {
                for n in &l.body {
                    add(&mut out, n, Some(&l.id));
                }
                for c in &l.carry {
                    if let InputRef::Node { node, .. } = &c.next {
                        out.push((node.clone(), format!("{}_out", l.id), c.name.clone()));
                    }
                }
            }
        }
    }
    out
}

pub fn dot(p: &Pipeline) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];",
        p.name
    );
    for u in &p.units {
        match u {
            Unit::Node(n) => {
                let _ = writeln!(
                    s,
                    "  {} [label=\"{}\\n({})\"];",
                    n.id,
                    n.id,
                    n.plugin.kind()
                );
            }
            Unit::Loop(l) => {
                let until = l.until.as_deref().unwrap_or("-").replace('"', "\\\"");
                let _ = writeln!(
                    s,
                    "  subgraph cluster_{} {{\n    label=\"loop {} (max {} rounds, until {})\";",
                    l.id, l.id, l.max_rounds, until
                );
                for n in &l.body {
                    let _ = writeln!(
                        s,
                        "    {} [label=\"{}\\n({})\"];",
                        n.id,
                        n.id,
                        n.plugin.kind()
                    );
                }
                let _ = writeln!(
                    s,
                    "    {}_out [shape=ellipse, label=\"{} carries\"];\n  }}",
                    l.id, l.id
                );
            }
        }
    }
    for (from, to, label) in edges(p) {
        let _ = writeln!(s, "  {from} -> {to} [label=\"{label}\"];");
    }
    for (from, to, label) in feedback(p) {
        let _ = writeln!(s, "  {from} -> {to} [label=\"{label}\", style=dashed];");
    }
    s.push_str("}\n");
    s
}

pub fn mermaid(p: &Pipeline) -> String {
    let mut s = String::from("flowchart LR\n");
    for u in &p.units {
        match u {
            Unit::Node(n) => {
                let _ = writeln!(s, "  {}[\"{} ({})\"]", n.id, n.id, n.plugin.kind());
            }
            Unit::Loop(l) => {
                let _ = writeln!(
                    s,
                    "  subgraph {}[\"loop {}: max {} rounds\"]",
                    l.id, l.id, l.max_rounds
                );
                for n in &l.body {
                    let _ = writeln!(s, "    {}[\"{} ({})\"]", n.id, n.id, n.plugin.kind());
                }
                let _ = writeln!(s, "    {}_out((\"{} carries\"))\n  end", l.id, l.id);
            }
        }
    }
    for (from, to, label) in edges(p) {
        let _ = writeln!(s, "  {from} -->|{label}| {to}");
    }
    for (from, to, label) in feedback(p) {
        let _ = writeln!(s, "  {from} -.->|{label}| {to}");
    }
    s
}
