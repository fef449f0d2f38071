//! The whole training step as one compiled function: the gradient graph
//! with the optimizer's update appended (SGD with momentum or Nesterov,
//! Adam, AdamW, clipping by global norm), the learning rate and the step
//! count as runtime scalar inputs (a schedule never recompiles).
//!
//! [`step_graph`] builds the graph; [`TrainStep`] compiles it and owns the
//! parameters and the optimizer state.

use crate::api::{compile, Error, Executable, Options};
use wengert_ir::{BinaryOp, DType, Graph, NodeId, Tensor, UnaryOp};
use wengert_passes::autodiff::{autodiff_with, LoopPolicy};
use wengert_passes::emit::Emitter;
use wengert_passes::{PassError, Seed};

/// An update rule. Conventions are PyTorch's (`torch.optim`), so results
/// can be compared with it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// `g ← g + wd·p`; with momentum `b ← μ·b + g`, the step `d = b` (or
    /// `g + μ·b` with Nesterov), else `d = g`; `p ← p − lr·d`.
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    /// `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
    /// `p ← p − lr·(m/(1 − β₁ᵗ)) / (√(v/(1 − β₂ᵗ)) + ε)`; weight decay
    /// adds `wd·p` to `g` (Adam) or, `decoupled`, `lr·wd·p` to the step
    /// (AdamW).
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    },
}

impl Optimizer {
    /// Plain SGD.
    pub fn sgd() -> Optimizer {
        Optimizer::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// SGD with momentum `mu` (Nesterov's if `nesterov`).
    pub fn momentum(mu: f64, nesterov: bool) -> Optimizer {
        Optimizer::Sgd {
            momentum: mu,
            nesterov,
            weight_decay: 0.0,
        }
    }

    /// Adam with β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    pub fn adam() -> Optimizer {
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }

    /// AdamW: Adam with decoupled weight decay `wd`.
    pub fn adamw(wd: f64) -> Optimizer {
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: wd,
            decoupled: true,
        }
    }

    /// The names of the state tensors kept per parameter.
    fn state_names(&self) -> &'static [&'static str] {
        match self {
            Optimizer::Sgd { momentum, .. } if *momentum != 0.0 => &["momentum"],
            Optimizer::Sgd { .. } => &[],
            Optimizer::Adam { .. } => &["adam_m", "adam_v"],
        }
    }
}

/// What the step does besides the optimizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepConfig {
    pub optimizer: Optimizer,
    /// Scale all gradients by `c / max(‖g‖, c)`, `‖g‖` the global norm over
    /// every parameter's gradient (`torch.nn.utils.clip_grad_norm_`).
    pub clip_norm: Option<f64>,
    /// What loops store for their backward (`Binomial(c)` trains a long
    /// recurrence in memory independent of its length).
    pub loops: LoopPolicy,
}

impl StepConfig {
    /// `optimizer`, no clipping, loops storing their trajectory.
    pub fn new(optimizer: Optimizer) -> StepConfig {
        StepConfig {
            optimizer,
            clip_norm: None,
            loops: LoopPolicy::default(),
        }
    }
}

/// The graph of one training step (see [`step_graph`]).
#[derive(Clone, Debug)]
pub struct StepGraph {
    /// Inputs: the model's inputs (parameters and data, in the model's
    /// order), then each state tensor (`<state>_<param>`, per parameter in
    /// order), then `lr` and `step` (scalars of the parameters' dtype; the
    /// step count starts at 1). Outputs: `loss`, `new_<param>` per
    /// parameter, then `new_<state>_<param>` per state input.
    pub graph: Graph,
    pub params: Vec<String>,
    /// The state inputs, in order.
    pub state: Vec<String>,
}

impl StepGraph {
    /// The optimizer state at its start: zeros of each state input's type.
    pub fn zero_state(&self) -> Result<Vec<Tensor>, Error> {
        self.state
            .iter()
            .map(|s| {
                let ty = self
                    .graph
                    .input(s)
                    .map(|i| i.ty.clone())
                    .ok_or_else(|| PassError::Internal {
                        node: s.clone(),
                        message: "the step graph lost a state input".into(),
                    })?;
                Ok(Tensor::try_zeros(ty)?)
            })
            .collect()
    }
}

