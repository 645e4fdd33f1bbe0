//! sknet's CPU kernels: burn backend extensions for the Flex backend (and its autodiff wrapper).
//!
//! Nothing outside this module calls a kernel directly: [`crate::ops`] picks one where it applies
//! and falls back to burn's tensor ops elsewhere. Each kernel file holds the extension trait, its
//! Flex implementation, the autodiff backward pass where training uses it, and tests against
//! burn's own ops.

pub(crate) mod add_relu;
pub(crate) mod batch_norm;
mod buffers;
pub(crate) mod channel_ops;
pub(crate) mod conv;
pub(crate) mod max_pool;
pub(crate) mod sgd;
pub(crate) mod sk_select;

#[cfg(test)]
pub(crate) use buffers::assert_close;
pub(crate) use buffers::{
    dims4, flex_f32, gemm_strided, into_contiguous_f32, lane_sum, output_buffer, relu, transpose,
    unique_f32_mut, SendPtr,
};

/// Whether sknet's CPU kernels run at all: in builds without a GPU backend, whose only device is
/// Flex. Training then uses their backward passes instead of burn's derived ones.
pub(crate) fn available() -> bool {
    cfg!(not(any(
        feature = "vulkan",
        feature = "wgpu",
        feature = "cuda"
    )))
}

/// Whether a forward pass may use the inference kernels: f32 on the Flex backend, without
/// autodiff.
pub(crate) fn inference_applies(input: &burn::tensor::Tensor<4>) -> bool {
    available() && !input.device().is_autodiff() && input.dtype() == burn::tensor::DType::F32
}
