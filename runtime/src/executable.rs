//! The `Executable`: compiled code behind a safe, validating API.
//!
//! Native entry points take one argument, a pointer to an array of buffer
//! pointers `[inputs…, outputs…, arena]`. Every call checks the inputs'
//! count, dtype and shape (and the outputs' when the caller provides them)
//! before native code runs, so no input can make generated code read or
//! write out of bounds. The code is immutable and each call has its own
//! arena (a per-thread buffer), so one executable may be called from many
//! threads at once.
//!
//! Graphs whose inputs and outputs are all scalars of one dtype also get a
//! packed entry `fn(inputs: *const T, outputs: *mut T)`, reached through
//! [`ScalarFn`]: its types are checked once when it is made and enforced
//! by the array lengths of its `call`, so a call is the bare native call.

use crate::error::RuntimeError;
use std::cell::RefCell;
use std::sync::Arc;
use wengert_ir::{Element, Tensor, TensorType};

/// Compares two shapes element by element. Written as a loop on purpose:
/// slice equality calls `memcmp`, which measured ~400–450 ns per call here
/// after generated code had run (an AVX-512 `memcmp` variant), against a
/// few nanoseconds for the whole call of a scalar graph.
#[inline]
fn same_shape(a: &[usize], b: &[usize]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Checks `t` against a declared input.
#[inline]
fn check_input((name, ty): &(String, TensorType), t: &Tensor) -> Result<(), RuntimeError> {
    if t.dtype() != ty.dtype {
        return Err(RuntimeError::Input {
            name: name.clone(),
            message: format!("expected dtype {}, got {}", ty.dtype, t.dtype()),
        });
    }
    if !same_shape(t.shape(), &ty.shape) {
        return Err(RuntimeError::Input {
            name: name.clone(),
            message: format!("expected shape {:?}, got {:?}", ty.shape, t.shape()),
        });
    }
    Ok(())
}

/// The length of an iterator that knows it exactly.
fn exact_len<I: Iterator>(it: &I) -> Option<usize> {
    match it.size_hint() {
        (lo, Some(hi)) if lo == hi => Some(lo),
        _ => None,
    }
}

/// The native signature of a compiled graph.
pub type EntryFn = unsafe extern "C" fn(*const *mut u8);

/// The native signature of the packed entry of an all-scalar graph: the
/// inputs packed in one array, the outputs in another.
pub type PackedFn = unsafe extern "C" fn(*const u8, *mut u8);

/// The largest stack frame of generated code that is called on the
/// caller's own stack. Larger frames (huge straight-line functions whose
/// register allocator spilled many values) run on a thread of their own
/// whose stack is sized from the frame: a caller may be a thread with a
/// 2 MiB stack, and a 100,000-node graph's function needed more than the
/// main thread's 8 MiB.
pub const INLINE_FRAME_LIMIT: usize = 256 << 10;

/// Stack given to a helper thread beyond the function's own frame, for
/// the runtime functions it calls (GEMM, libm).
const CALLEE_STACK: usize = 4 << 20;

/// `ptrs` for a helper thread: the buffers they point to stay borrowed by
/// the caller, which waits for the thread.
struct SendPtrs(*const *mut u8);
// SAFETY: the pointers are only used by the helper thread while the
// calling thread, which owns what they point to, waits for it.
unsafe impl Send for SendPtrs {}

/// Calls `entry(ptrs)`, on a helper thread with a stack sized from
/// `frame_bytes` if the frame is too large for the caller's stack.
///
/// # Safety
/// `ptrs` must hold valid buffers of the types `entry` was compiled for,
/// arena included.
#[inline]
unsafe fn call_entry(entry: EntryFn, ptrs: &[*mut u8], frame_bytes: usize, pooled: bool) -> Result<(), RuntimeError> {
    if frame_bytes <= INLINE_FRAME_LIMIT {
        if pooled {
            // SAFETY: per the caller.
            return unsafe { call_pooled(entry, ptrs) };
        }
        // The process's subnormal mode for the call (`wengert_ir::fpenv`).
        let _fp = wengert_ir::fpenv::scoped();
        // SAFETY: per the caller.
        unsafe { entry(ptrs.as_ptr()) };
        return Ok(());
    }
    // SAFETY: per the caller.
    unsafe { call_on_thread(entry, ptrs, frame_bytes) }
}

/// [`call_entry`]'s path for code with parallel work: on a worker of the
/// pool (whose stack holds [`INLINE_FRAME_LIMIT`] and the callees'), in
/// the process's subnormal mode (the workers' own).
///
/// # Safety
/// As [`call_entry`].
#[inline(never)]
unsafe fn call_pooled(entry: EntryFn, ptrs: &[*mut u8]) -> Result<(), RuntimeError> {
    let p = SendPtrs(ptrs.as_ptr());
    crate::pool::run_in_pool(move || {
        let p = p;
        let _fp = wengert_ir::fpenv::scoped();
        // SAFETY: per the caller, who waits for this call.
        unsafe { entry(p.0) }
    });
    Ok(())
}

/// [`call_entry`]'s path for large frames, kept out of line so that the
/// common path stays a bare call.
///
/// # Safety
/// As [`call_entry`].
#[cold]
#[inline(never)]
unsafe fn call_on_thread(entry: EntryFn, ptrs: &[*mut u8], frame_bytes: usize) -> Result<(), RuntimeError> {
    let p = SendPtrs(ptrs.as_ptr());
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("wengert-large-frame".into())
            .stack_size(frame_bytes.saturating_add(CALLEE_STACK))
            .spawn_scoped(scope, move || {
                let p = p;
                let _fp = wengert_ir::fpenv::scoped();
                // SAFETY: per the caller; the scope outlives the call.
                unsafe { entry(p.0) }
            })
            .map_err(|e| RuntimeError::Alloc {
                what: format!("a thread with a stack for a {frame_bytes}-byte frame ({e})"),
                bytes: frame_bytes.saturating_add(CALLEE_STACK),
            })?;
        handle
            .join()
            .map_err(|_| RuntimeError::Other("the generated code's thread failed".into()))
    })
}

