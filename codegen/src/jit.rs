//! The Cranelift JIT: ISA settings, compiling graphs into one module, and
//! the owner of the generated code.

use crate::error::CodegenError;
use crate::lower::{lower_graph, ModuleState};
use cranelift_codegen::ir::{types, AbiParam};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use std::sync::{Arc, Mutex};
use wengert_ir::{verify, Graph};
use wengert_runtime::{EntryFn, Executable};

/// Options of code generation.
#[derive(Clone, Debug)]
pub struct CodegenOptions {
    /// Run Cranelift's IR verifier (costs about a quarter of compile time;
    /// on in debug builds by default).
    pub verify_clif: bool,
    /// Keep the CLIF text and the disassembly of each function.
    pub keep_text: bool,
}

impl Default for CodegenOptions {
    fn default() -> Self {
        CodegenOptions {
            verify_clif: cfg!(debug_assertions),
            keep_text: false,
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
    set(&mut flags, "use_colocated_libcalls", "false")?;
    let isa = cranelift_native::builder()
        .map_err(|e| CodegenError::Cranelift(format!("host ISA: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| CodegenError::Cranelift(format!("host ISA: {e}")))?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    for (name, ptr) in wengert_runtime::gemm::symbols() {
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
    };
    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();
    let mut compiled = Vec::new();
    for (i, g) in graphs.iter().enumerate() {
        verify(g)?;
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(types::I64));
        let name = format!("wg{i}_{}", g.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let id = module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| CodegenError::Cranelift(e.to_string()))?;
        ctx.func.signature = sig;
        let frontend_config = module.target_config();
        let lowered = {
            let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let lowered = lower_graph(&mut module, &mut state, &mut fb, g)?;
            fb.seal_all_blocks();
            fb.finalize(frontend_config);
            lowered
        };
        let clif = if opts.keep_text {
            ctx.func.display().to_string()
        } else {
            String::new()
        };
        ctx.set_disasm(opts.keep_text);
        module
            .define_function(id, &mut ctx)
            .map_err(|e| CodegenError::Cranelift(format!("{}: {e:?}", g.name)))?;
        let disasm = if opts.keep_text {
            ctx.compiled_code().and_then(|c| c.vcode.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        module.clear_context(&mut ctx);
        compiled.push((id, lowered.arena_bytes, clif, disasm));
    }
    module
        .finalize_definitions()
        .map_err(|e| CodegenError::Cranelift(e.to_string()))?;
    let entries: Vec<EntryFn> = compiled
        .iter()
        .map(|(id, ..)| {
            let ptr = module.get_finalized_function(*id);
            // SAFETY: the function was defined with the signature
            // `fn(*const *mut u8)` under the platform's C calling convention.
            unsafe { std::mem::transmute::<*const u8, EntryFn>(ptr) }
        })
        .collect();
    let owner: Arc<dyn Send + Sync> = Arc::new(JitCode {
        module: Mutex::new(Some(module)),
        _state: state,
    });
    let mut out = Vec::new();
    for ((g, (_, arena, clif, disasm)), entry) in graphs.iter().zip(compiled).zip(entries) {
        let inputs = g.inputs().iter().map(|i| (i.name.clone(), i.ty.clone())).collect();
        let outputs = g
            .outputs()
            .iter()
            .map(|o| (o.name.clone(), g.ty(o.node).clone()))
            .collect();
        // SAFETY: the code was generated from `g`: it reads inputs and
        // writes outputs of exactly these types, uses `arena` bytes of
        // arena, and touches only data kept alive by `owner`.
        let exe = unsafe {
            Executable::new(
                g.name.clone(),
                inputs,
                outputs,
                entry,
                arena,
                clif,
                disasm,
                owner.clone(),
            )
        };
        out.push(exe);
    }
    Ok(out)
}

/// Compiles one graph.
pub fn compile_graph(g: &Graph, opts: &CodegenOptions) -> Result<Executable, CodegenError> {
    Ok(compile_graphs(&[g], opts)?.remove(0))
}
