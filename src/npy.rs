//! Reading `.npy` files (NumPy's array format, versions 1–3) into tensors,
//! for inputs too large for the command line. Little-endian `f4`, `f8` and
//! `b1`/`u1` arrays in C order are supported.

use std::path::Path;
use wengert_ir::{DType, Tensor, TensorType};

/// Reads a `.npy` file. Errors name the file and the problem.
pub fn read_npy(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_npy(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the bytes of a `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-UTF-8 header")?;
    // Every slice below is taken at positions `find` returned (character
    // boundaries) or through `get`/`strip_prefix`, so no header text can
    // make the reader panic.
    let field = |key: &str| -> Result<&str, String> {
        let pattern = format!("'{key}'");
        let at = header.find(&pattern).ok_or(format!("header has no '{key}'"))?;
        header
            .get(at + pattern.len()..)
            .and_then(|rest| rest.trim_start().strip_prefix(':'))
            .map(str::trim_start)
            .ok_or(format!("malformed header: no `:` after '{key}'"))
    };
    let descr = field("descr")?;
    let dtype = if descr.starts_with("'<f4'") {
        DType::F32
    } else if descr.starts_with("'<f8'") {
        DType::F64
    } else if descr.starts_with("'|b1'") || descr.starts_with("'|u1'") {
        DType::Bool
    } else {
        return Err(format!(
            "unsupported dtype {}",
            descr.split(',').next().unwrap_or(descr)
        ));
    };
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported; save with np.ascontiguousarray".into());
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .ok_or("malformed shape: expected a tuple like (3, 4)")?;
    let close = inner.find(')').ok_or("malformed shape: no closing `)`")?;
    let shape: Vec<usize> = inner[..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad extent `{s}` in shape")))
        .collect::<Result<_, _>>()?;
    if wengert_ir::types::checked_elements(&shape).is_none() {
        return Err(format!("shape {shape:?} has more elements than a tensor may hold"));
    }
    let ty = TensorType::new(dtype, shape);
    let data = bytes.get(start + header_len..).unwrap_or(&[]);
    if data.len() != ty.size_bytes() {
        return Err(format!(
            "{ty} needs {} bytes of data, the file has {}",
            ty.size_bytes(),
            data.len()
        ));
    }
    let mut t = Tensor::try_zeros(ty).map_err(|e| e.to_string())?;
    match dtype {
        DType::F32 => {
            let out = t.as_mut_slice::<f32>().ok_or("dtype mismatch")?;
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F64 => {
            let out = t.as_mut_slice::<f64>().ok_or("dtype mismatch")?;
            for (o, c) in out.iter_mut().zip(data.chunks_exact(8)) {
                *o = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            }
        }
        DType::Bool => {
            let out = t.as_mut_slice::<u8>().ok_or("dtype mismatch")?;
            for (o, &c) in out.iter_mut().zip(data) {
                *o = (c != 0) as u8;
            }
        }
    }
    Ok(t)
}
