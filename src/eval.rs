//! Evaluation on a labelled dataset: top-1, top-5, loss, per-class accuracy, confusion matrix.

use std::sync::Arc;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;
use thiserror::Error;

use crate::data::augment::Augment;
use crate::data::loader::{Loader, LoaderConfig, SkippedImage};
use crate::data::Dataset;
use crate::infer::Preprocess;
use crate::model::SkNet;
use crate::ops::values_f32;

/// Why an evaluation has no meaningful result.
#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    /// No image could be evaluated: an accuracy of 0 would be a wrong verdict.
    #[error("no image to evaluate ({skipped} could not be decoded)")]
    Empty {
        /// Images that could not be decoded.
        skipped: usize,
    },
    /// The network's output is NaN or infinite: its weights (or the input) are broken, and no
    /// accuracy or loss means anything.
    #[error("the network's outputs are not finite (NaN or infinite) for {image}: its weights are broken")]
    NotFinite {
        /// The first such image.
        image: String,
    },
}

/// Accuracy of one class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassAccuracy {
    /// Class name.
    pub class: String,
    /// Images of that class.
    pub images: usize,
    /// Fraction classified right.
    pub accuracy: f64,
}

/// Evaluation results.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Top-1 accuracy in [0, 1].
    pub top1: f64,
    /// Top-5 accuracy in [0, 1] (top-k with k = classes when fewer than 5).
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Images evaluated.
    pub images: usize,
    /// Images that could not be decoded.
    pub skipped: usize,
    /// Which images could not be decoded, and why (for the caller to report; not serialized).
    #[serde(skip)]
    pub skipped_images: Vec<SkippedImage>,
    /// Per-class accuracy.
    pub per_class: Vec<ClassAccuracy>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// How to run an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Flip test-time augmentation: the logits are the mean of the image's and its mirror
    /// image's (as the fast CIFAR-10 trainers do).
    pub flip: bool,
}

/// Evaluates `model` (in inference mode) on `indices` of `data`, whose labels index `classes`
/// through `label_map` (dataset label -> model class). Images that cannot be decoded are left
/// out, counted in [`EvalReport::skipped`] and listed in [`EvalReport::skipped_images`].
///
/// # Errors
/// [`EvalError::NotFinite`] as soon as a logit is NaN or infinite, and [`EvalError::Empty`] when
/// no image was evaluated.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &SkNet,
    data: Arc<Dataset>,
    indices: &[usize],
    label_map: &[usize],
    classes: &[String],
    pre: &Preprocess,
    options: EvalOptions,
    device: &Device,
) -> Result<EvalReport, EvalError> {
    let k = classes.len();
    let mut loader = Loader::new(
        data.clone(),
        indices,
        LoaderConfig {
            batch: options.batch,
            workers: options.workers,
            shuffle: false,
            drop_last: false,
            augment: Augment::None.into(),
            eval: pre.clone(),
            seed: 0,
            enlarge: None,
        },
        0,
    );
    let [h, w] = pre.size;
    let mut confusion = vec![vec![0usize; k]; k];
    let (mut top1, mut top5, mut loss_sum, mut n) = (0usize, 0usize, 0f64, 0usize);
    for b in loader.by_ref() {
        let m = b.labels.len();
        if m == 0 {
            continue;
        }
        let x = Tensor::<4>::from_data(TensorData::new(b.pixels, [m, 3, h, w]), device);
        let logits = match options.flip {
            true => {
                let mirrored = model.forward(x.clone().flip([3]));
                model.forward(x).add(mirrored).div_scalar(2.0)
            }
            false => model.forward(x),
        };
        let logp = values_f32(log_softmax(logits, 1));
        for (i, &label) in b.labels.iter().enumerate() {
            let target = label_map[label];
            let row = &logp[i * k..(i + 1) * k];
            // Finite logits give finite log-probabilities; anything else is a broken network.
            if !row.iter().all(|v| v.is_finite()) {
                return Err(EvalError::NotFinite {
                    image: data.describe(b.items[i]),
                });
            }
            loss_sum -= row[target] as f64;
            let better = row.iter().filter(|&&v| v > row[target]).count();
            top1 += (better == 0) as usize;
            top5 += (better < 5) as usize;
            let pred = (0..k)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            confusion[target][pred] += 1;
        }
        n += m;
    }
    let per_class = (0..k)
        .map(|c| {
            let images: usize = confusion[c].iter().sum();
            ClassAccuracy {
                class: classes[c].clone(),
                images,
                accuracy: if images > 0 {
                    confusion[c][c] as f64 / images as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    if n == 0 {
        return Err(EvalError::Empty {
            skipped: loader.skipped_count(),
        });
    }
    let denom = n as f64;
    Ok(EvalReport {
        top1: top1 as f64 / denom,
        top5: top5 as f64 / denom,
        loss: loss_sum / denom,
        images: n,
        skipped: loader.skipped_count(),
        skipped_images: loader.take_skipped(),
        per_class,
        confusion,
    })
}

impl EvalReport {
    /// A human-readable report.
    pub fn text(&self) -> String {
        let mut out = format!(
            "images {}  top-1 {:.2}%  top-5 {:.2}%  loss {:.4}{}\n\nper class:\n",
            self.images,
            self.top1 * 100.0,
            self.top5 * 100.0,
            self.loss,
            if self.skipped > 0 {
                format!("  ({} unreadable images skipped)", self.skipped)
            } else {
                String::new()
            }
        );
        let width = self
            .per_class
            .iter()
            .map(|c| c.class.len())
            .max()
            .unwrap_or(5)
            .max(5);
        for c in &self.per_class {
            out.push_str(&format!(
                "  {:width$}  {:6.2}%  ({} images)\n",
                c.class,
                c.accuracy * 100.0,
                c.images
            ));
        }
        out.push_str("\nconfusion (rows: true class, columns: predicted):\n");
        for (i, row) in self.confusion.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:5}")).collect();
            out.push_str(&format!(
                "  {:width$} {}\n",
                self.per_class[i].class,
                cells.join("")
            ));
        }
        out
    }
}
