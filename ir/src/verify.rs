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
            {
                if let Err(e) = verify(&scan.body) {
                    problem(name, format!("`scan` body @{} is malformed: {e}", scan.body.name));
                }
                if let Some(regen) = &scan.regen {
                    if let Err(e) = verify(&regen.forward.body) {
                        problem(
                            name,
                            format!("`scan` recomputed body @{} is malformed: {e}", regen.forward.body.name),
                        );
                    }
                }
                if let Some(u) = g.users(id).into_iter().find(|&u| !matches!(g.op(u), Op::Get { .. })) {
                    problem(
                        name,
                        format!(
                            "the results of `scan` are read through `get`, but {} reads them directly",
                            names[u.index()]
                        ),
                    );
                }
            }
        }
        if let Op::Get { index, ty } = g.op(id) {
            {
                let Some(&a) = g.args(id).first() else { continue };
                match g.op(a) {
                    Op::Scan(scan) => match scan.result_types().get(*index) {
                        Some(t) if t == ty => {}
                        Some(t) => problem(
                            name,
                            format!(
                                "`get[index={index}]` is declared {ty} but result {index} of {} is {t}",
                                names[a.index()]
                            ),
                        ),
                        None => problem(
                            name,
                            format!(
                                "`get[index={index}]` of {}, which has {} results",
                                names[a.index()],
                                scan.n_results()
                            ),
                        ),
                    },
                    other => problem(name, format!("`get` reads a `scan`, not `{}`", other.name())),
                }
            }
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
