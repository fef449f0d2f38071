//! The Cranelift JIT: ISA settings, compiling graphs into one module, and
//! the owner of the generated code.

use crate::error::CodegenError;
use crate::lower::{lower_graph, Abi, ModuleState, Segments};
use cranelift_codegen::ir::{types, AbiParam, InstBuilder};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use std::sync::{Arc, Mutex};
use wengert_ir::{verify, DType, Graph};
use wengert_runtime::{EntryFn, Executable, PackedFn};

/// Options of code generation.
#[derive(Clone, Debug)]
pub struct CodegenOptions {
    /// Run Cranelift's IR verifier (costs about a quarter of compile time;
    /// on in debug builds by default).
    pub verify_clif: bool,
    /// Keep the CLIF text and the disassembly of each function.
    pub keep_text: bool,
    /// Graphs of more nodes than this are compiled as several functions
    /// of about this many nodes each, which the entry calls in turn (see
    /// `lower::Segments`): compile time then grows linearly with the
    /// graph, and no function's stack frame grows with it.
    pub segment_nodes: usize,
    /// Threads a call may use (large matrix products run on the shared
    /// pool, `wengert_runtime::pool`); results are the same for every
    /// count. Default: `pool::default_threads()` (`WENGERT_THREADS`, else
    /// the cores available to the process).
    pub threads: usize,
    /// Inputs that share their buffer with an output, by name (input,
    /// output): the call updates them in place
    /// (`Executable::call_donated`). Each pair is proven safe on the final
    /// graph (`donate::check_donations`), else compiling fails naming it.
    /// Every graph compiled with these options must have the names.
    pub donate: Vec<(String, String)>,
}

impl Default for CodegenOptions {
    fn default() -> Self {
        CodegenOptions {
            verify_clif: cfg!(debug_assertions),
            keep_text: false,
            segment_nodes: crate::lower::SEGMENT_NODES,
            threads: wengert_runtime::pool::default_threads(),
            donate: Vec::new(),
        }
    }
}

/// Owns a JIT module's memory and the data its code points into. Dropping
/// it frees the code pages (a `JITModule` leaks them otherwise).
struct JitCode {
    module: Mutex<Option<JITModule>>,
    _state: ModuleState,
}

// SAFETY: the module is only touched under the mutex (in `drop`); the
// constant data is immutable after compilation and only read by code.
unsafe impl Send for JitCode {}
unsafe impl Sync for JitCode {}

impl Drop for JitCode {
    fn drop(&mut self) {
        let module = self.module.get_mut().ok().and_then(Option::take);
        if let Some(m) = module {
            // SAFETY: the last executable using this code is being dropped
            // (each holds an `Arc` to this owner), so no function pointer
            // into the module can be called any more.
            unsafe { m.free_memory() };
        }
    }
}

