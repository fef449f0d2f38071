//! The verifier: checks every invariant of a graph and reports every
//! problem found, not just the first.
//!
//! Every pass's output goes through `verify` in debug builds and tests, so a
//! pass that breaks an invariant is caught at the pass, not three passes
//! later in generated code.

use crate::error::{IrError, Problem};
use crate::graph::Graph;
use crate::infer::infer;
use crate::op::Op;
use crate::types::TensorType;
use std::collections::HashSet;

/// Why `op` may not read `args`, as far as loops go: a loop's value (the
/// buffer of its results) is read only by `get`, and a `get` names an
/// existing result of a loop with that result's type. `verify` and the
/// parser (which reports it at the statement's line) both ask this.
pub(crate) fn region_read_error(g: &Graph, op: &Op, args: &[crate::graph::NodeId]) -> Option<String> {
    if let Op::Get { index, ty } = op {
        let &[a] = args else { return None };
        let Op::Scan(scan) = g.op(a) else {
            return Some(format!("`get` reads the results of a `scan`, not `{}`", g.op(a).name()));
        };
        return match scan.result_types().get(*index) {
            None => Some(format!(
                "`get[index={index}]` of a loop with {} results",
                scan.n_results()
            )),
            Some(t) if t != ty => Some(format!("`get[index={index}]` is declared {ty} but that result is {t}")),
            Some(_) => None,
        };
    }
    args.iter().any(|&a| matches!(g.op(a), Op::Scan(_))).then(|| {
        format!(
            "`{}` reads a loop directly: read its results with `get[index=…]`",
            op.name()
        )
    })
}

/// Checks `g`: operands precede their users (the topological invariant),
/// every node's type is what inference gives for its operands, inputs and
/// outputs are consistent and uniquely named.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    let names = g.value_names();
    let mut problems = Vec::new();
    let mut problem = |node: &str, message: String| {
        problems.push(Problem {
            node: node.to_string(),
            message,
        })
    };
    for id in g.node_ids() {
        let node = g.node(id);
        let name = &names[id.index()];
        let args = g.args(id);
        if let Some(a) = args.iter().find(|a| a.index() >= id.index()) {
            problem(
                name,
                format!(
                    "operand {} does not precede its user (a cycle or a forward reference)",
                    names[a.index()]
                ),
            );
            continue;
        }
        match &node.op {
            Op::Input { index } => match g.inputs().get(*index) {
                Some(input) if input.node == id => {
                    if input.ty != node.ty {
                        problem(
                            name,
                            format!("input node has type {} but the header says {}", node.ty, input.ty),
                        );
                    }
                }
                _ => problem(
                    name,
                    format!("input node refers to input {index}, which is not declared as this node"),
                ),
            },
            op => {
                let tys: Vec<&TensorType> = args.iter().map(|&a| g.ty(a)).collect();
                match infer(op, &tys) {
                    Ok(ty) if ty == node.ty => {}
                    Ok(ty) => problem(
                        name,
                        format!("`{}` is declared as {} but computes {ty}", op.name(), node.ty),
                    ),
                    Err(message) => problem(name, message),
                }
            }
        }
    }
    // Regions: a scan's body is a graph of its own, and a scan's value (the
    // buffer of its results) is read only through `get`.
    for id in g.node_ids() {
        let name = &names[id.index()];
        if let Op::Scan(scan) = g.op(id) {
            let bodies = std::iter::once(&scan.body).chain(scan.regen.as_ref().map(|r| &r.forward.body));
            for body in bodies {
                if let Err(e) = verify(body) {
                    problem(name, format!("`scan` body @{} is malformed: {e}", body.name));
                }
            }
        }
        if let Some(message) = region_read_error(g, g.op(id), &g.args(id)) {
            problem(name, message);
        }
    }
    // Members of a fused kernel are contiguous in node order.
    let mut closed = HashSet::new();
    let mut current: Option<u32> = None;
    for id in g.node_ids().filter(|&id| !matches!(g.op(id), Op::Input { .. })) {
        let k = g.node(id).kernel;
        if k != current {
            if let Some(c) = current {
                closed.insert(c);
            }
            if let Some(k) = k {
                if closed.contains(&k) {
                    problem(
                        &names[id.index()],
                        format!("kernel {k} is split: its members must be contiguous"),
                    );
                }
            }
            current = k;
        }
    }
    let mut seen = HashSet::new();
    for input in g.inputs() {
        if !seen.insert(input.name.as_str()) {
            problem(&format!("%{}", input.name), "input declared twice".into());
        }
        if !g.contains(input.node) || !matches!(g.op(input.node), Op::Input { .. }) {
            problem(&format!("%{}", input.name), "input has no input node".into());
        }
    }
    let mut seen = HashSet::new();
    for output in g.outputs() {
        if !seen.insert(output.name.as_str()) {
            problem("graph", format!("output `{}` declared twice", output.name));
        }
        if !g.contains(output.node) {
            problem("graph", format!("output `{}` refers to a missing node", output.name));
        } else if let Op::Scan(_) = g.op(output.node) {
            problem(
                "graph",
                format!(
                    "output `{}` names a `scan`'s result buffer; name a `get` of it",
                    output.name
                ),
            );
        }
    }
    if g.outputs().is_empty() {
        problem("graph", "the graph has no outputs".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(IrError::Verify(problems))
    }
}
