//! The computation graph, stored on petgraph.
//!
//! Nodes hold an [`Op`] and the [`TensorType`] of the value it produces;
//! edges run from operand to user and carry the operand position.
//!
//! Invariant: node indices are a topological order. Every operand of a node
//! has a smaller index, because nodes are only ever appended and an operand
//! must exist before its user. Passes never delete nodes in place; they
//! build a new graph. So every traversal is a plain loop over indices, and
//! nothing recurses with the depth of the graph.

use crate::error::IrError;
use crate::infer::infer;
use crate::op::{Op, OpClass};
use crate::tensor::Tensor;
use crate::types::TensorType;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashMap;

/// Identifies a node of a [`Graph`].
pub type NodeId = petgraph::graph::NodeIndex<u32>;

/// A node: an operation and the type of its result, plus the two
/// annotations late passes attach (and the text format prints).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// The fused kernel this node belongs to (set by `fuse`; members of a
    /// kernel are contiguous in node order).
    pub kernel: Option<u32>,
    /// Byte offset of the value in the arena (set by `memory-plan`).
    pub arena: Option<usize>,
    /// A user's checkpointing mark (like `jax.ad_checkpoint.checkpoint_name`
    /// with a policy): force saving this value for the backward, or force
    /// recomputing it.
    pub mark: Option<Mark>,
}

/// A checkpointing mark on a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mark {
    Save,
    Recompute,
}

impl Mark {
    pub fn name(self) -> &'static str {
        match self {
            Mark::Save => "save",
            Mark::Recompute => "recompute",
        }
    }
}

impl Node {
    pub fn new(op: Op, ty: TensorType) -> Node {
        Node {
            op,
            ty,
            kernel: None,
            arena: None,
            mark: None,
        }
    }
}

/// A graph input.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub name: String,
    pub ty: TensorType,
    /// Whether gradients may be taken with respect to this input (parameters
    /// and `x`), or not (data such as one-hot targets).
    pub differentiable: bool,
    pub node: NodeId,
}

/// A named graph output.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub node: NodeId,
}

/// A static computation graph.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    dag: petgraph::Graph<Node, u32>,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
    /// Position of each input and output by name (graphs from partition
    /// have tens of thousands of them).
    input_index: HashMap<String, usize>,
    output_index: HashMap<String, usize>,
}

