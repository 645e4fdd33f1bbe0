//! The network's layers below the residual block: convolution, normalization, the classifier
//! layer, conv + norm + activation, and the selective kernel unit. burn modules only: each
//! computes through [`crate::ops`], which picks the kernels.

mod conv;
mod conv_norm_act;
mod linear;
mod norm;
pub mod selective_kernel;

pub use crate::ops::Activation;
pub use conv::{Conv2d, ConvConfig, ConvGeometry};
pub use conv_norm_act::{ConvNormAct, ConvNormActConfig};
pub use linear::{Linear, LinearConfig};
pub use norm::{fold_into_conv, BatchNorm2d, BatchNorm2dConfig};
pub use selective_kernel::{
    Selection, SelectiveKernel, SelectiveKernelAttn, SelectiveKernelConfig,
};
