//! Inference on image files: decoding, timm's evaluation transform, batched forward passes and
//! top-k labels.

pub mod preprocess;
pub mod resize;

use std::path::PathBuf;

use burn::tensor::activation::softmax;
use burn::tensor::Device;
use serde::Serialize;
use thiserror::Error;

use crate::model::SkNet;
pub use preprocess::{decode_image, load_image, Preprocess};
pub use resize::Rgb8;

/// The 1000 ImageNet-1k class names, in timm's order.
pub const IMAGENET_CLASSES: &str = include_str!("imagenet_classes.txt");

/// Inference errors.
#[derive(Debug, Clone, Error)]
pub enum InferError {
    /// An image cannot be used.
    #[error("{path}: {message}")]
    Image {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Class names do not fit the network.
    #[error("{0}")]
    Classes(String),
    /// The network's output is NaN or infinite: probabilities would mean nothing.
    #[error(
        "{path}: the network's outputs are not finite (NaN or infinite): its weights are broken"
    )]
    NotFinite {
        /// The image.
        path: String,
    },
}

/// Class names for a network: the given ones, ImageNet's for 1000 classes, else `class_{i}`.
pub fn class_names(
    stored: Option<Vec<String>>,
    num_classes: usize,
) -> Result<Vec<String>, InferError> {
    match stored {
        Some(names) if names.len() == num_classes => Ok(names),
        Some(names) => Err(InferError::Classes(format!(
            "the checkpoint names {} classes but its classifier has {num_classes} outputs",
            names.len()
        ))),
        None if num_classes == 1000 => Ok(IMAGENET_CLASSES.lines().map(str::to_string).collect()),
        None => Ok((0..num_classes).map(|i| format!("class_{i}")).collect()),
    }
}

/// One of the top-k predictions.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scored {
    /// Class index.
    pub index: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
}

/// One SK unit's selection for one image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnitWeight {
    /// The paper's name, `SK_{stage}_{unit}`.
    pub unit: String,
    /// The unit's largest kernel.
    pub kernel: String,
    /// That kernel's weight, averaged over the channels.
    pub weight: f32,
}

/// The predictions for one image.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The image file.
    pub path: String,
    /// Best classes first.
    pub top: Vec<Scored>,
    /// Each SK unit's mean large-kernel weight, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<Vec<UnitWeight>>,
}

/// Images per forward pass.
pub const BATCH: usize = 16;

/// Image `i`'s mean large-kernel weight in every unit, from the units' `[batch, M, C]` weights;
/// `Err` when one is not finite.
fn large_kernel_weights(
    units: &[crate::attention::UnitInfo],
    weights: &[Vec<f32>],
    i: usize,
) -> Result<Vec<UnitWeight>, ()> {
    units
        .iter()
        .zip(weights)
        .map(|(unit, w)| {
            let c = unit.channels;
            let image = &w[i * unit.kernels.len() * c..(i + 1) * unit.kernels.len() * c];
            let large = &image[unit.largest * c..(unit.largest + 1) * c];
            let weight = (large.iter().map(|&v| v as f64).sum::<f64>() / c as f64) as f32;
            if !weight.is_finite() {
                return Err(());
            }
            Ok(UnitWeight {
                unit: unit.name.clone(),
                kernel: unit.kernels[unit.largest].clone(),
                weight,
            })
        })
        .collect()
}

/// Classifies image files: decoded and transformed, then run in batches of [`BATCH`]. With
/// `attention`, each prediction also holds every SK unit's mean large-kernel weight.
pub fn predict(
    model: &SkNet,
    pre: &Preprocess,
    paths: &[PathBuf],
    classes: &[String],
    topk: usize,
    attention: bool,
    device: &Device,
) -> Result<Vec<Prediction>, InferError> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(BATCH) {
        let images = chunk
            .iter()
            .map(|p| load_image(p))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = chunk.iter().map(|p| p.display().to_string()).collect();
        let request = Classify {
            classes,
            topk,
            attention,
        };
        out.extend(classify(model, pre, &names, &images, &request, device)?);
    }
    Ok(out)
}

/// What [`classify`] reports for each image.
#[derive(Debug, Clone, Copy)]
pub struct Classify<'a> {
    /// The network's class names.
    pub classes: &'a [String],
    /// How many classes per image.
    pub topk: usize,
    /// Add each SK unit's mean large-kernel weight.
    pub attention: bool,
}

/// Classifies decoded images in one forward pass; `names[i]` is image `i`'s `path` in its
/// prediction and in errors.
pub fn classify(
    model: &SkNet,
    pre: &Preprocess,
    names: &[String],
    images: &[Rgb8],
    request: &Classify,
    device: &Device,
) -> Result<Vec<Prediction>, InferError> {
    let units = match request.attention {
        true => crate::attention::units(model),
        false => Vec::new(),
    };
    let x = pre.batch(images, device);
    let (logits, unit_weights) = match request.attention {
        true => {
            let (logits, att) = model.forward_with_attention(x);
            let weights: Vec<Vec<f32>> = att
                .into_iter()
                .map(|a| crate::ops::values_f32(a.weights))
                .collect();
            (logits, Some(weights))
        }
        false => (model.forward(x), None),
    };
    let probs = softmax(logits, 1);
    let [n, k] = probs.dims();
    let values = crate::ops::values_f32(probs);
    let mut out = Vec::with_capacity(n);
    for (i, name) in names.iter().enumerate().take(n) {
        let row = &values[i * k..(i + 1) * k];
        let not_finite = || InferError::NotFinite { path: name.clone() };
        // The softmax of finite logits is finite.
        if !row.iter().all(|p| p.is_finite()) {
            return Err(not_finite());
        }
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let attention = unit_weights
            .as_ref()
            .map(|weights| large_kernel_weights(&units, weights, i))
            .transpose()
            .map_err(|()| not_finite())?;
        out.push(Prediction {
            attention,
            path: name.clone(),
            top: order
                .into_iter()
                .take(request.topk.min(k))
                .map(|j| Scored {
                    index: j,
                    label: request.classes[j].clone(),
                    probability: row[j],
                })
                .collect(),
        });
    }
    Ok(out)
}
