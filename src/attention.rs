//! What the SK selection picks: the analysis of the paper's section 4.3 ("Analysis and
//! Interpretation", Figures 3 and 4), for any model and any images.
//!
//! The protocol: enlarge the central object by each scale (center-crop 1/scale of the image,
//! then the eval transform resizes it back to the input, with its own resampling), run every
//! image at every scale, and record every SK unit's branch weights `[M, C]`. From them:
//! - per unit and scale, the mean weight of each branch per channel (Figure 3a/3b);
//! - the mean attention difference, the largest kernel's weight minus the smallest's averaged
//!   over channels, per unit and scale (Figure 3c);
//! - the same per class, when the images are labelled (Figure 4).
//!
//! Only running sums are kept: memory does not grow with the number of images.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;
use thiserror::Error;

use crate::data::loader::{Loader, LoaderConfig, SkippedImage};
use crate::data::Dataset;
use crate::infer::resize::MAX_ENLARGED_SIDE;
use crate::infer::Preprocess;
use crate::model::SkNet;
use crate::ops::values_f32;

/// Most scales one analysis takes.
pub const MAX_SCALES: usize = 16;

/// Why an analysis cannot run, or has no result.
#[derive(Debug, Error, PartialEq)]
pub enum AttentionError {
    /// The network has no SK unit.
    #[error("the network has no SK unit: there is no selection to analyse")]
    NoUnits,
    /// A unit name that is not in the network.
    #[error("no SK unit named `{name}`; this network has {known}")]
    UnknownUnit {
        /// The name asked for.
        name: String,
        /// The units it has, comma-separated.
        known: String,
    },
    /// A scale outside what the input allows.
    #[error("scale {scale}: {reason}")]
    Scale {
        /// The scale.
        scale: f64,
        /// What was expected.
        reason: String,
    },
    /// No image could be analysed.
    #[error("no image to analyse ({skipped} could not be decoded)")]
    Empty {
        /// Images that could not be decoded.
        skipped: usize,
    },
    /// The network's outputs or weights are NaN or infinite for an image.
    #[error("the network's attention is not finite (NaN or infinite) for {image}: its weights are broken")]
    NotFinite {
        /// The image.
        image: String,
    },
}

/// One SK unit, as the analysis names and reads it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnitInfo {
    /// The paper's name, `SK_{stage}_{unit}`.
    pub name: String,
    /// Module path, e.g. `layer2.0.conv2`.
    pub path: String,
    /// Every branch's kernel, e.g. `3x3` and `5x5 (3x3, dilation 2)`.
    pub kernels: Vec<String>,
    /// Channels C.
    pub channels: usize,
    /// The branch with the largest receptive field.
    pub largest: usize,
    /// The branch with the smallest receptive field.
    pub smallest: usize,
}

/// Every SK unit of `model`, in network order.
pub fn units(model: &SkNet) -> Vec<UnitInfo> {
    let blocks = model.stages().into_iter().flatten();
    model
        .unit_names()
        .into_iter()
        .zip(blocks)
        .map(|((path, name), block)| {
            let sk = block.selective_kernel();
            let sizes: Vec<(usize, usize)> = sk
                .paths
                .iter()
                .map(|p| (p.conv.geometry.kernel, p.conv.geometry.dilation))
                .collect();
            let field = |&(k, d): &(usize, usize)| d * (k - 1) + 1;
            let kernels = sizes
                .iter()
                .map(|s| match s.1 {
                    1 => format!("{0}x{0}", s.0),
                    d => format!("{0}x{0} ({1}x{1}, dilation {d})", field(s), s.0),
                })
                .collect();
            // Ties keep the first branch for the smallest and the last for the largest.
            let largest = (0..sizes.len())
                .max_by_key(|&i| (field(&sizes[i]), i))
                .unwrap_or(0);
            let smallest = (0..sizes.len())
                .min_by_key(|&i| (field(&sizes[i]), i))
                .unwrap_or(0);
            UnitInfo {
                name,
                path,
                kernels,
                channels: sk.out_channels(),
                largest,
                smallest,
            }
        })
        .collect()
}

