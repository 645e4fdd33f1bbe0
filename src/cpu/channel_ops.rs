//! The SK unit's per-channel glue on the CPU: the split input's channel windows and the global
//! average pool of the fuse step, with backward passes that write each input gradient once.
//!
//! As tensor ops, the window is a `narrow`, whose gradient burn builds as a zeroed tensor of the
//! input's size (a zero fill and an aligning copy) into which the window's gradient is then
//! copied; the pool is two `mean_dim`s, whose gradient is a tensor of ones, scaled, then
//! multiplied by the broadcast output gradient: four or five passes over a branch-sized tensor.
//! Here the window's backward pass writes the zeros and the window's gradient in one pass, and
//! the pool's writes `g[n][c] / (h * w)` over each plane once.
//!
//! A backend extension like [`super::add_relu`]: the Flex implementation is the forward pass
//! (inference uses it too; the window is a view, as `narrow` makes), the `Autodiff<Flex>` one
//! registers the backward step.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::lane_sum;
use super::{dims4, flex_f32, into_contiguous_f32, output_buffer};

/// The channel window and the spatial mean with handwritten backward passes on
/// `Autodiff<Flex>`.
#[backend_extension(Flex, Autodiff)]
pub trait ChannelOps: Backend {
    /// Channels `[start, start + len)` of `x` (`[batch, channels, h, w]`).
    fn channel_window(x: FloatTensor<Self>, start: usize, len: usize) -> FloatTensor<Self>;
    /// The mean of each `h x w` plane of `x` (`[batch, channels, h, w]`): `[batch, channels]`.
    fn spatial_mean(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl ChannelOps for Flex {
    fn channel_window(x: FloatTensor<Self>, start: usize, len: usize) -> FloatTensor<Self> {
        window_forward(&x, start, len)
    }

    fn spatial_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        mean_forward(x)
    }
}

#[derive(Debug)]
struct ChannelWindowBackward;

impl Backward<Flex, 1> for ChannelWindowBackward {
    /// The input's dimensions and the window's first channel.
    type State = ([usize; 4], usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        let ([batch, channels, h, w], start) = ops.state;
        let grad = into_contiguous_f32(grad, "channel_window");
        let g = grad.as_slice::<f32>().expect("contiguous f32");
        let plane = h * w;
        let image = channels * plane;
        let (before, inside) = (start * plane, g.len() / batch.max(1));
        // SAFETY: each image's zeros before the window, the window and the zeros after it cover
        // all of its `image` values.
        let mut dx = unsafe { output_buffer(batch * image) };
        dx.par_chunks_mut(image.max(1))
            .zip(g.par_chunks(inside.max(1)))
            .for_each(|(dx, g)| {
                let (head, rest) = dx.split_at_mut(before);
                let (window, tail) = rest.split_at_mut(inside);
                head.fill(0.0);
                window.copy_from_slice(g);
                tail.fill(0.0);
            });
        grads.register::<Flex>(node.id, flex_f32(dx, &[batch, channels, h, w]));
    }
}

#[derive(Debug)]
struct SpatialMeanBackward;

impl Backward<Flex, 1> for SpatialMeanBackward {
    /// The input's dimensions.
    type State = [usize; 4];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        let dims = ops.state;
        let plane = dims[2] * dims[3];
        let grad = into_contiguous_f32(grad, "spatial_mean");
        let g = grad.as_slice::<f32>().expect("contiguous f32");
        // SAFETY: every plane is filled.
        let mut dx = unsafe { output_buffer(g.len() * plane) };
        let scale = 1.0 / plane.max(1) as f32;
        dx.par_chunks_mut(plane.max(1))
            .zip(g.par_iter())
            .for_each(|(dx, &g)| dx.fill(g * scale));
        grads.register::<Flex>(node.id, flex_f32(dx, &dims));
    }
}