/// Calls `entry` on `ptrs`, whose last slot receives this thread's arena
/// (grown to `arena_bytes` if needed; left null when none is needed). The
/// arena's growth is fallible: an error names the bytes asked for.
///
/// # Safety
/// `ptrs` must hold valid buffers of the types `entry` was compiled for.
#[inline]
unsafe fn run_entry(
    entry: EntryFn,
    ptrs: &mut [*mut u8],
    arena_bytes: usize,
    frame_bytes: usize,
    pooled: bool,
) -> Result<(), RuntimeError> {
    let last = ptrs.len() - 1;
    if arena_bytes == 0 {
        ptrs[last] = std::ptr::null_mut();
        // SAFETY: per the caller; the code never reads the arena slot.
        return unsafe { call_entry(entry, ptrs, frame_bytes, pooled) };
    }
    let mut run = |arena: &mut Vec<Line>| {
        grow_arena(arena, arena_bytes)?;
        ptrs[last] = arena.as_mut_ptr() as *mut u8;
        // SAFETY: per the caller, and the arena holds `arena_bytes`.
        unsafe { call_entry(entry, ptrs, frame_bytes, pooled) }
    };
    // A thread already inside a call (a pool worker that picked up another
    // caller's work while waiting in its own) gets an arena of its own.
    ARENA.with(|arena| match arena.try_borrow_mut() {
        Ok(mut arena) => run(&mut arena),
        Err(_) => run(&mut Vec::new()),
    })
}

/// Grows `arena` to hold `bytes`, or says how many bytes could not be had.
fn grow_arena(arena: &mut Vec<Line>, bytes: usize) -> Result<(), RuntimeError> {
    let lines = bytes.div_ceil(64);
    if arena.len() < lines {
        arena
            .try_reserve_exact(lines - arena.len())
            .map_err(|_| RuntimeError::Alloc {
                what: "the scratch arena".into(),
                bytes,
            })?;
        arena.resize(lines, Line([0; 64]));
    }
    Ok(())
}

