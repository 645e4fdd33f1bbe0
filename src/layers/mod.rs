//! Building blocks below the residual block: convolution, normalization, the classifier layer and
//! the selective kernel unit.

mod conv;
mod conv_norm_act;
pub mod direct_conv;
mod linear;
mod norm;
pub mod selective_kernel;
pub mod train_conv;

pub use conv::{Conv2d, ConvGeometry};
pub use conv_norm_act::ConvNormAct;
pub use linear::Linear;
pub use norm::{fold_into_conv, BatchNorm2d};
pub use selective_kernel::{SelectiveKernel, SelectiveKernelAttn};
