//! The SK unit's select step for two paths, `V = a0 · U0 + a1 · U1`, in one pass on the CPU.
//!
//! Written with tensor ops, the select is two broadcast multiplies and an add: four reads and
//! three writes of a full feature map forward, and more backward (each multiply's two gradients,
//! the spatial sums for the attention, the add's copies). Here the forward pass reads both paths
//! once and writes the output once; the backward pass reads the output gradient and both paths
//! once, writes both path gradients, and sums the attention gradient on the way.
//!
//! As with [`super::batch_norm`], the op is a backend extension: the Flex implementation computes
//! the forward pass (inference uses it too), the `Autodiff<Flex>` one registers the handwritten
//! backward step. Other backends keep the tensor ops (see
//! [`SelectiveKernel`](crate::layers::SelectiveKernel)).

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
use super::{dims4, flex_f32 as flex, into_contiguous_f32, output_buffer, unique_f32_mut};

/// The two-path select with a handwritten backward pass on `Autodiff<Flex>`.
#[backend_extension(Flex, Autodiff)]
pub trait SkSelectOps: Backend {
    /// `out[b][c] = u0[b][c] * attention[b][0][c] + u1[b][c] * attention[b][1][c]`.
    fn sk_select2(
        u0: FloatTensor<Self>,
        u1: FloatTensor<Self>,
        attention: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl SkSelectOps for Flex {
    fn sk_select2(
        u0: FloatTensor<Self>,
        u1: FloatTensor<Self>,
        attention: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        forward(u0, &u1, &attention)
    }
}

#[derive(Debug)]
struct SkSelectBackward;

impl Backward<Flex, 3> for SkSelectBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_u0, node_u1, node_attention] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (u0, u1, attention) = ops.state;
        let dims = dims4(&u0);
        let [batch, channels, h, w] = dims;
        let plane = h * w;
        let (g, u0, u1) = (values(&grad), values(&u0), values(&u1));
        let (g, a) = (f32s(&g), attention_values(&attention, batch, channels));
        let (u0, u1) = (f32s(&u0), f32s(&u1));
        // SAFETY: every element of both is written below, plane by plane.
        let (mut du0, mut du1) = unsafe { (output_buffer(g.len()), output_buffer(g.len())) };
        // Per (image, channel) plane: both path gradients, and the attention's two sums.
        let sums: Vec<(f32, f32)> = du0
            .par_chunks_mut(plane.max(1))
            .zip(du1.par_chunks_mut(plane.max(1)))
            .enumerate()
            .map(|(index, (d0, d1))| {
                let (b, c) = (index / channels, index % channels);
                let (a0, a1) = (a[(b * 2) * channels + c], a[(b * 2 + 1) * channels + c]);
                let range = index * plane..(index + 1) * plane;
                let (g, x0, x1) = (&g[range.clone()], &u0[range.clone()], &u1[range]);
                for ((d0, d1), &g) in d0.iter_mut().zip(d1.iter_mut()).zip(g) {
                    *d0 = g * a0;
                    *d1 = g * a1;
                }
                let mul = |p: f32, q: f32| p * q;
                (lane_sum(g, x0, mul) as f32, lane_sum(g, x1, mul) as f32)
            })
            .collect();
        if let Some(node) = node_u0 {
            grads.register::<Flex>(node.id, flex(du0, &dims));
        }
        if let Some(node) = node_u1 {
            grads.register::<Flex>(node.id, flex(du1, &dims));
        }
        if let Some(node) = node_attention {
            let mut da = vec![0f32; batch * 2 * channels];
            for (index, (s0, s1)) in sums.into_iter().enumerate() {
                let (b, c) = (index / channels, index % channels);
                da[(b * 2) * channels + c] = s0;
                da[(b * 2 + 1) * channels + c] = s1;
            }
            grads.register::<Flex>(node.id, flex(da, &[batch, 2, channels]));
        }
    }
}

