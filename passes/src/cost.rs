//! The cost model of the checkpoint policies and the binomial rewrite:
//! the floating-point operations of a node, by its op's class.

use wengert_ir::{Graph, NodeId, OpClass};

/// Floating-point operations to compute one node (an estimate: one per
/// element for elementwise work, 2mnk for a matmul).
pub fn node_flops(g: &Graph, id: NodeId) -> u64 {
    let out = g.ty(id).num_elements() as u64;
    match g.op(id).class() {
        OpClass::Contraction => {
            // The left factor (after `matmul_acc`'s accumulator).
            let left = matches!(g.op(id), wengert_ir::Op::MatMulAcc { .. }) as usize;
            let a = g.ty(g.args(id)[left]);
            out * 2 * a.shape[a.rank() - 1] as u64
        }
        OpClass::Reduction => g.ty(g.args(id)[0]).num_elements() as u64,
        OpClass::Composite => 4 * g.ty(g.args(id)[0]).num_elements() as u64,
        OpClass::Leaf | OpClass::View => 0,
        OpClass::Elementwise | OpClass::Copy => out,
        // A loop: its body's work, once per step.
        OpClass::Region => {
            if let wengert_ir::Op::Scan(scan) = g.op(id) {
                let body: u64 = scan.body.node_ids().map(|b| node_flops(&scan.body, b)).sum();
                body.saturating_mul(scan.length as u64)
            } else {
                0
            }
        }
    }
}
