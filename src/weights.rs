//! Parameters to and from disk as safetensors (the format PyTorch,
//! JAX/Flax, candle and burn read), through the `safetensors` crate.
//! Loading checks every name, dtype and shape against what the model
//! expects and says which one is wrong.

use crate::api::Error;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::Path;
use wengert_ir::{DType, Tensor, TensorType};

fn file_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn to_safe(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::Bool => Dtype::BOOL,
    }
}

fn from_safe(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F64 => Some(DType::F64),
        Dtype::BOOL => Some(DType::Bool),
        _ => None,
    }
}

/// Writes `tensors` (name, value) to `path` as safetensors.
pub fn save_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<(), Error> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            TensorView::new(to_safe(t.dtype()), t.shape().to_vec(), t.bytes())
                .map(|v| (name.to_string(), v))
                .map_err(|e| file_error(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| file_error(path, e))
}

/// Reads the tensors named in `expected` from the safetensors file `path`,
/// each checked against its expected type; a missing name, another dtype
/// or shape, or a tensor the model has no place for is an error naming it.
pub fn load_safetensors(path: &Path, expected: &[(&str, TensorType)]) -> Result<Vec<Tensor>, Error> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| file_error(path, e))?;
    let mut extra: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| !expected.iter().any(|(e, _)| e == n))
        .map(str::to_string)
        .collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(file_error(
            path,
            format!("holds tensor(s) the model has no parameter for: {}", extra.join(", ")),
        ));
    }
    expected
        .iter()
        .map(|(name, ty)| {
            let view = file
                .tensor(name)
                .map_err(|_| file_error(path, format!("has no tensor `{name}`")))?;
            let dtype = from_safe(view.dtype()).ok_or_else(|| {
                file_error(
                    path,
                    format!("tensor `{name}` is {:?}, which wengert does not hold", view.dtype()),
                )
            })?;
            if dtype != ty.dtype || view.shape() != ty.shape.as_slice() {
                return Err(file_error(
                    path,
                    format!(
                        "tensor `{name}` is {} but the model expects {ty}",
                        TensorType::new(dtype, view.shape().to_vec())
                    ),
                ));
            }
            Tensor::try_from_bytes(ty.clone(), view.data())
                .map_err(|e| file_error(path, format!("tensor `{name}`: {e}")))
        })
        .collect()
}
