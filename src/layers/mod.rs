//! Building blocks below the residual block: convolution, normalization, the classifier layer and
//! the selective kernel unit.

mod conv;
mod conv_norm_act;
pub mod direct_conv;
mod linear;
mod norm;
pub mod selective_kernel;
pub mod train_conv;
pub mod train_norm;

pub use conv::{Conv2d, ConvGeometry};
pub use conv_norm_act::ConvNormAct;
pub use linear::Linear;
pub use norm::{fold_into_conv, BatchNorm2d};
pub use selective_kernel::{SelectiveKernel, SelectiveKernelAttn};

/// Whether training uses sknet's CPU kernels ([`train_conv`], [`train_norm`]) rather than
/// burn's derived backward passes: in builds without a GPU backend, whose only device is Flex.
pub(crate) fn cpu_training_kernels() -> bool {
    cfg!(not(any(
        feature = "vulkan",
        feature = "wgpu",
        feature = "cuda"
    )))
}

/// Asserts that two float tensors have the same length and differ by less than `tolerance`
/// anywhere; the message names `what` and the largest difference.
#[cfg(test)]
pub(crate) fn assert_close(
    what: &str,
    a: burn::tensor::TensorData,
    b: burn::tensor::TensorData,
    tolerance: f32,
) {
    let (a, b) = (
        a.try_to_vec::<f32>().unwrap(),
        b.try_to_vec::<f32>().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    let diff = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(diff < tolerance, "{what} differs by {diff}");
}
