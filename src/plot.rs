//! Line charts as PNG, drawn with plotters: axes with ticks, a light grid, titles, axis labels
//! and a legend, in a bundled font (DejaVu Sans, `assets/`), so that no system font is looked
//! up and a figure looks the same on every machine. Used for the training curves and the SK
//! attention figures.

use std::ops::Range;
use std::sync::Once;

use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::prelude::*;
use thiserror::Error;

/// The bundled font, registered with plotters as its `sans-serif` family.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Matplotlib's `tab10` colors, which stay distinct for up to ten series.
pub const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Category labels are written out up to this many; beyond it the axis shows indices.
const MAX_NAMED_CATEGORIES: usize = 20;

/// Why a figure could not be drawn.
#[derive(Debug, Error)]
pub enum PlotError {
    /// plotters failed (a drawing or font error).
    #[error("drawing the figure failed: {0}")]
    Draw(String),
    /// A chart with nothing finite to draw.
    #[error("chart `{0}` has no finite point to draw")]
    Empty(String),
    /// PNG encoding failed.
    #[error("encoding the figure as PNG failed: {0}")]
    Encode(String),
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub label: String,
    /// `(x, y)` points in order; non-finite points are left out.
    pub points: Vec<(f64, f64)>,
}

/// A chart of lines with markers.
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    /// Title above the chart.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The lines, colored in order.
    pub series: Vec<Series>,
    /// Names of x = 0, 1, 2, ..., for a categorical x axis (written out up to 20 categories).
    pub categories: Option<Vec<String>>,
    /// A fixed y range (the data's range, with headroom, otherwise).
    pub y_range: Option<Range<f64>>,
    /// Markers on every point (for short series).
    pub markers: bool,
    /// Ticks on whole numbers only (epochs, counts).
    pub integer_x: bool,
}

/// Draws `charts` side by side, each `panel` = `[width, height]` pixels, as PNG bytes.
///
/// # Errors
/// A chart without a finite point, or a plotters or encoder failure.
pub fn png(charts: &[LineChart], panel: [u32; 2]) -> Result<Vec<u8>, PlotError> {
    register_font();
    let (width, height) = (panel[0] * charts.len().max(1) as u32, panel[1]);
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let areas = root.split_evenly((1, charts.len().max(1)));
        for (chart, area) in charts.iter().zip(&areas) {
            draw(chart, area)?;
        }
        root.present().map_err(draw_err)?;
    }
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| PlotError::Encode(e.to_string()))?;
    Ok(out)
}

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bytes are a fixed, valid TrueType file: failing here means the asset is broken,
        // and every chart then reports plotters' font error instead.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

fn finite_points(series: &Series) -> impl Iterator<Item = (f64, f64)> + '_ {
    series
        .points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// `lo..hi` widened by `pad` of its length on each side; a single value gets a unit range.
fn padded(lo: f64, hi: f64, pad: f64) -> Range<f64> {
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let half = (lo.abs() * 0.05).max(0.5);
        return lo - half..hi + half;
    }
    lo - span * pad..hi + span * pad
}

/// Pixel sizes of the layout (font sizes are in pixels too).
const MARGIN: u32 = 12;
const CAPTION: u32 = 32;
const Y_LABEL_AREA: u32 = 70;
const X_LABEL_AREA: u32 = 50;
const LABEL_FONT: u32 = 14;
/// A conservative average glyph width of the label font, to size boxes before drawing.
const GLYPH_WIDTH: f64 = 8.0;
/// The average glyph width of tick labels (lower-case text at the label font's size).
const TICK_GLYPH_WIDTH: f64 = 7.0;
/// Legends of more series than this go beside the plot, not inside it.
const MAX_INSIDE_LEGEND: usize = 5;
const LEGEND_ROW: u32 = 20;

/// The legend's box in pixels: a line sample and the longest label per row.
fn legend_size(chart: &LineChart) -> (u32, u32) {
    let longest = chart
        .series
        .iter()
        .map(|s| s.label.chars().count())
        .max()
        .unwrap_or(0);
    let width = 22 + 12 + (longest as f64 * GLYPH_WIDTH) as u32 + 16;
    (width, chart.series.len() as u32 * LEGEND_ROW + 12)
}

/// Every point of the lines, and points along each segment: what a legend must not cover.
fn sampled_points(chart: &LineChart) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for s in &chart.series {
        let pts: Vec<_> = finite_points(s).collect();
        out.extend(&pts);
        for w in pts.windows(2) {
            for k in 1..16 {
                let t = k as f64 / 16.0;
                out.push((
                    w[0].0 + (w[1].0 - w[0].0) * t,
                    w[0].1 + (w[1].1 - w[0].1) * t,
                ));
            }
        }
    }
    out
}

