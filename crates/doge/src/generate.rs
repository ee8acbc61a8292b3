//! Text generation with the KV cache: one prefill over the prompt, then one token at a time.

use crate::{DogeForCausalLM, Error, Result, Sampler, SamplingParams};
use candle_core::Tensor;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these (usually the config's `eos_token_id`).
    pub stop_tokens: Vec<u32>,
}

/// Continues `prompt` (token ids) with up to `max_new_tokens` tokens, calling `on_token` with
/// each as it comes, and returns the new tokens. Stops early at a stop token, or when the
/// sequence reaches `max_position_embeddings`. A prompt longer than that is an error.
pub fn generate(
    model: &DogeForCausalLM,
    prompt: &[u32],
    params: &GenerateParams,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let max = model.config().max_position_embeddings;
    if prompt.is_empty() {
        return Err(Error::Input {
            name: "prompt",
            reason: "is empty: at least one token is needed".into(),
        });
    }
    if prompt.len() > max {
        return Err(Error::TooLong {
            len: prompt.len(),
            max,
        });
    }
    let mut sampler = Sampler::new(params.sampling)?;
    let mut cache = model.new_cache();
    let mut next_input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let mut out = Vec::new();
    while out.len() < params.max_new_tokens {
        let logits = model.forward_cached(&next_input, &mut cache)?;
        let last: Vec<f32> = logits
            .squeeze(0)?
            .get_on_dim(0, logits.dim(1)? - 1)?
            .to_vec1()?;
        let token = sampler.sample(&last)?;
        out.push(token);
        on_token(token)?;
        if params.stop_tokens.contains(&token) || cache.len() + 1 > max {
            break;
        }
        next_input = Tensor::new(&[token], model.device())?.unsqueeze(0)?;
    }
    Ok(out)
}
