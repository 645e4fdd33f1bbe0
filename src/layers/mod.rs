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
