//! The accuracy grid as a PNG: depth (rows, 0 at the top) by length (columns), each cell
//! coloured from red (0) through yellow to green (1) with its accuracy written in it. Text
//! uses the embedded font of `dma plot`. It is drawn from the run's JSON (`dma needle --json`),
//! so that `dma plot --needle` can draw a saved run again.

use super::report::title;
use crate::plot::{fonts, FONT};
use anyhow::{bail, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;
use std::path::Path;

/// What the heat map needs of a run's JSON.
#[derive(Deserialize)]
pub struct Grid {
    attention: String,
    window: usize,
    /// The longest training length; runs before `--train-lengths` trained at it alone.
    seq_len: usize,
    #[serde(default)]
    train_lengths: Vec<usize>,
    eval_lengths: Vec<usize>,
    depths: Vec<f64>,
    eval_examples: usize,
    cells: Vec<GridCell>,
}

#[derive(Deserialize)]
struct GridCell {
    length: usize,
    depth: f64,
    /// Null where it was not finite.
    accuracy: Option<f64>,
}

impl Grid {
    /// The grid of a run's JSON, checked to hold one cell per (length, depth).
    pub fn from_json(json: serde_json::Value) -> Result<Grid> {
        let grid: Grid = serde_json::from_value(json)?;
        if grid.cells.len() != grid.eval_lengths.len() * grid.depths.len() {
            bail!(
                "{} cells for {} lengths x {} depths",
                grid.cells.len(),
                grid.eval_lengths.len(),
                grid.depths.len()
            );
        }
        Ok(grid)
    }

    /// The grid of a JSON file that `dma needle --json` wrote.
    pub fn read(path: &Path) -> Result<Grid> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Grid::from_json(json)
            .with_context(|| format!("{} is not a `dma needle --json` result", path.display()))
    }

    fn train_lengths(&self) -> Vec<usize> {
        match self.train_lengths.is_empty() {
            true => vec![self.seq_len],
            false => self.train_lengths.clone(),
        }
    }

    /// The accuracy of (length `i`, depth `j`), NaN where the JSON has none.
    fn accuracy(&self, i: usize, j: usize) -> f64 {
        self.cells
            .iter()
            .find(|c| c.length == self.eval_lengths[i] && c.depth == self.depths[j])
            .and_then(|c| c.accuracy)
            .unwrap_or(f64::NAN)
    }
}

/// The picture's size for `lengths` columns and `depths` rows.
pub fn size(lengths: usize, depths: usize) -> (u32, u32) {
    let w = 170 + 110 * lengths as u32;
    let h = 150 + 64 * depths as u32;
    (w.max(640), h.max(480))
}

/// Red (0) to yellow (0.5) to green (1).
fn colour(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (a, b, u) = match t < 0.5 {
        true => ((215.0, 48.0, 39.0), (254.0, 224.0, 139.0), t * 2.0),
        false => ((254.0, 224.0, 139.0), (26.0, 152.0, 80.0), t * 2.0 - 1.0),
    };
    let mix = |x: f64, y: f64| (x + (y - x) * u).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

pub fn draw(g: &Grid, path: &Path) -> Result<()> {
    draw_grid(g, path).with_context(|| format!("cannot draw {}", path.display()))
}

fn draw_grid(g: &Grid, path: &Path) -> Result<()> {
    fonts();
    let (nl, nd) = (g.eval_lengths.len(), g.depths.len());
    let root = BitMapBackend::new(path, size(nl, nd)).into_drawing_area();
    root.fill(&WHITE)?;
    let subtitle = format!(
        "exact-match accuracy of the 5-digit pass key, {} examples per cell (0 red, 1 green)",
        g.eval_examples
    );
    let train = g.train_lengths();
    let root = root.titled(
        &title(&g.attention, g.window, &train),
        (FONT, 22).into_font(),
    )?;
    let (top, body) = root.split_vertically(24);
    top.draw(&Text::new(
        subtitle,
        (10, 2),
        (FONT, 14).into_font().color(&RGBColor(80, 80, 80)),
    ))?;
    let lengths = &g.eval_lengths;
    let depths = &g.depths;
    let x_label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => match lengths.get(*i as usize) {
            Some(&n) if train.contains(&n) => format!("{n} (train)"),
            Some(n) => n.to_string(),
            None => String::new(),
        },
        _ => String::new(),
    };
    // Row 0 at the bottom holds the last depth, so the first depth is at the top.
    let y_label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(row) => (nd as i32 - 1 - row)
            .try_into()
            .ok()
            .and_then(|j: usize| depths.get(j))
            .map_or(String::new(), |d| format!("{d:.2}")),
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(&body)
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0..nl as i32 - 1).into_segmented(),
            (0..nd as i32 - 1).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nl)
        .y_labels(nd)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc("context length (tokens)")
        .y_desc("needle depth")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    let mut cells = Vec::new();
    let mut texts = Vec::new();
    for i in 0..nl {
        for j in 0..nd {
            let acc = g.accuracy(i, j);
            let (x, y) = (i as i32, (nd - 1 - j) as i32);
            cells.push(Rectangle::new(
                [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                ],
                colour(acc).filled(),
            ));
            texts.push(Text::new(
                format!("{acc:.2}"),
                (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                (FONT, 18)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ));
        }
    }
    chart.draw_series(cells)?;
    chart.draw_series(texts)?;
    root.present()?;
    Ok(())
}