/// The indices in `all` of the units named `names` (paper names or module paths), in the order
/// asked; every unit when `names` is empty.
///
/// # Errors
/// [`AttentionError::NoUnits`] for a network without SK units, and
/// [`AttentionError::UnknownUnit`], listing the units there are, for a name that is not one.
pub fn select_units(all: &[UnitInfo], names: &[String]) -> Result<Vec<usize>, AttentionError> {
    if all.is_empty() {
        return Err(AttentionError::NoUnits);
    }
    if names.is_empty() {
        return Ok((0..all.len()).collect());
    }
    names
        .iter()
        .map(|name| {
            all.iter()
                .position(|u| &u.name == name || &u.path == name)
                .ok_or_else(|| unknown_unit(name.clone(), all))
        })
        .collect()
}

/// The error for a unit `name` that is not among `all`, listing those there are.
fn unknown_unit(name: String, all: &[UnitInfo]) -> AttentionError {
    let known: Vec<&str> = all.iter().map(|u| u.name.as_str()).collect();
    AttentionError::UnknownUnit {
        name,
        known: known.join(", "),
    }
}

/// Checks scales against an input of `[height, width]`: 1 to [`MAX_SCALES`] of them, each
/// finite and above 0, at most the input's shorter side (a crop of at least one pixel), and not
/// so small that the zero-padded crop would exceed the largest side sknet enlarges to.
pub fn check_scales(scales: &[f64], input: [usize; 2]) -> Result<(), AttentionError> {
    if scales.is_empty() || scales.len() > MAX_SCALES {
        return Err(AttentionError::Scale {
            scale: scales.len() as f64,
            reason: format!("give 1 to {MAX_SCALES} scales, found {}", scales.len()),
        });
    }
    let short = input[0].min(input[1]) as f64;
    let long = input[0].max(input[1]) as f64;
    for &scale in scales {
        let reason = if !(scale.is_finite() && scale > 0.0) {
            "must be a finite number above 0".to_string()
        } else if scale > short {
            format!("above {short}, the input's shorter side: the crop would be under one pixel")
        } else if long / scale > MAX_ENLARGED_SIDE as f64 {
            format!("too small: the zero-padded crop would be over {MAX_ENLARGED_SIDE} pixels wide")
        } else {
            continue;
        };
        return Err(AttentionError::Scale { scale, reason });
    }
    Ok(())
}

/// How to run an analysis.
#[derive(Debug, Clone)]
pub struct AttentionSettings {
    /// Object enlargements, e.g. `[1.0, 1.5, 2.0]`.
    pub scales: Vec<f64>,
    /// Which units to record, as indices into [`units`].
    pub units: Vec<usize>,
    /// Images per forward pass.
    pub batch: usize,
    /// Decoding threads.
    pub workers: usize,
}

/// One image at one scale, as the analysis saw it.
#[derive(Debug)]
pub struct ImageAttention<'a> {
    /// The image (its file, or its record).
    pub image: String,
    /// Index into the scales.
    pub scale: usize,
    /// The dataset label, when labelled.
    pub label: Option<usize>,
    /// The predicted class.
    pub predicted: usize,
    /// Per selected unit, the mean attention difference (largest minus smallest kernel).
    pub differences: &'a [f64],
}

