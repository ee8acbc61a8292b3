//! Training on the answer positions (AdamW, warmup-stable-decay, clipping) with a progress bar,
//! and the test accuracy.

use super::batch::Batch;
use super::data::Example;
use super::model::{correct, hit_mask};
use anyhow::Result;
use candle_core::Device;
use doge::train::{grad_norm, AdamW, AdamWParams, WsdSchedule};
use doge::DogeForCausalLM;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// How the model is trained.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub clip: f64,
    pub seed: u64,
}

/// Steps between two measurements of the training accuracy shown on the progress bar (every
/// step of the last tenth is measured, for the summary).
const ACCURACY_EVERY: usize = 10;

/// What training ended with.
#[derive(Debug, Clone, Copy)]
pub struct TrainSummary {
    /// Mean loss and accuracy over the last tenth of the steps (at least one).
    pub loss: f64,
    pub accuracy: f64,
}

/// Trains `model` on `examples` for `s.steps` steps, batches drawn in a shuffled order that is
/// redrawn each pass over the examples.
pub fn train(
    model: &DogeForCausalLM,
    examples: &[Example],
    s: &Schedule,
    device: &Device,
) -> Result<TrainSummary> {
    let vars = model.named_vars();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWParams {
            weight_decay: s.weight_decay,
            ..Default::default()
        },
    )?;
    let schedule = WsdSchedule {
        peak_lr: s.lr,
        min_lr: s.lr / 10.0,
        warmup_steps: (s.steps / 10).max(1),
        decay_steps: s.steps / 5,
        total_steps: s.steps,
    };
    let bar = progress_bar(s.steps);
    let mut order = Order::new(examples.len(), s.seed);
    let tail = (s.steps / 10).max(1);
    let (mut tail_loss, mut tail_hits, mut tail_answers) = (0.0, 0usize, 0usize);
    let mut accuracy = 0.0;
    for step in 0..s.steps {
        let batch = Batch::new(examples, &order.next(s.batch), device)?;
        let logits = model.forward_at(&batch.inputs, &batch.answers)?;
        let loss = dma_candle::cross_entropy(&logits, &batch.targets)?;
        let grads = loss.backward()?;
        let norm = grad_norm(&grads, &vars)?;
        let scale = match norm > s.clip && norm.is_finite() {
            true => s.clip / norm,
            false => 1.0,
        };
        opt.step(&grads, schedule.lr(step), scale)?;
        let loss = loss.to_scalar::<f32>()? as f64;
        let in_tail = step + tail >= s.steps;
        // The accuracy takes an argmax over all the logits: only where it is reported.
        if in_tail || step % ACCURACY_EVERY == 0 {
            let hits = correct(&logits, &batch.targets)?;
            let answers = batch.answer_count()?;
            if in_tail {
                tail_loss += loss;
                tail_hits += hits;
                tail_answers += answers;
            }
            accuracy = hits as f64 / answers as f64;
        }
        bar.set_message(format!("loss {loss:.3} acc {accuracy:.3}"));
        bar.inc(1);
    }
    bar.finish();
    Ok(TrainSummary {
        loss: tail_loss / tail.min(s.steps).max(1) as f64,
        accuracy: tail_hits as f64 / tail_answers.max(1) as f64,
    })
}

/// The fraction of answer positions of `examples` whose largest logit is the right value.
pub fn accuracy(
    model: &DogeForCausalLM,
    examples: &[Example],
    batch: usize,
    device: &Device,
) -> Result<f64> {
    let hits = hits(model, examples, batch, device)?;
    let right = hits.iter().filter(|&&h| h).count();
    Ok(right as f64 / hits.len().max(1) as f64)
}

/// Whether the largest logit is the right value at each answer position of `examples`, in
/// order (the example's positions left to right, examples in order).
pub fn hits(
    model: &DogeForCausalLM,
    examples: &[Example],
    batch: usize,
    device: &Device,
) -> Result<Vec<bool>> {
    let mut out = Vec::new();
    let ids: Vec<usize> = (0..examples.len()).collect();
    for chunk in ids.chunks(batch.max(1)) {
        let b = Batch::new(examples, chunk, device)?;
        let logits = model.forward_at(&b.inputs, &b.answers)?.detach();
        out.extend(hit_mask(&logits, &b.targets)?);
    }
    Ok(out)
}

/// Example indices in shuffled passes.
struct Order {
    ids: Vec<usize>,
    at: usize,
    rng: StdRng,
}

impl Order {
    fn new(len: usize, seed: u64) -> Self {
        Order {
            ids: (0..len).collect(),
            at: len,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next `count` indices (a new shuffled pass starts when one runs out).
    fn next(&mut self, count: usize) -> Vec<usize> {
        (0..count)
            .map(|_| {
                if self.at == self.ids.len() {
                    self.ids.shuffle(&mut self.rng);
                    self.at = 0;
                }
                self.at += 1;
                self.ids[self.at - 1]
            })
            .collect()
    }
}

fn progress_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
