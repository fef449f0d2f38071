//! Host tensors: an owned, 64-byte aligned buffer with a [`TensorType`].
//!
//! The interpreter computes on these, constants in a graph hold one, and the
//! runtime hands them to generated code. The buffer is a vector of 64-byte
//! lines so that every tensor starts on a cache line (and on a SIMD
//! boundary), which lets generated code use aligned vector loads.

use crate::error::IrError;
use crate::types::{num_elements, DType, TensorType};
use std::fmt;

/// One cache line of storage. Tensors are stored as whole lines so that the
/// data pointer is 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A Rust element type that can live in a [`Tensor`].
///
/// # Safety
/// Implementors must be plain data valid for every bit pattern of their size,
/// with alignment at most 64. The trait is sealed to `f32`, `f64` and `u8`.
pub unsafe trait Element: Copy + Default + PartialEq + fmt::Debug + 'static + sealed::Sealed {
    const DTYPE: DType;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for u8 {}
}

// SAFETY: every bit pattern is a valid f32, f64 or u8; alignments are 4, 8, 1.
unsafe impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
unsafe impl Element for f64 {
    const DTYPE: DType = DType::F64;
}
/// `u8` stores [`DType::Bool`]: 0 is false, anything else is true.
unsafe impl Element for u8 {
    const DTYPE: DType = DType::Bool;
}

/// An owned tensor on the host.
#[derive(Clone)]
pub struct Tensor {
    ty: TensorType,
    lines: Vec<Line>,
}

