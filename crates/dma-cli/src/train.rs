//! `dma train`: train a Doge on text files (AdamW, warmup-stable-decay, clipping), with a
//! progress bar, held-out perplexity at intervals, and checkpoints written atomically into the
//! output folder; a run started again on the same folder resumes from its latest checkpoint.

use crate::model_args::Kind;
use anyhow::{bail, Context, Result};
use clap::Args;
use doge::train::{
    latest_checkpoint, AdamWParams, TokenBatches, TrainConfig, Trainer, WsdSchedule,
};
use doge::{DogeConfig, DogeForCausalLM, ModelOptions, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct TrainArgs {
    /// Text files to train on (UTF-8).
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// A config.json for a fresh model, or a model directory to start from.
    #[arg(long)]
    pub init: PathBuf,
    /// tokenizer.json to tokenise with (default: the one in --init if it is a directory, else
    /// UTF-8 bytes as ids).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Train a byte-level BPE of the model's vocab_size on the --data files, kept as
    /// OUT/tokenizer.json (a resumed run reuses it).
    #[arg(long, conflicts_with = "tokenizer")]
    pub train_tokenizer: bool,
    /// Folder for checkpoints (step-NNNNNNNN/ and `latest`); resumed from if it has one.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Kind::Dma)]
    pub kind: Kind,
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub min_lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Steps of the final linear decay (default: a fifth of --steps).
    #[arg(long)]
    pub decay_steps: Option<usize>,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Held-out perplexity every this many steps (on --eval-data, or else the last 5% of the
    /// --data tokens).
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Text files held out for validation (for example a split by file); default: the last 5%
    /// of the --data tokens.
    #[arg(long, num_args = 1..)]
    pub eval_data: Vec<PathBuf>,
    /// Batches averaged for each held-out loss (the same batches every time).
    #[arg(long, default_value_t = 4)]
    pub eval_batches: usize,
    /// Append one JSON line per step (step, loss, lr, grad norm, tokens/s, and the held-out
    /// loss where measured) to this file, for loss curves.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    pub save_every: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Draw a fresh model's `A` (one per layer and kv head) from N(0, A_STD) instead of Doge's
    /// 0, where every key's bias starts equal and DMA keeps the keys of a sliding window.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub a_std: f64,
    /// Where to train (cuda: f32 weights, TF32 matmuls, attention in bf16).
    #[arg(long, value_enum, default_value_t = crate::Device::Cpu)]
    pub device: crate::Device,
}

/// The tokenizer.json to use: `--tokenizer`; the one a `--train-tokenizer` run left in the
/// output folder (trained now if there is none yet); the one in an `--init` directory; or none
/// (UTF-8 bytes).
fn tokenizer_path(a: &TrainArgs, vocab_size: usize) -> Result<Option<PathBuf>> {
    if let Some(p) = &a.tokenizer {
        return Ok(Some(p.clone()));
    }
    if a.train_tokenizer {
        let path = a.out.join(doge::TOKENIZER_FILE);
        if !path.exists() {
            eprintln!("training a byte-level BPE of {vocab_size} tokens on the corpus");
            let tokenizer = doge::train_bpe(&a.data, vocab_size)?;
            std::fs::create_dir_all(&a.out)
                .with_context(|| format!("cannot create {}", a.out.display()))?;
            let tmp = a.out.join("tokenizer.json.tmp");
            tokenizer
                .save(&tmp, false)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return Ok(Some(path));
    }
    let p = a.init.join(doge::TOKENIZER_FILE);
    Ok((a.init.is_dir() && p.exists()).then_some(p))
}

fn read_corpus(files: &[PathBuf], tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let mut tokens = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
        tokens.extend(tokenizer.encode(&text)?);
    }
    if tokens.is_empty() {
        bail!("the corpus is empty: no tokens in {files:?}");
    }
    Ok(tokens)
}

pub fn run(a: &TrainArgs) -> Result<()> {
    if !(a.a_std.is_finite() && a.a_std >= 0.0) {
        bail!("--a-std {} must be a finite number >= 0", a.a_std);
    }
    if a.a_std > 0.0 && a.init.is_dir() {
        bail!(
            "--a-std draws a fresh model's A: --init must be a config.json, not a model directory"
        );
    }
    let device = a.device.candle()?;
    let options = ModelOptions {
        kind: a.kind.attention(),
        ..Default::default()
    };
    let decay = a.decay_steps.unwrap_or(a.steps / 5);
    let config = TrainConfig {
        schedule: WsdSchedule {
            peak_lr: a.lr,
            min_lr: a.min_lr,
            warmup_steps: a.warmup,
            decay_steps: decay,
            total_steps: a.steps,
        },
        adamw: AdamWParams {
            weight_decay: a.weight_decay,
            ..Default::default()
        },
        clip_norm: a.clip,
    };
    let mut trainer = match latest_checkpoint(&a.out)? {
        Some(ckpt) => {
            eprintln!("resuming from {}", ckpt.display());
            Trainer::resume(&ckpt, options, &device, config)?
        }
        None => {
            let model = match a.init.is_dir() {
                true => DogeForCausalLM::load(&a.init, options, &device)?,
                false => DogeForCausalLM::new(DogeConfig::from_file(&a.init)?, options, &device)?,
            };
            if a.a_std > 0.0 {
                crate::mqar::model::draw_a(&model, a.seed, a.a_std)?;
                eprintln!("A drawn from N(0, {}) (seed {})", a.a_std, a.seed);
            }
            Trainer::new(model, config)?
        }
    };
    let vocab = trainer.model().config().vocab_size;
    let tok_path = tokenizer_path(a, vocab)?;
    let tokenizer = match &tok_path {
        Some(p) => Tokenizer::HuggingFace(Box::new(
            doge::tokenizers::Tokenizer::from_file(p)
                .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", p.display()))?,
        )),
        None => Tokenizer::Bytes,
    };
    if tokenizer.is_bytes() && vocab < 256 {
        bail!("no tokenizer.json and vocab_size {vocab} is too small for byte-level ids");
    }
    let tokens = read_corpus(&a.data, &tokenizer)?;
    let (train_tokens, eval_tokens) = match a.eval_data.is_empty() {
        true => {
            let held = (tokens.len() / 20).max(a.seq_len + 1).min(tokens.len());
            let (train, eval) = tokens.split_at(tokens.len() - held);
            (train.to_vec(), eval.to_vec())
        }
        false => (tokens, read_corpus(&a.eval_data, &tokenizer)?),
    };
    if let Some(&bad) = train_tokens
        .iter()
        .chain(&eval_tokens)
        .find(|&&t| t as usize >= vocab)
    {
        bail!("the tokenizer gives id {bad}, outside the model's vocab_size {vocab}");
    }
    eprintln!(
        "{} training tokens, {} held out, {} parameters",
        train_tokens.len(),
        eval_tokens.len(),
        parameters(trainer.model())
    );
    let train = TokenBatches::new(train_tokens, a.seq_len, a.batch, a.seed)?;
    let eval = TokenBatches::new(eval_tokens, a.seq_len, a.batch, a.seed ^ 1)?;
    let mut log = match &a.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => None,
    };

    let bar = ProgressBar::new(a.steps as u64).with_position(trainer.step() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let clock = Instant::now();
    let first = trainer.step();
    while trainer.step() < a.steps {
        let step = trainer.step();
        let stats = trainer.train_step(&train.get(step, &device)?)?;
        let done = (trainer.step() - first) * a.batch * a.seq_len;
        let tps = done as f64 / clock.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} |g| {:.2} {:.0} tok/s",
            stats.loss, stats.lr, stats.grad_norm, tps
        ));
        bar.inc(1);
        let s = trainer.step();
        let mut eval_loss = None;
        if s % a.eval_every.max(1) == 0 || s == a.steps {
            let mut sum = 0.0;
            for i in 0..a.eval_batches.max(1) {
                sum += trainer.eval_loss(&eval.get(i, &device)?)?;
            }
            let loss = sum / a.eval_batches.max(1) as f64;
            eval_loss = Some(loss);
            // Printed above the bar, or plainly when stderr is no terminal (the bar is hidden).
            bar.suspend(|| {
                eprintln!(
                    "step {s}: train loss {:.4}, held-out loss {loss:.4}, perplexity {:.2}",
                    stats.loss,
                    loss.exp()
                )
            });
        }
        if let Some(file) = &mut log {
            let line = serde_json::json!({
                "step": s,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "tokens_per_s": tps,
                "eval_loss": eval_loss,
            });
            writeln!(file, "{line}").context("cannot write the --log file")?;
        }
        if s % a.save_every.max(1) == 0 || s == a.steps {
            let dir = trainer.save_checkpoint(&a.out)?;
            copy_tokenizer(tok_path.as_deref(), &dir)?;
        }
    }
    bar.finish();
    eprintln!(
        "done: {} steps, checkpoints in {}",
        trainer.step(),
        a.out.display()
    );
    Ok(())
}

/// Puts the tokenizer next to the weights, so a checkpoint is a model directory for `generate`.
fn copy_tokenizer(tokenizer: Option<&Path>, dir: &Path) -> Result<()> {
    if let Some(src) = tokenizer {
        std::fs::copy(src, dir.join(doge::TOKENIZER_FILE))
            .with_context(|| format!("cannot copy {} to {}", src.display(), dir.display()))?;
    }
    Ok(())
}

pub fn parameters(model: &DogeForCausalLM) -> usize {
    model.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
}