impl<C: CheckpointStrategy> ChannelOps for Autodiff<Flex, C> {
    fn channel_window(x: FloatTensor<Self>, start: usize, len: usize) -> FloatTensor<Self> {
        let prep = ChannelWindowBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        let dims = dims4(&x);
        let output = window_forward(&x, start, len);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((dims, start), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn spatial_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = SpatialMeanBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        let dims = dims4(&x);
        let output = mean_forward(x);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(dims, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// Whether [`channel_window`] and [`spatial_mean`] take `x`: `f32`.
pub fn supports(x: &Tensor<4>) -> bool {
    x.dtype() == DType::F32
}

/// Channels `[start, start + len)` of `x`, through [`ChannelOps`] (a view on Flex); `x` must
/// pass [`supports`].
///
/// # Shapes
/// - x: `[batch, channels, h, w]`
/// - output: `[batch, len, h, w]`
pub fn channel_window(x: Tensor<4>, start: usize, len: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ChannelOps>::channel_window(
        x.into_dispatch(),
        start,
        len,
    ))
}

/// The global average pool, through [`ChannelOps`]; `x` must pass [`supports`].
///
/// # Shapes
/// - x: `[batch, channels, h, w]`
/// - output: `[batch, channels]`
pub fn spatial_mean(x: Tensor<4>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as ChannelOps>::spatial_mean(x.into_dispatch()))
}

fn window_forward(x: &FlexTensor, start: usize, len: usize) -> FlexTensor {
    let channels = dims4(x)[1];
    assert!(
        start + len <= channels,
        "channel_window: channels {start}..{} of {channels}",
        start + len
    );
    x.narrow(1, start, len)
}

fn mean_forward(x: FlexTensor) -> FlexTensor {
    let [batch, channels, h, w] = dims4(&x);
    let plane = h * w;
    let x = into_contiguous_f32(x, "spatial_mean");
    let xs = x.as_slice::<f32>().expect("contiguous f32");
    let scale = 1.0 / plane.max(1) as f64;
    let means: Vec<f32> = xs
        .par_chunks(plane.max(1))
        .map(|p| (lane_sum(p, p, |v, _| v) * scale) as f32)
        .collect();
    flex_f32(means, &[batch, channels])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Outputs and input gradients equal those of `narrow` and two `mean_dim`s, with
    /// non-uniform output gradients and a window that is neither the first nor the last
    /// channels; the pool reads a window, as the SK unit's branches after a split input would.
    #[test]
    fn matches_tensor_ops() {
        let device = Device::flex().autodiff();
        let dims = [3, 7, 5, 6];
        let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let probe = |shape: &[usize], salt: f32| {
            let n = shape.iter().product::<usize>();
            let v: Vec<f32> = (0..n).map(|j| (j as f32 * 0.37 + salt).sin()).collect();
            Tensor::<1>::from_floats(v.as_slice(), &device)
        };
        let (window_probe, mean_probe) = (
            probe(&[3, 3, 5, 6], 0.0).reshape([3, 3, 5, 6]),
            probe(&[3, 3], 1.0).reshape([3, 3]),
        );
        let run = |ours: bool| {
            let x = x.clone().detach().require_grad();
            let (window, mean) = if ours {
                let window = channel_window(x.clone(), 2, 3);
                (window.clone(), spatial_mean(window))
            } else {
                let window = x.clone().narrow(1, 2, 3);
                let mean = window.clone().mean_dim(3).mean_dim(2).reshape([3, 3]);
                (window, mean)
            };
            let values = (
                window.clone().inner().into_data(),
                mean.clone().inner().into_data(),
            );
            let loss = (window * window_probe.clone()).sum() + (mean * mean_probe.clone()).sum();
            let grads = loss.backward();
            (values.0, values.1, x.grad(&grads).unwrap().into_data())
        };
        let (ours, reference) = (run(true), run(false));
        for (what, a, b) in [
            ("window", ours.0, reference.0),
            ("mean", ours.1, reference.1),
            ("dx", ours.2, reference.2),
        ] {
            super::super::assert_close(what, a, b, 1e-5);
        }
    }
}