/// What [`append_update`] added: the state inputs' names, and the nodes
/// of the new parameters and the new state.
struct Update {
    state: Vec<String>,
    new_params: Vec<NodeId>,
    new_state: Vec<NodeId>,
}

/// Appends `config`'s update of the parameters `p_nodes` by their
/// gradients `grads` to `sg`: adds the state inputs (`<state>_<param>`),
/// `lr` and `step`, and the update's nodes.
fn append_update(
    sg: &mut Graph,
    at: NodeId,
    dtype: DType,
    params: &[&str],
    p_nodes: &[NodeId],
    mut grads: Vec<NodeId>,
    config: &StepConfig,
) -> Result<Update, Error> {
    // State inputs, then lr and step.
    let names = config.optimizer.state_names();
    let mut state = Vec::new();
    let mut state_nodes = Vec::new();
    for (p, &pn) in params.iter().zip(p_nodes) {
        for s in names {
            let name = format!("{s}_{p}");
            state_nodes.push(sg.add_input(&name, sg.ty(pn).clone(), false)?);
            state.push(name);
        }
    }
    let scalar = wengert_ir::TensorType::new(dtype, vec![]);
    let lr = sg.add_input("lr", scalar.clone(), false)?;
    let step = sg.add_input("step", scalar, false)?;
    let mut e = Emitter { g: &mut *sg, at };
    // Clipping: g ← g · c / max(‖g‖, c).
    if let Some(c) = config.clip_norm {
        let mut total: Option<NodeId> = None;
        for &gr in &grads {
            let sq = e.binary(BinaryOp::Mul, gr, gr)?;
            // A matrix's squares are summed down its rows first (one row
            // of partial sums, which compiled code accumulates a vector
            // at a time), then along that row. Summing all at once is one
            // chain of dependent additions in element order (the defined
            // order of a sum along an axis): for the MLP's 784×256 weight
            // it took a fifth of the Adam step on Zen 5. Both orders are
            // the graph's own, so the interpreter and every compiled form
            // agree bit for bit.
            let rank = e.shape(gr).len();
            let s = if rank >= 2 {
                let rows = e.reduce_sum(sq, vec![0])?;
                e.reduce_sum(rows, (0..rank - 1).collect())?
            } else {
                e.reduce_sum(sq, (0..rank).collect())?
            };
            total = Some(match total {
                None => s,
                Some(t) => e.add(t, s)?,
            });
        }
        if let Some(total) = total {
            let norm = e.unary(UnaryOp::Sqrt, total)?;
            let cc = e.scalar(dtype, c);
            let denom = e.binary(BinaryOp::Max, norm, cc)?;
            let scale = e.div(cc, denom)?;
            for gr in &mut grads {
                let sb = e.broadcast(scale, &e.shape(*gr))?;
                *gr = e.binary(BinaryOp::Mul, *gr, sb)?;
            }
        }
    }
    let mut new_params = Vec::new();
    let mut new_state = Vec::new();
    for (k, (&p, &gr)) in p_nodes.iter().zip(&grads).enumerate() {
        let shape = e.shape(p);
        match config.optimizer {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let g1 = if weight_decay != 0.0 {
                    let wd = e.mul_scalar(weight_decay, p)?;
                    e.add(gr, wd)?
                } else {
                    gr
                };
                let d = if momentum != 0.0 {
                    let b = state_nodes[k];
                    let mb = e.mul_scalar(momentum, b)?;
                    let b1 = e.add(mb, g1)?;
                    new_state.push(b1);
                    if nesterov {
                        let mb1 = e.mul_scalar(momentum, b1)?;
                        e.add(g1, mb1)?
                    } else {
                        b1
                    }
                } else {
                    g1
                };
                let lr_b = e.broadcast(lr, &shape)?;
                let upd = e.binary(BinaryOp::Mul, lr_b, d)?;
                new_params.push(e.sub(p, upd)?);
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let (m, v) = (state_nodes[2 * k], state_nodes[2 * k + 1]);
                let g1 = if weight_decay != 0.0 && !decoupled {
                    let wd = e.mul_scalar(weight_decay, p)?;
                    e.add(gr, wd)?
                } else {
                    gr
                };
                let bm = e.mul_scalar(beta1, m)?;
                let gm = e.mul_scalar(1.0 - beta1, g1)?;
                let m1 = e.add(bm, gm)?;
                let gg = e.binary(BinaryOp::Mul, g1, g1)?;
                let bv = e.mul_scalar(beta2, v)?;
                let gv = e.mul_scalar(1.0 - beta2, gg)?;
                let v1 = e.add(bv, gv)?;
                // 1 − βᵗ = 1 − exp(t·ln β), with t a runtime input.
                let correction = |e: &mut Emitter<'_>, beta: f64| -> Result<NodeId, PassError> {
                    let tl = e.mul_scalar(beta.ln(), step)?;
                    let pw = e.unary(UnaryOp::Exp, tl)?;
                    let one = e.scalar(dtype, 1.0);
                    e.sub(one, pw)
                };
                // PyTorch's form of the bias correction: the two
                // corrections fold into scalars (lr / c1 and 1 / √c2), so
                // each element pays one square root and one division, not
                // three divisions (the update of the MLP's first layer was
                // bound by them):
                //   p' = p − (lr/c1)·m' / (√v' · (1/√c2) + ε).
                let c1 = correction(&mut e, beta1)?;
                let c2 = correction(&mut e, beta2)?;
                let s1 = e.div(lr, c1)?;
                let one = e.scalar(dtype, 1.0);
                let rc2 = e.unary(UnaryOp::Sqrt, c2)?;
                let r2 = e.div(one, rc2)?;
                let s1b = e.broadcast(s1, &shape)?;
                let r2b = e.broadcast(r2, &shape)?;
                let root = e.unary(UnaryOp::Sqrt, v1)?;
                let scaled = e.binary(BinaryOp::Mul, root, r2b)?;
                let epsb = e.full_like(root, eps)?;
                let den = e.add(scaled, epsb)?;
                let num = e.binary(BinaryOp::Mul, s1b, m1)?;
                let mut upd = e.div(num, den)?;
                if weight_decay != 0.0 && decoupled {
                    // AdamW: p' = p − (lr/c1)·m'/(…) − (lr·λ)·p.
                    let lw = e.mul_scalar(weight_decay, lr)?;
                    let lwb = e.broadcast(lw, &shape)?;
                    let wd = e.binary(BinaryOp::Mul, lwb, p)?;
                    upd = e.add(upd, wd)?;
                }
                new_params.push(e.sub(p, upd)?);
                new_state.push(m1);
                new_state.push(v1);
            }
        }
    }
    Ok(Update {
        state,
        new_params,
        new_state,
    })
}

