//! Graphviz DOT export: one box per node with its value name, op (with
//! attributes) and type; edges labelled with the operand position when an
//! op has several operands.

use crate::graph::Graph;
use crate::op::Op;
use crate::print::write_op_head;
use std::fmt::Write;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The graph in DOT format.
pub fn to_dot(g: &Graph) -> String {
    let names = g.value_names();
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&g.name));
    out.push_str("  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    for id in g.node_ids() {
        let node = g.node(id);
        let mut head = String::new();
        let _ = write_op_head(&mut head, &node.op);
        // Inputs and one-element constants get their own look; every other
        // node is its op head.
        let name = &names[id.index()];
        let (label, style) = if let Op::Input { .. } = &node.op {
            (format!("{name}\\n{}", node.ty), ", style=filled, fillcolor=\"#dde8f7\"")
        } else if let Op::Const { value } = &node.op {
            if value.len() == 1 {
                (
                    format!("{name} = const {value}\\n{}", node.ty),
                    ", style=filled, fillcolor=\"#eeeeee\"",
                )
            } else {
                (format!("{name} = {head}\\n{}", node.ty), "")
            }
        } else {
            (format!("{name} = {head}\\n{}", node.ty), "")
        };
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\"{}];",
            id.index(),
            escape(&label).replace("\\\\n", "\\n"),
            style
        );
    }
    for id in g.node_ids() {
        let args = g.args(id);
        for (pos, a) in args.iter().enumerate() {
            if args.len() > 1 {
                let _ = writeln!(out, "  n{} -> n{} [label=\"{}\"];", a.index(), id.index(), pos);
            } else {
                let _ = writeln!(out, "  n{} -> n{};", a.index(), id.index());
            }
        }
    }
    for output in g.outputs() {
        let _ = writeln!(
            out,
            "  \"out:{0}\" [label=\"{0}\", shape=ellipse, style=filled, fillcolor=\"#e2f2dd\"];\n  n{1} -> \"out:{0}\";",
            escape(&output.name),
            output.node.index()
        );
    }
    out.push_str("}\n");
    out
}