/// Whether a string is a valid name for a graph, input or output: a letter
/// or `_`, then letters, digits, `_` and `.`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            dag: petgraph::Graph::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            input_index: HashMap::new(),
            output_index: HashMap::new(),
        }
    }

    /// Number of nodes (inputs and constants included).
    pub fn len(&self) -> usize {
        self.dag.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.dag.node_count() == 0
    }

    /// All node ids in topological order.
    pub fn node_ids(&self) -> impl DoubleEndedIterator<Item = NodeId> + ExactSizeIterator {
        (0..self.dag.node_count()).map(NodeId::new)
    }

    /// Whether `id` names a node of this graph.
    pub fn contains(&self, id: NodeId) -> bool {
        id.index() < self.dag.node_count()
    }

    /// The node `id`. Panics if `id` is not a node of this graph: ids come
    /// from the graph itself, never from user text.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }

    pub fn op(&self, id: NodeId) -> &Op {
        &self.dag[id].op
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.dag[id].ty
    }

    /// Operands of `id`, in operand order.
    pub fn args(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> = self
            .dag
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable_by_key(|&(pos, _)| pos);
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// Users of `id` (one entry per use, so a node using `id` twice appears
    /// twice), in no particular order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        self.dag
            .edges_directed(id, Direction::Outgoing)
            .map(|e| e.target())
            .collect()
    }

    /// Number of uses of each node by other nodes, indexed by node.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.len()];
        for e in self.dag.edge_references() {
            counts[e.source().index()] += 1;
        }
        counts
    }

    /// The underlying petgraph graph (read-only), for algorithms and export.
    pub fn petgraph(&self) -> &petgraph::Graph<Node, u32> {
        &self.dag
    }

    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// Names of the inputs autodiff differentiates by default: those
    /// marked differentiable (not `data`) with a float dtype.
    pub fn differentiable_inputs(&self) -> Vec<&str> {
        self.inputs
            .iter()
            .filter(|i| i.differentiable && i.ty.dtype.is_float())
            .map(|i| i.name.as_str())
            .collect()
    }

    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    pub fn input(&self, name: &str) -> Option<&Input> {
        self.input_index.get(name).map(|&i| &self.inputs[i])
    }

    pub fn output(&self, name: &str) -> Option<&Output> {
        self.output_index.get(name).map(|&i| &self.outputs[i])
    }

    /// Adds an input. Names must be identifiers and unique among inputs.
    pub fn add_input(&mut self, name: &str, ty: TensorType, differentiable: bool) -> Result<NodeId, IrError> {
        if !is_identifier(name) {
            return Err(IrError::Graph(format!("input name `{name}` is not an identifier")));
        }
        if self.input(name).is_some() {
            return Err(IrError::Graph(format!("input `{name}` is declared twice")));
        }
        if crate::types::checked_elements(&ty.shape).is_none() {
            return Err(IrError::Graph(format!(
                "input `{name}` has shape {:?}, more elements than a tensor may hold",
                ty.shape
            )));
        }
        let index = self.inputs.len();
        let node = self.dag.add_node(Node::new(Op::Input { index }, ty.clone()));
        self.input_index.insert(name.to_string(), self.inputs.len());
        self.inputs.push(Input {
            name: name.to_string(),
            ty,
            differentiable,
            node,
        });
        Ok(node)
    }

    /// For each node, whether it depends on one of `roots` (the roots
    /// included): nodes are in topological order, so one pass suffices.
    pub fn dependents(&self, roots: &[NodeId]) -> Vec<bool> {
        let mut dep = vec![false; self.len()];
        for &r in roots {
            if let Some(d) = dep.get_mut(r.index()) {
                *d = true;
            }
        }
        for id in self.node_ids() {
            if !dep[id.index()] {
                dep[id.index()] = self.args(id).iter().any(|a| dep[a.index()]);
            }
        }
        dep
    }

    /// Marks every input differentiable (forward mode differentiates a loop
    /// body along all its float inputs, parameters or not).
    pub fn set_all_inputs_differentiable(&mut self) {
        for i in &mut self.inputs {
            i.differentiable = true;
        }
    }

    /// This graph with another interface: its inputs are the input nodes
    /// `inputs` in that order (each keeps its name), its outputs the nodes
    /// `outputs` (named `out0`, `out1`, …); every node is copied with
    /// inference, so the result verifies as a graph of its own. A node of
    /// `inputs` that is not an input, or an input missing from it, is an
    /// error.
    pub fn with_interface(&self, name: &str, inputs: &[NodeId], outputs: &[NodeId]) -> Result<Graph, IrError> {
        let mut g = Graph::new(name);
        let mut map: Vec<Option<NodeId>> = vec![None; self.len()];
        for &id in inputs {
            let Op::Input { index } = *self.op(id) else {
                return Err(IrError::Graph(format!("{} is not an input", self.value_name(id))));
            };
            let input = self
                .inputs
                .get(index)
                .ok_or_else(|| IrError::Graph(format!("{} is input {index} of too few", self.value_name(id))))?;
            map[id.index()] = Some(g.add_input(&input.name, input.ty.clone(), input.differentiable)?);
        }
        for id in self.node_ids() {
            if map[id.index()].is_some() {
                continue;
            }
            if let Op::Input { .. } = self.op(id) {
                return Err(IrError::Graph(format!(
                    "input {} is missing from the new interface",
                    self.value_name(id)
                )));
            }
            let args = self
                .args(id)
                .iter()
                .map(|a| map[a.index()])
                .collect::<Option<Vec<NodeId>>>()
                .ok_or_else(|| IrError::Graph(format!("{} precedes an operand", self.value_name(id))))?;
            map[id.index()] = Some(g.copy_node(self, id, &args)?);
        }
        for (k, &o) in outputs.iter().enumerate() {
            let node = map
                .get(o.index())
                .copied()
                .flatten()
                .ok_or_else(|| IrError::Graph(format!("output {k} is not a node of the graph")))?;
            g.add_output(&format!("out{k}"), node)?;
        }
        Ok(g)
    }

    /// Adds a constant node.
    pub fn add_const(&mut self, value: Tensor) -> NodeId {
        let ty = value.ty().clone();
        self.dag.add_node(Node::new(Op::Const { value }, ty))
    }

    /// Adds a node, inferring its type; fails if the operands do not exist
    /// or do not fit the op. Inputs are added with [`Graph::add_input`].
    pub fn add(&mut self, op: Op, args: &[NodeId]) -> Result<NodeId, IrError> {
        if let Op::Input { .. } = op {
            return Err(IrError::Graph("inputs are added with `add_input`".into()));
        }
        if let Some(&bad) = args.iter().find(|a| !self.contains(**a)) {
            return Err(IrError::Graph(format!(
                "operand {} of `{}` is not a node of this graph",
                bad.index(),
                op.name()
            )));
        }
        let tys: Vec<&TensorType> = args.iter().map(|&a| &self.dag[a].ty).collect();
        let ty = infer(&op, &tys).map_err(|message| IrError::Node {
            node: format!("new `{}` node", op.name()),
            message,
        })?;
        Ok(self.add_typed(op, args, ty))
    }

    /// Copies node `id` of `src` into this graph with operands `args` (its
    /// operands' copies), inferring its type again (an error names the node
    /// if the copy would not compute the type the original has); the pass
    /// decides which annotations (kernel, arena, mark) the copy keeps.
    /// Every pass that rebuilds a graph copies nodes through here.
    pub fn copy_node(&mut self, src: &Graph, id: NodeId, args: &[NodeId]) -> Result<NodeId, IrError> {
        let node = src.node(id);
        let new = self.add(node.op.clone(), args).map_err(|e| IrError::Node {
            node: src.value_name(id),
            message: format!("cannot be copied: {e}"),
        })?;
        if self.ty(new) != &node.ty {
            return Err(IrError::Node {
                node: src.value_name(id),
                message: format!("is {} but its copy computes {}", node.ty, self.ty(new)),
            });
        }
        Ok(new)
    }

    /// Adds a node with a given type, without inference. The parser uses it
    /// to keep a declared type that inference disagrees with, so that
    /// [`crate::verify()`] can report every such problem at once.
    pub fn add_typed(&mut self, op: Op, args: &[NodeId], ty: TensorType) -> NodeId {
        let id = self.dag.add_node(Node::new(op, ty));
        for (pos, &a) in args.iter().enumerate() {
            self.dag.add_edge(a, id, pos as u32);
        }
        id
    }

    /// Appends a named output.
    pub fn add_output(&mut self, name: &str, node: NodeId) -> Result<(), IrError> {
        if !is_identifier(name) {
            return Err(IrError::Graph(format!("output name `{name}` is not an identifier")));
        }
        if self.output(name).is_some() {
            return Err(IrError::Graph(format!("output `{name}` is declared twice")));
        }
        if !self.contains(node) {
            return Err(IrError::Graph(format!(
                "output `{name}` refers to a node that does not exist"
            )));
        }
        self.output_index.insert(name.to_string(), self.outputs.len());
        self.outputs.push(Output {
            name: name.to_string(),
            node,
        });
        Ok(())
    }

    /// Sets the annotations of a node (see [`Node`]).
    pub fn annotate(&mut self, id: NodeId, kernel: Option<u32>, arena: Option<usize>) {
        let node = &mut self.dag[id];
        node.kernel = kernel;
        node.arena = arena;
    }

    /// Sets the checkpointing mark of a node.
    pub fn set_mark(&mut self, id: NodeId, mark: Option<Mark>) {
        self.dag[id].mark = mark;
    }

    /// Removes all outputs (to set new ones).
    pub fn clear_outputs(&mut self) {
        self.outputs.clear();
        self.output_index.clear();
    }

    /// The printed name of every node, indexed by node: `%name` for inputs,
    /// `%0`, `%1`, ... for the other nodes in topological order.
    pub fn value_names(&self) -> Vec<String> {
        let mut counter = 0;
        self.node_ids()
            .map(|id| {
                if let Op::Input { index } = &self.dag[id].op {
                    return match self.inputs.get(*index) {
                        Some(input) => format!("%{}", input.name),
                        None => format!("%<input {index}>"),
                    };
                }
                counter += 1;
                format!("%{}", counter - 1)
            })
            .collect()
    }

    /// The printed name of one node (see [`Graph::value_names`]).
    pub fn value_name(&self, id: NodeId) -> String {
        if let Op::Input { index } = &self.dag[id].op {
            if let Some(input) = self.inputs.get(*index) {
                return format!("%{}", input.name);
            }
        }
        let before = self
            .node_ids()
            .take(id.index())
            .filter(|&n| !matches!(self.dag[n].op, Op::Input { .. }))
            .count();
        format!("%{before}")
    }
}