/// The training step of `g` (scalar output `loss`, parameters `params`)
/// under `config`: the gradient graph (autodiff) with the update appended.
pub fn step_graph(g: &Graph, loss: &str, params: &[&str], config: &StepConfig) -> Result<StepGraph, Error> {
    let out = g.output(loss).ok_or_else(|| PassError::BadSeed {
        output: loss.to_string(),
        reason: "the graph has no such output".into(),
    })?;
    let lty = g.ty(out.node).clone();
    if !lty.is_scalar() || !lty.dtype.is_float() {
        return Err(PassError::BadSeed {
            output: loss.to_string(),
            reason: format!("a training step needs a float scalar loss, and this one is {lty}"),
        }
        .into());
    }
    let seeds: Vec<(&str, Seed)> = g
        .outputs()
        .iter()
        .map(|o| (o.name.as_str(), if o.name == loss { Seed::One } else { Seed::Zero }))
        .collect();
    let grad = autodiff_with(g, params, &seeds, config.loops)?;
    let mut sg = grad.graph.clone();
    sg.clear_outputs();
    sg.name = format!("{}.step", g.name);
    let dtype = lty.dtype;
    for p in params {
        let ty = &g.input(p).map(|i| i.ty.clone()).unwrap_or_else(|| lty.clone());
        if ty.dtype != dtype {
            return Err(PassError::BadWrt {
                name: p.to_string(),
                reason: format!("the parameter is {} but the loss is {dtype}", ty.dtype),
            }
            .into());
        }
    }
    let p_nodes: Vec<NodeId> = params
        .iter()
        .map(|p| grad.graph.input(p).map(|i| i.node))
        .collect::<Option<_>>()
        .ok_or_else(|| PassError::Internal {
            node: loss.to_string(),
            message: "a parameter is missing from the gradient graph".into(),
        })?;
    let grads: Vec<NodeId> = params
        .iter()
        .map(|p| grad.graph.output(&format!("grad_{p}")).map(|o| o.node))
        .collect::<Option<_>>()
        .ok_or_else(|| PassError::Internal {
            node: loss.to_string(),
            message: "a gradient is missing".into(),
        })?;
    let Update {
        state,
        new_params,
        new_state,
    } = append_update(&mut sg, out.node, dtype, params, &p_nodes, grads, config)?;
    sg.add_output("loss", out.node)?;
    for (p, &n) in params.iter().zip(&new_params) {
        sg.add_output(&format!("new_{p}"), n)?;
    }
    for (s, &n) in state.iter().zip(&new_state) {
        sg.add_output(&format!("new_{s}"), n)?;
    }
    wengert_ir::verify(&sg)?;
    Ok(StepGraph {
        graph: sg,
        params: params.iter().map(|s| s.to_string()).collect(),
        state,
    })
}

