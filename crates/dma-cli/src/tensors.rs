//! Safetensors I/O: reading named tensors from a file, writing typed vectors back, and the
//! conversion between little-endian bytes and f32 / bf16 / f16 / i32.

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView, View};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::path::Path;

/// An element type stored as little-endian bytes.
pub trait Scalar: Copy {
    const DTYPE: Dtype;
    const SIZE: usize;
    /// Reads one value from exactly `SIZE` bytes.
    fn read(bytes: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! scalar {
    ($t:ty, $dtype:ident, $n:literal, $from:expr, $to:expr) => {
        impl Scalar for $t {
            const DTYPE: Dtype = Dtype::$dtype;
            const SIZE: usize = $n;
            fn read(bytes: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(bytes);
                ($from)(a)
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&($to)(self));
            }
        }
    };
}

scalar!(f32, F32, 4, f32::from_le_bytes, f32::to_le_bytes);
scalar!(i32, I32, 4, i32::from_le_bytes, i32::to_le_bytes);
scalar!(
    bf16,
    BF16,
    2,
    |a| bf16::from_bits(u16::from_le_bytes(a)),
    |x: bf16| x.to_bits().to_le_bytes()
);
scalar!(
    f16,
    F16,
    2,
    |a| f16::from_bits(u16::from_le_bytes(a)),
    |x: f16| x.to_bits().to_le_bytes()
);

/// Reads a whole file into memory.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The tensors of one parsed safetensors file.
pub struct TensorFile<'a> {
    path: &'a Path,
    file: SafeTensors<'a>,
}

/// A tensor of the input, with its name for error messages.
pub struct Tensor<'a> {
    pub name: &'static str,
    view: TensorView<'a>,
}

impl<'a> TensorFile<'a> {
    pub fn parse(path: &'a Path, bytes: &'a [u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        Ok(TensorFile { path, file })
    }

    /// A tensor the file must hold.
    pub fn get(&self, name: &'static str) -> Result<Tensor<'a>> {
        match self.optional(name) {
            Some(t) => Ok(t),
            None => bail!(
                "missing tensor `{name}` in {} (it holds: {})",
                self.path.display(),
                self.names()
            ),
        }
    }

    /// A tensor the file may hold.
    pub fn optional(&self, name: &'static str) -> Option<Tensor<'a>> {
        let view = self.file.tensor(name).ok()?;
        Some(Tensor { name, view })
    }

    fn names(&self) -> String {
        let mut names = self.file.names();
        names.sort();
        if names.is_empty() {
            "no tensors".into()
        } else {
            names.join(", ")
        }
    }
}

impl Tensor<'_> {
    pub fn dtype(&self) -> Dtype {
        self.view.dtype()
    }

    pub fn shape(&self) -> &[usize] {
        self.view.shape()
    }

    /// The values, which must be stored as `S`.
    pub fn decode<S: Scalar>(&self) -> Result<Vec<S>> {
        if self.dtype() != S::DTYPE {
            bail!(
                "tensor `{}` has dtype {}, expected {}",
                self.name,
                self.dtype(),
                S::DTYPE
            );
        }
        Ok(self
            .view
            .data()
            .chunks_exact(S::SIZE)
            .map(S::read)
            .collect())
    }
}

/// A tensor to write: dtype, shape and little-endian bytes.
pub struct Output {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Output {
    pub fn new<S: Scalar>(shape: &[usize], values: &[S]) -> Self {
        let mut data = Vec::with_capacity(values.len() * S::SIZE);
        values.iter().for_each(|x| x.write(&mut data));
        Output {
            dtype: S::DTYPE,
            shape: shape.to_vec(),
            data,
        }
    }
}

impl View for Output {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes named tensors to a safetensors file.
pub fn write_file(path: &Path, tensors: Vec<(&'static str, Output)>) -> Result<()> {
    let bytes = safetensors::serialize(tensors, None).context("cannot serialize the outputs")?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