impl<C: CheckpointStrategy> SkSelectOps for Autodiff<Flex, C> {
    fn sk_select2(
        u0: FloatTensor<Self>,
        u1: FloatTensor<Self>,
        attention: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prep = SkSelectBackward
            .prepare::<C>([u0.node(), u1.node(), attention.node()])
            .compute_bound()
            .stateful();
        let (u0, u1, attention) = (
            u0.into_primitive(),
            u1.into_primitive(),
            attention.into_primitive(),
        );
        let output = forward(u0.clone(), &u1, &attention);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((u0, u1, attention), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// Whether [`sk_select2`] takes these tensors: `f32` (its passes are written for `f32`).
pub fn supports(u0: &Tensor<4>, u1: &Tensor<4>, attention: &Tensor<3>) -> bool {
    [u0.dtype(), u1.dtype(), attention.dtype()] == [DType::F32; 3]
}

/// `u0 * attention[:, 0] + u1 * attention[:, 1]` (per image and channel) through
/// [`SkSelectOps`]. The tensors must be `f32` ([`supports`]).
///
/// # Shapes
/// - u0, u1: `[batch, channels, height, width]`, output likewise
/// - attention: `[batch, 2, channels]`
pub fn sk_select2(u0: Tensor<4>, u1: Tensor<4>, attention: Tensor<3>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as SkSelectOps>::sk_select2(
        u0.into_dispatch(),
        u1.into_dispatch(),
        attention.into_dispatch(),
    ))
}

fn values(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "sk_select2 takes f32 tensors");
    t.to_contiguous()
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// The attention as a contiguous `[batch, 2, channels]` vector, checked against the paths.
fn attention_values(attention: &FlexTensor, batch: usize, channels: usize) -> Vec<f32> {
    let shape = attention.layout().shape();
    assert_eq!(
        [shape[0], shape[1], shape[2]],
        [batch, 2, channels],
        "sk_select2: attention shape"
    );
    f32s(&values(attention)).to_vec()
}

/// The forward pass. The output takes `u0`'s buffer when `u0` holds it alone (inference: no
/// allocation, as with in-place tensor ops), else a new one.
fn forward(u0: FlexTensor, u1: &FlexTensor, attention: &FlexTensor) -> FlexTensor {
    let dims = dims4(&u0);
    assert_eq!(dims, dims4(u1), "sk_select2: the paths' shapes differ");
    let [batch, channels, h, w] = dims;
    let plane = h * w;
    let u1 = values(u1);
    let x1 = f32s(&u1);
    let a = attention_values(attention, batch, channels);
    let select = |index: usize, out: &mut [f32], x0: Option<&[f32]>| {
        let (b, c) = (index / channels, index % channels);
        let (a0, a1) = (a[(b * 2) * channels + c], a[(b * 2 + 1) * channels + c]);
        let x1 = &x1[index * plane..(index + 1) * plane];
        match x0 {
            Some(x0) => {
                for ((o, &p), &q) in out.iter_mut().zip(x0).zip(x1) {
                    *o = p * a0 + q * a1;
                }
            }
            None => {
                for (o, &q) in out.iter_mut().zip(x1) {
                    *o = *o * a0 + q * a1;
                }
            }
        }
    };
    let mut u0 = into_contiguous_f32(u0, "sk_select2");
    if let Some(storage) = unique_f32_mut(&mut u0, x1.len()) {
        storage
            .par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(index, out)| select(index, out, None));
        return u0;
    }
    let x0 = f32s(&u0);
    // SAFETY: `select` writes every element of each plane.
    let mut out = unsafe { output_buffer(x0.len()) };
    out.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(index, out)| select(index, out, Some(&x0[index * plane..(index + 1) * plane])));
    flex(out, &dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Output and all three gradients equal those of the same select written with tensor ops,
    /// with a non-uniform output gradient and an attention taken from a wider tensor (not
    /// contiguous).
    #[test]
    fn matches_tensor_ops() {
        let device = Device::flex().autodiff();
        let (b, c, h, w) = (3, 5, 4, 6);
        let u0 = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let u1 = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let wide = Tensor::<3>::random([b, 3, c], Distribution::Normal(0.0, 1.0), &device);
        let n = b * c * h * w;
        let probe: Vec<f32> = (0..n).map(|j| (j as f32 * 0.37).sin()).collect();
        let probe = Tensor::<1>::from_floats(probe.as_slice(), &device).reshape([b, c, h, w]);
        let run = |fused: bool| {
            let u0 = u0.clone().detach().require_grad();
            let u1 = u1.clone().detach().require_grad();
            let wide = wide.clone().detach().require_grad();
            let attention = wide.clone().narrow(1, 1, 2);
            let out = if fused {
                sk_select2(u0.clone(), u1.clone(), attention)
            } else {
                let a0 = attention.clone().narrow(1, 0, 1).reshape([b, c, 1, 1]);
                let a1 = attention.narrow(1, 1, 1).reshape([b, c, 1, 1]);
                u0.clone().mul(a0).add(u1.clone().mul(a1))
            };
            let value = out.clone().inner().into_data();
            let grads = (out * probe.clone()).sum().backward();
            (
                value,
                u0.grad(&grads).unwrap().into_data(),
                u1.grad(&grads).unwrap().into_data(),
                wide.grad(&grads).unwrap().into_data(),
            )
        };
        let (fused, reference) = (run(true), run(false));
        for (what, a, b) in [
            ("output", fused.0, reference.0),
            ("du0", fused.1, reference.1),
            ("du1", fused.2, reference.2),
            ("dattention", fused.3, reference.3),
        ] {
            super::super::assert_close(what, a, b, 1e-4);
        }
    }

    /// Without autodiff the output takes the first path's buffer when that is its only owner;
    /// a path that is still held elsewhere is left as it was.
    #[test]
    fn in_place_only_when_unique() {
        let device = Device::flex();
        let (b, c, h, w) = (2, 3, 5, 4);
        let u0 = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let u1 = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let attention = Tensor::<3>::random([b, 2, c], Distribution::Normal(0.0, 1.0), &device);
        let a0 = attention.clone().narrow(1, 0, 1).reshape([b, c, 1, 1]);
        let a1 = attention.clone().narrow(1, 1, 1).reshape([b, c, 1, 1]);
        let expected = u0.clone().mul(a0).add(u1.clone().mul(a1)).into_data();
        let kept = u0.clone();
        let before = kept.clone().into_data();
        // Shared: a new buffer.
        let shared = sk_select2(u0, u1.clone(), attention.clone());
        super::super::assert_close("shared output", shared.into_data(), expected.clone(), 1e-5);
        super::super::assert_close("kept path", kept.clone().into_data(), before, 1e-12);
        // Unique: in place.
        let unique = sk_select2(kept, u1, attention);
        super::super::assert_close("in-place output", unique.into_data(), expected, 1e-5);
    }
}
