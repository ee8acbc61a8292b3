//! The result of a run: one line on stdout and, on request, a JSON file.

use super::MqarArgs;
use anyhow::{Context, Result};
use std::path::Path;

pub struct Report<'a> {
    pub args: &'a MqarArgs,
    pub steps: usize,
    /// Mean over the last tenth of the training steps.
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Fraction of the test set's answer positions predicted right.
    pub accuracy: f64,
    pub train_seconds: f64,
}

impl Report<'_> {
    /// `mqar attention=dma seq_len=64 kv_pairs=4 d_model=64 accuracy=0.973`.
    pub fn line(&self) -> String {
        let a = self.args;
        format!(
            "mqar attention={} seq_len={} kv_pairs={} d_model={} accuracy={:.3}",
            a.attention.name(),
            a.seq_len,
            a.kv_pairs,
            a.net.d_model,
            self.accuracy
        )
    }

    /// Every setting of the run and its results, as a JSON object.
    pub fn json(&self) -> String {
        let a = self.args;
        let fields: Vec<(&str, String)> = vec![
            ("task", "\"mqar\"".into()),
            ("attention", format!("\"{}\"", a.attention.name())),
            ("seq_len", a.seq_len.to_string()),
            ("kv_pairs", a.kv_pairs.to_string()),
            ("d_model", a.net.d_model.to_string()),
            ("layers", a.net.layers.to_string()),
            ("heads", a.net.heads.to_string()),
            ("window", a.net.window.to_string()),
            ("a_std", number(a.net.a_std)),
            ("vocab", a.vocab.to_string()),
            ("power_a", number(a.power_a)),
            ("train_examples", a.train_examples.to_string()),
            ("test_examples", a.test_examples.to_string()),
            ("steps", self.steps.to_string()),
            ("batch", a.train.batch.to_string()),
            ("lr", number(a.train.lr)),
            ("weight_decay", number(a.train.weight_decay)),
            ("clip", number(a.train.clip)),
            ("seed", a.train.seed.to_string()),
            ("train_loss", number(self.train_loss)),
            ("train_accuracy", number(self.train_accuracy)),
            ("accuracy", number(self.accuracy)),
            ("train_seconds", number(self.train_seconds)),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("  \"{k}\": {v}"))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.json())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A JSON number (null for NaN or infinity, which JSON cannot hold).
fn number(x: f64) -> String {
    match x.is_finite() {
        true => format!("{x}"),
        false => "null".into(),
    }
}
