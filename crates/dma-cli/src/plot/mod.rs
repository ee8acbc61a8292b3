//! `dma plot`: PNG charts of benchmark records (see [`records`] for the format): for every kind
//! of record, time against N with one line per implementation, and the speedup of every
//! implementation over a baseline one; and training curves from `dma train --log` files (see
//! [`curves`]). Text is drawn with DejaVu Sans, which the `dejavu` crate
//! embeds in the binary, so no system font is needed.

pub mod curves;
pub mod mqar;
pub mod records;

use anyhow::{bail, Result};
use plotters::prelude::*;
use records::Record;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// The size of every line chart, in pixels.
pub const CHART_SIZE: (u32, u32) = (960, 640);

/// The font family name the charts use; [`fonts`] registers it.
pub const FONT: &str = "sans-serif";

/// Registers the embedded DejaVu Sans (regular and bold) as [`FONT`] for plotters.
pub fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font; a failure would only lose the text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// One line of a chart: its name and (x, y) points, x ascending.
type Series = (String, Vec<(f64, f64)>);

/// Writes the charts of `records` into `out_dir` (created if needed) and returns their paths:
/// `time-KIND.png` for every kind and, where a kind has at least two implementations,
/// `speedup-KIND.png` over `baseline` (default: the kind's first implementation in the records).
pub fn render(records: &[Record], out_dir: &Path, baseline: Option<&str>) -> Result<Vec<PathBuf>> {
    if records.is_empty() {
        bail!("no records to plot");
    }
    fonts();
    std::fs::create_dir_all(out_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out_dir.display()))?;
    let mut kinds: Vec<&str> = Vec::new();
    for r in records {
        if !kinds.contains(&r.kind.as_str()) {
            kinds.push(&r.kind);
        }
    }
    // One colour per implementation across all charts.
    let mut impls: Vec<&str> = Vec::new();
    for r in records {
        if !impls.contains(&r.implementation.as_str()) {
            impls.push(&r.implementation);
        }
    }
    let colour = |name: &str| impls.iter().position(|&i| i == name).unwrap_or(0);
    let mut written = Vec::new();
    for kind in kinds {
        let series = series_of(records, kind)?;
        let (title, x_desc, y_desc) = if kind == "decode" {
            (
                "decode latency vs context (one new query)".to_string(),
                "context (cached keys)",
                "latency (ms)",
            )
        } else {
            (
                format!("{kind}: time vs N"),
                "N (queries = keys)",
                "time (ms)",
            )
        };
        let subtitle = describe(records, kind);
        let path = out_dir.join(format!("time-{}.png", file_part(kind)));
        let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
        let (lo, hi) = bounds(ys, true);
        let lines: Vec<Line> = series
            .iter()
            .map(|(name, p)| Line::marked(name, p, colour(name)))
            .collect();
        let axes = Axes {
            title: &title,
            subtitle: &subtitle,
            x_desc,
            y_desc,
            x: XAxis::Log2,
            y_range: (lo.log10(), hi.log10()),
            log_y: true,
            reference: None,
            legend_at: SeriesLabelPosition::UpperLeft,
        };
        line_chart(&path, &axes, &lines)?;
        written.push(path);

        if series.len() < 2 {
            continue;
        }
        let base_name = match baseline {
            Some(b) if series.iter().any(|s| s.0 == b) => b.to_string(),
            Some(b) => {
                eprintln!("kind {kind}: no implementation named {b}, no speedup chart");
                continue;
            }
            None => series[0].0.clone(),
        };
        let base = &series.iter().find(|s| s.0 == base_name).expect("present").1;
        let speedups: Vec<Series> = series
            .iter()
            .filter(|s| s.0 != base_name)
            .map(|(name, points)| {
                let sp = points
                    .iter()
                    .filter_map(|&(x, t)| {
                        base.iter()
                            .find(|b| b.0 == x)
                            .map(|&(_, t_base)| (x, t_base / t))
                    })
                    .collect();
                (name.clone(), sp)
            })
            .filter(|s: &Series| !s.1.is_empty())
            .collect();
        if speedups.is_empty() {
            eprintln!("kind {kind}: no length shared with {base_name}, no speedup chart");
            continue;
        }
        let (lo, hi) = bounds(speedups.iter().flat_map(|s| s.1.iter().map(|p| p.1)), false);
        let path = out_dir.join(format!("speedup-{}.png", file_part(kind)));
        let x_desc = if kind == "decode" {
            "context (cached keys)"
        } else {
            "N (queries = keys)"
        };
        let lines: Vec<Line> = speedups
            .iter()
            .map(|(name, p)| Line::marked(name, p, colour(name)))
            .collect();
        let axes = Axes {
            title: &format!("{kind}: speedup over {base_name} (its time / time)"),
            subtitle: &subtitle,
            x_desc,
            y_desc: "speedup (x)",
            x: XAxis::Log2,
            y_range: (lo.min(1.0), hi.max(1.0)),
            log_y: false,
            reference: Some(1.0),
            legend_at: SeriesLabelPosition::UpperLeft,
        };
        line_chart(&path, &axes, &lines)?;
        written.push(path);
    }
    Ok(written)
}

