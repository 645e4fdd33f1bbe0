//! Convolution for CPU training: sknet's forward kernel with a backward pass written here.
//!
//! burn derives a conv's gradients from other convs: the input gradient is a transposed conv,
//! the weight gradient a conv of the input with the output gradient as its kernel (per group,
//! through swapped-axis copies). On the Flex backend those convs and copies were most of a small
//! SKNet's training step. Here:
//!
//! - the input gradient of a stride-1 conv is a conv of the output gradient with the flipped,
//!   transposed weight, through the direct kernel ([`super::direct`]), except for dense
//!   convs on small maps;
//! - the weight gradient of a kxk conv whose output channels a group fill whole vector registers
//!   comes from [`super::weight_grad`], which reads the padded input directly;
//! - everything else is the classic im2col + GEMM formulation ([`super::im2col_backward`]), one
//!   pass over the batch per image and group: `dW_g += dY_g · col(x)_gᵀ` with `col(x)` the
//!   unfolded input patches, and `dX_g = col2im(W_gᵀ · dY_g)`.
//!
//! The op is a backend extension (`#[backend_extension(Flex, Autodiff)]`): the Flex
//! implementation is the forward conv (sknet's direct kernel), and the `Autodiff<Flex>`
//! implementation registers the handwritten backward step. This file holds the extension, that
//! step and the choice of kernel for each gradient.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

use super::direct::direct_conv2d_flex;
use super::im2col_backward::{conv2d_backward, ConvPlan};
use super::plan::Images;
use super::weight_grad::weight_grad;
use super::{dims4, flex_f32};

/// A conv2d whose backward pass on the CPU is [`conv2d_backward_flex`].
#[backend_extension(Flex, Autodiff)]
pub trait TrainConvOps: Backend {
    /// `conv2d(x, weight)` without bias.
    fn train_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

impl TrainConvOps for Flex {
    fn train_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        forward(x, weight, options)
    }
}

/// The forward pass: sknet's direct conv (see [`super::direct`]).
fn forward(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
    direct_conv2d_flex(x, weight, None, options, false)
}

#[derive(Debug)]
struct TrainConvBackward;

