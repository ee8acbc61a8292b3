//! The MQAR accuracy grid from the `--output` files of `dma mqar`: JSON lines, one record per
//! run (a pretty-printed record flattened onto one line is fine), e.g.
//!
//! ```text
//! {"task":"mqar","attention":"dma","seq_len":1024,"kv_pairs":64,"d_model":128,"steps":2500,"batch":64,"lr":0.001,"accuracy":0.9989}
//! ```
//!
//! Read here: `task` (must be `"mqar"`), `attention`, `seq_len`, `kv_pairs`, `d_model`,
//! `accuracy` (test accuracy in 0..=1), `steps`, `batch`, `lr` and `a_std` (0 when absent; runs
//! with another initial `A` than Doge's are experiments on the init, not grid cells, and are left
//! out); blank lines and lines starting with `#` are skipped, other fields are ignored. [`render`] draws one small panel per
//! (`kv_pairs`, `d_model`) present: test accuracy against the sequence length, one line per
//! attention kind.

use super::{fonts, label, pow2_label, FONT};
use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name of the file [`render`] writes.
pub const FILE_NAME: &str = "mqar-grid.png";

/// The size of one panel of the grid, in pixels.
const PANEL_SIZE: (u32, u32) = (440, 340);

/// The attention kinds in legend order, with their palette indices (red, blue, green: no pale
/// yellow); other kinds follow alphabetically, from index 4 on.
const KINDS: [(&str, usize); 3] = [("dma", 0), ("swa", 3), ("mha", 1)];

/// One record of a `dma mqar --output` file, the fields the grid needs.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct MqarRun {
    pub task: String,
    pub attention: String,
    pub seq_len: usize,
    pub kv_pairs: usize,
    pub d_model: usize,
    pub accuracy: f64,
    pub steps: u64,
    pub batch: u64,
    pub lr: f64,
    #[serde(default)]
    pub a_std: f64,
}

impl MqarRun {
    /// The training budget in examples seen: steps × batch.
    pub fn examples(&self) -> u64 {
        self.steps * self.batch
    }
}

/// Reads the records of a `dma mqar --output` file; errors name the file and the line.
pub fn read(path: &Path) -> Result<Vec<MqarRun>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let runs = parse(&text).with_context(|| format!("{}", path.display()))?;
    if runs.is_empty() {
        bail!("{} holds no mqar records", path.display());
    }
    Ok(runs)
}

/// Parses JSON lines of mqar records, checking the task and that the accuracy is in 0..=1.
pub fn parse(text: &str) -> Result<Vec<MqarRun>> {
    let mut runs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let r: MqarRun = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        if r.task != "mqar" {
            bail!("line {}: task is {:?}, not \"mqar\"", i + 1, r.task);
        }
        if !(0.0..=1.0).contains(&r.accuracy) {
            bail!("line {}: accuracy {} is not in 0..=1", i + 1, r.accuracy);
        }
        runs.push(r);
    }
    Ok(runs)
}

/// One run per cell (`kv_pairs`, `d_model`, `seq_len`, `attention`) of the runs from Doge's
/// initial `A` (`a_std` 0), in cell order, and how many of those runs were dropped. Where a cell
/// has several runs, the one with the most steps × batch is kept; on a tie, the first one read
/// (files in the order given, lines in file order).
pub fn cells(runs: &[MqarRun]) -> (Vec<&MqarRun>, usize) {
    let mut kept: BTreeMap<(usize, usize, usize, &str), &MqarRun> = BTreeMap::new();
    let grid: Vec<&MqarRun> = runs.iter().filter(|r| r.a_std == 0.0).collect();
    for r in grid.iter().copied() {
        let key = (r.kv_pairs, r.d_model, r.seq_len, r.attention.as_str());
        match kept.get(&key) {
            Some(k) if k.examples() >= r.examples() => {}
            _ => {
                kept.insert(key, r);
            }
        }
    }
    let dropped = grid.len() - kept.len();
    (kept.into_values().collect(), dropped)
}

