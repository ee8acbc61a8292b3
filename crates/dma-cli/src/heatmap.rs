//! `dma heatmap`: for one short input to a Doge model, a PNG with one panel per query head of a
//! layer showing which keys each query keeps (the top-w selection) and its attention weights,
//! query on the y axis (top to bottom), key on the x axis (left to right).

use crate::model_args::ModelArgs;
use crate::plot::{fonts, FONT};
use anyhow::{bail, Result};
use clap::Args;
use doge::inspect::{attention_inputs, head_maps, window, HeadMaps};
use doge::Tokenizer;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The longest input drawn: the maps are dense N x N pictures.
pub const MAX_TOKENS: usize = 512;

#[derive(Args)]
pub struct HeatmapArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The input text: tokenized with the model directory's tokenizer.json, or as UTF-8 bytes
    /// without one. At most 512 tokens.
    #[arg(long)]
    pub prompt: String,
    /// The layer to show, from 0.
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// The PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &HeatmapArgs) -> Result<()> {
    let model = a.model.load()?;
    let layers = model.config().num_hidden_layers;
    if a.layer >= layers {
        bail!(
            "--layer {} is out of range: the model has {layers} layers (0..{layers})",
            a.layer
        );
    }
    let tokenizer = Tokenizer::load(&a.model.model)?;
    if tokenizer.is_bytes() && model.config().vocab_size < 256 {
        bail!(
            "no tokenizer.json in {} and vocab_size {} is too small for byte-level ids",
            a.model.model.display(),
            model.config().vocab_size
        );
    }
    let ids = tokenizer.encode(&a.prompt)?;
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    if ids.len() > MAX_TOKENS {
        bail!(
            "the prompt is {} tokens long; dma heatmap draws dense maps of at most {MAX_TOKENS} tokens",
            ids.len()
        );
    }
    let inputs = attention_inputs(&model, &ids)?;
    let n = ids.len();
    let w = window(&model, n);
    let maps = head_maps(&inputs[a.layer], w)?;
    let title = format!(
        "layer {} of {layers}: {n} tokens, window {w}, {:?} attention (weights shaded by sqrt(weight / row max))",
        a.layer,
        model.options().kind
    );
    let (width, height) = draw(&maps, &title, &a.out)?;
    println!(
        "wrote {} ({width}x{height} px): layer {}, {n} tokens, {} heads, window {w}",
        a.out.display(),
        a.layer,
        maps.len()
    );
    Ok(())
}

/// Panels per row of the picture.
const COLUMNS: usize = 8;

/// The picture's size for `heads` panels of `n` tokens: (width, height, cell side in pixels).
pub fn layout(heads: usize, n: usize) -> (u32, u32, u32) {
    let cell = (384 / n.max(1)).clamp(1, 32) as u32;
    let plot = cell * n as u32;
    let (panel_w, panel_h) = (plot + 70, plot + 75);
    let cols = heads.clamp(1, COLUMNS) as u32;
    let groups = heads.div_ceil(COLUMNS).max(1) as u32;
    (cols * panel_w, 2 * groups * panel_h + 50, cell)
}

/// Draws the maps of every head: for each group of up to 8 heads a row of kept-key panels
/// (kept: blue, visible but dropped: grey, future: white) above a row of weight panels (white
/// to dark red by the weight over the row's largest, square-rooted). Returns the picture's size.
fn draw(maps: &[HeadMaps], title: &str, out: &Path) -> Result<(u32, u32)> {
    fonts();
    let n = maps.first().map_or(1, |m| m.n);
    let (width, height, _) = layout(maps.len(), n);
    let root = BitMapBackend::new(out, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22).into_font())?;
    let groups = maps.len().div_ceil(COLUMNS).max(1);
    let cols = maps.len().clamp(1, COLUMNS);
    let panels = root.split_evenly((2 * groups, cols));
    for (h, m) in maps.iter().enumerate() {
        let (group, col) = (h / COLUMNS, h % COLUMNS);
        panel(&panels[2 * group * cols + col], m, h, false)?;
        panel(&panels[(2 * group + 1) * cols + col], m, h, true)?;
    }
    root.present()?;
    Ok((width, height))
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    m: &HeadMaps,
    head: usize,
    weights: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = m.n;
    let caption = match weights {
        false => format!("head {head}: kept keys"),
        true => format!("head {head}: weights"),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(8)
        .x_label_area_size(25)
        .y_label_area_size(35)
        .build_cartesian_2d(0f64..n as f64, n as f64..0f64)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(5)
        .y_labels(5)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 12))
        .draw()?;
    let kept = RGBColor(31, 78, 160);
    let dropped = RGBColor(222, 222, 222);
    let cell = |i: usize, j: usize, color: RGBColor| {
        Rectangle::new(
            [(j as f64, i as f64), ((j + 1) as f64, (i + 1) as f64)],
            color.filled(),
        )
    };
    if weights {
        let cells = (0..n).flat_map(|i| {
            let max = (0..n).map(|j| m.weight(i, j)).fold(0f32, f32::max);
            (0..=i).filter(move |&j| m.kept(i, j)).map(move |j| {
                let t = (m.weight(i, j) / max.max(f32::MIN_POSITIVE)).sqrt();
                let shade = |white: f32, dark: f32| (white + (dark - white) * t).round() as u8;
                cell(
                    i,
                    j,
                    RGBColor(shade(255.0, 150.0), shade(255.0, 0.0), shade(255.0, 30.0)),
                )
            })
        });
        chart.draw_series(cells)?;
    } else {
        let cells = (0..n).flat_map(|i| {
            (0..=i).map(move |j| cell(i, j, if m.kept(i, j) { kept } else { dropped }))
        });
        chart.draw_series(cells)?;
    }
    Ok(())
}
