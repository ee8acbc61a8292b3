//! `dma logits`: a Doge model's logits for token ids from a safetensors file (int32
//! `input_ids` [B, N] in, f32 `logits` [B, N, vocab] out), to compare with another
//! implementation in one command.

use crate::model_args::ModelArgs;
use crate::tensors::{read_file, write_file, Output, TensorFile};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Safetensors file with `input_ids`, int32 [B, N].
    #[arg(long)]
    pub input: PathBuf,
    /// Safetensors file to write with `logits`, f32 [B, N, vocab].
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(a: &LogitsArgs) -> Result<()> {
    let bytes = read_file(&a.input)?;
    let file = TensorFile::parse(&a.input, &bytes)?;
    let ids = file.get("input_ids")?;
    let &[b, n] = ids.shape() else {
        bail!("tensor `input_ids` must be [B, N], got {:?}", ids.shape());
    };
    let values = ids.decode::<i32>()?;
    if let Some(bad) = values.iter().find(|&&x| x < 0) {
        bail!("tensor `input_ids` holds a negative id ({bad})");
    }
    let values: Vec<u32> = values.iter().map(|&x| x as u32).collect();
    let model = a.model.load()?;
    let ids = candle_core::Tensor::from_vec(values, (b, n), model.device())?;
    let logits = model.forward(&ids)?;
    let shape = logits.dims().to_vec();
    let flat: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    write_file(&a.output, vec![("logits", Output::new(&shape, &flat))])?;
    eprintln!("wrote logits {:?} to {}", shape, a.output.display());
    Ok(())
}
