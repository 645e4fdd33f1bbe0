//! The training curves as a PNG: loss (train, validation) on the left, top-1 accuracy (train,
//! validation) on the right, against the epoch.

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
    let ema: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|m| m.ema.map(|e| (m.epoch as f64, e.val_top1 * 100.0)))
        .collect();
    let mut top1 = vec![
        line("train", |m| m.train_top1 * 100.0),
        line("validation", |m| m.val_top1 * 100.0),
    ];
    if !ema.is_empty() {
        top1.push(Series {
            label: "validation (EMA)".into(),
            points: ema,
        });
    }
    let loss = LineChart {
        title: "Loss".into(),
        x_label: "epoch".into(),
        y_label: "cross-entropy".into(),
        series: vec![
            line("train", |m| m.train_loss),
            line("validation", |m| m.val_loss),
        ],
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