impl Backward<Flex, 2> for TrainConvBackward {
    type State = (FlexTensor, FlexTensor, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, weight, options) = ops.state;
        if [x.dtype(), weight.dtype(), grad.dtype()] != [DType::F32; 3] {
            // The kernels below are f32; other float types keep burn's derivation.
            if let Some(node) = node_x {
                let dx = Flex::conv2d_x_backward(
                    x.clone(),
                    weight.clone(),
                    grad.clone(),
                    options.clone(),
                );
                grads.register::<Flex>(node.id, dx);
            }
            if let Some(node) = node_weight {
                let dw = Flex::conv2d_weight_backward(x, weight, grad, options);
                grads.register::<Flex>(node.id, dw);
            }
            return;
        }
        let (dx, dw) = conv2d_backward_flex(
            &x,
            &weight,
            &grad,
            &options,
            node_x.is_some(),
            node_weight.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (node_weight, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

impl<C: CheckpointStrategy> TrainConvOps for Autodiff<Flex, C> {
    fn train_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match TrainConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let weight = weight.into_primitive();
                let output = forward(x.clone(), weight.clone(), options.clone());
                prep.finish((x, weight, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }
}

/// `conv2d(x, weight)` (no bias) through [`TrainConvOps`]: on `Autodiff<Flex>` its gradients come
/// from [`conv2d_backward_flex`].
///
/// # Shapes
/// - x: `[batch, in_channels, height, width]`
/// - weight: `[out_channels, in_channels / groups, kh, kw]`
/// - output: `[batch, out_channels, height', width']`
pub fn train_conv2d(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as TrainConvOps>::train_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ))
}

/// The plan of `conv2d(x, weight, options)`.
fn plan_for(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> ConvPlan {
    let [batch, in_channels, h, w] = dims4(x);
    let [out_channels, _, kh, kw] = dims4(weight);
    let out = |axis: usize, len: usize, k: usize| {
        let (begin, end) = options.padding[axis];
        let span = options.dilation[axis] * (k - 1) + 1;
        (len + begin + end).saturating_sub(span) / options.stride[axis] + 1
    };
    ConvPlan {
        batch,
        in_channels,
        in_hw: [h, w],
        out_channels,
        out_hw: [out(0, h, kh), out(1, w, kw)],
        kernel: [kh, kw],
        stride: options.stride,
        pad: options.padding_begin(),
        dilation: options.dilation,
        groups: options.groups,
    }
}

/// The tensor itself when contiguous, else a contiguous copy. The caller has checked for `f32`.
fn contiguous_f32(t: &FlexTensor) -> FlexTensor {
    let t = t.to_contiguous();
    debug_assert_eq!(t.dtype(), DType::F32);
    t
}

/// [`conv2d_backward`] on Flex tensors of any layout.
fn conv2d_backward_flex(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
    need_dx: bool,
    need_dw: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let plan = plan_for(x, weight, options);
    assert_eq!(
        dims4(grad),
        [
            plan.batch,
            plan.out_channels,
            plan.out_hw[0],
            plan.out_hw[1]
        ],
        "conv backward: output gradient shape"
    );
    let (x_shape, w_shape) = (dims4(x), dims4(weight));
    // Only the weight gradient reads x: a channel window (the SK unit's split input) in place.
    let x = if Images::of(x).is_some() {
        x.clone()
    } else {
        contiguous_f32(x)
    };
    let (weight, grad) = (contiguous_f32(weight), contiguous_f32(grad));
    let images = Images::of(&x).expect("contiguous f32");
    let dx_direct = if need_dx {
        input_grad_direct(&plan, &weight, &grad, options)
    } else {
        None
    };
    let need_dx = need_dx && dx_direct.is_none();
    let [ws, gs] = [&weight, &grad].map(|t| t.as_slice::<f32>().expect("contiguous"));
    let dw_direct = if need_dw {
        weight_grad(images, x_shape, w_shape, gs, options)
    } else {
        None
    };
    let need_dw = need_dw && dw_direct.is_none();
    let (dx, dw) = if need_dx || need_dw {
        conv2d_backward(&plan, &images.compact(), ws, gs, need_dx, need_dw)
    } else {
        (None, None)
    };
    (
        dx_direct.or_else(|| dx.map(|d| flex_f32(d, &x_shape))),
        dw_direct.or(dw).map(|d| flex_f32(d, &w_shape)),
    )
}

/// Output positions a channel from which a dense conv's input gradient goes through the direct
/// kernel ([`input_grad_direct`]). On 8x8 maps with 64 to 128 channels (sknet-tiny's last stage)
/// the GEMM and col2im were the faster; on 16x16 and 32x32 maps, and on every grouped conv of
/// skresnext50 (7x7 to 56x56), the direct kernel was (figures in BENCHMARKS.md).
const DIRECT_INPUT_GRAD_MIN_PLANE: usize = 256;

/// The input gradient of a stride-1 conv as a conv itself: `dX = conv2d(dY, W')` with `W'` the
/// weight flipped in space and transposed within each group, and padding `dilation * (k - 1) - pad`
/// on each side. It runs through the direct kernel, faster than the GEMM (only
/// `out_channels / groups` terms per dot product) followed by col2im, except on small dense maps.
/// `None` where that does not apply (strided convs, padding wider than the window, small dense
/// maps).
fn input_grad_direct(
    plan: &ConvPlan,
    weight: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let dense_small_map = plan.groups == 1 && plan.out_pixels() < DIRECT_INPUT_GRAD_MIN_PLANE;
    if plan.stride != [1, 1] || plan.kernel[0] != plan.kernel[1] || dense_small_map {
        return None;
    }
    let mut padding = [(0, 0); 2];
    for (axis, pad) in padding.iter_mut().enumerate() {
        let reach = plan.dilation[axis] * (plan.kernel[axis] - 1);
        let (begin, end) = options.padding[axis];
        *pad = (reach.checked_sub(begin)?, reach.checked_sub(end)?);
    }
    let (gi, go) = (plan.group_in(), plan.group_out());
    let taps = plan.kernel[0] * plan.kernel[1];
    let w = weight.as_slice::<f32>().expect("contiguous");
    // W'[g * gi + ci][co][t] = W[g * go + co][ci][taps - 1 - t]
    let mut flipped = vec![0f32; w.len()];
    for g in 0..plan.groups {
        for co in 0..go {
            for ci in 0..gi {
                let src = &w[((g * go + co) * gi + ci) * taps..][..taps];
                let dst = &mut flipped[((g * gi + ci) * go + co) * taps..][..taps];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        }
    }
    let flipped = flex_f32(
        flipped,
        &[plan.in_channels, go, plan.kernel[0], plan.kernel[1]],
    );
    let options = ConvOptions::new_with_padding([1, 1], padding, plan.dilation, plan.groups);
    Some(direct_conv2d_flex(
        grad.clone(),
        flipped,
        None,
        options,
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::isa::{Kernel, FORCED_KERNEL};
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// The handwritten gradients equal burn's own (derived through transposed and swapped convs)
    /// across strides, dilations, groups, rectangular kernels, asymmetric padding and 1x1 convs,
    /// through each kernel this CPU has (portable, AVX2, AVX-512; without a vector kernel the
    /// weight gradient is im2col + GEMM).
    #[test]
    fn gradients_match_burn_autodiff() {
        let best = Kernel::best();
        let kernels = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|&k| k == Kernel::Portable || k == best || best == Kernel::Avx512);
        for kernel in kernels {
            FORCED_KERNEL.set(Some(kernel));
            check_gradients(kernel);
        }
        FORCED_KERNEL.set(None);
    }

    fn check_gradients(kernel: Kernel) {
        let device = Device::flex().autodiff();
        // (batch, in, out, h, w, kernel, stride, dilation, groups, padding (begin, end))
        let cases = [
            (3, 4, 6, 9, 7, [3, 3], 1, 1, 1, [(1, 1), (1, 1)]),
            (2, 8, 8, 10, 10, [3, 3], 2, 1, 2, [(1, 1), (1, 1)]),
            (2, 6, 4, 11, 9, [3, 3], 1, 2, 1, [(2, 2), (2, 2)]),
            (2, 4, 8, 8, 8, [1, 1], 1, 1, 1, [(0, 0), (0, 0)]),
            (3, 8, 16, 7, 7, [1, 1], 2, 1, 1, [(0, 0), (0, 0)]),
            (2, 3, 5, 12, 10, [5, 3], 2, 1, 1, [(1, 2), (0, 1)]),
            (5, 16, 32, 6, 6, [3, 3], 1, 1, 8, [(1, 1), (1, 1)]),
            (1, 4, 4, 3, 3, [3, 3], 1, 3, 1, [(3, 3), (3, 3)]),
            // stride 1, asymmetric padding
            (2, 4, 8, 7, 9, [3, 3], 1, 1, 2, [(0, 2), (2, 1)]),
            // dense, stride 1, on a map large enough for the direct input gradient
            (2, 6, 8, 17, 16, [3, 3], 1, 2, 1, [(2, 2), (2, 2)]),
            (2, 8, 4, 16, 16, [1, 1], 1, 1, 1, [(0, 0), (0, 0)]),
            // output channels a group in whole vectors (16, 48, 32): the direct weight gradient,
            // with the last block of (input channel, tap) entries full or not (3 * 49, 16 * 9,
            // 5 * 9, 32 * 9 entries), strides 1 and 2, dilation, asymmetric padding
            (1, 3, 16, 15, 13, [7, 7], 2, 1, 1, [(3, 3), (3, 3)]),
            (3, 16, 48, 9, 7, [3, 3], 1, 1, 1, [(1, 1), (1, 1)]),
            (2, 10, 64, 11, 10, [3, 3], 2, 2, 2, [(2, 2), (2, 2)]),
            (2, 32, 32, 6, 6, [3, 3], 1, 1, 1, [(0, 1), (1, 0)]),
            // 8 output channels a group: AVX2 vectors even where AVX-512 is the best kernel
            (2, 16, 16, 9, 9, [3, 3], 1, 1, 2, [(1, 1), (1, 1)]),
        ];
        for (i, &(b, cin, cout, h, w, k, s, d, g, pad)) in cases.iter().enumerate() {
            let options = ConvOptions::new_with_padding([s, s], pad, [d, d], g);
            // Every other case convolves a window of the input's channels (the SK unit's split
            // input), which the kernels read in place: x's gradient is zero outside it.
            let extra = if i % 2 == 1 { 3 } else { 0 };
            let x = Tensor::<4>::random(
                [b, cin + extra, h, w],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let wt = Tensor::<4>::random(
                [cout, cin / g, k[0], k[1]],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let probe = |y: Tensor<4>| {
                // A fixed, non-uniform output gradient.
                let n = y.shape().num_elements();
                let values: Vec<f32> = (0..n).map(|j| (j as f32 * 0.37).sin()).collect();
                let weights =
                    Tensor::<1>::from_floats(values.as_slice(), &y.device()).reshape(y.shape());
                (y * weights).sum()
            };
            let run = |ours: bool| {
                let x = x.clone().detach().require_grad();
                let wt = wt.clone().detach().require_grad();
                let input = match extra {
                    0 => x.clone(),
                    _ => x.clone().narrow(1, 2, cin),
                };
                let y = if ours {
                    train_conv2d(input, wt.clone(), options.clone())
                } else {
                    burn::tensor::module::conv2d(input, wt.clone(), None, options.clone())
                };
                let out = y.clone().inner().into_data();
                let grads = probe(y).backward();
                (
                    out,
                    x.grad(&grads).unwrap().into_data(),
                    wt.grad(&grads).unwrap().into_data(),
                )
            };
            let (y1, dx1, dw1) = run(true);
            let (y2, dx2, dw2) = run(false);
            for (what, a, b) in [("output", y1, y2), ("dx", dx1, dx2), ("dw", dw1, dw2)] {
                super::super::assert_close(&format!("{kernel:?} case {i}: {what}"), a, b, 1e-4);
            }
        }
    }
}
