//! The training curves as a PNG: loss (train, validation, and the EMA weights' validation when
//! the run keeps them) on the left, top-1 accuracy likewise on the right, against the epoch.

use super::EpochMetrics;
use crate::plot::{self, LineChart, PlotError, Series};

/// The PNG bytes of the curves.
///
/// # Errors
/// An empty history (nothing to draw), or a drawing failure.
pub fn curves_png(history: &[EpochMetrics]) -> Result<Vec<u8>, PlotError> {
    let line = |label: &str, f: fn(&EpochMetrics) -> f64| Series {
        label: label.into(),
        points: history.iter().map(|m| (m.epoch as f64, f(m))).collect(),
    };
    let markers = history.len() <= 30;
    // With model EMA, a third line: the EMA weights' validation.
    let ema = |f: fn(&super::EmaMetrics) -> f64| {
        let points: Vec<(f64, f64)> = history
            .iter()
            .filter_map(|m| m.ema.as_ref().map(|e| (m.epoch as f64, f(e))))
            .collect();
        (!points.is_empty()).then(|| Series {
            label: "validation (EMA)".into(),
            points,
        })
    };
    let mut losses = vec![
        line("train", |m| m.train_loss),
        line("validation", |m| m.val_loss),
    ];
    losses.extend(ema(|e| e.val_loss));
    let mut top1 = vec![
        line("train", |m| m.train_top1 * 100.0),
        line("validation", |m| m.val_top1 * 100.0),
    ];
    top1.extend(ema(|e| e.val_top1 * 100.0));
    let loss = LineChart {
        title: "Loss".into(),
        x_label: "epoch".into(),
        y_label: "cross-entropy".into(),
        series: losses,
        markers,
        integer_x: true,
        ..Default::default()
    };
    let accuracy = LineChart {
        title: "Top-1 accuracy".into(),
        x_label: "epoch".into(),
        y_label: "accuracy (%)".into(),
        series: top1,
        markers,
        integer_x: true,
        ..Default::default()
    };
    plot::png(&[loss, accuracy], [600, 450])
}