/// A zero tensor of type `ty` for output `name`, or an error naming it and
/// the bytes asked for.
fn alloc_output(name: &str, ty: &TensorType) -> Result<Tensor, RuntimeError> {
    Tensor::try_zeros(ty.clone()).map_err(|_| RuntimeError::Alloc {
        what: format!("output `{name}`"),
        bytes: ty.size_bytes(),
    })
}

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
    packed: Option<PackedFn>,
    arena_bytes: usize,
    /// The native stack frame of `entry`, in bytes.
    frame_bytes: usize,
    clif: String,
    disasm: String,
    /// The loop kernels code generation emitted, as text (kept with the
    /// CLIF).
    kernels: String,
    /// (input, output) pairs that share one buffer in
    /// [`Executable::call_donated`].
    donated: Vec<(usize, usize)>,
    /// Whether calls run on a worker of the pool (`pool::run_in_pool`):
    /// set for code with parallel work.
    pooled: bool,
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
            packed: None,
            arena_bytes,
            frame_bytes: 0,
            clif,
            disasm,
            kernels: String::new(),
            donated: Vec::new(),
            pooled: false,
            _code: code,
        }
    }

    /// Marks code that runs work on several threads of the pool: it is
    /// then called on a worker of the pool, with the other workers polling
    /// for its work until it returns (`pool::run_in_pool`). Called from
    /// outside, each parallel region handed the whole region to the pool
    /// and put the caller to sleep until it was done, and idle workers went
    /// to sleep between regions: in a profile of the 64-layer chain's
    /// two-thread step, a fifth of the CPU time was idle or in the
    /// scheduler (the step has a few hundred parallel regions).
    pub fn with_pool(mut self, pooled: bool) -> Executable {
        self.pooled = pooled;
        self
    }

    /// Whether calls run on a worker of the pool ([`Executable::with_pool`]).
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// Records the size of `entry`'s stack frame (from the compiler), so
    /// that frames too large for a caller's stack run on a thread of their
    /// own ([`INLINE_FRAME_LIMIT`]).
    ///
    /// # Safety
    /// `frame_bytes` must be at least the stack the code uses (its frame
    /// and that of what it calls, beyond a few MiB for runtime callees).
    pub unsafe fn with_frame_bytes(mut self, frame_bytes: usize) -> Executable {
        self.frame_bytes = frame_bytes;
        self
    }

    /// Records which inputs may share their buffer with an output, as
    /// (input index, output index) pairs: [`Executable::call_donated`]
    /// passes one buffer for both.
    ///
    /// # Safety
    /// For each pair, the code must read no element of the input after
    /// writing that element's place in the output (and no other element
    /// after writing any), so that sharing the buffer gives the results of
    /// separate buffers.
    pub unsafe fn with_donations(mut self, pairs: Vec<(usize, usize)>) -> Executable {
        self.donated = pairs;
        self
    }

    /// The (input index, output index) pairs updated in place by
    /// [`Executable::call_donated`], in the order its `donated` buffers
    /// take.
    pub fn donations(&self) -> &[(usize, usize)] {
        &self.donated
    }

    /// The size of the native stack frame of the compiled function.
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// Adds the packed entry of an all-scalar graph.
    ///
    /// # Safety
    /// `packed` must read exactly the declared inputs, all scalars of one
    /// dtype, from consecutive elements at its first argument, write the
    /// declared outputs (scalars of the same dtype) to consecutive elements
    /// at its second, and touch nothing else but memory owned by the code.
    pub unsafe fn with_packed_entry(mut self, packed: PackedFn) -> Executable {
        self.packed = Some(packed);
        self
    }

    /// The all-scalar fast path: a function from `N` scalars to `M`
    /// scalars of type `T`, checked here once (the graph has a packed
    /// entry, `N` inputs and `M` outputs, all of dtype `T`).
    pub fn scalar_fn<T: Element, const N: usize, const M: usize>(&self) -> Result<ScalarFn<'_, T, N, M>, RuntimeError> {
        let entry = self.packed.ok_or_else(|| {
            let non_scalar = self
                .inputs
                .iter()
                .chain(&self.outputs)
                .find(|(_, t)| t.rank() != 0 || t.dtype != T::DTYPE);
            RuntimeError::Other(match non_scalar {
                Some((name, t)) => format!(
                    "{}: no scalar entry, `{name}` is {t}, not a {} scalar",
                    self.name,
                    T::DTYPE
                ),
                None => format!("{}: no scalar entry (the graph needs scratch memory)", self.name),
            })
        })?;
        if N != self.inputs.len() {
            return Err(self.input_count_error(N));
        }
        if M != self.outputs.len() {
            return Err(self.output_count_error(M));
        }
        // Inputs and outputs: a graph without inputs has its dtype only
        // in its outputs, and `call` writes `M` elements of `T`.
        let wrong = |(name, t): &(String, TensorType)| {
            (t.dtype != T::DTYPE).then(|| {
                (
                    name.clone(),
                    format!("expected {t}, got {} (the scalar function's element type)", T::DTYPE),
                )
            })
        };
        if let Some((name, message)) = self.inputs.iter().find_map(wrong) {
            return Err(RuntimeError::Input { name, message });
        }
        if let Some((name, message)) = self.outputs.iter().find_map(wrong) {
            return Err(RuntimeError::Output { name, message });
        }
        Ok(ScalarFn {
            entry,
            _exe: std::marker::PhantomData,
            _elem: std::marker::PhantomData,
        })
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
    /// The loop kernels code generation emitted, one block each (kept
    /// with `CodegenOptions::keep_text`): shapes, operands with strides,
    /// the expression list and the stores, with buffers named by where they
    /// live (`input0`, `output1`, `arena+256`).
    pub fn kernels(&self) -> &str {
        &self.kernels
    }

    /// This executable with its kernel descriptions (see [`Executable::kernels`]).
    pub fn with_kernels(mut self, kernels: String) -> Executable {
        self.kernels = kernels;
        self
    }

    pub fn disasm(&self) -> &str {
        &self.disasm
    }

    /// Writes the CLIF and the disassembly to `dir/NAME.clif` and
    /// `dir/NAME.s` (empty unless compiled with `keep_text`).
    pub fn write_text(&self, dir: &std::path::Path) -> Result<(), RuntimeError> {
        let fail = |path: &std::path::Path, e: std::io::Error| {
            RuntimeError::Other(format!("cannot write {}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        for (ext, text) in [("clif", &self.clif), ("s", &self.disasm), ("kernels", &self.kernels)] {
            let path = dir.join(format!("{}.{ext}", self.name));
            std::fs::write(&path, text).map_err(|e| fail(&path, e))?;
        }
        Ok(())
    }

    pub fn memory(&self) -> MemoryReport {
        MemoryReport {
            arena_bytes: self.arena_bytes,
            output_bytes: self.outputs.iter().map(|(_, t)| t.size_bytes()).sum(),
        }
    }

    /// Measures the arena the code really uses: runs it on zero inputs
    /// with a private arena filled with a byte pattern, twice with two
    /// patterns (0xA5 and 0x5A), and returns one past the highest byte
    /// written. A written byte differs from at least one pattern and the
    /// code writes the same bytes both times (no data-dependent control
    /// over memory), so this is exact. To compare with the memory plan's
    /// `arena_bytes` (`memory-plan`'s high-water mark).
    pub fn measure_arena(&self) -> Result<usize, RuntimeError> {
        if self.arena_bytes == 0 {
            return Ok(0);
        }
        let zeros = self
            .inputs
            .iter()
            .map(|(name, t)| {
                Tensor::try_zeros(t.clone()).map_err(|_| RuntimeError::Alloc {
                    what: format!("input `{name}`"),
                    bytes: t.size_bytes(),
                })
            })
            .collect::<Result<_, _>>()?;
        // The bound call's own arena (its slot already points to it).
        let mut bound = self.bind(zeros)?;
        let mut high = 0;
        for pattern in [0xA5u8, 0x5A] {
            bound.arena.iter_mut().for_each(|l| l.0 = [pattern; 64]);
            bound.run()?;
            // One past the last byte that differs from the pattern.
            let arena = &bound.arena;
            let written = arena.iter().rposition(|l| l.0 != [pattern; 64]).map_or(0, |i| {
                64 * i + arena[i].0.iter().rposition(|&b| b != pattern).map_or(0, |j| j + 1)
            });
            high = high.max(written);
        }
        Ok(high)
    }

    fn input_count_error(&self, got: usize) -> RuntimeError {
        RuntimeError::InputCount {
            graph: self.name.clone(),
            expected: self.inputs.len(),
            names: self
                .inputs
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            got,
        }
    }

    fn output_count_error(&self, got: usize) -> RuntimeError {
        RuntimeError::OutputCount {
            graph: self.name.clone(),
            expected: self.outputs.len(),
            got,
        }
    }

    fn check_inputs(&self, inputs: &[&Tensor]) -> Result<(), RuntimeError> {
        if inputs.len() != self.inputs.len() {
            return Err(self.input_count_error(inputs.len()));
        }
        self.inputs
            .iter()
            .zip(inputs)
            .try_for_each(|(decl, t)| check_input(decl, t))
    }

    /// Zero tensors of the output types, allocated fallibly (an error names
    /// the output and the bytes).
    pub fn new_outputs(&self) -> Result<Vec<Tensor>, RuntimeError> {
        self.outputs.iter().map(|(name, t)| alloc_output(name, t)).collect()
    }

    /// Runs the code on `inputs` and returns fresh output tensors.
    pub fn call(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let mut outputs = self.new_outputs()?;
        self.call_into(inputs, &mut outputs)?;
        Ok(outputs)
    }

    /// Runs the code, writing into caller-provided outputs of the right
    /// types: a loop that reuses its outputs allocates nothing per call.
    pub fn call_into(&self, inputs: &[&Tensor], outputs: &mut [Tensor]) -> Result<(), RuntimeError> {
        self.call_into_iter(inputs.iter().copied(), outputs.iter_mut())
    }

    /// Runs the code with the donated buffers updated in place (compiled
    /// with `CodegenOptions::donate`): `donated[k]` is both the input and
    /// the output of pair `k` of [`Executable::donations`]; `inputs` are
    /// the other inputs and `outputs` the other outputs, each in
    /// declaration order. Nothing is allocated and nothing is copied: a
    /// training step's parameters and optimizer state stay in one set of
    /// buffers (the exclusive borrow keeps anyone else from reading them
    /// while they change).
    pub fn call_donated(
        &self,
        inputs: &[&Tensor],
        donated: &mut [Tensor],
        outputs: &mut [Tensor],
    ) -> Result<(), RuntimeError> {
        let (n_in, n_out, n_d) = (self.inputs.len(), self.outputs.len(), self.donated.len());
        if donated.len() != n_d {
            return Err(RuntimeError::Other(format!(
                "`{}` updates {n_d} buffer(s) in place, got {}",
                self.name,
                donated.len()
            )));
        }
        if inputs.len() + n_d != n_in {
            return Err(self.input_count_error(inputs.len() + n_d));
        }
        if outputs.len() + n_d != n_out {
            return Err(self.output_count_error(outputs.len() + n_d));
        }
        let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); n_in + n_out + 1];
        for (k, (&(i, j), t)) in self.donated.iter().zip(donated.iter_mut()).enumerate() {
            check_input(&self.inputs[i], t).map_err(|e| match e {
                RuntimeError::Input { name, message } => RuntimeError::Input {
                    name,
                    message: format!("{message} (donated buffer {k})"),
                },
                other => other,
            })?;
            let p = t.as_mut_ptr();
            ptrs[i] = p;
            ptrs[n_in + j] = p;
        }
        let mut rest = inputs.iter();
        for (i, decl) in self.inputs.iter().enumerate() {
            if self.donated.iter().any(|&(d, _)| d == i) {
                continue;
            }
            let t = rest.next().ok_or_else(|| self.input_count_error(i))?;
            check_input(decl, t)?;
            // Generated code never writes through input pointers (a donated
            // input's pointer is its output's).
            ptrs[i] = t.as_ptr() as *mut u8;
        }
        let mut rest = outputs.iter_mut();
        for (j, (name, ty)) in self.outputs.iter().enumerate() {
            if self.donated.iter().any(|&(_, d)| d == j) {
                continue;
            }
            let t = rest.next().ok_or_else(|| self.output_count_error(j))?;
            if t.dtype() != ty.dtype || !same_shape(t.shape(), &ty.shape) {
                return Err(RuntimeError::Output {
                    name: name.clone(),
                    message: format!("expected {ty}, got {}", t.ty()),
                });
            }
            ptrs[n_in + j] = t.as_mut_ptr();
        }
        // SAFETY: every pointer was checked against the type the code was
        // compiled for; a donated pair gets one buffer, which the code was
        // proven to read before writing (`with_donations`); the exclusive
        // borrows keep the other outputs distinct from each other and from
        // the inputs.
        unsafe { run_entry(self.entry, &mut ptrs, self.arena_bytes, self.frame_bytes, self.pooled) }
    }

    /// [`Executable::call_into`] over inputs and outputs given as
    /// iterators, so that a caller can pass several slices chained (a
    /// forward's outputs and residuals) without collecting them. Each
    /// tensor is checked against its declared type as it comes.
    #[inline]
    pub fn call_into_iter<'i, 'o>(
        &self,
        inputs: impl IntoIterator<Item = &'i Tensor>,
        outputs: impl IntoIterator<Item = &'o mut Tensor>,
    ) -> Result<(), RuntimeError> {
        // Pointers: inputs, outputs, arena. Small graphs use the stack.
        const INLINE: usize = 16;
        let (n_in, n_out) = (self.inputs.len(), self.outputs.len());
        let count = n_in + n_out + 1;
        let mut inline = [std::ptr::null_mut::<u8>(); INLINE];
        let mut heap = Vec::new();
        let ptrs: &mut [*mut u8] = if count <= INLINE {
            &mut inline[..count]
        } else {
            heap.resize(count, std::ptr::null_mut());
            &mut heap
        };
        // Counts first when the iterators know them (slices and chains of
        // slices do), so that a wrong count is reported as such.
        let mut inputs = inputs.into_iter();
        if let Some(got) = exact_len(&inputs).filter(|&got| got != n_in) {
            return Err(self.input_count_error(got));
        }
        let mut outputs = outputs.into_iter();
        if let Some(got) = exact_len(&outputs).filter(|&got| got != n_out) {
            return Err(self.output_count_error(got));
        }
        for (k, (decl, p)) in self.inputs.iter().zip(ptrs.iter_mut()).enumerate() {
            let t = inputs.next().ok_or_else(|| self.input_count_error(k))?;
            check_input(decl, t)?;
            // Generated code never writes through input pointers.
            *p = t.as_ptr() as *mut u8;
        }
        let extra = inputs.count();
        if extra > 0 {
            return Err(self.input_count_error(n_in + extra));
        }
        for (j, ((name, ty), p)) in self.outputs.iter().zip(ptrs[n_in..].iter_mut()).enumerate() {
            let t = outputs.next().ok_or_else(|| self.output_count_error(j))?;
            if t.dtype() != ty.dtype || !same_shape(t.shape(), &ty.shape) {
                return Err(RuntimeError::Output {
                    name: name.clone(),
                    message: format!("expected {ty}, got {}", t.ty()),
                });
            }
            *p = t.as_mut_ptr();
        }
        let extra = outputs.count();
        if extra > 0 {
            return Err(self.output_count_error(n_out + extra));
        }
        // SAFETY: inputs and outputs were checked against the types the code
        // was compiled for; `run_entry` provides an arena of `arena_bytes`.
        unsafe { run_entry(self.entry, ptrs, self.arena_bytes, self.frame_bytes, self.pooled) }
    }
}

