//! Training curves from the `--log` files of `dma train`: JSON lines, one per step, e.g.
//!
//! ```text
//! {"step":50,"loss":5.71,"lr":0.001,"grad_norm":1.02,"tokens_per_s":30613.3,"eval_loss":5.70}
//! ```
//!
//! Read here: `step` and `loss` (required) and `eval_loss` (a number at the steps that measured
//! the held-out loss, null or absent elsewhere); blank lines and lines starting with `#` are
//! skipped, other fields are ignored. [`render`] draws one chart of every run: the held-out loss
//! at its eval steps (a line with markers) and the training loss as a moving mean (a thinner,
//! fainter line of the same colour).

use super::{bounds, fonts, line_chart, Axes, Line, XAxis};
use anyhow::{bail, Context, Result};
use plotters::prelude::SeriesLabelPosition;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// (x, y) points of one line.
type Points = Vec<(f64, f64)>;

/// One line of a `--log` file, the fields a chart needs.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct Step {
    pub step: u64,
    pub loss: f64,
    #[serde(default)]
    pub eval_loss: Option<f64>,
}

/// One training run: its name (the file stem) and steps in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub name: String,
    pub steps: Vec<Step>,
}

/// Reads a `--log` file; the run is named after the file's stem (`dma.jsonl` is `dma`).
pub fn read(path: &Path) -> Result<Run> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let steps = parse(&text).with_context(|| format!("{}", path.display()))?;
    if steps.is_empty() {
        bail!("{} holds no steps", path.display());
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(Run { name, steps })
}

/// Parses JSON lines of steps, checking that the losses are finite.
pub fn parse(text: &str) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let s: Step = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        if !s.loss.is_finite() || s.eval_loss.is_some_and(|e| !e.is_finite()) {
            bail!("line {}: the losses must be finite numbers", i + 1);
        }
        steps.push(s);
    }
    Ok(steps)
}

/// The trailing mean of `window` steps' training loss, from the first step with a full window
/// (from the last step when the run is shorter than `window`).
pub fn smoothed(steps: &[Step], window: usize) -> Vec<(f64, f64)> {
    let window = window.clamp(1, steps.len().max(1));
    steps
        .windows(window)
        .map(|w| {
            let mean = w.iter().map(|s| s.loss).sum::<f64>() / window as f64;
            (w[window - 1].step as f64, mean)
        })
        .collect()
}

/// The held-out losses of a run: (step, eval_loss) where measured.
pub fn held_out(steps: &[Step]) -> Vec<(f64, f64)> {
    steps
        .iter()
        .filter_map(|s| s.eval_loss.map(|e| (s.step as f64, e)))
        .collect()
}

/// Writes `out_dir/loss.png` (`out_dir` created if needed): one colour per run, the held-out loss
/// at the eval steps and the training loss as a trailing mean over `smooth` steps. Returns the
/// path.
pub fn render(runs: &[Run], out_dir: &Path, smooth: usize) -> Result<PathBuf> {
    if runs.is_empty() {
        bail!("no training logs to plot");
    }
    if smooth == 0 {
        bail!("--smooth must be at least 1");
    }
    fonts();
    std::fs::create_dir_all(out_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out_dir.display()))?;
    // Per run: (held-out points, smoothed training points).
    let curves: Vec<(Points, Points)> = runs
        .iter()
        .map(|r| (held_out(&r.steps), smoothed(&r.steps, smooth)))
        .collect();
    let mut lines = Vec::new();
    for (i, (run, (eval, train))) in runs.iter().zip(&curves).enumerate() {
        if !eval.is_empty() {
            lines.push(Line::marked(&format!("{} held-out", run.name), eval, i));
        }
        lines.push(Line {
            points: train,
            colour: i,
            width: 1,
            opacity: 0.7,
            markers: false,
            legend: Some(format!("{} train (mean of {smooth})", run.name)),
        });
    }
    let ys = curves
        .iter()
        .flat_map(|(e, t)| e.iter().chain(t.iter()).map(|p| p.1));
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let last = runs
        .iter()
        .filter_map(|r| r.steps.iter().map(|s| s.step).max())
        .max()
        .unwrap_or(0);
    let evals = curves.iter().map(|c| c.0.len()).max().unwrap_or(0);
    let subtitle = format!(
        "runs: {}; up to step {last}; {evals} held-out evaluations per run at most",
        names.join(", ")
    );
    let path = out_dir.join("loss.png");
    let axes = Axes {
        title: "loss vs step: held-out (markers) and training (moving mean)",
        subtitle: &subtitle,
        x_desc: "step",
        y_desc: "loss (nats per token)",
        x: XAxis::Linear,
        y_range: bounds(ys, false),
        log_y: false,
        reference: None,
        legend_at: SeriesLabelPosition::UpperRight,
    };
    line_chart(&path, &axes, &lines)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_smooth_and_held_out() {
        let text = "# a run\n\
            {\"step\":1,\"loss\":4.0,\"lr\":0.1,\"eval_loss\":null}\n\
            \n\
            {\"step\":2,\"loss\":2.0,\"eval_loss\":3.5}\n\
            {\"step\":3,\"loss\":3.0}\n";
        let steps = parse(text).unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(held_out(&steps), vec![(2.0, 3.5)]);
        assert_eq!(smoothed(&steps, 2), vec![(2.0, 3.0), (3.0, 2.5)]);
        assert_eq!(smoothed(&steps, 10), vec![(3.0, 3.0)]);
        let err = parse("{\"step\":1}\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
    }
}