/// Where the legend goes inside the plot: the first corner (upper right, upper left, lower
/// right, lower left) where a box of `box_frac` of the plot's width and height covers no line,
/// or `None`.
fn free_corner(
    points: &[(f64, f64)],
    x: &Range<f64>,
    y: &Range<f64>,
    box_frac: (f64, f64),
) -> Option<SeriesLabelPosition> {
    let (bw, bh) = (
        (x.end - x.start) * (box_frac.0 + 0.03),
        (y.end - y.start) * (box_frac.1 + 0.03),
    );
    [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ]
    .into_iter()
    .find(|&(_, right, upper)| {
        let xs = if right {
            x.end - bw..x.end
        } else {
            x.start..x.start + bw
        };
        let ys = if upper {
            y.end - bh..y.end
        } else {
            y.start..y.start + bh
        };
        !points
            .iter()
            .any(|(px, py)| xs.contains(px) && ys.contains(py))
    })
    .map(|(p, _, _)| p)
}

/// The top of a y range from `lo` whose upper `frac` lies above `hi`: room for the legend.
fn with_headroom(lo: f64, hi: f64, frac: f64) -> f64 {
    (hi - frac * lo) / (1.0 - frac)
}

fn draw(chart: &LineChart, area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError> {
    let all: Vec<(f64, f64)> = chart.series.iter().flat_map(finite_points).collect();
    if all.is_empty() {
        return Err(PlotError::Empty(chart.title.clone()));
    }
    let fold = |f: fn(&(f64, f64)) -> f64| {
        all.iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (x0, x1) = fold(|p| p.0);
    let (y0, y1) = fold(|p| p.1);
    let x_range = match &chart.categories {
        Some(names) => -0.5..(names.len().max(1) as f64 - 0.5),
        None => padded(x0, x1, 0.03),
    };
    let has_legend = chart.series.len() > 1 || chart.series.iter().any(|s| !s.label.is_empty());
    let (legend_w, legend_h) = legend_size(chart);
    // Many series: the legend stands beside the plot, in a column of its own.
    let outside = has_legend && chart.series.len() > MAX_INSIDE_LEGEND;
    let (plot_area, legend_area) = if outside {
        let (w, _) = area.dim_in_pixel();
        let (left, right) = area.split_horizontally(w.saturating_sub(legend_w + MARGIN));
        (left, Some(right))
    } else {
        (area.clone(), None)
    };
    let (area_w, area_h) = plot_area.dim_in_pixel();
    let plot_w = area_w.saturating_sub(Y_LABEL_AREA + 2 * MARGIN).max(1) as f64;
    let plot_h = area_h
        .saturating_sub(CAPTION + X_LABEL_AREA + 2 * MARGIN)
        .max(1) as f64;
    let box_frac = (legend_w as f64 / plot_w, legend_h as f64 / plot_h);
    let mut y_range = chart
        .y_range
        .clone()
        .unwrap_or_else(|| padded(y0, y1, 0.06));
    let points = sampled_points(chart);
    let legend_at = if has_legend && !outside {
        match free_corner(&points, &x_range, &y_range, box_frac) {
            Some(corner) => Some(corner),
            None => {
                // No free corner: raise the top until the legend fits above the lines.
                if chart.y_range.is_none() {
                    let top = with_headroom(y_range.start, y1, (box_frac.1 + 0.05).min(0.6));
                    y_range = y_range.start..top.max(y_range.end);
                }
                Some(SeriesLabelPosition::UpperRight)
            }
        }
    } else {
        None
    };
    // Category names are written out when they fit side by side; otherwise indices.
    let named = chart.categories.as_ref().filter(|names| {
        let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        names.len() <= MAX_NAMED_CATEGORIES
            && names.len() as f64 * (longest as f64 * TICK_GLYPH_WIDTH + 6.0) <= plot_w
    });
    let mut ctx = ChartBuilder::on(&plot_area)
        .caption(&chart.title, (FAMILY, 20))
        .margin(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(x_range.clone(), y_range.clone())
        .map_err(draw_err)?;
    let category_label = |v: &f64| {
        let i = v.round();
        match named {
            Some(names) if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() => {
                names[i as usize].clone()
            }
            Some(_) => String::new(),
            None if (chart.categories.is_some() || chart.integer_x) && (v - i).abs() > 1e-6 => {
                String::new()
            }
            None => tick(*v),
        }
    };
    let mut mesh = ctx.configure_mesh();
    mesh.x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style((FAMILY, LABEL_FONT))
        .axis_desc_style((FAMILY, 16))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(245, 245, 245))
        .max_light_lines(1)
        .y_label_formatter(&|v| tick(*v))
        .x_label_formatter(&category_label);
    if let Some(names) = named {
        mesh.x_labels(names.len());
    }
    mesh.draw().map_err(draw_err)?;
    for (i, series) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<_> = finite_points(series).collect();
        ctx.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(draw_err)?
            .label(&series.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        if chart.markers {
            ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
        }
    }
    if let Some(position) = legend_at {
        ctx.configure_series_labels()
            .position(position)
            .label_font((FAMILY, LABEL_FONT))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(190, 190, 190))
            .draw()
            .map_err(draw_err)?;
    }
    if let Some(side) = legend_area {
        let top = (MARGIN + CAPTION) as i32;
        for (i, series) in chart.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let y = top + i as i32 * LEGEND_ROW as i32 + 10;
            side.draw(&PathElement::new(
                vec![(0, y), (22, y)],
                color.stroke_width(2),
            ))
            .map_err(draw_err)?;
            side.draw(&Text::new(
                series.label.clone(),
                (30, y - LABEL_FONT as i32 / 2 - 1),
                (FAMILY, LABEL_FONT),
            ))
            .map_err(draw_err)?;
        }
    }
    Ok(())
}