impl Graph {
    /// A copy of the graph keeping only the nodes marked in `keep` (indexed
    /// by node) plus every input, in the same order; outputs are carried
    /// over. Every kept node's operands must be kept. Returns the new graph
    /// and the map from old to new ids.
    pub fn retain(&self, keep: &[bool]) -> Result<(Graph, Vec<Option<NodeId>>), IrError> {
        let mut out = Graph::new(self.name.clone());
        let mut map: Vec<Option<NodeId>> = vec![None; self.len()];
        for id in self.node_ids() {
            let node = self.node(id);
            if let Op::Input { index } = node.op {
                let input = self
                    .inputs
                    .get(index)
                    .ok_or_else(|| IrError::Graph(format!("{} is input {index} of too few", self.value_name(id))))?;
                map[id.index()] = Some(out.add_input(&input.name, input.ty.clone(), input.differentiable)?);
                continue;
            }
            if !keep[id.index()] {
                continue;
            }
            let args = self
                .args(id)
                .iter()
                .map(|a| map[a.index()])
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| IrError::Node {
                    node: self.value_name(id),
                    message: "kept node has an operand that was not kept".into(),
                })?;
            let new = out.copy_node(self, id, &args)?;
            out.annotate(new, node.kernel, node.arena);
            out.set_mark(new, node.mark);
            map[id.index()] = Some(new);
        }
        for o in &self.outputs {
            let node =
                map[o.node.index()].ok_or_else(|| IrError::Graph(format!("output `{}` was not kept", o.name)))?;
            out.add_output(&o.name, node)?;
        }
        Ok((out, map))
    }

    /// Marks `roots` and every node they depend on, indexed by node.
    pub fn ancestors(&self, roots: impl IntoIterator<Item = NodeId>) -> Vec<bool> {
        let mut marked = vec![false; self.len()];
        for r in roots {
            marked[r.index()] = true;
        }
        for id in self.node_ids().rev() {
            if marked[id.index()] {
                for a in self.args(id) {
                    marked[a.index()] = true;
                }
            }
        }
        marked
    }

    /// Marks every node computed from constants alone (constants included;
    /// inputs excluded), indexed by node: such values are free to copy into
    /// any graph and never worth saving.
    pub fn constant_nodes(&self) -> Vec<bool> {
        let mut constant = vec![false; self.len()];
        for id in self.node_ids() {
            // A constant, or an op all of whose operands are constants (no
            // op of the IR is random or stateful; one that were would have
            // to say so here).
            constant[id.index()] = match self.op(id).class() {
                OpClass::Leaf => matches!(self.op(id), Op::Const { .. }),
                OpClass::Elementwise
                | OpClass::View
                | OpClass::Reduction
                | OpClass::Contraction
                | OpClass::Copy
                | OpClass::Composite
                | OpClass::Region => self.args(id).iter().all(|a| constant[a.index()]),
            };
        }
        constant
    }

    /// A copy of this graph (same nodes, same ids) in which the body of
    /// every region op is replaced by `f` of it: how a pass that works on
    /// whole graphs (fusion, the memory plan) reaches loop bodies. `f`
    /// must keep a body's inputs and output types; the copy is checked.
    pub fn map_bodies<E: From<IrError>>(&self, mut f: impl FnMut(&Graph) -> Result<Graph, E>) -> Result<Graph, E> {
        let mut out = self.clone();
        for id in self.node_ids() {
            if let Op::Scan(scan) = self.op(id) {
                let body = f(&scan.body)?;
                let regen = match &scan.regen {
                    Some(r) => Some(crate::scan::Regen {
                        forward: std::sync::Arc::new(crate::scan::Scan {
                            body: f(&r.forward.body)?,
                            ..(*r.forward).clone()
                        }),
                        slots: r.slots,
                        every: r.every,
                    }),
                    None => None,
                };
                let new = crate::scan::Scan {
                    body,
                    regen,
                    ..(**scan).clone()
                };
                if new.result_types() != scan.result_types() || new.body.inputs().len() != scan.body.inputs().len() {
                    return Err(IrError::Node {
                        node: self.value_name(id),
                        message: "a pass changed the types of a loop body's results".into(),
                    }
                    .into());
                }
                out.dag[id].op = Op::Scan(std::sync::Arc::new(new));
            }
        }
        Ok(out)
    }

    /// Replaces the op of node `id`, inferring its type again from the same
    /// operands. Used to give a loop more results (its users, `get`s of
    /// the old results, stay valid); `verify` checks the rest.
    pub fn replace_op(&mut self, id: NodeId, op: Op) -> Result<(), IrError> {
        let tys: Vec<&TensorType> = self.args(id).into_iter().map(|a| &self.dag[a].ty).collect();
        let ty = infer(&op, &tys).map_err(|message| IrError::Node {
            node: self.value_name(id),
            message,
        })?;
        let node = &mut self.dag[id];
        node.op = op;
        node.ty = ty;
        Ok(())
    }

    /// Whether any node holds a region (a loop body).
    pub fn has_regions(&self) -> bool {
        self.node_ids().any(|id| matches!(self.op(id), Op::Scan(_)))
    }

    /// Marks every node that some output depends on.
    pub fn live_nodes(&self) -> Vec<bool> {
        self.ancestors(self.outputs.iter().map(|o| o.node))
    }
}
