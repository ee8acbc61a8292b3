//! `dma generate`: continue a prompt with a Doge model, printing text as the tokens come.

use crate::model_args::ModelArgs;
use anyhow::{bail, Result};
use clap::Args;
use doge::{GenerateParams, SamplingParams, Tokenizer};
use std::io::Write;
use std::time::Instant;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 chooses the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample from the most likely tokens that together hold this much probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: &GenerateArgs) -> Result<()> {
    let model = a.model.load()?;
    let tokenizer = Tokenizer::load(&a.model.model)?;
    if tokenizer.is_bytes() {
        if model.config().vocab_size < 256 {
            bail!(
                "no tokenizer.json in {} and vocab_size {} is too small for byte-level ids",
                a.model.model.display(),
                model.config().vocab_size
            );
        }
        eprintln!("no tokenizer.json: using UTF-8 bytes as token ids");
    }
    let prompt = tokenizer.encode(&a.prompt)?;
    let params = GenerateParams {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop_tokens: model.config().eos_token_ids(),
    };
    let mut stream = tokenizer.stream();
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", a.prompt)?;
    stdout.flush()?;
    // When each token came: the first after the prefill, the others one decode step apart.
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let out = doge::generate(&model, &prompt, &params, |id| {
        arrivals.push(start.elapsed());
        let text = stream.step(id)?;
        // A closed pipe ends the output, not the program with a panic.
        let _ = write!(stdout, "{text}").and_then(|_| stdout.flush());
        Ok(())
    })?;
    writeln!(stdout)?;
    eprintln!("{} prompt tokens, {} generated", prompt.len(), out.len());
    if let Some((first, steps)) = arrivals.split_first() {
        eprint!(
            "prefill and first token {:.1} ms",
            first.as_secs_f64() * 1e3
        );
        let mut gaps: Vec<f64> = steps
            .iter()
            .zip(&arrivals)
            .map(|(t, before)| (*t - *before).as_secs_f64() * 1e3)
            .collect();
        gaps.sort_by(f64::total_cmp);
        match gaps.get(gaps.len() / 2) {
            Some(median) => eprintln!("; {} decode steps, median {median:.2} ms", gaps.len()),
            None => eprintln!(),
        }
    }
    Ok(())
}