/// `n` zeroed lines, or `None` if the allocator refuses them. Zeroed
/// memory comes from `alloc_zeroed` (fresh pages from the OS are not
/// written), so a large tensor costs nothing until it is used.
fn zeroed_lines(n: usize) -> Option<Vec<Line>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<Line>(n).ok()?;
    // SAFETY: the layout has a non-zero size (n > 0 lines of 64 bytes).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Line;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of
    // `[Line; n]` (what a `Vec<Line>` of capacity n frees with), and all-zero
    // bytes are a valid `Line`.
    Some(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

impl Tensor {
    /// A tensor of zeros (false for `bool`). Aborts, as every Rust
    /// allocation does, if memory runs out: code that takes shapes from a
    /// user calls [`Tensor::try_zeros`].
    pub fn zeros(ty: TensorType) -> Tensor {
        let bytes = ty.size_bytes();
        let lines = vec![Line([0; 64]); bytes.div_ceil(64)];
        Tensor { ty, lines }
    }

    /// A tensor of zeros, or an error naming the bytes asked for if the
    /// shape is too large or the allocation fails.
    pub fn try_zeros(ty: TensorType) -> Result<Tensor, IrError> {
        let bytes = crate::types::checked_elements(&ty.shape)
            .and_then(|n| n.checked_mul(ty.dtype.size_bytes()))
            .ok_or_else(|| IrError::Tensor(format!("{ty} has more elements than a tensor may hold")))?;
        let lines = zeroed_lines(bytes.div_ceil(64))
            .ok_or_else(|| IrError::Tensor(format!("cannot allocate {bytes} bytes for a tensor of type {ty}")))?;
        Ok(Tensor { ty, lines })
    }

    /// A copy, or an error naming the bytes if memory runs out.
    pub fn try_clone(&self) -> Result<Tensor, IrError> {
        let mut t = Tensor::try_zeros(self.ty.clone())?;
        t.lines.copy_from_slice(&self.lines);
        Ok(t)
    }

    /// A tensor of type `ty` whose bytes are `bytes` (row-major elements in
    /// native byte order), or an error if the lengths differ.
    pub fn try_from_bytes(ty: TensorType, bytes: &[u8]) -> Result<Tensor, IrError> {
        let mut t = Tensor::try_zeros(ty)?;
        if t.bytes().len() != bytes.len() {
            return Err(IrError::Tensor(format!(
                "{} holds {} bytes but {} were given",
                t.ty,
                t.bytes().len(),
                bytes.len()
            )));
        }
        t.bytes_mut().copy_from_slice(bytes);
        Ok(t)
    }

    /// The tensor's bytes, to write.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.ty.size_bytes();
        // SAFETY: the lines hold at least `size_bytes` bytes, and any bytes
        // are valid for every element type (see `Element`).
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u8, n) }
    }

    /// A tensor from a shape and a vector of elements in row-major order.
    pub fn from_vec<T: Element>(shape: impl Into<Vec<usize>>, data: Vec<T>) -> Result<Tensor, IrError> {
        Tensor::from_slice(shape, &data)
    }

    /// A tensor from a shape and a slice of elements in row-major order.
    pub fn from_slice<T: Element>(shape: impl Into<Vec<usize>>, data: &[T]) -> Result<Tensor, IrError> {
        let shape = shape.into();
        let n = crate::types::checked_elements(&shape).unwrap_or(usize::MAX);
        if n != data.len() {
            return Err(IrError::Tensor(format!(
                "shape {:?} holds {n} elements but {} were given",
                shape,
                data.len()
            )));
        }
        let mut t = Tensor::try_zeros(TensorType::new(T::DTYPE, shape))?;
        t.data_mut::<T>().copy_from_slice(data);
        Ok(t)
    }

    /// A scalar of type f64.
    pub fn scalar_f64(v: f64) -> Tensor {
        let mut t = Tensor::zeros(TensorType::scalar(DType::F64));
        t.data_mut::<f64>()[0] = v;
        t
    }

    /// A scalar of type f32.
    pub fn scalar_f32(v: f32) -> Tensor {
        let mut t = Tensor::zeros(TensorType::scalar(DType::F32));
        t.data_mut::<f32>()[0] = v;
        t
    }

    /// A scalar of the given float type holding `v` (rounded for f32; for
    /// bool, `v != 0`).
    pub fn scalar(dtype: DType, v: f64) -> Tensor {
        Tensor::full(TensorType::scalar(dtype), v)
    }

    /// A tensor whose every element is `v` converted to the type's dtype.
    pub fn full(ty: TensorType, v: f64) -> Tensor {
        let mut t = Tensor::zeros(ty);
        match t.ty.dtype {
            DType::F32 => t.data_mut::<f32>().fill(v as f32),
            DType::F64 => t.data_mut::<f64>().fill(v),
            DType::Bool => t.data_mut::<u8>().fill((v != 0.0) as u8),
        }
        t
    }

    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.ty.shape
    }

    pub fn len(&self) -> usize {
        self.ty.num_elements()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as a slice, if `T` matches the dtype.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        (T::DTYPE == self.ty.dtype).then(|| self.data::<T>())
    }

    /// The elements as a mutable slice, if `T` matches the dtype.
    pub fn as_mut_slice<T: Element>(&mut self) -> Option<&mut [T]> {
        (T::DTYPE == self.ty.dtype).then(|| self.data_mut::<T>())
    }

    /// Pointer to the first byte; 64-byte aligned.
    pub fn as_ptr(&self) -> *const u8 {
        self.lines.as_ptr() as *const u8
    }

    /// Mutable pointer to the first byte; 64-byte aligned.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.lines.as_mut_ptr() as *mut u8
    }

    /// The raw bytes of the elements.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the lines hold at least size_bytes initialized bytes.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.ty.size_bytes()) }
    }

    /// The elements converted to f64, whatever the dtype.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self.ty.dtype {
            DType::F32 => self.data::<f32>().iter().map(|&v| v as f64).collect(),
            DType::F64 => self.data::<f64>().to_vec(),
            DType::Bool => self.data::<u8>().iter().map(|&v| (v != 0) as u8 as f64).collect(),
        }
    }

    /// The single element of a one-element tensor as f64.
    pub fn scalar_value(&self) -> Option<f64> {
        (self.len() == 1).then(|| self.to_f64_vec()[0])
    }

    /// The same elements under another shape with as many elements.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Result<Tensor, IrError> {
        if num_elements(&shape) != self.len() {
            return Err(IrError::Tensor(format!("cannot reshape {} to {:?}", self.ty, shape)));
        }
        self.ty.shape = shape;
        Ok(self)
    }

    /// Converts to another dtype (bool becomes 0/1; float to bool is `!= 0`).
    pub fn convert(&self, dtype: DType) -> Tensor {
        let mut out = Tensor::zeros(TensorType::new(dtype, self.ty.shape.clone()));
        self.convert_into(&mut out);
        out
    }

    /// [`Tensor::convert`], or an error naming the bytes if memory runs out.
    pub fn try_convert(&self, dtype: DType) -> Result<Tensor, IrError> {
        let mut out = Tensor::try_zeros(TensorType::new(dtype, self.ty.shape.clone()))?;
        self.convert_into(&mut out);
        Ok(out)
    }

    /// Writes the elements converted to `out`'s dtype (same shape), one
    /// element at a time through f64 (exact for every f32 and bool).
    fn convert_into(&self, out: &mut Tensor) {
        if out.ty.dtype == self.ty.dtype {
            out.lines.copy_from_slice(&self.lines);
            return;
        }
        fn elems<T: Element + Into<f64>>(t: &Tensor) -> impl Iterator<Item = f64> + '_ {
            t.data::<T>().iter().map(|&v| v.into())
        }
        let src: Box<dyn Iterator<Item = f64>> = match self.ty.dtype {
            DType::F32 => Box::new(elems::<f32>(self)),
            DType::F64 => Box::new(elems::<f64>(self)),
            DType::Bool => Box::new(self.data::<u8>().iter().map(|&v| (v != 0) as u8 as f64)),
        };
        match out.ty.dtype {
            DType::F64 => out.data_mut::<f64>().iter_mut().zip(src).for_each(|(o, v)| *o = v),
            DType::F32 => out
                .data_mut::<f32>()
                .iter_mut()
                .zip(src)
                .for_each(|(o, v)| *o = v as f32),
            DType::Bool => out
                .data_mut::<u8>()
                .iter_mut()
                .zip(src)
                .for_each(|(o, v)| *o = (v != 0.0) as u8),
        }
    }

    /// Typed view. The dtype check is a hard assertion: reading a buffer
    /// as a wider element type would read past its end.
    pub(crate) fn data<T: Element>(&self) -> &[T] {
        assert_eq!(T::DTYPE, self.ty.dtype, "tensor element type");
        // SAFETY: the buffer is 64-byte aligned, holds `len * size_of::<T>()`
        // initialized bytes, and every bit pattern is a valid `T`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len()) }
    }

    /// Typed mutable view (the dtype check as in `data`).
    pub(crate) fn data_mut<T: Element>(&mut self) -> &mut [T] {
        assert_eq!(T::DTYPE, self.ty.dtype, "tensor element type");
        let n = self.len();
        // SAFETY: as in `data`, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, n) }
    }

    /// Writes the elements as a nested list (`[[1.0, 2.0], [3.0, 4.0]]`), a
    /// bare number for a scalar. Floats print in their shortest round-trip
    /// form, so the text parses back to the same bits.
    pub fn write_nested(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let shape = self.shape().to_vec();
        let mut strings = Vec::with_capacity(self.len());
        match self.ty.dtype {
            DType::F32 => strings.extend(self.data::<f32>().iter().map(|v| format!("{v:?}"))),
            DType::F64 => strings.extend(self.data::<f64>().iter().map(|v| format!("{v:?}"))),
            DType::Bool => strings.extend(
                self.data::<u8>()
                    .iter()
                    .map(|&v| if v != 0 { "true" } else { "false" }.to_string()),
            ),
        }
        write_nested_list(out, &shape, &strings)
    }
}

