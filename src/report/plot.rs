//! An SVG bar chart of per-layer output widths: for every layer (x: its position in the rows)
//! a light bar of the original width with the kept width drawn over it, a legend with the
//! model's MACs and parameters before and after, and the model name in the title. Drawn with
//! `plotters`' SVG backend (text as `<text>` elements, no fonts needed). It draws nothing
//! else (no input widths, no names on the axis: the table and the JSON report have those).

use std::path::Path;

use plotters::prelude::*;

use super::table::si;
use super::{LayerRow, Totals};
use crate::error::{Error, Result};
use crate::onnx::save::write_atomic;

/// Fill of the original-width bars.
pub const ORIGINAL_COLOR: RGBColor = RGBColor(0xC8, 0xC8, 0xC8);
/// Fill of the kept-width bars.
pub const KEPT_COLOR: RGBColor = RGBColor(0x1F, 0x77, 0xB4);

/// Renders the chart as SVG text. `model_name` goes into the title. The same input always
/// gives the same text.
pub fn render_widths_svg(rows: &[LayerRow], totals: &Totals, model_name: &str) -> Result<String> {
    let n = rows.len().max(1);
    let width = (120 + 12 * n as u32).max(720);
    let height = 480;
    let ymax = rows
        .iter()
        .map(|r| r.out_channels.0.max(r.out_channels.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.25; // headroom for the legend
    let mut svg = String::new();
    let err = |e: String| Error::Usage(format!("cannot draw the width chart: {e}"));
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{model_name}: output channels per layer ({} of {} layers changed)",
                    totals.changed_layers, totals.layers
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..ymax)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(n.min(25))
            .x_label_formatter(&|x| {
                if x.fract() == 0.0 {
                    format!("{}", *x as i64)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{}", *y as i64))
            .x_desc("layer")
            .y_desc("output channels")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let bar = |i: usize, h: usize, color: RGBColor| {
            Rectangle::new(
                [(i as f64 - 0.4, 0.0), (i as f64 + 0.4, h as f64)],
                color.filled(),
            )
        };
        chart
            .draw_series(
                rows.iter()
                    .enumerate()
                    .map(|(i, r)| bar(i, r.out_channels.0, ORIGINAL_COLOR)),
            )
            .map_err(|e| err(e.to_string()))?
            .label(format!(
                "original (MACs {}, params {})",
                si(totals.macs.0),
                si(totals.params.0)
            ))
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], ORIGINAL_COLOR.filled())
            });
        chart
            .draw_series(
                rows.iter()
                    .enumerate()
                    .map(|(i, r)| bar(i, r.out_channels.1, KEPT_COLOR)),
            )
            .map_err(|e| err(e.to_string()))?
            .label(format!(
                "kept (MACs {}, params {})",
                si(totals.macs.1),
                si(totals.params.1)
            ))
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], KEPT_COLOR.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Writes the chart of [`render_widths_svg`] to `path` atomically.
pub fn plot_widths(
    rows: &[LayerRow],
    totals: &Totals,
    model_name: &str,
    path: impl AsRef<Path>,
) -> Result<()> {
    let svg = render_widths_svg(rows, totals, model_name)?;
    write_atomic(path.as_ref(), svg.as_bytes())
}
