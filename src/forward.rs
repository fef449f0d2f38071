//! Forward mode and second order, compiled: `jvp`, `hvp`, `jacobian`,
//! `hessian`.
//!
//! Each builds a graph with the passes (`passes::jvp`, `autodiff`) and
//! compiles it with [`compile`] (simplify, fuse, memory plan, JIT), so the
//! result is an [`Executable`]: `Send + Sync`, validated inputs.

use crate::api::{compile, Error, Executable, Options};
use wengert_ir::{Graph, Tensor, TensorType};
use wengert_passes::jvp::{jvp as jvp_pass, tangent_name};
use wengert_passes::{autodiff, PassError, Seed};

/// Compiles the Jacobian-vector product of `g` along the inputs `wrt`:
/// the executable takes `g`'s inputs, then `tangent_<x>` for each `x` in
/// `wrt` (its type), and returns `g`'s outputs, then `tangent_<y>` (the
/// directional derivative `J·v`) for each float output `y`. One forward
/// sweep; see [`wengert_passes::jvp`].
pub fn jvp(g: &Graph, wrt: &[&str], options: &Options) -> Result<Executable, Error> {
    let t = jvp_pass(g, wrt)?;
    compile(&t.graph, options)
}

/// An empty `wrt` is an error (there is nothing to differentiate by).
fn no_empty_wrt(wrt: &[&str]) -> Result<(), Error> {
    if wrt.is_empty() {
        return Err(PassError::BadWrt {
            name: String::new(),
            reason:
                "no inputs to differentiate with respect to (the graph has no differentiable input, or none was named)"
                    .into(),
        }
        .into());
    }
    Ok(())
}