/// The attention kinds of `runs` in legend order with their palette indices: [`KINDS`] first,
/// then the others alphabetically, so that dma, swa and mha keep their colours whichever of them
/// are present.
fn kinds(runs: &[&MqarRun]) -> Vec<(String, usize)> {
    let known = |a: &str| KINDS.iter().any(|k| k.0 == a);
    let mut others: Vec<&str> = runs
        .iter()
        .map(|r| r.attention.as_str())
        .filter(|a| !known(a))
        .collect();
    others.sort();
    others.dedup();
    let present = KINDS
        .iter()
        .filter(|k| runs.iter().any(|r| r.attention == k.0))
        .map(|&(k, i)| (k.to_string(), i));
    let rest = others
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), 4 + i));
    present.chain(rest).collect()
}

/// The training budgets of `runs` for the subtitle: "2500 steps x 64, lr 0.001 (N 1024, 2048)"
/// for each distinct (steps, batch, lr) with the sequence lengths trained so, at most three.
fn budgets(runs: &[&MqarRun]) -> String {
    let mut seen: BTreeMap<(u64, u64, String), Vec<usize>> = BTreeMap::new();
    for r in runs {
        let lengths = seen.entry((r.steps, r.batch, label(r.lr))).or_default();
        if !lengths.contains(&r.seq_len) {
            lengths.push(r.seq_len);
        }
    }
    let mut parts: Vec<String> = seen
        .iter()
        .take(3)
        .map(|((s, b, lr), lengths)| {
            let mut lengths = lengths.clone();
            lengths.sort();
            let lengths: Vec<String> = lengths.iter().map(|n| n.to_string()).collect();
            format!("{s} steps x {b}, lr {lr} (N {})", lengths.join(", "))
        })
        .collect();
    if seen.len() > 3 {
        parts.push(format!("{} more", seen.len() - 3));
    }
    parts.join("; ")
}

