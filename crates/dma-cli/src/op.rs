//! `dma op`: run the operator on the tensors of a safetensors file and write the results.

use crate::layout::{self, Shapes};
use crate::tensors::{self, Output, Scalar, TensorFile};
use crate::Device;
use anyhow::{bail, Result};
use dma::{cpu, Element, Params, Shape};
use half::{bf16, f16};
use safetensors::Dtype;
use std::path::Path;

/// An element type `dma op` runs on, with its backends: f32 on the CPU only; bf16 and f16 on
/// the CPU and (feature `cuda`) the GPU.
pub trait OpElement: Element + Scalar {
    fn forward(
        device: Device,
        params: &Params,
        shape: &Shape,
        inputs: &cpu::Inputs<'_, Self>,
    ) -> Result<cpu::Forward<Self>>;

    fn backward(
        device: Device,
        params: &Params,
        shape: &Shape,
        inputs: &cpu::Inputs<'_, Self>,
        fwd: &cpu::Forward<Self>,
        dout: &[Self],
    ) -> Result<cpu::Gradients<Self>>;
}

impl OpElement for f32 {
    fn forward(
        device: Device,
        params: &Params,
        shape: &Shape,
        inputs: &cpu::Inputs<'_, f32>,
    ) -> Result<cpu::Forward<f32>> {
        match device {
            Device::Cpu => Ok(cpu::forward(params, shape, inputs)?),
            Device::Cuda => bail!("the cuda device takes bf16 or f16 tensors, not f32"),
        }
    }

    fn backward(
        device: Device,
        params: &Params,
        shape: &Shape,
        inputs: &cpu::Inputs<'_, f32>,
        fwd: &cpu::Forward<f32>,
        dout: &[f32],
    ) -> Result<cpu::Gradients<f32>> {
        match device {
            Device::Cpu => Ok(cpu::backward(
                params, shape, inputs, &fwd.out, &fwd.lse, dout,
            )?),
            Device::Cuda => bail!("the cuda device takes bf16 or f16 tensors, not f32"),
        }
    }
}

macro_rules! op_element_16 {
    ($t:ty) => {
        impl OpElement for $t {
            fn forward(
                device: Device,
                params: &Params,
                shape: &Shape,
                inputs: &cpu::Inputs<'_, $t>,
            ) -> Result<cpu::Forward<$t>> {
                match device {
                    Device::Cpu => Ok(cpu::forward(params, shape, inputs)?),
                    Device::Cuda => crate::gpu::forward(params, shape, inputs),
                }
            }

            fn backward(
                device: Device,
                params: &Params,
                shape: &Shape,
                inputs: &cpu::Inputs<'_, $t>,
                fwd: &cpu::Forward<$t>,
                dout: &[$t],
            ) -> Result<cpu::Gradients<$t>> {
                match device {
                    Device::Cpu => Ok(cpu::backward(
                        params, shape, inputs, &fwd.out, &fwd.lse, dout,
                    )?),
                    Device::Cuda => crate::gpu::backward(params, shape, inputs, fwd, dout),
                }
            }
        }
    };
}
op_element_16!(bf16);
op_element_16!(f16);

/// Reads `q`, `k`, `v`, `bias` (and optionally `dout`, `cu_seqlens_q`, `cu_seqlens_k`) from
/// `input`; writes `out`, `lse` (and `dq`, `dk`, `dv`, `dbias` when `dout` is given) to `output`.
pub fn run(device: Device, params: &Params, input: &Path, output: &Path) -> Result<()> {
    let bytes = tensors::read_file(input)?;
    let file = TensorFile::parse(input, &bytes)?;
    let outputs = match file.get("q")?.dtype() {
        Dtype::F32 => compute::<f32>(device, params, &file)?,
        Dtype::BF16 => compute::<bf16>(device, params, &file)?,
        Dtype::F16 => compute::<f16>(device, params, &file)?,
        other => bail!("tensor `q` has dtype {other}, expected F32, BF16 or F16"),
    };
    tensors::write_file(output, outputs)
}

fn compute<T: OpElement>(
    device: Device,
    params: &Params,
    file: &TensorFile,
) -> Result<Vec<(&'static str, Output)>> {
    let (q, k, v, bias) = (
        file.get("q")?,
        file.get("k")?,
        file.get("v")?,
        file.get("bias")?,
    );
    let dout = file.optional("dout");
    let (qd, kd, vd) = (q.decode::<T>()?, k.decode::<T>()?, v.decode::<T>()?);
    let biasd = bias.decode::<f32>()?;
    let doutd = dout.as_ref().map(|t| t.decode::<T>()).transpose()?;
    let cu_seqlens = match (file.optional("cu_seqlens_q"), file.optional("cu_seqlens_k")) {
        (Some(cq), Some(ck)) => Some((cq.decode::<i32>()?, ck.decode::<i32>()?)),
        (None, None) => None,
        (Some(_), None) => {
            bail!("tensor `cu_seqlens_q` is given without `cu_seqlens_k`: give both or neither")
        }
        (None, Some(_)) => {
            bail!("tensor `cu_seqlens_k` is given without `cu_seqlens_q`: give both or neither")
        }
    };
    let shapes = Shapes {
        q: q.shape(),
        k: k.shape(),
        v: v.shape(),
        bias: bias.shape(),
        dout: dout.as_ref().map(|t| t.shape()),
    };
    let geometry = layout::infer(&shapes, cu_seqlens)?;

    let inputs = cpu::Inputs {
        q: &qd,
        k: &kd,
        v: &vd,
        bias: &biasd,
    };
    let fwd = T::forward(device, params, &geometry.shape, &inputs)?;
    let mut outputs = vec![
        ("out", Output::new(q.shape(), &fwd.out)),
        ("lse", Output::new(&geometry.lse, &fwd.lse)),
    ];
    if let Some(doutd) = doutd {
        let g = T::backward(device, params, &geometry.shape, &inputs, &fwd, &doutd)?;
        outputs.push(("dq", Output::new(q.shape(), &g.dq)));
        outputs.push(("dk", Output::new(k.shape(), &g.dk)));
        outputs.push(("dv", Output::new(v.shape(), &g.dv)));
        outputs.push(("dbias", Output::new(bias.shape(), &g.dbias)));
    }
    Ok(outputs)
}