/// The lines of one kind, one per implementation in order of first appearance, x ascending.
fn series_of(records: &[Record], kind: &str) -> Result<Vec<Series>> {
    let mut order: Vec<&str> = Vec::new();
    let mut points: BTreeMap<&str, BTreeMap<usize, f64>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.kind == kind) {
        let imp = r.implementation.as_str();
        if !order.contains(&imp) {
            order.push(imp);
        }
        if points
            .entry(imp)
            .or_default()
            .insert(r.n, r.time_ms)
            .is_some()
        {
            bail!(
                "two records of kind {kind}, impl {imp} at n = {}: give the runs different impl names",
                r.n
            );
        }
    }
    Ok(order
        .into_iter()
        .map(|imp| {
            let p = points[imp].iter().map(|(&n, &t)| (n as f64, t)).collect();
            (imp.to_string(), p)
        })
        .collect())
}

/// What the records of a kind share (device, dtype, sizes), for the chart's subtitle.
fn describe(records: &[Record], kind: &str) -> String {
    let of_kind: Vec<&Record> = records.iter().filter(|r| r.kind == kind).collect();
    let mut parts = Vec::new();
    let mut shared = |label: &str, get: &dyn Fn(&Record) -> Option<String>| {
        let first = get(of_kind[0]);
        if let Some(v) = first.clone() {
            if of_kind.iter().all(|r| get(r) == first) {
                parts.push(format!("{label}{v}"));
            }
        }
    };
    shared("", &|r| r.device.clone());
    shared("", &|r| r.dtype.clone());
    shared("B=", &|r| r.batch.map(|v| v.to_string()));
    shared("H=", &|r| r.heads.map(|v| v.to_string()));
    shared("D=", &|r| r.head_dim.map(|v| v.to_string()));
    shared("w=", &|r| r.window.map(|v| v.to_string()));
    parts.join(", ")
}

/// A file-name-safe form of a kind.
fn file_part(kind: &str) -> String {
    kind.chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '_',
            },
        )
        .collect()
}

/// The range of `values` with some room on both sides (a factor on a log axis).
fn bounds(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.05).max(1e-3);
        ((lo - pad).max(0.0), hi + pad)
    }
}

/// Number labels: at most three significant digits after the point, no trailing zeros.
fn label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || v.abs() >= 100.0 {
        return format!("{v:.0}");
    }
    let decimals = (2.0 - v.abs().log10().floor()).max(0.0) as usize;
    let text = format!("{v:.decimals$}");
    match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').into(),
        false => text,
    }
}

/// Labels of a log10 axis: the values 1, 2 and 5 times a power of ten, nothing between them.
fn log10_label(v: f64) -> String {
    let value = 10f64.powf(v);
    let decade = 10f64.powf(v.floor());
    let mantissa = value / decade;
    match [1.0, 2.0, 5.0, 10.0]
        .iter()
        .find(|&&m| (mantissa - m).abs() < 0.01 * m)
    {
        Some(&m) => label(m * decade),
        None => String::new(),
    }
}

/// Labels of the log2 N axis: N at whole powers of two, nothing between them.
fn pow2_label(v: f64) -> String {
    match (v - v.round()).abs() < 1e-6 {
        true => format!("{}", 2f64.powf(v.round())),
        false => String::new(),
    }
}

