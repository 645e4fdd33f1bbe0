//! Convolutions on the CPU: the direct kernel (every conv of a forward pass, and its fallback),
//! the AVX-512 1x1, packed and Winograd kernels it hands work to, and the training conv's
//! backward pass. [`plan`] holds the geometry and padded input they share, [`isa`] the choice of
//! instruction set.

pub(crate) mod backward;
mod dense_gemm;
pub(crate) mod direct;
mod im2col_backward;
mod isa;
pub(crate) mod packed;
mod packed_kernel;
mod plan;
mod pointwise;
mod weight_grad;
mod winograd;

#[cfg(test)]
use super::assert_close;
use super::{dims4, flex_f32, gemm_strided, output_buffer, transpose, SendPtr};
