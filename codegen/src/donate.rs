//! Donation: an input buffer that a call also uses for one of its outputs,
//! so that a training step updates its parameters and optimizer state in
//! place (JAX's `donate_argnums`), with no second set of them in memory.
//!
//! Sharing a buffer is sound only if no element of the input is read after
//! the output has overwritten it. [`check_donations`] proves that on the
//! final graph (fused and planned), under the schedule code generation
//! follows, the memory plan's: nodes run in order, a fused kernel where its
//! first member stands, outputs that are not computed in place are copied
//! after every node. For a pair (input `p`, output `o`):
//!
//! - `o` is written by one node `w` (its kernel, if fused) that computes
//!   it in place (not through a reshape, not by a loop), or copied at the
//!   end from a buffer other than `p`'s (or from `p` itself, unchanged);
//! - every node outside `w`'s kernel that reads `p`'s buffer (`p` or a view
//!   of it) runs before `w`, and no other output views `p`'s buffer (such
//!   outputs are copied at the end, after `w`);
//! - inside `w`'s kernel (an optional leading matmul, then one loop over
//!   the shape of its elementwise members, here `p`'s, with reductions as
//!   roots), the matmul does not read `p`, and the members that read `p`
//!   read it directly (not through a view): each reads the element the loop
//!   is at, which the kernel loads before it stores that element of `o` (a
//!   kernel evaluates an element's expressions, loads included, before that
//!   element's stores; unrolled and parallel copies handle disjoint
//!   elements).
//!
//! Lowering then loads donated scalar inputs with ordinary loads (not the
//! `readonly` ones of other inputs, which Cranelift may move past a store).

use crate::error::CodegenError;
use wengert_ir::{Graph, NodeId, Op, OpClass};

/// Checks that each `(input, output)` pair, by name, may share one buffer
/// (see the module documentation); returns them as (input index, output
/// index). An error names the pair and the node that forbids it.
pub fn check_donations(g: &Graph, pairs: &[(String, String)]) -> Result<Vec<(usize, usize)>, CodegenError> {
    let refuse = |input: &str, output: &str, why: String| CodegenError::Donation {
        input: input.to_string(),
        output: output.to_string(),
        message: why,
    };
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let n = g.len();
    // Schedule position (a kernel member at its kernel's first member) and
    // the buffer each value lives in (views share their operand's).
    let mut pos = vec![0usize; n];
    let mut first_of_kernel = std::collections::HashMap::new();
    let mut owner: Vec<NodeId> = g.node_ids().collect();
    for id in g.node_ids() {
        pos[id.index()] = match g.node(id).kernel {
            Some(k) => *first_of_kernel.entry(k).or_insert(id.index()),
            None => id.index(),
        };
        if g.op(id).class() == OpClass::View {
            owner[id.index()] = owner[g.args(id)[0].index()];
        }
    }
    let (dest, written) = wengert_passes::memory::output_dests(g);
    let mut resolved: Vec<(usize, usize)> = Vec::new();
    for (input, output) in pairs {
        let i = g
            .inputs()
            .iter()
            .position(|x| &x.name == input)
            .ok_or_else(|| refuse(input, output, format!("the graph `{}` has no input `{input}`", g.name)))?;
        let j = g.outputs().iter().position(|x| &x.name == output).ok_or_else(|| {
            refuse(
                input,
                output,
                format!("the graph `{}` has no output `{output}`", g.name),
            )
        })?;
        if let Some(&(pi, pj)) = resolved.iter().find(|&&(pi, pj)| pi == i || pj == j) {
            let (a, b) = (&g.inputs()[pi].name, &g.outputs()[pj].name);
            return Err(refuse(input, output, format!("`{a}` is already donated to `{b}`")));
        }
        let out_node = g.outputs()[j].node;
        let (in_ty, out_ty) = (&g.inputs()[i].ty, g.ty(out_node));
        if in_ty != out_ty {
            return Err(refuse(input, output, format!("types differ: {in_ty} and {out_ty}")));
        }
        resolved.push((i, j));
        // The input's node, if anything reads it.
        let Some(p) = g
            .node_ids()
            .find(|&id| matches!(g.op(id), Op::Input { index } if *index == i))
        else {
            continue;
        };
        let reads_p = |a: NodeId| owner[a.index()] == p;
        // Other outputs that view `p` are copied after every node.
        for (k, o) in g.outputs().iter().enumerate() {
            if k != j && reads_p(o.node) {
                return Err(refuse(
                    input,
                    output,
                    format!(
                        "output `{}` is the input's old value, read after it is overwritten",
                        o.name
                    ),
                ));
            }
        }
        if !written[j] {
            // Copied at the end: from another buffer, or from `p` as is.
            if reads_p(out_node) && out_node != p {
                return Err(refuse(
                    input,
                    output,
                    format!(
                        "the output is a view ({}) of the input, copied over it",
                        g.value_name(out_node)
                    ),
                ));
            }
            continue;
        }
        // The node that computes the output in place.
        let w = out_node;
        if dest[w.index()] != Some(j) || !matches!(g.op(w).class(), OpClass::Elementwise) {
            return Err(refuse(
                input,
                output,
                format!(
                    "{} is not an elementwise result computed in the output's buffer",
                    g.value_name(w)
                ),
            ));
        }
        let kernel = g.node(w).kernel;
        let in_kernel = |id: NodeId| id == w || (kernel.is_some() && g.node(id).kernel == kernel);
        for id in g.node_ids() {
            if in_kernel(id) {
                let class = g.op(id).class();
                let reads_directly = g.args(id).contains(&p);
                let reads_viewed = g.args(id).iter().any(|&a| a != p && reads_p(a));
                // A kernel is an optional leading matmul (run before the
                // loop, into its own buffer) and one loop over the
                // elementwise members' shape, here the input's, with
                // reductions as roots: a member reading the input directly
                // reads the element the loop is at.
                let ok_member = match class {
                    OpClass::Elementwise => !reads_viewed && (!reads_directly || g.ty(id).shape == in_ty.shape),
                    OpClass::Reduction => !reads_viewed,
                    OpClass::Contraction => !reads_directly && !reads_viewed,
                    OpClass::View => !reads_p(id),
                    OpClass::Leaf => true,
                    OpClass::Copy | OpClass::Composite | OpClass::Region => false,
                };
                if !ok_member {
                    return Err(refuse(
                        input,
                        output,
                        format!(
                            "{} ({}) in the kernel writing the output reads other elements",
                            g.value_name(id),
                            g.op(id).name()
                        ),
                    ));
                }
            } else if g.op(id).class() != OpClass::View
                && pos[id.index()] > pos[w.index()]
                && g.args(id).into_iter().any(reads_p)
            {
                // (A view reads nothing itself: its readers do.)
                return Err(refuse(
                    input,
                    output,
                    format!(
                        "{} ({}) reads the input after {} overwrites it",
                        g.value_name(id),
                        g.op(id).name(),
                        g.value_name(w)
                    ),
                ));
            }
        }
    }
    Ok(resolved)
}