/// The output `of`, checked to be a float scalar (what second-order
/// functions differentiate).
fn scalar_output(g: &Graph, of: &str) -> Result<(), Error> {
    let o = g.output(of).ok_or_else(|| PassError::BadSeed {
        output: of.to_string(),
        reason: format!(
            "the graph has no such output (its outputs: {})",
            g.outputs()
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    let ty = g.ty(o.node);
    if !ty.is_scalar() || !ty.dtype.is_float() {
        return Err(PassError::BadSeed {
            output: of.to_string(),
            reason: format!("a Hessian needs a float scalar output, and this one is {ty}"),
        }
        .into());
    }
    Ok(())
}

/// The graph of the Hessian-vector product of the scalar output `of`:
/// inputs `g`'s, then `tangent_<x>`; outputs `grad_<x>`, then `hvp_<x>`
/// (`H·v`, blocks of the Hessian with respect to all of `wrt` applied to
/// the tangents) — `jvp ∘ autodiff`, forward over reverse.
pub fn hvp_graph(g: &Graph, of: &str, wrt: &[&str]) -> Result<Graph, Error> {
    scalar_output(g, of)?;
    no_empty_wrt(wrt)?;
    let seeds: Vec<(&str, Seed)> = g
        .outputs()
        .iter()
        .map(|o| (o.name.as_str(), if o.name == of { Seed::One } else { Seed::Zero }))
        .collect();
    let grad = autodiff(g, wrt, &seeds)?;
    let t = jvp_pass(&grad.graph, wrt)?;
    let mut out = t.graph.clone();
    out.clear_outputs();
    out.name = format!("{}.hvp", g.name);
    for x in wrt {
        let gname = format!("grad_{x}");
        let node = t.graph.output(&gname).map(|o| o.node);
        let tnode = t.graph.output(&tangent_name(&gname)).map(|o| o.node);
        let (Some(node), Some(tnode)) = (node, tnode) else {
            return Err(PassError::Internal {
                node: of.to_string(),
                message: format!("the gradient graph has no `{gname}` or its tangent"),
            }
            .into());
        };
        out.add_output(&gname, node)?;
        out.add_output(&format!("hvp_{x}"), tnode)?;
    }
    // Outputs interleave per input above; put all gradients first.
    let n = wrt.len();
    let nodes: Vec<(String, wengert_ir::NodeId)> = out.outputs().iter().map(|o| (o.name.clone(), o.node)).collect();
    out.clear_outputs();
    for k in (0..2 * n).step_by(2).chain((1..2 * n).step_by(2)) {
        out.add_output(&nodes[k].0, nodes[k].1)?;
    }
    Ok(out)
}

/// Compiles the Hessian-vector product of the scalar output `of` with
/// respect to `wrt`: inputs `g`'s, then `tangent_<x>` for each `x` (the
/// vector `v`, one block per input); outputs `grad_<x>` for each `x`, then
/// `hvp_<x>` (the blocks of `H·v`). Forward over reverse: one forward sweep
/// over the gradient graph, about the cost of a few gradients.
pub fn hvp(g: &Graph, of: &str, wrt: &[&str], options: &Options) -> Result<Executable, Error> {
    compile(&hvp_graph(g, of, wrt)?, options)
}

/// How a Jacobian is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JacobianMode {
    /// One JVP per input element: columns (best for tall Jacobians, more
    /// outputs than inputs).
    Forward,
    /// One VJP per output element: rows (best for wide ones).
    Reverse,
}

/// A compiled Jacobian of one output with respect to some inputs.
pub struct Jacobian {
    /// The mode chosen (by the shapes, unless forced).
    pub mode: JacobianMode,
    exe: Executable,
    /// Elements of each differentiated input, and of the output.
    in_sizes: Vec<usize>,
    out_size: usize,
    n_primal: usize,
    out_index: usize,
    wrt_types: Vec<TensorType>,
    out_type: TensorType,
}

/// Compiles the Jacobian of output `of` with respect to `wrt`: forward
/// mode when the output has more elements than the inputs together
/// (columns by JVPs), else reverse mode (rows by VJPs); `force` overrides
/// the choice. [`Jacobian::call`] returns it as an `[m, n]` tensor (`m` the
/// output's elements, `n` the inputs' elements in `wrt` order, each
/// flattened row-major).
pub fn jacobian(
    g: &Graph,
    of: &str,
    wrt: &[&str],
    force: Option<JacobianMode>,
    options: &Options,
) -> Result<Jacobian, Error> {
    let out = g.output(of).ok_or_else(|| PassError::BadSeed {
        output: of.to_string(),
        reason: "the graph has no such output".into(),
    })?;
    let out_type = g.ty(out.node).clone();
    no_empty_wrt(wrt)?;
    if !out_type.dtype.is_float() {
        return Err(PassError::BadSeed {
            output: of.to_string(),
            reason: format!("the output has type {out_type}, which has no Jacobian"),
        }
        .into());
    }
    let mut wrt_types = Vec::new();
    for x in wrt {
        let i = g.input(x).ok_or_else(|| PassError::BadWrt {
            name: x.to_string(),
            reason: "the graph has no such input".into(),
        })?;
        wrt_types.push(i.ty.clone());
    }
    let in_sizes: Vec<usize> = wrt_types.iter().map(|t| t.num_elements()).collect();
    let out_size = out_type.num_elements();
    let mode = force.unwrap_or(if out_size > in_sizes.iter().sum() {
        JacobianMode::Forward
    } else {
        JacobianMode::Reverse
    });
    // The seed is passed by position; its name only has to be free.
    let seed_name = std::iter::once("jacobian_seed".to_string())
        .chain((1..).map(|k| format!("jacobian_seed_{k}")))
        .find(|n| g.input(n).is_none())
        .unwrap_or_default();
    let seeds: Vec<(&str, Seed)> = g
        .outputs()
        .iter()
        .map(|o| {
            let s = if o.name == of {
                Seed::Input(seed_name.clone())
            } else {
                Seed::Zero
            };
            (o.name.as_str(), s)
        })
        .collect();
    let graph = match mode {
        JacobianMode::Forward => jvp_pass(g, wrt)?.graph,
        JacobianMode::Reverse => autodiff(g, wrt, &seeds)?.graph,
    };
    let out_index = match mode {
        JacobianMode::Forward => graph.outputs().iter().position(|o| o.name == tangent_name(of)),
        JacobianMode::Reverse => graph
            .outputs()
            .iter()
            .position(|o| o.name == format!("grad_{}", wrt[0])),
    }
    .ok_or_else(|| PassError::Internal {
        node: of.to_string(),
        message: "the derivative graph lacks its outputs".into(),
    })?;
    Ok(Jacobian {
        mode,
        exe: compile(&graph, options)?,
        in_sizes,
        out_size,
        n_primal: g.inputs().len(),
        out_index,
        wrt_types,
        out_type,
    })
}

impl Jacobian {
    /// The Jacobian at `inputs` (the graph's inputs) as an `[m, n]` tensor
    /// of the output's dtype.
    pub fn call(&self, inputs: &[&Tensor]) -> Result<Tensor, Error> {
        let n: usize = self.in_sizes.iter().sum();
        let m = self.out_size;
        let too_big = || {
            wengert_runtime::RuntimeError::Other(format!(
                "a Jacobian of {m} × {n} elements is more than a tensor may hold"
            ))
        };
        let cells = m
            .checked_mul(n)
            .filter(|&c| c <= wengert_ir::types::MAX_ELEMENTS)
            .ok_or_else(too_big)?;
        let mut jac: Vec<f64> = Vec::new();
        jac.try_reserve_exact(cells).map_err(|_| too_big())?;
        jac.resize(cells, 0.0);
        let unit = |ty: &TensorType, hot: Option<usize>| -> Result<Tensor, Error> {
            let mut v = vec![0.0; ty.num_elements()];
            if let Some(h) = hot {
                v[h] = 1.0;
            }
            Ok(Tensor::from_vec(ty.shape.clone(), v)?.convert(ty.dtype))
        };
        if inputs.len() != self.n_primal {
            return Err(wengert_runtime::RuntimeError::Other(format!(
                "the Jacobian takes {} input(s), got {}",
                self.n_primal,
                inputs.len()
            ))
            .into());
        }
        match self.mode {
            JacobianMode::Forward => {
                let mut col = 0;
                for (b, &size) in self.in_sizes.iter().enumerate() {
                    for k in 0..size {
                        let tangents: Vec<Tensor> = self
                            .wrt_types
                            .iter()
                            .enumerate()
                            .map(|(c, t)| unit(t, (c == b).then_some(k)))
                            .collect::<Result<_, _>>()?;
                        let mut args: Vec<&Tensor> = inputs.to_vec();
                        args.extend(tangents.iter());
                        let outs = self.exe.call(&args)?;
                        for (r, v) in outs[self.out_index].to_f64_vec().into_iter().enumerate() {
                            jac[r * n + col] = v;
                        }
                        col += 1;
                    }
                }
            }
            JacobianMode::Reverse => {
                for r in 0..m {
                    let seed = unit(&self.out_type, Some(r))?;
                    let mut args: Vec<&Tensor> = inputs.to_vec();
                    args.push(&seed);
                    let outs = self.exe.call(&args)?;
                    let mut col = 0;
                    for (b, size) in self.in_sizes.iter().enumerate() {
                        for (k, v) in outs[self.out_index + b]
                            .to_f64_vec()
                            .into_iter()
                            .enumerate()
                            .take(*size)
                        {
                            jac[r * n + col + k] = v;
                        }
                        col += size;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(vec![m, n], jac)?.convert(self.out_type.dtype))
    }
}

/// The most elements (of all of `wrt` together) [`hessian`] builds a
/// matrix for: its graph holds one copy of the HVP's tangent part per
/// element, so the graph (and compile time) grows with `n`; beyond this,
/// apply [`hvp`] to the vectors needed.
pub const HESSIAN_MAX_ELEMENTS: usize = 256;

/// The graph of the Hessian of the scalar output `of` with respect to
/// `wrt`: `g`'s inputs → `hessian`, an `[n, n]` matrix (`n` the elements of
/// all of `wrt`, each flattened row-major, in order). It is [`hvp_graph`]
/// with its tangent inputs replaced by each unit vector in turn: the
/// primal and gradient nodes once, the tangent nodes once per column.
pub fn hessian_graph(g: &Graph, of: &str, wrt: &[&str]) -> Result<Graph, Error> {
    let h = hvp_graph(g, of, wrt)?;
    let types: Vec<TensorType> = wrt
        .iter()
        .map(|x| {
            h.input(&tangent_name(x))
                .map(|i| i.ty.clone())
                .ok_or_else(|| PassError::BadWrt {
                    name: x.to_string(),
                    reason: "the graph has no such input".into(),
                })
        })
        .collect::<Result<_, _>>()?;
    let dtype = types.first().map_or(wengert_ir::DType::F64, |t| t.dtype);
    if let Some(t) = types.iter().find(|t| t.dtype != dtype) {
        return Err(PassError::BadWrt {
            name: wrt.join(", "),
            reason: format!("a Hessian needs inputs of one dtype ({dtype} and {})", t.dtype),
        }
        .into());
    }
    let sizes: Vec<usize> = types.iter().map(|t| t.num_elements()).collect();
    let n: usize = sizes.iter().sum();
    if n > HESSIAN_MAX_ELEMENTS {
        return Err(PassError::BadWrt {
            name: wrt.join(", "),
            reason: format!(
                "{n} elements: a Hessian graph is built for at most {HESSIAN_MAX_ELEMENTS} (use hvp for products with vectors)"
            ),
        }
        .into());
    }
    let tangent_inputs: Vec<wengert_ir::NodeId> = wrt
        .iter()
        .filter_map(|x| h.input(&tangent_name(x)).map(|i| i.node))
        .collect();
    // Which nodes depend on a tangent (copied per column).
    let depends = h.dependents(&tangent_inputs);
    let hvp_outputs: Vec<wengert_ir::NodeId> = h.outputs()[wrt.len()..].iter().map(|o| o.node).collect();
    // Which nodes an HVP output needs: only those are copied (the
    // gradient's own outputs and the tangents of values no HVP output
    // reads would be copied once per column and then thrown away, and
    // the graph has n columns).
    let mut live = vec![false; h.len()];
    for &o in &hvp_outputs {
        live[o.index()] = true;
    }
    for id in h.node_ids().rev() {
        if live[id.index()] {
            for a in h.args(id) {
                live[a.index()] = true;
            }
        }
    }
    let mut out = Graph::new(format!("{}.hessian", g.name));
    let mut shared: Vec<Option<wengert_ir::NodeId>> = vec![None; h.len()];
    for i in g.inputs() {
        let node = h.input(&i.name).map(|x| x.node).ok_or_else(|| PassError::Internal {
            node: i.name.clone(),
            message: "the HVP graph lost an input".into(),
        })?;
        shared[node.index()] = Some(out.add_input(&i.name, i.ty.clone(), i.differentiable)?);
    }
    let mut columns = Vec::with_capacity(n);
    let (mut block, mut within) = (0, 0);
    for _ in 0..n {
        while within == sizes[block] {
            block += 1;
            within = 0;
        }
        let mut map = shared.clone();
        for (b, (&t, ty)) in tangent_inputs.iter().zip(&types).enumerate() {
            let mut v = vec![0.0; ty.num_elements()];
            if b == block {
                v[within] = 1.0;
            }
            map[t.index()] = Some(out.add_const(Tensor::from_vec(ty.shape.clone(), v)?.convert(dtype)));
        }
        for id in h.node_ids() {
            if !live[id.index()] || map[id.index()].is_some() || (!depends[id.index()] && shared[id.index()].is_some())
            {
                continue;
            }
            let args = h
                .args(id)
                .iter()
                .map(|a| map[a.index()])
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| PassError::Internal {
                    node: h.value_name(id),
                    message: "an operand was not copied first".into(),
                })?;
            let copy = out.copy_node(&h, id, &args)?;
            map[id.index()] = Some(copy);
            if !depends[id.index()] {
                shared[id.index()] = Some(copy);
            }
        }
        // Column: every hvp block flattened, end to end.
        let mut parts = Vec::with_capacity(hvp_outputs.len());
        for (&o, size) in hvp_outputs.iter().zip(&sizes) {
            let node = map[o.index()].ok_or_else(|| PassError::Internal {
                node: h.value_name(o),
                message: "an HVP output was not copied".into(),
            })?;
            parts.push(out.add(wengert_ir::Op::Reshape { shape: vec![*size, 1] }, &[node])?);
        }
        columns.push(if parts.len() == 1 {
            parts[0]
        } else {
            out.add(wengert_ir::Op::Concat { axis: 0 }, &parts)?
        });
        within += 1;
    }
    let matrix = if columns.len() == 1 {
        columns[0]
    } else {
        out.add(wengert_ir::Op::Concat { axis: 1 }, &columns)?
    };
    out.add_output("hessian", matrix)?;
    Ok(out)
}

/// A compiled Hessian of a scalar output (see [`hessian`]).
pub struct Hessian {
    exe: Executable,
}

/// Compiles the Hessian of the scalar output `of` with respect to `wrt`
/// (forward over reverse, [`hessian_graph`]) as one function of `g`'s
/// inputs; [`Hessian::call`] returns the `[n, n]` matrix (`n` the inputs'
/// elements together, in `wrt` order; at most [`HESSIAN_MAX_ELEMENTS`]).
pub fn hessian(g: &Graph, of: &str, wrt: &[&str], options: &Options) -> Result<Hessian, Error> {
    Ok(Hessian {
        exe: compile(&hessian_graph(g, of, wrt)?, options)?,
    })
}

impl Hessian {
    /// The Hessian at `inputs` as an `[n, n]` tensor.
    pub fn call(&self, inputs: &[&Tensor]) -> Result<Tensor, Error> {
        let mut out = self.exe.call(inputs)?;
        out.pop().ok_or_else(|| {
            wengert_runtime::RuntimeError::Other("internal error: the Hessian function has no output".into()).into()
        })
    }

    /// The compiled function (inputs: the graph's; output: `hessian`).
    pub fn executable(&self) -> &Executable {
        &self.exe
    }
}