/// How a [`line_chart`] draws its x axis.
#[derive(Clone, Copy, PartialEq, Debug)]
enum XAxis {
    /// log2 of the values on a linear axis, labelled at whole powers of two (N, context).
    Log2,
    /// The values as they are (steps).
    Linear,
}

/// One line of a [`line_chart`]: its points (x ascending, in data units), palette index, width,
/// opacity, whether each point gets a marker, and its legend entry (none when `None`).
struct Line<'a> {
    points: &'a [(f64, f64)],
    colour: usize,
    width: u32,
    opacity: f64,
    markers: bool,
    legend: Option<String>,
}

impl<'a> Line<'a> {
    /// A solid line of width 2 with a marker at every point, named in the legend.
    fn marked(name: &str, points: &'a [(f64, f64)], colour: usize) -> Self {
        Line {
            points,
            colour,
            width: 2,
            opacity: 1.0,
            markers: true,
            legend: Some(name.to_string()),
        }
    }
}

/// What a [`line_chart`] shows besides its lines: texts, the x axis, the y range `y_lo..y_hi`
/// (log10 of the values when `log_y`) and an optional grey reference line at `y = reference`.
struct Axes<'a> {
    title: &'a str,
    subtitle: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    x: XAxis,
    y_range: (f64, f64),
    log_y: bool,
    reference: Option<f64>,
    legend_at: SeriesLabelPosition,
}

/// A chart of `lines` over `axes`: a log2 x axis is labelled at powers of two, a log y axis at
/// 1, 2 and 5 times powers of ten; a legend names the lines that have a legend entry.
fn line_chart(path: &Path, axes: &Axes, lines: &[Line]) -> Result<()> {
    // A log2 x is log2 on a linear axis, so that the ticks fall on the powers of two; a log y is
    // log10 on a linear axis, labelled at 1, 2 and 5 times powers of ten.
    let log_x = axes.x == XAxis::Log2;
    let log_y = axes.log_y;
    let (y_lo, y_hi) = axes.y_range;
    let points: Vec<Vec<(f64, f64)>> = lines
        .iter()
        .map(|l| {
            l.points
                .iter()
                .map(|&(x, y)| {
                    (
                        if log_x { x.log2() } else { x },
                        if log_y { y.log10() } else { y },
                    )
                })
                .collect()
        })
        .collect();
    let xs = points.iter().flat_map(|p| p.iter().map(|p| p.0));
    let (x_min, x_max) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (x_lo, x_hi, x_labels) = match axes.x {
        XAxis::Log2 => {
            let (lo, hi) = (x_min - 0.3, x_max.max(x_min + 1.0) + 0.3);
            (lo, hi, ((hi - lo).ceil() as usize + 1).clamp(2, 12))
        }
        XAxis::Linear => {
            let pad = ((x_max - x_min) * 0.03).max(1e-3);
            ((x_min - pad).min(0.0), x_max + pad, 12)
        }
    };
    let root = BitMapBackend::new(path, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(axes.title, (FONT, 26).into_font())?;
    let (upper, lower) = root.split_vertically(CHART_SIZE.1 - 60);
    lower.draw_text(
        axes.subtitle,
        &(FONT, 16).into_font().color(&BLACK.mix(0.7)),
        (20, 10),
    )?;
    let mut chart = ChartBuilder::on(&upper)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .light_line_style(BLACK.mix(0.04))
        .x_labels(x_labels)
        .y_labels(if log_y { 40 } else { 12 })
        .x_label_formatter(&|v| match log_x {
            true => pow2_label(*v),
            false => label(*v),
        })
        .y_label_formatter(&|v| match log_y {
            true => log10_label(*v),
            false => label(*v),
        })
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()?;
    if let Some(y) = axes.reference {
        chart.draw_series(LineSeries::new(
            [(x_lo, y), (x_hi, y)],
            BLACK.mix(0.4).stroke_width(1),
        ))?;
    }
    for (line, points) in lines.iter().zip(&points) {
        let color = Palette99::pick(line.colour).mix(line.opacity);
        let style = color.stroke_width(line.width);
        let drawn = chart.draw_series(LineSeries::new(points.iter().copied(), style))?;
        if let Some(name) = &line.legend {
            drawn
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        if line.markers {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(axes.legend_at.clone())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .label_font((FONT, 16))
        .draw()?;
    root.present()?;
    Ok(())
}
