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

/// The graph in DOT format; a region's body is drawn as a cluster beside
/// its op, with dashed edges from the op's operands to the body's inputs
/// and from the body's outputs back to the op.
pub fn to_dot(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&g.name));
    out.push_str("  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    write_body(&mut out, g, "n", "  ");
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

/// Writes the nodes and edges of `g`, each node named `prefix` and its index.
fn write_body(out: &mut String, g: &Graph, prefix: &str, pad: &str) {
    let names = g.value_names();
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
        } else if let Op::Scan(scan) = &node.op {
            let results: Vec<String> = scan.result_types().iter().map(|t| t.to_string()).collect();
            (
                format!("{name} = {head}\\n({})", results.join(", ")),
                ", style=filled, fillcolor=\"#f7ecd9\"",
            )
        } else {
            (format!("{name} = {head}\\n{}", node.ty), "")
        };
        let _ = writeln!(
            out,
            "{pad}{prefix}{} [label=\"{}\"{}];",
            id.index(),
            escape(&label).replace("\\\\n", "\\n"),
            style
        );
        if let Op::Scan(scan) = &node.op {
            let inner = format!("{prefix}{}_", id.index());
            let _ = writeln!(
                out,
                "{pad}subgraph cluster_{inner} {{\n{pad}  label=\"{} body @{}\";\n{pad}  style=dashed;",
                escape(name),
                escape(&scan.body.name)
            );
            write_body(out, &scan.body, &inner, &format!("{pad}  "));
            let _ = writeln!(out, "{pad}}}");
            for (k, input) in scan.body.inputs().iter().enumerate() {
                if let Some(a) = g.args(id).get(k) {
                    let _ = writeln!(
                        out,
                        "{pad}{prefix}{} -> {inner}{} [style=dashed];",
                        a.index(),
                        input.node.index()
                    );
                }
            }
            for o in scan.body.outputs() {
                let _ = writeln!(
                    out,
                    "{pad}{inner}{} -> {prefix}{} [style=dashed];",
                    o.node.index(),
                    id.index()
                );
            }
        }
    }
    for id in g.node_ids() {
        let args = g.args(id);
        for (pos, a) in args.iter().enumerate() {
            if args.len() > 1 {
                let _ = writeln!(
                    out,
                    "{pad}{prefix}{} -> {prefix}{} [label=\"{}\"];",
                    a.index(),
                    id.index(),
                    pos
                );
            } else {
                let _ = writeln!(out, "{pad}{prefix}{} -> {prefix}{};", a.index(), id.index());
            }
        }
    }
}
