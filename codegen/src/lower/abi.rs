//! How a compiled function receives its buffers: the entry ABIs and where
//! input and output pointers come from.

use super::*;

/// Functions with at most this many inputs and outputs load all their
/// pointers at entry (see `Ptrs::Preloaded`).
pub(crate) const PRELOAD_POINTERS: usize = 16;

/// How a compiled function receives its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// One parameter: an array of pointers to the inputs, then the
    /// outputs, then the arena.
    PointerArray,
    /// Two parameters: a packed array of the scalar inputs and one of the
    /// scalar outputs, each element at `index · size_of(dtype)`. The arena
    /// pointer is null: the caller keeps such a function only if its
    /// lowering needed no arena. This is the latency path for all-scalar
    /// graphs: no pointer array to load.
    PackedScalars,
}

/// Where a function finds its input and output buffers.
pub(crate) enum Ptrs {
    /// `[inputs…, outputs…, arena]` pointers in one array.
    /// The array and the flags of its loads: `readonly` and `can_move`
    /// for a function's own array (it does not change while the function
    /// runs, so Cranelift may place each load at its first use), plain for
    /// a loop body inlined into its loop, whose array the loop rewrites
    /// every step (a movable load was hoisted out of the loop and read the
    /// array before the loop had written it).
    Array(Value, MemFlagsData),
    /// The same, for a function with few inputs and outputs: their
    /// pointers are loaded once at entry, in order (a handful of values;
    /// loading them where used instead interleaves pointer loads with
    /// output stores: seed case 4's bound call measured 12.8 ns that way
    /// against 8.4 ns preloaded).
    Preloaded(Vec<Value>),
    /// All-scalar graphs: inputs packed in one array, outputs in another,
    /// every element `size` bytes.
    Packed { ins: Value, outs: Value, size: usize },
}

impl Ptrs {
    /// The pointer to input `k` (or output `k`), emitted where it is used.
    pub(crate) fn get(&self, fb: &mut FunctionBuilder, k: usize, output: bool, n_in: usize) -> Value {
        let slot = if output { n_in + k } else { k };
        match self {
            Ptrs::Array(array, flags) => fb.ins().load(types::I64, *flags, *array, (slot * 8) as i32),
            Ptrs::Preloaded(ptrs) => ptrs[slot],
            Ptrs::Packed { ins, outs, size } => fb
                .ins()
                .iadd_imm_s(if output { *outs } else { *ins }, (k * size) as i64),
        }
    }
}
