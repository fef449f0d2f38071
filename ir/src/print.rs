//! The text format's printer: a graph as a Wengert list.
//!
//! ```text
//! graph @case3(%x1: f64[], %x2: f64[]) -> (y: f64[]) {
//!   %0: f64[] = mul %x1, %x2
//!   %1: f64[] = sin %x1
//!   %2: f64[] = add %0, %1
//!   return %2
//! }
//! ```
//!
//! Late passes add two annotations: members of a fused kernel print inside
//! a `kernel k { … }` block, and a value placed in the arena by the memory
//! plan prints its byte offset after its type (`%5: f32[8,4] @4096 = …`).
//! A user's checkpointing mark prints after that (`%5: f32[8,4] save = …`).
//!
//! Values are numbered at print time in topological order (never from
//! petgraph indices), attributes are sorted by key, floats print in their
//! shortest round-trip form, so `parse(print(g))` prints identically and a
//! `diff` between two dumps shows exactly what changed.

use crate::graph::Graph;
use crate::op::{Attr, Op};
use std::fmt;

/// Writes an attribute value.
pub(crate) fn write_attr(f: &mut impl fmt::Write, attr: &Attr) -> fmt::Result {
    match attr {
        Attr::Float(v) => write!(f, "{v:?}"),
        Attr::Int(v) => write!(f, "{v}"),
        Attr::DType(d) => write!(f, "{d}"),
        Attr::Ints(v) => {
            f.write_str("(")?;
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{x}")?;
            }
            f.write_str(")")
        }
    }
}

/// Writes an op's mnemonic with its sorted attributes, e.g.
/// `reduce_sum[axes=(1)]`.
pub fn write_op_head(f: &mut impl fmt::Write, op: &Op) -> fmt::Result {
    f.write_str(op.name())?;
    let attrs = op.attrs();
    if !attrs.is_empty() {
        f.write_str("[")?;
        for (i, (k, v)) in attrs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}=")?;
            write_attr(f, v)?;
        }
        f.write_str("]")?;
    }
    Ok(())
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_graph(f, self, "")
    }
}

/// Writes `g` with every line indented by `pad` (a region's body is
/// written inside its op, one level deeper).
fn write_graph(f: &mut impl fmt::Write, g: &Graph, pad: &str) -> fmt::Result {
    let names = g.value_names();
    write!(f, "graph @{}(", g.name)?;
    for (i, input) in g.inputs().iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "%{}: {}", input.name, input.ty)?;
        if !input.differentiable {
            f.write_str(" nodiff")?;
        }
    }
    f.write_str(") -> (")?;
    for (i, output) in g.outputs().iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{}: {}", output.name, g.ty(output.node))?;
    }
    f.write_str(") {\n")?;
    // Members of a fused kernel are contiguous; print them as a block.
    let mut open_kernel: Option<u32> = None;
    for id in g.node_ids() {
        let node = g.node(id);
        if let Op::Input { .. } = node.op {
            continue;
        }
        if open_kernel.is_some() && open_kernel != node.kernel {
            writeln!(f, "{pad}  }}")?;
            open_kernel = None;
        }
        if let (None, Some(k)) = (open_kernel, node.kernel) {
            writeln!(f, "{pad}  kernel {k} {{")?;
            open_kernel = Some(k);
        }
        let indent = if open_kernel.is_some() { "    " } else { "  " };
        write!(f, "{pad}{indent}{}: ", names[id.index()])?;
        if let Op::Scan(scan) = &node.op {
            // The scan's own value is the buffer of its results; its type
            // is written as the tuple of those.
            f.write_str("(")?;
            for (i, t) in scan.result_types().iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{t}")?;
            }
            f.write_str(")")?;
        } else {
            write!(f, "{}", node.ty)?;
        }
        if let Some(offset) = node.arena {
            write!(f, " @{offset}")?;
        }
        if let Some(mark) = node.mark {
            write!(f, " {}", mark.name())?;
        }
        f.write_str(" = ")?;
        write_op_head(f, &node.op)?;
        if let Op::Const { value } = &node.op {
            f.write_str(" ")?;
            value.write_nested(f)?;
        }
        for (i, a) in g.args(id).iter().enumerate() {
            f.write_str(if i == 0 { " " } else { ", " })?;
            f.write_str(&names[a.index()])?;
        }
        if let Op::Scan(scan) = &node.op {
            let inner = format!("{pad}{indent}  ");
            write!(f, " {{\n{inner}")?;
            write_graph(f, &scan.body, &inner)?;
            write!(f, "{pad}{indent}}}")?;
            // The loop whose states this one recomputes.
            if let Some(regen) = &scan.regen {
                f.write_str(" from ")?;
                write_op_head(f, &Op::Scan(regen.forward.clone()))?;
                write!(f, " {{\n{inner}")?;
                write_graph(f, &regen.forward.body, &inner)?;
                write!(f, "{pad}{indent}}}")?;
            }
        }
        f.write_str("\n")?;
    }
    if open_kernel.is_some() {
        writeln!(f, "{pad}  }}")?;
    }
    write!(f, "{pad}  return")?;
    for (i, output) in g.outputs().iter().enumerate() {
        f.write_str(if i == 0 { " " } else { ", " })?;
        f.write_str(&names[output.node.index()])?;
    }
    writeln!(f, "\n{pad}}}")
}
