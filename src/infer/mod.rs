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
pub use preprocess::{load_image, Preprocess};

/// The 1000 ImageNet-1k class names, in timm's order.
pub const IMAGENET_CLASSES: &str = include_str!("imagenet_classes.txt");

/// Inference errors.
#[derive(Debug, Error)]
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

/// The predictions for one image.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The image file.
    pub path: String,
    /// Best classes first.
    pub top: Vec<Scored>,
}

/// Images per forward pass.
pub const BATCH: usize = 16;

/// Classifies image files: decoded and transformed, then run in batches of [`BATCH`].
pub fn predict(
    model: &SkNet,
    pre: &Preprocess,
    paths: &[PathBuf],
    classes: &[String],
    topk: usize,
    device: &Device,
) -> Result<Vec<Prediction>, InferError> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(BATCH) {
        let images = chunk
            .iter()
            .map(|p| load_image(p))
            .collect::<Result<Vec<_>, _>>()?;
        let probs = softmax(model.forward(pre.batch(&images, device)), 1);
        let [n, k] = probs.dims();
        let values = probs
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("converted to f32");
        for (i, path) in chunk.iter().enumerate().take(n) {
            let row = &values[i * k..(i + 1) * k];
            // The softmax of finite logits is finite.
            if !row.iter().all(|p| p.is_finite()) {
                return Err(InferError::NotFinite {
                    path: path.display().to_string(),
                });
            }
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            out.push(Prediction {
                path: path.display().to_string(),
                top: order
                    .into_iter()
                    .take(topk.min(k))
                    .map(|j| Scored {
                        index: j,
                        label: classes[j].clone(),
                        probability: row[j],
                    })
                    .collect(),
            });
        }
    }
    Ok(out)
}