fn new_module(opts: &CodegenOptions) -> Result<JITModule, CodegenError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| CodegenError::Cranelift(format!("setting {k}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(
        &mut flags,
        "enable_verifier",
        if opts.verify_clif { "true" } else { "false" },
    )?;
    set(&mut flags, "is_pic", "false")?;
    // Nothing unwinds through generated code: the Rust functions it calls
    // are `extern "C"`, which abort on panic.
    set(&mut flags, "unwind_info", "false")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    // A frame larger than the 4 KiB guard page is probed page by page, so
    // a stack too short for it faults on the guard page (a reported stack
    // overflow) instead of the prologue jumping past the guard and the
    // spills landing in whatever is mapped below. Frames beyond the
    // runtime's inline limit run on a thread sized for them anyway.
    set(&mut flags, "enable_probestack", "true")?;
    set(&mut flags, "probestack_strategy", "inline")?;
    let isa = cranelift_native::builder()
        .map_err(|e| CodegenError::Cranelift(format!("host ISA: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| CodegenError::Cranelift(format!("host ISA: {e}")))?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    for (name, ptr) in wengert_runtime::functions::symbols() {
        jb.symbol(name, ptr);
    }
    Ok(JITModule::new(jb))
}

/// Compiles each graph to a native function, all in one JIT module (one
/// finalization, shared code memory); returns one executable per graph.
pub fn compile_graphs(graphs: &[&Graph], opts: &CodegenOptions) -> Result<Vec<Executable>, CodegenError> {
    let mut module = new_module(opts)?;
    let mut state = ModuleState {
        imports: Default::default(),
        math_helpers: Default::default(),
        consts: Vec::new(),
        gemm_params: Vec::new(),
        ordered_params: Vec::new(),
        bodies: Default::default(),
        kernel_log: opts.keep_text.then(String::new),
        threads: opts.threads.max(1),
        donated_inputs: Vec::new(),
        uses_pool: false,
    };
    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();
    let mut compiled = Vec::new();
    // Code generation obeys a memory plan: a graph that has none (no
    // value placed in an arena, here or in a loop body) gets one.
    let planned: Vec<std::borrow::Cow<Graph>> = graphs
        .iter()
        .map(|&g| {
            verify(g)?;
            if has_plan(g) {
                Ok(std::borrow::Cow::Borrowed(g))
            } else {
                wengert_passes::memory::memory_plan(g)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| CodegenError::Unsupported {
                        node: g.name.clone(),
                        message: format!("memory plan: {e}"),
                    })
            }
        })
        .collect::<Result<_, _>>()?;
    let graphs: Vec<&Graph> = planned.iter().map(|g| g.as_ref()).collect();
    for (i, g) in graphs.iter().enumerate() {
        verify(g)?;
        let donated = crate::donate::check_donations(g, &opts.donate)?;
        let name = format!("wg{i}_{}", g.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let mut jc = JitContext {
            module: &mut module,
            state: &mut state,
            ctx: &mut ctx,
            fctx: &mut fctx,
            opts,
        };
        let kernels_start = jc.state.kernel_log.as_ref().map_or(0, String::len);
        jc.state.uses_pool = false;
        // Loop bodies first: the loops that call them need their ids.
        let mut bodies = Bodies::default();
        jc.define_bodies(g, &name, &mut bodies)?;
        // The entry's donated inputs are loaded in program order (bodies
        // were defined above with none).
        jc.state.donated_inputs = donated.iter().map(|&(i, _)| i).collect();
        let main = jc.define(g, &name, Abi::PointerArray);
        jc.state.donated_inputs.clear();
        let Some(mut main) = main? else {
            unreachable!("the pointer-array entry serves every graph");
        };
        // A loop's frame holds its body's frame below it.
        main.frame_bytes += bodies.frame_bytes;
        if opts.keep_text {
            main.clif.push_str(&bodies.clif);
            main.disasm.push_str(&bodies.disasm);
        }
        // (The packed entry below lowers the graph again: its kernels are
        // the same.)
        let kernels = jc
            .state
            .kernel_log
            .as_ref()
            .map(|log| log[kernels_start..].to_string())
            .unwrap_or_default();
        // All-scalar graphs also get the packed entry (a few more
        // instructions to compile); a graph it cannot serve (one that
        // needs an arena) simply has none.
        let packed = if is_all_scalar(g) {
            jc.define(g, &format!("{name}_packed"), Abi::PackedScalars)?
        } else {
            None
        };
        // The packed entry is called straight from `ScalarFn`, on the
        // caller's stack: a frame too large for that has none.
        let packed = packed.filter(|p| p.frame_bytes <= wengert_runtime::executable::INLINE_FRAME_LIMIT);
        if let Some(p) = &packed {
            // The dumps show both entries of the graph.
            if opts.keep_text {
                main.clif.push_str(&format!("\n; packed scalar entry\n{}", p.clif));
                main.disasm.push_str(&format!("\n; packed scalar entry\n{}", p.disasm));
            }
        }
        let pooled = jc.state.uses_pool;
        compiled.push((main, packed, kernels, donated, pooled));
    }
    module
        .finalize_definitions()
        .map_err(|e| CodegenError::Cranelift(e.to_string()))?;
    let pointers: Vec<_> = compiled
        .into_iter()
        .map(|(main, packed, kernels, donated, pooled)| {
            let ptr = module.get_finalized_function(main.id);
            let packed_ptr = packed.map(|p| module.get_finalized_function(p.id));
            (main, ptr, packed_ptr, kernels, donated, pooled)
        })
        .collect();
    let owner: Arc<dyn Send + Sync> = Arc::new(JitCode {
        module: Mutex::new(Some(module)),
        _state: state,
    });
    let mut out = Vec::new();
    for (g, (main, ptr, packed_ptr, kernels, donated, pooled)) in graphs.iter().zip(pointers) {
        // SAFETY: the function was defined with the signature
        // `fn(*const *mut u8)` under the platform's C calling convention.
        let entry = unsafe { std::mem::transmute::<*const u8, EntryFn>(ptr) };
        let inputs = g.inputs().iter().map(|i| (i.name.clone(), i.ty.clone())).collect();
        let outputs = g
            .outputs()
            .iter()
            .map(|o| (o.name.clone(), g.ty(o.node).clone()))
            .collect();
        // SAFETY: the code was generated from `g`: it reads inputs and
        // writes outputs of exactly these types, uses `arena` bytes of
        // arena, touches only data kept alive by `owner`, and its frame is
        // what Cranelift reported (the runtime functions it calls need
        // little stack).
        let mut exe = unsafe {
            Executable::new(
                g.name.clone(),
                inputs,
                outputs,
                entry,
                main.arena_bytes,
                main.clif,
                main.disasm,
                owner.clone(),
            )
            .with_frame_bytes(main.frame_bytes)
        };
        exe = exe.with_kernels(kernels).with_pool(pooled);
        if !donated.is_empty() {
            // SAFETY: `check_donations` proved that no element of a donated
            // input is read after its output overwrites it, and the entry
            // loads donated inputs in program order.
            exe = unsafe { exe.with_donations(donated) };
        }
        if let Some(ptr) = packed_ptr {
            // SAFETY: defined with `fn(*const u8, *mut u8)` under the C
            // calling convention, reading the graph's scalar inputs packed
            // at the first pointer and writing its scalar outputs packed at
            // the second, with no arena (lowering fails otherwise).
            exe = unsafe { exe.with_packed_entry(std::mem::transmute::<*const u8, PackedFn>(ptr)) };
        }
        out.push(exe);
    }
    Ok(out)
}

/// Whether `g` needs no (new) memory plan: it has one (a value placed in
/// an arena, here or in a loop body), or nothing in it could need storage
/// (only leaves, one-element elementwise values and views that are not
/// reshapes: a scalar graph, which planning again would leave as it is).
fn has_plan(g: &Graph) -> bool {
    use wengert_passes::memory;
    let placed = |g: &Graph| {
        g.node_ids().any(|id| {
            g.node(id).arena.is_some() || matches!(g.op(id), wengert_ir::Op::Scan(scan) if has_plan(&scan.body))
        })
    };
    let may_need_storage = g.node_ids().any(|id| {
        memory::needs_buffer(g, id, true)
            || memory::scratch_bytes(g, id) > 0
            || matches!(g.op(id), wengert_ir::Op::Reshape { .. })
    });
    !may_need_storage || placed(g)
}

/// Whether all inputs and outputs of `g` are scalars of one float dtype
/// (the graphs that get a packed entry).
fn is_all_scalar(g: &Graph) -> bool {
    let mut types = g
        .inputs()
        .iter()
        .map(|i| &i.ty)
        .chain(g.outputs().iter().map(|o| g.ty(o.node)));
    let Some(first) = types.next() else {
        return false;
    };
    first.rank() == 0
        && matches!(first.dtype, DType::F32 | DType::F64)
        && types.all(|t| t.rank() == 0 && t.dtype == first.dtype)
}

/// What compiling a graph's loop bodies leaves for the graph's entry.
#[derive(Default)]
struct Bodies {
    /// The largest frame of a body (with its own bodies' frames).
    frame_bytes: usize,
    clif: String,
    disasm: String,
}

/// One compiled (not yet finalized) function.
struct Defined {
    id: FuncId,
    arena_bytes: usize,
    /// The native stack frame's size (below the frame pointer).
    frame_bytes: usize,
    clif: String,
    disasm: String,
}

/// What defining a function needs, borrowed together.
struct JitContext<'a> {
    module: &'a mut JITModule,
    state: &'a mut ModuleState,
    ctx: &'a mut cranelift_codegen::Context,
    fctx: &'a mut FunctionBuilderContext,
    opts: &'a CodegenOptions,
}

impl JitContext<'_> {
    /// Lowers `g` under `abi` and defines it in the module as `name`;
    /// `None` for a packed entry whose lowering needs an arena (lowering
    /// runs before the declaration, so it leaves no function behind).
    fn define(&mut self, g: &Graph, name: &str, abi: Abi) -> Result<Option<Defined>, CodegenError> {
        let max_nodes = match abi {
            Abi::PointerArray => self.opts.segment_nodes,
            Abi::PackedScalars => usize::MAX,
        };
        self.define_cut(g, name, abi, max_nodes)
    }

    /// A loop body's function: never cut into segments, so that it has no
    /// spill area and its arena is the one its memory plan gives (which
    /// the loop's planned workspace holds; a body's spills past it
    /// overwrote the caller's spill slots).
    fn define_body(&mut self, g: &Graph, name: &str) -> Result<Option<Defined>, CodegenError> {
        self.define_cut(g, name, Abi::PointerArray, usize::MAX)
    }

    /// [`JitContext::define_body`], and whether the body runs work on the
    /// pool (recorded in its `BodyFn`: a later graph of the module that
    /// calls the same body without lowering it again still learns it).
    fn define_body_pooled(&mut self, g: &Graph, name: &str) -> Result<(Option<Defined>, bool), CodegenError> {
        let outer = std::mem::replace(&mut self.state.uses_pool, false);
        let defined = self.define_body(g, name)?;
        let pooled = self.state.uses_pool;
        self.state.uses_pool = outer || pooled;
        Ok((defined, pooled))
    }

    /// [`JitContext::define`] with segments of at most `max_nodes` nodes.
    fn define_cut(
        &mut self,
        g: &Graph,
        name: &str,
        abi: Abi,
        max_nodes: usize,
    ) -> Result<Option<Defined>, CodegenError> {
        let mut seg = Segments::new(g, max_nodes);
        let mut parts: Vec<Defined> = Vec::new();
        loop {
            let part_name = format!("{name}_part{}", parts.len());
            let Some((part, done)) = self.define_one(g, &part_name, abi, &mut seg)? else {
                return Ok(None);
            };
            if done && parts.is_empty() {
                // One segment: it is the entry itself.
                return Ok(Some(part));
            }
            parts.push(part);
            if done {
                break;
            }
        }
        // The entry calls the segments in order with its own arguments.
        let sig = self.signature(abi);
        self.ctx.func.signature = sig.clone();
        let frontend_config = self.module.target_config();
        {
            let mut fb = FunctionBuilder::new(&mut self.ctx.func, self.fctx);
            let block = fb.create_block();
            fb.append_block_params_for_function_params(block);
            fb.switch_to_block(block);
            let args = fb.block_params(block).to_vec();
            for part in &parts {
                let callee = self.module.declare_func_in_func(part.id, fb.func);
                fb.ins().call(callee, &args);
            }
            fb.ins().return_(&[]);
            fb.seal_all_blocks();
            fb.finalize(frontend_config);
        }
        let entry = self.finish(name, &sig, g)?;
        let frame_bytes = entry.frame_bytes + parts.iter().map(|p| p.frame_bytes).max().unwrap_or(0) + 64;
        let arena_bytes = parts.iter().map(|p| p.arena_bytes).max().unwrap_or(0);
        let mut clif = entry.clif;
        let mut disasm = entry.disasm;
        for (k, p) in parts.iter().enumerate() {
            if self.opts.keep_text {
                clif.push_str(&format!("\n; segment {k}\n{}", p.clif));
                disasm.push_str(&format!("\n; segment {k}\n{}", p.disasm));
            }
        }
        Ok(Some(Defined {
            id: entry.id,
            arena_bytes,
            frame_bytes,
            clif,
            disasm,
        }))
    }

    /// Compiles the body of every loop of `g` (innermost first) as a
    /// function of its own, recorded in the module state for the loops'
    /// lowering to call.
    fn define_bodies(&mut self, g: &Graph, name: &str, acc: &mut Bodies) -> Result<(), CodegenError> {
        for id in g.node_ids() {
            let wengert_ir::Op::Scan(scan) = g.op(id) else { continue };
            let key = crate::lower::body_key(scan);
            if self.state.bodies.contains_key(&key) {
                continue;
            }
            let mut inner = Bodies::default();
            self.define_bodies(&scan.body, name, &mut inner)?;
            // A loop that recomputes another's states calls that one's body.
            if let Some(regen) = &scan.regen {
                let forward = crate::lower::body_key(&regen.forward);
                if !self.state.bodies.contains_key(&forward) {
                    self.define_bodies(&regen.forward.body, name, &mut inner)?;
                    let body_name = format!("{name}_loop{}", self.state.bodies.len());
                    let (Some(defined), pooled) = self.define_body_pooled(&regen.forward.body, &body_name)? else {
                        unreachable!("the pointer-array entry serves every graph");
                    };
                    inner.frame_bytes = inner.frame_bytes.max(defined.frame_bytes + 64);
                    if self.opts.keep_text {
                        inner
                            .clif
                            .push_str(&format!("\n; loop body {body_name}\n{}", defined.clif));
                        inner
                            .disasm
                            .push_str(&format!("\n; loop body {body_name}\n{}", defined.disasm));
                    }
                    self.state.bodies.insert(
                        forward,
                        crate::lower::BodyFn {
                            id: defined.id,
                            arena_bytes: defined.arena_bytes,
                            pooled,
                        },
                    );
                }
            }
            // A body lowered into its loop needs no function of its own
            // (its nested loops' bodies were handled above); its frame is
            // the caller's.
            if crate::lower::inline_body(scan) {
                acc.frame_bytes = acc.frame_bytes.max(inner.frame_bytes);
                if self.opts.keep_text {
                    acc.clif.push_str(&inner.clif);
                    acc.disasm.push_str(&inner.disasm);
                }
                continue;
            }
            // Numbered across the module (inner bodies are defined first).
            let body_name = format!("{name}_loop{}", self.state.bodies.len());
            let (Some(defined), pooled) = self.define_body_pooled(&scan.body, &body_name)? else {
                unreachable!("the pointer-array entry serves every graph");
            };
            acc.frame_bytes = acc.frame_bytes.max(defined.frame_bytes + inner.frame_bytes + 64);
            if self.opts.keep_text {
                acc.clif
                    .push_str(&format!("\n; loop body {body_name}\n{}{}", defined.clif, inner.clif));
                acc.disasm.push_str(&format!(
                    "\n; loop body {body_name}\n{}{}",
                    defined.disasm, inner.disasm
                ));
            }
            self.state.bodies.insert(
                key,
                crate::lower::BodyFn {
                    id: defined.id,
                    arena_bytes: defined.arena_bytes,
                    pooled,
                },
            );
        }
        Ok(())
    }

    fn signature(&self, abi: Abi) -> cranelift_codegen::ir::Signature {
        let mut sig = self.module.make_signature();
        sig.params.push(AbiParam::new(types::I64));
        if abi == Abi::PackedScalars {
            sig.params.push(AbiParam::new(types::I64));
        }
        sig
    }

    /// Lowers the next segment of `g` as function `name`; `None` for a
    /// packed entry whose lowering needs an arena (lowering runs before
    /// the declaration, so it leaves no function behind).
    fn define_one(
        &mut self,
        g: &Graph,
        name: &str,
        abi: Abi,
        seg: &mut Segments,
    ) -> Result<Option<(Defined, bool)>, CodegenError> {
        let sig = self.signature(abi);
        self.ctx.func.signature = sig.clone();
        let frontend_config = self.module.target_config();
        let lowered = {
            let mut fb = FunctionBuilder::new(&mut self.ctx.func, self.fctx);
            let lowered = lower_graph(self.module, self.state, &mut fb, g, abi, seg);
            if lowered.is_ok() {
                fb.seal_all_blocks();
                fb.finalize(frontend_config);
            }
            lowered
        };
        let lowered = match lowered {
            Ok(l) => l,
            Err(e) => {
                // A half-built function leaves both contexts dirty; reset
                // them so that the next function starts clean.
                self.module.clear_context(self.ctx);
                *self.fctx = FunctionBuilderContext::new();
                return Err(e);
            }
        };
        if abi == Abi::PackedScalars && lowered.arena_bytes > 0 {
            self.module.clear_context(self.ctx);
            return Ok(None);
        }
        let mut defined = self.finish(name, &sig, g)?;
        defined.arena_bytes = lowered.arena_bytes;
        Ok(Some((defined, lowered.done)))
    }

    /// Declares and compiles the function in `self.ctx` as `name`.
    fn finish(
        &mut self,
        name: &str,
        sig: &cranelift_codegen::ir::Signature,
        g: &Graph,
    ) -> Result<Defined, CodegenError> {
        let id = self
            .module
            .declare_function(name, Linkage::Local, sig)
            .map_err(|e| CodegenError::Cranelift(e.to_string()))?;
        let clif = if self.opts.keep_text {
            self.ctx.func.display().to_string()
        } else {
            String::new()
        };
        self.ctx.set_disasm(self.opts.keep_text);
        self.module
            .define_function(id, self.ctx)
            .map_err(|e| CodegenError::Cranelift(format!("{}: {e:?}", g.name)))?;
        // The frame's size, from the frame pointer down to the stack
        // pointer after the prologue; if the compiler did not say, assume
        // a spill slot of 16 bytes for every value.
        let frame_bytes = self
            .ctx
            .compiled_code()
            .and_then(|c| c.buffer.frame_layout())
            .map(|f| f.frame_to_fp_offset as usize)
            .unwrap_or_else(|| 16 * self.ctx.func.dfg.num_values() + 4096);
        let disasm = if self.opts.keep_text {
            self.ctx
                .compiled_code()
                .and_then(|c| c.vcode.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        self.module.clear_context(self.ctx);
        Ok(Defined {
            id,
            arena_bytes: 0,
            frame_bytes,
            clif,
            disasm,
        })
    }
}

/// Compiles one graph.
pub fn compile_graph(g: &Graph, opts: &CodegenOptions) -> Result<Executable, CodegenError> {
    Ok(compile_graphs(&[g], opts)?.remove(0))
}