/// An executable bound to its own input and output tensors, validated
/// once: [`Bound::run`] is the bare native call. Inputs can be rewritten
/// in place (their element data, never their type), so an optimization
/// loop or a latency-critical caller pays no per-call checks.
pub struct Bound<'e> {
    exe: &'e Executable,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    /// Pointers to the buffers above (which never move: their types are
    /// fixed while bound), then the arena.
    ptrs: Vec<*mut u8>,
    /// The bound call's own arena, allocated (fallibly) when bound, so
    /// that running cannot fail.
    arena: Vec<Line>,
}

impl Executable {
    /// Takes ownership of `inputs` (checked against the executable's
    /// types) and allocates the outputs.
    pub fn bind(&self, inputs: Vec<Tensor>) -> Result<Bound<'_>, RuntimeError> {
        let refs: Vec<&Tensor> = inputs.iter().collect();
        self.check_inputs(&refs)?;
        let mut outputs = self.new_outputs()?;
        let mut arena = Vec::new();
        grow_arena(&mut arena, self.arena_bytes)?;
        let mut ptrs: Vec<*mut u8> = inputs.iter().map(|t| t.as_ptr() as *mut u8).collect();
        ptrs.extend(outputs.iter_mut().map(|t| t.as_mut_ptr()));
        // The arena's heap buffer does not move when the `Bound` moves.
        ptrs.push(if arena.is_empty() {
            std::ptr::null_mut()
        } else {
            arena.as_mut_ptr() as *mut u8
        });
        Ok(Bound {
            exe: self,
            inputs,
            outputs,
            ptrs,
            arena,
        })
    }
}