/// Writes `out_dir/mqar-grid.png` (`out_dir` created if needed) and returns its path: one panel
/// per (`kv_pairs`, `d_model`) present, ordered by `kv_pairs` then `d_model`, three to a row;
/// in each, test accuracy (0 to 1) against the sequence length on a log2 axis (labelled at
/// powers of two; every panel spans all the lengths present), one line with markers per
/// attention kind, the same colour for a kind in every panel, and a legend under the panels.
/// The markers of the kinds are shifted a little sideways, so that equal accuracies stay
/// visible. Where a cell (`kv_pairs`, `d_model`, `seq_len`, attention) has several runs, only
/// the one with the most steps × batch is drawn (the first one read on a tie, see [`cells`]),
/// and the subtitle says how many runs were left out.
pub fn render(runs: &[MqarRun], out_dir: &Path) -> Result<PathBuf> {
    if runs.is_empty() {
        bail!("no mqar records to plot");
    }
    fonts();
    std::fs::create_dir_all(out_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out_dir.display()))?;
    let (kept, dropped) = cells(runs);
    if kept.is_empty() {
        bail!("no mqar records from Doge's initial A (a_std 0) to plot");
    }
    let kinds = kinds(&kept);
    let mut panels: Vec<(usize, usize)> = kept.iter().map(|r| (r.kv_pairs, r.d_model)).collect();
    panels.dedup(); // `kept` is in cell order, so equal panels are adjacent.
    let lengths = kept.iter().map(|r| (r.seq_len as f64).log2());
    let (x_min, x_max) = lengths.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (x_lo, x_hi) = (x_min - 0.4, x_max.max(x_min + 1.0) + 0.4);
    let x_labels = ((x_hi - x_lo).ceil() as usize + 1).clamp(2, 12);

    let cols = panels.len().min(3);
    let rows = panels.len().div_ceil(cols);
    let (title_h, footer_h) = (50, 80);
    let width = (cols as u32 * PANEL_SIZE.0).max(2 * PANEL_SIZE.0);
    let height = title_h + rows as u32 * PANEL_SIZE.1 + footer_h;
    let path = out_dir.join(FILE_NAME);
    // The drawing borrows `path` until it is presented.
    {
        let root = BitMapBackend::new(&path, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            "MQAR: test accuracy vs sequence length",
            (FONT, 26).into_font(),
        )?;
        let (grid, footer) = root.split_vertically(rows as u32 * PANEL_SIZE.1);
        let areas = grid.split_evenly((rows, cols));
        // Sideways shift of each kind's markers, in log2 units, centred on the true length.
        let shift = |i: usize| (i as f64 - (kinds.len() as f64 - 1.0) / 2.0) * 0.06;
        for (&(kv, d_model), area) in panels.iter().zip(&areas) {
            let mut chart = ChartBuilder::on(area)
                .caption(format!("kv {kv}, d_model {d_model}"), (FONT, 18))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(55)
                .build_cartesian_2d(x_lo..x_hi, -0.03..1.03)?;
            chart
                .configure_mesh()
                .x_desc("sequence length")
                .y_desc("test accuracy")
                .light_line_style(BLACK.mix(0.04))
                .x_labels(x_labels)
                .y_labels(6)
                .x_label_formatter(&|v| pow2_label(*v))
                .y_label_formatter(&|v| label(*v))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .draw()?;
            for (i, (kind, colour)) in kinds.iter().enumerate() {
                let points: Vec<(f64, f64)> = kept
                    .iter()
                    .filter(|r| r.kv_pairs == kv && r.d_model == d_model && &r.attention == kind)
                    .map(|r| ((r.seq_len as f64).log2() + shift(i), r.accuracy))
                    .collect();
                let color = Palette99::pick(*colour);
                chart.draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?;
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
            }
        }

        // The legend, one entry per kind, then the subtitle.
        let mut x = 20;
        for (kind, colour) in &kinds {
            let color = Palette99::pick(*colour);
            footer.draw(&PathElement::new(
                vec![(x, 18), (x + 30, 18)],
                color.stroke_width(2),
            ))?;
            footer.draw(&Circle::new((x + 15, 18), 5, color.filled()))?;
            footer.draw(&Text::new(kind.clone(), (x + 38, 9), (FONT, 17)))?;
            x += 60 + 10 * kind.len() as i32;
        }
        let mut subtitle = format!("{} runs: {}", kept.len(), budgets(&kept));
        // Left out: repeats of a cell (the one with the most steps x batch is drawn) and runs
        // from another initial A than Doge's.
        let other_init = runs.iter().filter(|r| r.a_std != 0.0).count();
        let left_out: Vec<String> = [
            (dropped, "repeat(s) of a cell"),
            (other_init, "random-A run(s)"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !left_out.is_empty() {
            subtitle += &format!("; left out: {}", left_out.join(", "));
        }
        footer.draw_text(
            &subtitle,
            &(FONT, 15).into_font().color(&BLACK.mix(0.7)),
            (20, 42),
        )?;
        root.present()?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(attention: &str, seq_len: usize, steps: u64, accuracy: f64) -> MqarRun {
        MqarRun {
            task: "mqar".into(),
            attention: attention.into(),
            seq_len,
            kv_pairs: 64,
            d_model: 128,
            accuracy,
            steps,
            batch: 32,
            lr: 1e-3,
            a_std: 0.0,
        }
    }

    #[test]
    fn parse_checks_task_and_accuracy() {
        let text = "# grid\n\
            {\"task\":\"mqar\",\"attention\":\"dma\",\"seq_len\":512,\"kv_pairs\":64,\"d_model\":128,\"accuracy\":0.5,\"steps\":10,\"batch\":2,\"lr\":0.001,\"seed\":0}\n\
            \n";
        let runs = parse(text).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].examples(), 20);
        let err = parse(&text.replace("\"mqar\"", "\"needle\"")).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        let err = parse(&text.replace("0.5", "50")).unwrap_err();
        assert!(format!("{err:#}").contains("0..=1"), "{err:#}");
        let err = parse("{\"task\":\"mqar\"}\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
    }

    #[test]
    fn repeated_cells_keep_the_largest_budget() {
        let runs = vec![
            run("mha", 512, 100, 0.1),
            run("dma", 512, 100, 0.2),
            run("dma", 512, 300, 0.9),
            run("dma", 512, 300, 0.8),
            run("dma", 1024, 100, 0.3),
            MqarRun {
                a_std: 1.0,
                ..run("dma", 1024, 900, 0.7)
            },
        ];
        let (kept, dropped) = cells(&runs);
        assert_eq!(dropped, 2);
        let got: Vec<(&str, usize, f64)> = kept
            .iter()
            .map(|r| (r.attention.as_str(), r.seq_len, r.accuracy))
            .collect();
        assert_eq!(
            got,
            vec![("dma", 512, 0.9), ("mha", 512, 0.1), ("dma", 1024, 0.3)]
        );
        let names: Vec<(String, usize)> = kinds(&kept);
        assert_eq!(names, vec![("dma".into(), 0), ("mha".into(), 1)]);
    }
}
