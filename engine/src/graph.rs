//! The checked DAG (petgraph): topological order, cycles with their path, ancestors and descendants.

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::span::Path;

/// An edge `from -> to`: `to` takes an input from `from`; `path` is where the input is written.
#[derive(Debug, Clone)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub path: Path,
}

/// A checked graph over `n` members.
#[derive(Debug, Clone, Default)]
pub struct Dag {
    /// Members in an order where every member comes after those it depends on (stable: ties keep manifest order).
    pub order: Vec<usize>,
    /// For each member, the members it takes inputs from (deduplicated).
    pub deps: Vec<Vec<usize>>,
}

/// A cycle: member indices in data-flow order (the first repeats at the end), and where it closes.
#[derive(Debug, Clone)]
pub struct Cycle {
    pub members: Vec<usize>,
    pub path: Path,
}

impl Dag {
    pub fn build(n: usize, edges: &[Edge]) -> Result<Dag, Vec<Cycle>> {
        let mut g: DiGraph<usize, usize> = DiGraph::new();
        let idx: Vec<NodeIndex> = (0..n).map(|i| g.add_node(i)).collect();
        let mut deps = vec![Vec::new(); n];
        for (ei, e) in edges.iter().enumerate() {
            g.add_edge(idx[e.from], idx[e.to], ei);
            if !deps[e.to].contains(&e.from) {
                deps[e.to].push(e.from);
            }
        }
        if toposort(&g, None).is_err() {
            return Err(find_cycles(&g, edges));
        }
        // Kahn's algorithm picking the lowest index first keeps manifest order where possible.
        let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut users = vec![Vec::new(); n];
        for (to, ds) in deps.iter().enumerate() {
            for &d in ds {
                users[d].push(to);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(&i) = ready.iter().next() {
            ready.remove(&i);
            order.push(i);
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        Ok(Dag { order, deps })
    }

    /// `targets` and everything they depend on, transitively.
    pub fn ancestors_of(&self, targets: &[usize]) -> Vec<bool> {
        let mut keep = vec![false; self.deps.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend(self.deps[i].iter().copied());
            }
        }
        keep
    }
}

fn find_cycles(g: &DiGraph<usize, usize>, edges: &[Edge]) -> Vec<Cycle> {
    let mut cycles = Vec::new();
    for scc in tarjan_scc(g) {
        let self_loop = scc.len() == 1 && g.find_edge(scc[0], scc[0]).is_some();
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let start = *scc.iter().min_by_key(|n| g[**n]).expect("scc is not empty");
        // Depth-first walk inside the component back to `start`, following the lowest members first.
        let mut path = vec![start];
        let mut closing = None;
        let mut seen = vec![start];
        let mut cur = start;
        'walk: loop {
            let mut next: Vec<(usize, NodeIndex, usize)> = g
                .edges(cur)
                .filter(|e| scc.contains(&petgraph::visit::EdgeRef::target(e)))
                .map(|e| {
                    let t = petgraph::visit::EdgeRef::target(&e);
                    (g[t], t, *e.weight())
                })
                .collect();
            next.sort();
            for &(_, t, ei) in &next {
                if t == start {
                    closing = Some(ei);
                    path.push(start);
                    break 'walk;
                }
            }
            match next.iter().find(|(_, t, _)| !seen.contains(t)) {
                Some(&(_, t, _)) => {
                    seen.push(t);
                    path.push(t);
                    cur = t;
                }
                None => break,
            }
        }
        let members = path.iter().map(|n| g[*n]).collect();
        let path = closing.map(|ei| edges[ei].path.clone()).unwrap_or_default();
        cycles.push(Cycle { members, path });
    }
    cycles.sort_by(|a, b| a.members.cmp(&b.members));
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(from: usize, to: usize) -> Edge {
        Edge {
            from,
            to,
            path: Path::root(),
        }
    }

    #[test]
    fn orders_and_walks_the_graph() {
        let dag = Dag::build(4, &[e(0, 1), e(1, 2), e(0, 3)]).unwrap();
        assert_eq!(dag.order, vec![0, 1, 2, 3]);
        assert_eq!(dag.ancestors_of(&[2]), vec![true, true, true, false]);
    }

    #[test]
    fn reports_the_cycle_path() {
        let err = Dag::build(4, &[e(0, 1), e(1, 2), e(2, 1), e(3, 3)]).unwrap_err();
        assert_eq!(err.len(), 2);
        assert_eq!(err[0].members, vec![1, 2, 1]);
        assert_eq!(err[1].members, vec![3, 3]);
    }
}
