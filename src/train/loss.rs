//! The training loss and hit count of a batch.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Mean cross-entropy of `logits` against `labels`, with label smoothing.
pub(super) fn cross_entropy(
    logits: Tensor<2>,
    labels: &[usize],
    smoothing: f64,
    device: &Device,
) -> Tensor<1> {
    let [b, k] = logits.dims();
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b]),
        device,
    );
    let onehot = targets.one_hot::<2>(k).float();
    let dist = onehot
        .mul_scalar(1.0 - smoothing)
        .add_scalar(smoothing / k as f64);
    log_softmax(logits, 1)
        .mul(dist)
        .sum()
        .neg()
        .div_scalar(b as f64)
}

/// How many rows of `logits` have their largest value at the label.
pub(super) fn argmax_hits(logits: &Tensor<2>, labels: &[usize]) -> usize {
    let pred = logits
        .clone()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("indices");
    pred.iter()
        .zip(labels)
        .filter(|(p, l)| **p as usize == **l)
        .count()
}