/// A compiled training step that owns the parameters and the optimizer
/// state and updates them in place: each is one buffer, donated to the
/// step's output of its next value (`Options::with_donations`), so memory
/// is parameters + state + the step's arena + the loss (see
/// [`TrainStep::memory`]), with no second set, and a step allocates
/// nothing but its two scalar inputs.
///
/// On x86, call [`crate::set_flush_denormals`]`(true)` before building
/// one, as JAX always does: as training converges, gradients and Adam's
/// second moment turn subnormal, and arithmetic on subnormals is many
/// times slower (the MLP step slowed 1.8× on one batch; a recurrent
/// network's gradient 12× on an Intel Xeon). It is not the default
/// because it changes results below 1.2·10⁻³⁸ (f32) for the whole process.
pub struct TrainStep {
    exe: Executable,
    graph: StepGraph,
    data_names: Vec<String>,
    /// Parameters then optimizer state, in the order of the step graph's
    /// state inputs: the donated buffers.
    values: Vec<Tensor>,
    /// The loss (the only output not donated).
    loss: Vec<Tensor>,
    /// Steps taken.
    pub steps: u64,
    dtype: DType,
}

/// Memory of a training step, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepMemory {
    pub params: usize,
    pub state: usize,
    /// The compiled step's arena (its intermediates).
    pub arena: usize,
    /// Outputs other than the updated buffers (the loss).
    pub outputs: usize,
}

impl StepMemory {
    /// Everything the step holds.
    pub fn total(&self) -> usize {
        self.params + self.state + self.arena + self.outputs
    }
}

/// The (input, output) names of a step or update graph's buffers updated
/// in place: each parameter and state input with its `new_` output.
fn donated_pairs(sg: &StepGraph) -> Vec<(String, String)> {
    sg.params
        .iter()
        .chain(&sg.state)
        .map(|name| (name.clone(), format!("new_{name}")))
        .collect()
}

/// `options` with `pairs` donated.
fn donating(options: &Options, pairs: &[(String, String)]) -> Options {
    let names: Vec<(&str, &str)> = pairs.iter().map(|(i, o)| (i.as_str(), o.as_str())).collect();
    options.clone().with_donations(&names)
}