/// A tick label with no more digits than it needs: `0.25`, `3`, `1.5e-5`.
pub fn tick(v: f64) -> String {
    // Tick positions are sums of float steps: a zero tick may come out as 1e-17.
    if v.abs() < 1e-12 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> LineChart {
        LineChart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series,
            ..Default::default()
        }
    }

    #[test]
    fn ticks_have_no_trailing_zeros() {
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(3.0), "3");
        assert_eq!(tick(-0.00001), "-1.0e-5");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(-2.8e-17), "0");
        assert_eq!(tick(-0.00000001 * 0.0), "0");
        assert_eq!(tick(12.5), "12.5");
    }

    #[test]
    fn a_chart_is_a_png_of_the_panel_size_with_its_lines_drawn() {
        let line = Series {
            label: "a".into(),
            points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 0.5)],
        };
        let bytes = png(&[chart(vec![line.clone()]), chart(vec![line])], [400, 300]).unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 300));
        // The first series' color appears: the line was drawn, not only the axes.
        let [r, g, b] = [COLORS[0].0, COLORS[0].1, COLORS[0].2];
        let drawn = img.pixels().filter(|p| p.0 == [r, g, b]).count();
        assert!(drawn > 200, "{drawn} pixels of the line's color");
        // Text was rendered (dark pixels beyond the axis lines).
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
        assert!(dark > 500, "{dark} dark pixels");
    }

    #[test]
    fn a_chart_with_no_finite_point_is_an_error() {
        let line = Series {
            label: "a".into(),
            points: vec![(0.0, f64::NAN)],
        };
        assert!(matches!(
            png(&[chart(vec![line])], [300, 200]),
            Err(PlotError::Empty(t)) if t == "t"
        ));
    }

    #[test]
    fn the_legend_goes_where_the_lines_are_not() {
        // A line from lower left to upper right leaves the upper left free.
        let rising = chart(vec![Series {
            label: "a".into(),
            points: (0..10).map(|i| (i as f64, i as f64)).collect(),
        }]);
        let points = sampled_points(&rising);
        let pos = free_corner(&points, &(0.0..9.0), &(0.0..9.0), (0.2, 0.2));
        assert!(
            matches!(pos, Some(SeriesLabelPosition::UpperLeft)),
            "{pos:?}"
        );
        // Lines through every corner leave none: the caller makes headroom.
        let mut cross = rising.clone();
        cross.series.push(Series {
            label: "b".into(),
            points: (0..10).map(|i| (i as f64, 9.0 - i as f64)).collect(),
        });
        let points = sampled_points(&cross);
        assert!(free_corner(&points, &(0.0..9.0), &(0.0..9.0), (0.2, 0.2)).is_none());
        // With the top raised so that the upper 30% is free, the box fits there.
        let top = with_headroom(0.0, 9.0, 0.3);
        assert!((top - 9.0 / 0.7).abs() < 1e-12);
        assert!(free_corner(&points, &(0.0..9.0), &(0.0..top), (0.2, 0.2)).is_some());
    }
}
