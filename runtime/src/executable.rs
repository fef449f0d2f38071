//! The `Executable`: compiled code behind a safe, validating API.
//!
//! Native entry points take one argument, a pointer to an array of buffer
//! pointers `[inputs…, outputs…, arena]`. Every call checks the inputs'
//! count, dtype and shape (and the outputs' when the caller provides them)
//! before native code runs, so no input can make generated code read or
//! write out of bounds. The code is immutable and each call has its own
//! arena (a per-thread buffer), so one executable may be called from many
//! threads at once.

use crate::error::RuntimeError;
use std::cell::RefCell;
use std::sync::Arc;
use wengert_ir::{Tensor, TensorType};

/// The native signature of a compiled graph.
pub type EntryFn = unsafe extern "C" fn(*const *mut u8);

/// One cache line of arena storage (keeps the arena 64-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    static ARENA: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// What an executable keeps alive for its code: the JIT memory and the
/// constant data the code points into. Dropped with the last executable
/// that shares it.
pub type CodeOwner = Arc<dyn Send + Sync>;

/// Memory an executable uses per call, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Scratch arena for intermediates.
    pub arena_bytes: usize,
    /// Bytes of all outputs.
    pub output_bytes: usize,
}

/// A compiled graph.
pub struct Executable {
    name: String,
    inputs: Vec<(String, TensorType)>,
    outputs: Vec<(String, TensorType)>,
    entry: EntryFn,
    arena_bytes: usize,
    clif: String,
    disasm: String,
    _code: CodeOwner,
}

impl std::fmt::Debug for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executable")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("arena_bytes", &self.arena_bytes)
            .finish()
    }
}

impl Executable {
    /// Wraps compiled code.
    ///
    /// # Safety
    /// `entry` must be a function that, given pointers to buffers of the
    /// declared input and output types and to an arena of `arena_bytes`
    /// (64-byte aligned), accesses nothing else but memory owned by `code`;
    /// `code` must keep it alive.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn new(
        name: String,
        inputs: Vec<(String, TensorType)>,
        outputs: Vec<(String, TensorType)>,
        entry: EntryFn,
        arena_bytes: usize,
        clif: String,
        disasm: String,
        code: CodeOwner,
    ) -> Executable {
        Executable {
            name,
            inputs,
            outputs,
            entry,
            arena_bytes,
            clif,
            disasm,
            _code: code,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn inputs(&self) -> &[(String, TensorType)] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[(String, TensorType)] {
        &self.outputs
    }

    /// The Cranelift IR of the compiled function.
    pub fn clif(&self) -> &str {
        &self.clif
    }

    /// The machine code of the compiled function, disassembled.
    pub fn disasm(&self) -> &str {
        &self.disasm
    }

    pub fn memory(&self) -> MemoryReport {
        MemoryReport {
            arena_bytes: self.arena_bytes,
            output_bytes: self.outputs.iter().map(|(_, t)| t.size_bytes()).sum(),
        }
    }

    fn check_inputs(&self, inputs: &[&Tensor]) -> Result<(), RuntimeError> {
        if inputs.len() != self.inputs.len() {
            return Err(RuntimeError::InputCount {
                graph: self.name.clone(),
                expected: self.inputs.len(),
                names: self
                    .inputs
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                got: inputs.len(),
            });
        }
        for ((name, ty), t) in self.inputs.iter().zip(inputs) {
            if t.dtype() != ty.dtype {
                return Err(RuntimeError::Input {
                    name: name.clone(),
                    message: format!("expected dtype {}, got {}", ty.dtype, t.dtype()),
                });
            }
            if t.shape() != ty.shape.as_slice() {
                return Err(RuntimeError::Input {
                    name: name.clone(),
                    message: format!("expected shape {:?}, got {:?}", ty.shape, t.shape()),
                });
            }
        }
        Ok(())
    }

    /// Runs the code on `inputs` and returns fresh output tensors.
    pub fn call(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let mut outputs: Vec<Tensor> = self.outputs.iter().map(|(_, t)| Tensor::zeros(t.clone())).collect();
        self.call_into(inputs, &mut outputs)?;
        Ok(outputs)
    }

    /// Runs the code, writing into caller-provided outputs of the right
    /// types: a loop that reuses its outputs allocates nothing per call.
    pub fn call_into(&self, inputs: &[&Tensor], outputs: &mut [Tensor]) -> Result<(), RuntimeError> {
        self.check_inputs(inputs)?;
        if outputs.len() != self.outputs.len() {
            return Err(RuntimeError::OutputCount {
                graph: self.name.clone(),
                expected: self.outputs.len(),
                got: outputs.len(),
            });
        }
        for ((name, ty), t) in self.outputs.iter().zip(outputs.iter()) {
            if t.ty() != ty {
                return Err(RuntimeError::Output {
                    name: name.clone(),
                    message: format!("expected {ty}, got {}", t.ty()),
                });
            }
        }
        // Pointers: inputs, outputs, arena. Small graphs use the stack.
        const INLINE: usize = 16;
        let count = inputs.len() + outputs.len() + 1;
        let mut inline = [std::ptr::null_mut::<u8>(); INLINE];
        let mut heap = Vec::new();
        let ptrs: &mut [*mut u8] = if count <= INLINE {
            &mut inline[..count]
        } else {
            heap.resize(count, std::ptr::null_mut());
            &mut heap
        };
        for (p, t) in ptrs.iter_mut().zip(inputs) {
            // Generated code never writes through input pointers.
            *p = t.as_ptr() as *mut u8;
        }
        for (p, t) in ptrs[inputs.len()..].iter_mut().zip(outputs.iter_mut()) {
            *p = t.as_mut_ptr();
        }
        let run = |ptrs: &mut [*mut u8], arena: *mut u8| {
            ptrs[count - 1] = arena;
            // SAFETY: inputs and outputs were checked against the types the
            // code was compiled for, the arena holds `arena_bytes`, and the
            // code (kept alive by `_code`) touches nothing else.
            unsafe { (self.entry)(ptrs.as_ptr()) }
        };
        if self.arena_bytes == 0 {
            run(ptrs, std::ptr::null_mut());
        } else {
            ARENA.with(|arena| {
                let mut arena = arena.borrow_mut();
                let lines = self.arena_bytes.div_ceil(64);
                if arena.len() < lines {
                    arena.resize(lines, Line([0; 64]));
                }
                run(ptrs, arena.as_mut_ptr() as *mut u8);
            });
        }
        Ok(())
    }
}