/// Progress and per-image results, as they come.
pub trait AttentionObserver {
    /// After each batch: `done` of `total` image-scale passes.
    fn on_progress(&mut self, _done: usize, _total: usize) {}
    /// Every image at every scale.
    fn on_image(&mut self, _image: &ImageAttention<'_>) {}
}

/// An observer that ignores everything.
pub struct NoopObserver;

impl AttentionObserver for NoopObserver {}

/// The aggregates of an analysis (indices: scale, then selected unit).
#[derive(Debug, Clone, Serialize)]
pub struct AttentionReport {
    /// The selected units.
    pub units: Vec<UnitInfo>,
    /// The scales.
    pub scales: Vec<f64>,
    /// Images analysed (at every scale).
    pub images: usize,
    /// Images that could not be decoded.
    pub skipped: usize,
    /// Which, and why (for the caller to report; not serialized).
    #[serde(skip)]
    pub skipped_images: Vec<SkippedImage>,
    /// `[scale][unit][branch][channel]`: the mean weight of each branch per channel.
    pub branch_means: Vec<Vec<Vec<Vec<f64>>>>,
    /// `[scale][unit]`: the mean attention difference (largest minus smallest kernel).
    pub mean_difference: Vec<Vec<f64>>,
    /// The data's class names, when labelled.
    pub classes: Option<Vec<String>>,
    /// Images per class, when labelled.
    pub class_images: Option<Vec<usize>>,
    /// `[scale][unit][class]`: the mean attention difference per class (`None` for a class
    /// without images), when labelled.
    pub class_differences: Option<Vec<Vec<Vec<Option<f64>>>>>,
}

impl AttentionReport {
    /// A table of the mean attention differences: a row per unit, a column per scale.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "mean attention difference (largest minus smallest kernel), {} images\n",
            self.images
        );
        out.push_str(&format!("{:<10}", "unit"));
        for s in &self.scales {
            out.push_str(&format!(" {:>9}", format!("{s}x")));
        }
        out.push('\n');
        for (u, unit) in self.units.iter().enumerate() {
            out.push_str(&format!("{:<10}", unit.name));
            for d in &self.mean_difference {
                out.push_str(&format!(" {:>9.4}", d[u]));
            }
            out.push('\n');
        }
        out
    }
}

