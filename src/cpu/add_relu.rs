//! The residual block's ending, `relu(x + shortcut)`, in one pass on the CPU.
//!
//! As tensor ops it is an add and a ReLU: two passes over the block's output forward, and the
//! ReLU's mask and fill backward. Here the forward pass writes the sum and its ReLU at once (into
//! `x`'s buffer when `x` holds it alone), and the backward pass gates the output gradient by the
//! output's sign once; both inputs get that same gradient.
//!
//! A backend extension like [`super::sk_select`]: the Flex implementation is the forward pass
//! (inference uses it too), the `Autodiff<Flex>` one registers the backward step.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::{flex_f32, into_contiguous_f32, output_buffer, unique_f32_mut};

/// Elements a parallel task handles.
const TASK: usize = 1 << 14;

/// `relu(x + y)` with a handwritten backward pass on `Autodiff<Flex>`.
#[backend_extension(Flex, Autodiff)]
pub trait AddReluOps: Backend {
    /// `max(x + y, 0)`, elementwise; `x` and `y` have the same shape.
    fn add_relu(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl AddReluOps for Flex {
    fn add_relu(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        forward(x, &y)
    }
}

#[derive(Debug)]
struct AddReluBackward;

impl Backward<Flex, 2> for AddReluBackward {
    /// The output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_y] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let output = ops.state;
        let shape = output.layout().shape().to_vec();
        let (grad, output) = (contiguous(grad), contiguous(output));
        let (g, out) = (f32s(&grad), f32s(&output));
        // SAFETY: every element is written below (chunks of equal-length buffers, zipped).
        let mut gated = unsafe { output_buffer(g.len()) };
        gated
            .par_chunks_mut(TASK)
            .zip(g.par_chunks(TASK).zip(out.par_chunks(TASK)))
            .for_each(|(d, (g, o))| {
                for ((d, &g), &o) in d.iter_mut().zip(g).zip(o) {
                    *d = if o > 0.0 { g } else { 0.0 };
                }
            });
        let gated = flex_f32(gated, &shape);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, gated.clone());
        }
        if let Some(node) = node_y {
            grads.register::<Flex>(node.id, gated);
        }
    }
}

impl<C: CheckpointStrategy> AddReluOps for Autodiff<Flex, C> {
    fn add_relu(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = AddReluBackward
            .prepare::<C>([x.node(), y.node()])
            .compute_bound()
            .stateful();
        let output = forward(x.into_primitive(), &y.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish(output.clone(), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// Whether [`add_relu`] takes these tensors: `f32` of one shape.
pub fn supports<const D: usize>(x: &Tensor<D>, y: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && y.dtype() == DType::F32 && x.dims() == y.dims()
}

/// `relu(x + y)` through [`AddReluOps`]; the tensors must pass [`supports`].
///
/// # Shapes
/// - x, y: any shape, the same; output likewise
pub fn add_relu<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as AddReluOps>::add_relu(
        x.into_dispatch(),
        y.into_dispatch(),
    ))
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    into_contiguous_f32(t, "add_relu")
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

fn forward(x: FlexTensor, y: &FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    assert_eq!(
        shape,
        y.layout().shape().to_vec(),
        "add_relu: shapes differ"
    );
    let y = contiguous(y.clone());
    let ys = f32s(&y);
    let mut x = contiguous(x);
    if let Some(storage) = unique_f32_mut(&mut x, ys.len()) {
        storage
            .par_chunks_mut(TASK)
            .zip(ys.par_chunks(TASK))
            .for_each(|(x, y)| {
                for (x, &y) in x.iter_mut().zip(y) {
                    *x = super::relu(*x + y);
                }
            });
        return x;
    }
    let xs = f32s(&x);
    // SAFETY: every element is written below (chunks of equal-length buffers, zipped).
    let mut out = unsafe { output_buffer(xs.len()) };
    out.par_chunks_mut(TASK)
        .zip(xs.par_chunks(TASK).zip(ys.par_chunks(TASK)))
        .for_each(|(o, (x, y))| {
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                *o = super::relu(x + y);
            }
        });
    flex_f32(out, &shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::relu;
    use burn::tensor::{Device, Distribution};

    /// Output and both gradients equal `relu(x + y)` written with tensor ops, with a
    /// non-uniform output gradient; `y` is a transposed view (not contiguous).
    #[test]
    fn matches_tensor_ops() {
        let device = Device::flex().autodiff();
        let dims = [2, 3, 4, 5];
        let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<4>::random([2, 3, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let n = dims.iter().product::<usize>();
        let probe: Vec<f32> = (0..n).map(|j| (j as f32 * 0.37).sin()).collect();
        let probe = Tensor::<1>::from_floats(probe.as_slice(), &device).reshape(dims);
        let run = |fused: bool| {
            let x = x.clone().detach().require_grad();
            let y = y.clone().detach().require_grad();
            let y_view = y.clone().swap_dims(2, 3);
            let out = if fused {
                add_relu(x.clone(), y_view)
            } else {
                relu(x.clone().add(y_view))
            };
            let value = out.clone().inner().into_data();
            let grads = (out * probe.clone()).sum().backward();
            (
                value,
                x.grad(&grads).unwrap().into_data(),
                y.grad(&grads).unwrap().into_data(),
            )
        };
        let (fused, reference) = (run(true), run(false));
        for (what, a, b) in [
            ("output", fused.0, reference.0),
            ("dx", fused.1, reference.1),
            ("dy", fused.2, reference.2),
        ] {
            super::super::assert_close(what, a, b, 1e-5);
        }
    }

    /// Without autodiff the output takes `x`'s buffer when `x` holds it alone; an `x` still held
    /// elsewhere is left as it was.
    #[test]
    fn in_place_only_when_unique() {
        let device = Device::flex();
        let x = Tensor::<2>::random([7, 9], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<2>::random([7, 9], Distribution::Normal(0.0, 1.0), &device);
        let expected = relu(x.clone().add(y.clone())).into_data();
        let kept = x.clone();
        let before = kept.clone().into_data();
        let shared = add_relu(x, y.clone());
        super::super::assert_close("shared output", shared.into_data(), expected.clone(), 1e-6);
        super::super::assert_close("kept input", kept.clone().into_data(), before, 1e-12);
        let unique = add_relu(kept, y);
        super::super::assert_close("in-place output", unique.into_data(), expected, 1e-6);
    }
}
