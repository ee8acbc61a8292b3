//! The result of a run: a table on stdout (depth by length) and, on request, a JSON file.

use super::{Cell, NeedleArgs};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

pub struct Report<'a> {
    pub args: &'a NeedleArgs,
    pub lengths: &'a [usize],
    pub steps: usize,
    /// Mean over the last tenth of the training steps (per digit).
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    /// Lengths outer, depths inner, in the order of the flags.
    pub cells: &'a [Cell],
}

impl Report<'_> {
    /// The cell of (length `i`, depth `j`).
    pub fn cell(&self, i: usize, j: usize) -> &Cell {
        &self.cells[i * self.args.depths.len() + j]
    }

    /// A title naming the run.
    pub fn title(&self) -> String {
        let a = self.args;
        title(a.attention.name(), a.net.window, &super::train_lengths(a))
    }

    /// A header line and the exact-match accuracy grid: one row per depth, one column per
    /// length (lengths past the training length marked with `*`).
    pub fn table(&self) -> String {
        let a = self.args;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} (d_model {}, {} layers, {} heads; {} steps, train loss {:.3}, train digit \
             accuracy {:.3}; {:.1} s training, {:.1} s evaluation)",
            self.title(),
            a.net.d_model,
            a.net.layers,
            a.net.heads,
            self.steps,
            self.train_loss,
            self.train_accuracy,
            self.train_seconds,
            self.eval_seconds
        );
        let _ = writeln!(
            s,
            "exact-match accuracy of the 5-digit pass key, {} examples per cell",
            a.eval_examples
        );
        let _ = write!(s, "{:>12}", "depth\\length");
        for &n in self.lengths {
            let mark = if n > super::trained_up_to(a) {
                "*"
            } else {
                " "
            };
            let _ = write!(s, " {:>7}{mark}", n);
        }
        s.push('\n');
        for (j, d) in a.depths.iter().enumerate() {
            let _ = write!(s, "{:>12}", format!("{d:.2}"));
            for i in 0..self.lengths.len() {
                let _ = write!(s, " {:>7.3} ", self.cell(i, j).accuracy());
            }
            s.push('\n');
        }
        let _ = writeln!(s, "(* longer than every training length)");
        s
    }

    /// Every argument, the seed and every cell.
    pub fn json(&self) -> Value {
        let a = self.args;
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|c| {
                json!({
                    "length": c.length,
                    "depth": c.depth,
                    "examples": c.examples,
                    "exact": c.exact,
                    "accuracy": number(c.accuracy()),
                    "digit_accuracy": number(c.digit_accuracy()),
                })
            })
            .collect();
        json!({
            "task": "needle",
            "attention": a.attention.name(),
            "seq_len": a.seq_len,
            "train_lengths": super::train_lengths(a),
            "eval_lengths": self.lengths,
            "depths": a.depths,
            "eval_examples": a.eval_examples,
            "d_model": a.net.d_model,
            "layers": a.net.layers,
            "heads": a.net.heads,
            "window": a.net.window,
            "a_std": a.net.a_std,
            "vocab": super::data::vocab(),
            "train_examples": a.train_examples,
            "steps": self.steps,
            "epochs": a.train.epochs,
            "batch": a.train.batch,
            "lr": number(a.train.lr),
            "weight_decay": number(a.train.weight_decay),
            "clip": number(a.train.clip),
            "seed": a.train.seed,
            "device": format!("{:?}", a.train.device).to_lowercase(),
            "train_loss": number(self.train_loss),
            "train_accuracy": number(self.train_accuracy),
            "train_seconds": number(self.train_seconds),
            "eval_seconds": number(self.eval_seconds),
            "metric": "exact match of all 5 digits, teacher-forced argmax at each digit",
            "cells": cells,
        })
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.json())? + "\n";
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A title naming a run of `attention` (with its window unless mha) trained at `train_lengths`.
pub fn title(attention: &str, window: usize, train_lengths: &[usize]) -> String {
    let window = match attention {
        "mha" => String::new(),
        _ => format!(", window {window}"),
    };
    let lengths: Vec<String> = train_lengths.iter().map(|n| n.to_string()).collect();
    let s = if lengths.len() > 1 { "s" } else { "" };
    format!(
        "needle: {attention}{window}, trained at length{s} {}",
        lengths.join(", ")
    )
}

/// A JSON number (null for NaN or infinity, which JSON cannot hold).
fn number(x: f64) -> Value {
    match x.is_finite() {
        true => json!(x),
        false => Value::Null,
    }
}