impl Bound<'_> {
    /// Runs the code on the bound inputs, into the bound outputs. Fails
    /// only if the function's stack frame needs a thread of its own
    /// ([`INLINE_FRAME_LIMIT`]) and none can be started.
    #[inline]
    pub fn run(&mut self) -> Result<(), RuntimeError> {
        // SAFETY: the buffers were checked against the compiled types when
        // bound and cannot change type since (only their elements are
        // reachable mutably); the arena slot points to `self.arena`, which
        // holds `arena_bytes` and is only reached through this pointer.
        debug_assert!(self.arena.len() * 64 >= self.exe.arena_bytes);
        unsafe { call_entry(self.exe.entry, &self.ptrs, self.exe.frame_bytes, self.exe.pooled) }
    }

    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Tensor] {
        &self.outputs
    }

    /// The elements of input `i`, to rewrite in place; `None` if there is
    /// no such input or `T` is not its element type.
    pub fn input_mut<T: wengert_ir::Element>(&mut self, i: usize) -> Option<&mut [T]> {
        self.inputs.get_mut(i)?.as_mut_slice::<T>()
    }

    /// Copies `value` into input `i`; it must have the input's type.
    pub fn set_input(&mut self, i: usize, value: &Tensor) -> Result<(), RuntimeError> {
        let (name, ty) = self
            .exe
            .inputs
            .get(i)
            .ok_or_else(|| RuntimeError::Other(format!("{} has no input {i}", self.exe.name)))?;
        if value.ty() != ty {
            return Err(RuntimeError::Input {
                name: name.clone(),
                message: format!("expected {ty}, got {}", value.ty()),
            });
        }
        let n = value.bytes().len();
        // SAFETY: same type, so both buffers hold `n` bytes.
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), self.inputs[i].as_mut_ptr(), n) };
        Ok(())
    }
}