impl TrainStep {
    /// Compiles the step of `g` for the parameters `params` (name, initial
    /// value); the optimizer state starts at zero.
    pub fn new(
        g: &Graph,
        loss: &str,
        params: &[(&str, Tensor)],
        config: &StepConfig,
        options: &Options,
    ) -> Result<TrainStep, Error> {
        let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
        let graph = step_graph(g, loss, &names, config)?;
        let exe = compile(&graph.graph, &donating(options, &donated_pairs(&graph)))?;
        let data_names = g
            .inputs()
            .iter()
            .filter(|i| !names.contains(&i.name.as_str()))
            .map(|i| i.name.clone())
            .collect();
        let mut values = Vec::new();
        for (name, t) in params {
            let want = g.input(name).map(|i| i.ty.clone());
            if want.as_ref() != Some(t.ty()) {
                return Err(wengert_runtime::RuntimeError::Other(format!(
                    "parameter `{name}`: expected {}, got {}",
                    want.map_or("no such input".to_string(), |t| t.to_string()),
                    t.ty()
                ))
                .into());
            }
            values.push(t.clone());
        }
        values.extend(graph.zero_state()?);
        let dtype = g
            .ty(g.output(loss).map(|o| o.node).ok_or_else(|| PassError::Internal {
                node: loss.to_string(),
                message: "no loss".into(),
            })?)
            .dtype;
        let loss = vec![Tensor::scalar(dtype, 0.0)];
        Ok(TrainStep {
            exe,
            graph,
            data_names,
            values,
            loss,
            steps: 0,
            dtype,
        })
    }

    /// One step on `data` (the model's data inputs, in the model's order)
    /// with learning rate `lr`; returns the loss before the update. The
    /// parameters and state are updated in their own buffers.
    pub fn step(&mut self, data: &[&Tensor], lr: f64) -> Result<f64, Error> {
        if data.len() != self.data_names.len() {
            return Err(wengert_runtime::RuntimeError::Other(format!(
                "the step takes {} data input(s) ({}), got {}",
                self.data_names.len(),
                self.data_names.join(", "),
                data.len()
            ))
            .into());
        }
        self.steps += 1;
        let lr_t = Tensor::scalar(self.dtype, lr);
        let step_t = Tensor::scalar(self.dtype, self.steps as f64);
        // The inputs not donated, in the graph's order: the data (the
        // model's inputs that are not parameters), then `lr` and `step`.
        let mut inputs: Vec<&Tensor> = data.to_vec();
        inputs.push(&lr_t);
        inputs.push(&step_t);
        self.exe.call_donated(&inputs, &mut self.values, &mut self.loss)?;
        Ok(self.loss[0].to_f64_vec().first().copied().unwrap_or(f64::NAN))
    }

    /// What the step holds in memory.
    pub fn memory(&self) -> StepMemory {
        let n_params = self.graph.params.len();
        let bytes = |ts: &[Tensor]| ts.iter().map(|t| t.ty().size_bytes()).sum();
        StepMemory {
            params: bytes(&self.values[..n_params]),
            state: bytes(&self.values[n_params..]),
            arena: self.exe.memory().arena_bytes,
            outputs: bytes(&self.loss),
        }
    }

    /// The current value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&Tensor> {
        self.graph
            .params
            .iter()
            .position(|p| p == name)
            .map(|k| &self.values[k])
    }

    /// The parameters, in the order given to [`TrainStep::new`].
    pub fn params(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.graph.params.iter().map(String::as_str).zip(&self.values)
    }

    /// The optimizer state, by state input name (`<state>_<param>`).
    pub fn state(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        let n_params = self.graph.params.len();
        self.graph
            .state
            .iter()
            .map(String::as_str)
            .zip(&self.values[n_params..])
    }

    /// Writes the parameters to `path` as safetensors.
    pub fn save(&self, path: &std::path::Path) -> Result<(), Error> {
        let named: Vec<(&str, &Tensor)> = self.params().collect();
        crate::weights::save_safetensors(path, &named)
    }

    /// Replaces the parameters with those in the safetensors file `path`
    /// (names, dtypes and shapes checked; the optimizer state is kept).
    pub fn load(&mut self, path: &std::path::Path) -> Result<(), Error> {
        let expected: Vec<(&str, wengert_ir::TensorType)> = self
            .graph
            .params
            .iter()
            .zip(&self.values)
            .map(|(n, t)| (n.as_str(), t.ty().clone()))
            .collect();
        let loaded = crate::weights::load_safetensors(path, &expected)?;
        for (v, t) in self.values.iter_mut().zip(loaded) {
            *v = t;
        }
        Ok(())
    }

    /// The compiled step.
    pub fn executable(&self) -> &Executable {
        &self.exe
    }

    /// The step graph (for dumps and tests).
    pub fn graph(&self) -> &StepGraph {
        &self.graph
    }
}