/// Writes `items` (row-major) as nested lists of the given shape, without
/// recursion so that a high-rank shape cannot overflow the stack.
///
/// A zero-size shape is written as nested lists down to its first zero
/// extent, as numpy's `tolist` does: `[3,0]` is `[[], [], []]` and `[0,4]`
/// is `[]`. The text format declares every constant's type, so
/// [`crate::parse`] reads such a literal back with its whole shape.
/// Missing items are written as `?` rather than indexed out of bounds.
pub fn write_nested_list<S: AsRef<str>>(out: &mut impl fmt::Write, shape: &[usize], items: &[S]) -> fmt::Result {
    if let Some(z) = shape.iter().position(|&d| d == 0) {
        let outer = num_elements(&shape[..z]);
        return write_nested_list(out, &shape[..z], &vec!["[]"; outer]);
    }
    let item = |flat: usize| items.get(flat).map_or("?", |s| s.as_ref());
    if shape.is_empty() {
        return out.write_str(item(0));
    }
    let rank = shape.len();
    let mut idx = vec![0usize; rank];
    let mut flat = 0;
    for _ in 0..rank {
        out.write_str("[")?;
    }
    loop {
        out.write_str(item(flat))?;
        flat += 1;
        // Advance the multi-index, closing and reopening brackets.
        let mut axis = rank;
        loop {
            axis -= 1;
            idx[axis] += 1;
            if idx[axis] < shape[axis] {
                break;
            }
            idx[axis] = 0;
            out.write_str("]")?;
            if axis == 0 {
                return Ok(());
            }
        }
        out.write_str(", ")?;
        for _ in axis + 1..rank {
            out.write_str("[")?;
        }
    }
}

impl PartialEq for Tensor {
    /// Bitwise equality of type and elements (so NaN equals the same NaN).
    fn eq(&self, other: &Tensor) -> bool {
        self.ty == other.ty && self.bytes() == other.bytes()
    }
}

impl Eq for Tensor {}

impl std::hash::Hash for Tensor {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ty.hash(state);
        self.bytes().hash(state);
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}>(", self.ty)?;
        self.write_nested(f)?;
        f.write_str(")")
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_nested(f)
    }
}
