//! Element types and static tensor types.
//!
//! Every value in a graph has a [`TensorType`]: an element [`DType`] and a
//! static shape. Shapes are known when the graph is built, which is what lets
//! later passes plan memory and generate straight-line code.

use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// A truth value stored in one byte (0 or 1). Comparisons produce it;
    /// `select` consumes it; a ReLU backward pass saves it as its mask.
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::Bool => 1,
        }
    }

    /// Whether the type is a floating-point type (differentiable values).
    pub fn is_float(self) -> bool {
        match self {
            DType::F32 | DType::F64 => true,
            DType::Bool => false,
        }
    }

    /// The name used in the text format.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::Bool => "bool",
        }
    }

    /// Parses the name used in the text format.
    pub fn from_name(name: &str) -> Option<DType> {
        match name {
            "f32" => Some(DType::F32),
            "f64" => Some(DType::F64),
            "bool" => Some(DType::Bool),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A static shape: the extent of each axis, outermost first. `[]` is a scalar.
pub type Shape = Vec<usize>;

/// Number of elements of a shape (1 for a scalar, 0 if any extent is 0),
/// saturating at `usize::MAX` (shapes in graphs are checked against
/// [`MAX_ELEMENTS`]; a user's `TensorType` may be anything).
pub fn num_elements(shape: &[usize]) -> usize {
    if shape.contains(&0) {
        return 0;
    }
    shape.iter().fold(1usize, |acc, &d| acc.saturating_mul(d))
}

/// The largest number of elements a tensor may have (2^40): shapes beyond
/// it are rejected as errors rather than overflowing or aborting on
/// allocation.
pub const MAX_ELEMENTS: usize = 1 << 40;

/// Number of elements of a shape if it is at most [`MAX_ELEMENTS`].
pub fn checked_elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// Row-major strides of a shape, in elements.
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// The type of a value: element type and static shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> TensorType {
        TensorType {
            dtype,
            shape: shape.into(),
        }
    }

    pub fn scalar(dtype: DType) -> TensorType {
        TensorType {
            dtype,
            shape: Vec::new(),
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn num_elements(&self) -> usize {
        num_elements(&self.shape)
    }

    /// Bytes of the elements (saturating, like [`num_elements`]).
    pub fn size_bytes(&self) -> usize {
        self.num_elements().saturating_mul(self.dtype.size_bytes())
    }

    pub fn is_scalar(&self) -> bool {
        self.shape.is_empty()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
