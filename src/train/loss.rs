//! The training loss and hit count of a batch.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

/// Mean cross-entropy of `logits` against soft `targets` (`[batch, classes]`, each row a
/// distribution), as timm's `SoftTargetCrossEntropy`; with one-hot rows smoothed, it is
/// label-smoothed cross-entropy.
pub(super) fn soft_cross_entropy(
    logits: Tensor<2>,
    targets: Vec<f32>,
    device: &Device,
) -> Tensor<1> {
    let [b, k] = logits.dims();
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [b, k]), device);
    log_softmax(logits, 1)
        .mul(targets)
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