/// An all-scalar executable as a plain function `[T; N] -> [T; M]`, from
/// [`Executable::scalar_fn`]. Calls go straight to native code: the types
/// were checked when it was made, and the array lengths fix the counts.
/// Scalar graphs use no arena, so calls from many threads share nothing.
#[derive(Clone, Copy)]
pub struct ScalarFn<'e, T: Element, const N: usize, const M: usize> {
    entry: PackedFn,
    /// Borrows the executable (which owns the code) and fixes `T`.
    _exe: std::marker::PhantomData<&'e Executable>,
    _elem: std::marker::PhantomData<fn(T) -> T>,
}

impl<T: Element, const N: usize, const M: usize> ScalarFn<'_, T, N, M> {
    /// The outputs at `inputs`, in the graph's output order.
    #[inline]
    pub fn call(&self, inputs: [T; N]) -> [T; M] {
        let mut out = [T::default(); M];
        let _fp = wengert_ir::fpenv::scoped();
        // SAFETY: `scalar_fn` checked that the packed entry reads N and
        // writes M scalars of dtype T; the arrays hold exactly those.
        unsafe { (self.entry)(inputs.as_ptr() as *const u8, out.as_mut_ptr() as *mut u8) };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A stand-in for generated code with a 4 MiB frame: it fills a local
    /// array (so the stack really is used) and writes its sum to output 0.
    unsafe extern "C" fn big_frame(ptrs: *const *mut u8) {
        let mut local = [0u8; 4 << 20];
        for (i, b) in local.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let sum: f64 = std::hint::black_box(&local).iter().map(|&b| b as f64).sum();
        // SAFETY: slot 0 is the f64[] output (no inputs), per the caller.
        unsafe { *(*ptrs as *mut f64) = sum };
    }

    #[test]
    fn a_frame_too_large_for_the_callers_stack_runs_on_its_own_thread() {
        let out = TensorType::scalar(wengert_ir::DType::F64);
        let owner: CodeOwner = Arc::new(());
        // SAFETY: `big_frame` writes one f64 to its only output and uses
        // the stack declared below.
        let exe = unsafe {
            Executable::new(
                "big".into(),
                vec![],
                vec![("y".into(), out)],
                big_frame,
                0,
                String::new(),
                String::new(),
                owner,
            )
            .with_frame_bytes(4 << 20)
        };
        let want: f64 = (0..4usize << 20).map(|i| (i % 251) as f64).sum();
        // A 256 KiB caller stack: the call would overflow it inline.
        let got = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let y = exe.call(&[]).unwrap();
                let mut bound = exe.bind(vec![]).unwrap();
                bound.run().unwrap();
                (y[0].scalar_value(), bound.outputs()[0].scalar_value())
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, (Some(want), Some(want)));
    }
}