/// Runs `indices` of `data` through `model` at every scale and aggregates the selected units'
/// branch weights. Images that cannot be decoded are left out, counted and listed.
///
/// # Errors
/// Bad scales or units (see [`check_scales`], [`select_units`]), a non-finite output
/// ([`AttentionError::NotFinite`]), or no image analysed ([`AttentionError::Empty`]).
pub fn analyse(
    model: &SkNet,
    data: Arc<Dataset>,
    indices: &[usize],
    pre: &Preprocess,
    settings: &AttentionSettings,
    observer: &mut dyn AttentionObserver,
    device: &Device,
) -> Result<AttentionReport, AttentionError> {
    let all = units(model);
    if all.is_empty() {
        return Err(AttentionError::NoUnits);
    }
    if let Some(&bad) = settings.units.iter().find(|&&u| u >= all.len()) {
        return Err(unknown_unit(format!("#{bad}"), &all));
    }
    check_scales(&settings.scales, pre.size)?;
    let selected: Vec<UnitInfo> = settings.units.iter().map(|&u| all[u].clone()).collect();
    let labelled = data.is_labelled();
    let n_classes = data.classes.len();
    let branches = |u: &UnitInfo| u.kernels.len();
    let zeros = || -> Vec<Vec<Vec<f64>>> {
        selected
            .iter()
            .map(|u| vec![vec![0.0; u.channels]; branches(u)])
            .collect()
    };
    let n_scales = settings.scales.len();
    let mut branch_sums: Vec<_> = (0..n_scales).map(|_| zeros()).collect();
    let mut diff_sums = vec![vec![0.0f64; selected.len()]; n_scales];
    let mut class_sums = vec![vec![vec![0.0f64; n_classes]; selected.len()]; n_scales];
    let mut class_images = vec![0usize; n_classes];
    let mut counts = vec![0usize; n_scales];
    let mut skipped_images = Vec::new();
    let total = indices.len() * n_scales;
    let mut done = 0;
    let [h, w] = pre.size;
    for (si, &scale) in settings.scales.iter().enumerate() {
        let mut loader = Loader::new(
            data.clone(),
            indices,
            LoaderConfig {
                batch: settings.batch,
                workers: settings.workers,
                shuffle: false,
                drop_last: false,
                augment: crate::data::augment::Augment::None.into(),
                eval: pre.clone(),
                seed: 0,
                enlarge: (scale != 1.0).then_some(scale),
            },
            0,
        );
        for batch in loader.by_ref() {
            let b = batch.labels.len();
            done += b;
            if b == 0 {
                observer.on_progress(done, total);
                continue;
            }
            let x = Tensor::<4>::from_data(TensorData::new(batch.pixels, [b, 3, h, w]), device);
            let (logits, attention) = model.forward_with_attention(x);
            let logits = values_f32(logits);
            let k = logits.len() / b;
            let weights: Vec<Vec<f32>> = settings
                .units
                .iter()
                .map(|&u| values_f32(attention[u].weights.clone()))
                .collect();
            let mut differences = vec![0.0f64; selected.len()];
            for i in 0..b {
                let image = || data.describe(batch.items[i]);
                let row = &logits[i * k..(i + 1) * k];
                if !row.iter().all(|v| v.is_finite()) {
                    return Err(AttentionError::NotFinite { image: image() });
                }
                for (j, unit) in selected.iter().enumerate() {
                    let (m, c) = (branches(unit), unit.channels);
                    let a = &weights[j][i * m * c..(i + 1) * m * c];
                    if !a.iter().all(|v| v.is_finite()) {
                        return Err(AttentionError::NotFinite { image: image() });
                    }
                    for (branch, sums) in branch_sums[si][j].iter_mut().enumerate() {
                        for (s, &v) in sums.iter_mut().zip(&a[branch * c..(branch + 1) * c]) {
                            *s += v as f64;
                        }
                    }
                    let (large, small) = (unit.largest * c, unit.smallest * c);
                    let d = (0..c)
                        .map(|ch| a[large + ch] as f64 - a[small + ch] as f64)
                        .sum::<f64>()
                        / c as f64;
                    differences[j] = d;
                    diff_sums[si][j] += d;
                    if labelled {
                        class_sums[si][j][batch.labels[i]] += d;
                    }
                }
                if labelled && si == 0 {
                    class_images[batch.labels[i]] += 1;
                }
                let predicted = (0..k)
                    .max_by(|&p, &q| row[p].total_cmp(&row[q]).then(q.cmp(&p)))
                    .unwrap_or(0);
                observer.on_image(&ImageAttention {
                    image: image(),
                    scale: si,
                    label: labelled.then(|| batch.labels[i]),
                    predicted,
                    differences: &differences,
                });
            }
            counts[si] += b;
            observer.on_progress(done, total);
        }
        // Decoding does not depend on the scale: the first pass lists every skipped image.
        let skipped = loader.take_skipped();
        if si == 0 {
            skipped_images = skipped;
        }
    }
    let images = counts[0];
    if images == 0 {
        return Err(AttentionError::Empty {
            skipped: skipped_images.len(),
        });
    }
    let mean = |s: f64| s / images as f64;
    let branch_means = branch_sums
        .into_iter()
        .map(|units| {
            units
                .into_iter()
                .map(|bs| {
                    bs.into_iter()
                        .map(|c| c.into_iter().map(mean).collect())
                        .collect()
                })
                .collect()
        })
        .collect();
    let mean_difference = diff_sums
        .into_iter()
        .map(|d| d.into_iter().map(mean).collect())
        .collect();
    let class_differences = labelled.then(|| {
        class_sums
            .iter()
            .map(|units| {
                units
                    .iter()
                    .map(|classes| {
                        classes
                            .iter()
                            .zip(&class_images)
                            .map(|(&s, &n)| (n > 0).then(|| s / n as f64))
                            .collect()
                    })
                    .collect()
            })
            .collect()
    });
    Ok(AttentionReport {
        units: selected,
        scales: settings.scales.clone(),
        images,
        skipped: skipped_images.len(),
        skipped_images,
        branch_means,
        mean_difference,
        classes: labelled.then(|| data.classes.clone()),
        class_images: labelled.then_some(class_images),
        class_differences,
    })
}