/// The optimizer's update alone, as a graph: inputs the parameters (name,
/// type), then `grad_<param>` for each, then the state inputs, `lr` and
/// `step`; outputs `new_<param>`, then `new_<state>_<param>`. For a
/// gradient computed elsewhere (averaged across processes by
/// `distributed`, say).
pub fn update_graph(params: &[(&str, wengert_ir::TensorType)], config: &StepConfig) -> Result<StepGraph, Error> {
    let mut g = Graph::new("update");
    let dtype = params.first().map_or(DType::F32, |(_, t)| t.dtype);
    let mut p_nodes = Vec::new();
    for (name, ty) in params {
        if ty.dtype != dtype || !dtype.is_float() {
            return Err(PassError::BadWrt {
                name: name.to_string(),
                reason: format!(
                    "the update needs float parameters of one dtype ({dtype} and {})",
                    ty.dtype
                ),
            }
            .into());
        }
        p_nodes.push(g.add_input(name, ty.clone(), true)?);
    }
    let grads = params
        .iter()
        .map(|(name, ty)| g.add_input(&format!("grad_{name}"), ty.clone(), false))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
    let at = p_nodes.first().copied().ok_or_else(|| PassError::BadWrt {
        name: String::new(),
        reason: "no parameters to update".into(),
    })?;
    let Update {
        state,
        new_params,
        new_state,
    } = append_update(&mut g, at, dtype, &names, &p_nodes, grads, config)?;
    for (p, &n) in names.iter().zip(&new_params) {
        g.add_output(&format!("new_{p}"), n)?;
    }
    for (s, &n) in state.iter().zip(&new_state) {
        g.add_output(&format!("new_{s}"), n)?;
    }
    wengert_ir::verify(&g)?;
    Ok(StepGraph {
        graph: g,
        params: names.iter().map(|s| s.to_string()).collect(),
        state,
    })
}

/// The compiled update of [`update_graph`] with its optimizer state, both
/// updated in place (the parameters in the caller's buffers, the state in
/// its own).
pub struct UpdateStep {
    exe: Executable,
    n_params: usize,
    state: Vec<Tensor>,
    /// Updates applied.
    pub steps: u64,
    dtype: DType,
}

impl UpdateStep {
    /// Compiles the update for parameters of these names and types; the
    /// state starts at zero.
    pub fn new(
        params: &[(&str, wengert_ir::TensorType)],
        config: &StepConfig,
        options: &Options,
    ) -> Result<UpdateStep, Error> {
        let graph = update_graph(params, config)?;
        let exe = compile(&graph.graph, &donating(options, &donated_pairs(&graph)))?;
        let state = graph.zero_state()?;
        Ok(UpdateStep {
            exe,
            n_params: params.len(),
            state,
            steps: 0,
            dtype: params.first().map_or(DType::F32, |(_, t)| t.dtype),
        })
    }

    /// Updates `params` in place (their own buffers) by `grads` with
    /// learning rate `lr`.
    pub fn apply(&mut self, params: &mut [Tensor], grads: &[&Tensor], lr: f64) -> Result<(), Error> {
        if params.len() != self.n_params || grads.len() != self.n_params {
            return Err(wengert_runtime::RuntimeError::Other(format!(
                "the update takes {} parameters and as many gradients, got {} and {}",
                self.n_params,
                params.len(),
                grads.len()
            ))
            .into());
        }
        self.steps += 1;
        let lr_t = Tensor::scalar(self.dtype, lr);
        let step_t = Tensor::scalar(self.dtype, self.steps as f64);
        let mut inputs: Vec<&Tensor> = grads.to_vec();
        inputs.push(&lr_t);
        inputs.push(&step_t);
        // The donated buffers side by side: the caller's parameters (moved
        // in and back, their heap buffers untouched), then the state.
        let mut donated: Vec<Tensor> = params
            .iter_mut()
            .map(|p| std::mem::replace(p, Tensor::scalar(DType::F32, 0.0)))
            .collect();
        donated.append(&mut self.state);
        let result = self.exe.call_donated(&inputs, &mut donated, &mut []);
        self.state = donated.split_off(self.n_params);
        for (p, d) in params.iter_mut().zip(donated) {
            *p = d;
        }
        Ok(result?)
    }
}
