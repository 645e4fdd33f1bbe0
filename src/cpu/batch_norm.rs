//! BatchNorm with batch statistics for CPU training: one pass per channel for the statistics,
//! one for the output, and the same for the backward pass.
//!
//! burn's default `batch_norm_train` and its backward reduce over channels by swapping the batch
//! and channel axes and copying the tensor into that order, several times per call. Here the
//! reductions walk each channel's planes where they lie (`[batch, channels, pixels]`,
//! contiguous), in parallel over channels, with `f64` sums.
//!
//! As with [`super::conv::backward`], the op is a backend extension: the Flex implementation
//! computes the forward pass, the `Autodiff<Flex>` one registers the handwritten backward step.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, ExtensionType, Flex};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::lane_sum;
use super::{flex_f32 as flex, output_buffer};

/// The normalized input and the batch statistics it used.
#[derive(ExtensionType)]
pub struct TrainBatchNorm<B: Backend> {
    /// `(x - mean) / sqrt(variance + eps) * gamma + beta`, shaped like the input.
    pub output: FloatTensor<B>,
    /// Batch mean per channel, `[channels]`.
    pub mean: FloatTensor<B>,
    /// Biased batch variance per channel, `[channels]`.
    pub variance: FloatTensor<B>,
}

/// BatchNorm with batch statistics whose CPU passes are [`batch_norm_stats`],
/// [`batch_norm_apply`] and [`batch_norm_backward`].
#[backend_extension(Flex, Autodiff)]
pub trait TrainNormOps: Backend {
    /// Normalizes `x` (`[batch, channels, ...]`) per channel with its batch statistics, then
    /// applies a ReLU when `relu` is set.
    fn train_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> TrainBatchNorm<Self>;
}

impl TrainNormOps for Flex {
    fn train_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> TrainBatchNorm<Self> {
        forward_flex(&x, &gamma, &beta, epsilon, relu)
    }
}

#[derive(Debug)]
struct TrainNormBackward;

/// How the backward pass finds where a fused ReLU passed the gradient.
#[derive(Debug, Clone)]
enum ReluMask {
    /// No ReLU.
    None,
    /// From the BN's output recomputed with this `beta` (`f32`).
    Recompute(FlexTensor),
    /// From the stored output (other float types).
    Output(FlexTensor),
}

impl Backward<Flex, 3> for TrainNormBackward {
    /// Input, gamma, mean, variance, epsilon, and the output when a ReLU followed and the
    /// tensors are not `f32` (the `f32` pass recomputes the ReLU's mask instead).
    type State = (
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        f64,
        ReluMask,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, gamma, mean, variance, epsilon, relu) = ops.state;
        let (dx, dgamma, dbeta) = if is_f32(&[&x, &gamma, &grad]) {
            let beta = match relu {
                ReluMask::Recompute(beta) => Some(beta),
                _ => None,
            };
            backward_flex(&x, &gamma, beta.as_ref(), &mean, &variance, epsilon, &grad)
        } else {
            let grad = match relu {
                ReluMask::Output(output) => Flex::relu_backward(output, grad),
                _ => grad,
            };
            let b = Flex::batch_norm_train_backward(x, gamma, mean, variance, epsilon, grad);
            (b.x_grad, b.gamma_grad, b.beta_grad)
        };
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, dgamma);
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, dbeta);
        }
    }
}

impl<C: CheckpointStrategy> TrainNormOps for Autodiff<Flex, C> {
    fn train_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> TrainBatchNorm<Self> {
        let prep = TrainNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        let result = forward_flex(&x, &gamma, &beta, epsilon, relu);
        let mask = match (relu, is_f32(&[&x, &gamma, &beta])) {
            (false, _) => ReluMask::None,
            (true, true) => ReluMask::Recompute(beta),
            (true, false) => ReluMask::Output(result.output.clone()),
        };
        let output = match prep {
            OpsKind::Tracked(prep) => prep.finish(
                (
                    x,
                    gamma,
                    result.mean.clone(),
                    result.variance.clone(),
                    epsilon,
                    mask,
                ),
                result.output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(result.output),
        };
        TrainBatchNorm {
            output,
            // Statistics are outputs only: untracked leaves, as in burn's batch_norm_train.
            mean: <FloatTensor<Self>>::new(result.mean),
            variance: <FloatTensor<Self>>::new(result.variance),
        }
    }
}

/// The result of [`train_batch_norm`] on tensors.
pub struct TrainBatchNormOutput<const D: usize> {
    /// The normalized input.
    pub output: Tensor<D>,
    /// Batch mean per channel.
    pub mean: Tensor<1>,
    /// Biased batch variance per channel.
    pub variance: Tensor<1>,
}

/// `burn::tensor::module::batch_norm_train` through [`TrainNormOps`], followed by a ReLU when
/// `relu` is set (one pass forward and backward instead of two).
///
/// # Shapes
/// - x: `[batch, channels, ...]`, output likewise
/// - gamma, beta, mean, variance: `[channels]`
pub fn train_batch_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> TrainBatchNormOutput<D> {
    let result = <Dispatch as TrainNormOps>::train_batch_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu,
    );
    TrainBatchNormOutput {
        output: Tensor::from_dispatch(result.output),
        mean: Tensor::from_dispatch(result.mean),
        variance: Tensor::from_dispatch(result.variance),
    }
}

/// `[batch, channels, pixels]` of a `[batch, channels, ...]` tensor.
fn split_dims(shape: &[usize]) -> [usize; 3] {
    [shape[0], shape[1], shape[2..].iter().product()]
}

/// Per-channel mean and biased variance of `x` = `[batch, channels, pixels]`, two passes with
/// `f64` sums.
pub fn batch_norm_stats(x: &[f32], [batch, channels, pixels]: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), batch * channels * pixels, "batch norm: input size");
    let count = (batch * pixels).max(1) as f64;
    let planes = |c: usize| (0..batch).map(move |n| &x[(n * channels + c) * pixels..][..pixels]);
    (0..channels)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = planes(c).map(|p| lane_sum(p, p, |v, _| v)).sum();
            let mean = (sum / count) as f32;
            let squares: f64 = planes(c)
                .map(|p| lane_sum(p, p, |v, _| (v - mean) * (v - mean)))
                .sum();
            (mean, (squares / count) as f32)
        })
        .unzip()
}

/// Per-channel `inv_std = 1 / sqrt(variance + eps)`.
fn inv_std(variance: &[f32], epsilon: f64) -> Vec<f32> {
    variance
        .iter()
        .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
        .collect()
}

/// `y = (x - mean) * inv_std * gamma + beta` per channel, then `max(y, 0)` when `relu` is set.
pub fn batch_norm_apply(
    x: &[f32],
    dims: [usize; 3],
    [mean, variance, gamma, beta]: [&[f32]; 4],
    epsilon: f64,
    relu: bool,
) -> Vec<f32> {
    let [batch, channels, pixels] = dims;
    assert_eq!(x.len(), batch * channels * pixels, "batch norm: input size");
    let inv = inv_std(variance, epsilon);
    // SAFETY: every plane of y is written below from the same plane of x.
    let mut y = unsafe { output_buffer(x.len()) };
    y.par_chunks_mut(pixels.max(1))
        .zip(x.par_chunks(pixels.max(1)))
        .enumerate()
        .for_each(|(plane, (y, x))| {
            let c = plane % channels;
            let scale = inv[c] * gamma[c];
            let shift = beta[c] - mean[c] * scale;
            if relu {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = super::relu(x * scale + shift);
                }
            } else {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * scale + shift;
                }
            }
        });
    y
}

/// Gradients of [`batch_norm_apply`] with the batch statistics for the output gradient `dy`:
/// `(dx, dgamma, dbeta)`, with `x̂ = (x - mean) * inv_std`,
/// `dbeta = Σ dy`, `dgamma = Σ dy x̂` and `dx = gamma inv_std (dy - mean(dy) - x̂ mean(dy x̂))`.
/// With `relu_beta` (the BN's shift, when a ReLU followed), `dy` is first zeroed where the
/// normalized output `x̂ gamma + beta` is not positive, as the ReLU's gradient does; the mask is
/// recomputed on the way instead of being stored.
pub fn batch_norm_backward(
    x: &[f32],
    dy: &[f32],
    dims: [usize; 3],
    [mean, variance, gamma]: [&[f32]; 3],
    relu_beta: Option<&[f32]>,
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [batch, channels, pixels] = dims;
    assert_eq!(
        x.len(),
        batch * channels * pixels,
        "batch norm backward: input size"
    );
    assert_eq!(dy.len(), x.len(), "batch norm backward: gradient size");
    let inv = inv_std(variance, epsilon);
    fn plane(t: &[f32], [channels, pixels]: [usize; 2], n: usize, c: usize) -> &[f32] {
        &t[(n * channels + c) * pixels..][..pixels]
    }
    let cp = [channels, pixels];
    // The ReLU's gate for channel c: the output gradient where the BN's output was positive.
    let gate = |c: usize| {
        let (m, s, gm) = (mean[c], inv[c], gamma[c]);
        let shift = relu_beta.map(|beta| beta[c]);
        move |x: f32, g: f32| match shift {
            Some(b) if (x - m) * s * gm + b <= 0.0 => 0.0,
            _ => g,
        }
    };
    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = (0..channels)
        .into_par_iter()
        .map(|c| {
            let (mut dg, mut db) = (0f64, 0f64);
            let (m, s, gate) = (mean[c], inv[c], gate(c));
            for n in 0..batch {
                let (x, g) = (plane(x, cp, n, c), plane(dy, cp, n, c));
                db += lane_sum(x, g, gate);
                dg += lane_sum(x, g, |x, g| gate(x, g) * ((x - m) * s));
            }
            (dg as f32, db as f32)
        })
        .unzip();
    let count = (batch * pixels).max(1) as f32;
    // SAFETY: every plane of dx is written below from the same planes of x and dy.
    let mut dx = unsafe { output_buffer(x.len()) };
    dx.par_chunks_mut(pixels.max(1))
        .enumerate()
        .for_each(|(index, dx)| {
            let (n, c) = (index / channels, index % channels);
            let (mean_dy, mean_dy_xhat) = (dbeta[c] / count, dgamma[c] / count);
            let scale = gamma[c] * inv[c];
            let gate = gate(c);
            for ((dx, &x), &g) in dx
                .iter_mut()
                .zip(plane(x, cp, n, c))
                .zip(plane(dy, cp, n, c))
            {
                let xhat = (x - mean[c]) * inv[c];
                *dx = scale * (gate(x, g) - mean_dy - xhat * mean_dy_xhat);
            }
        });
    (dx, dgamma, dbeta)
}

fn is_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

fn values(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn f32_values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous")
}

fn forward_flex(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    relu: bool,
) -> TrainBatchNorm<Flex> {
    if !is_f32(&[x, gamma, beta]) {
        let r = Flex::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), epsilon);
        return TrainBatchNorm {
            output: if relu { Flex::relu(r.output) } else { r.output },
            mean: r.mean,
            variance: r.variance,
        };
    }
    let shape = x.layout().shape().to_vec();
    let dims = split_dims(&shape);
    let (x, gamma, beta) = (values(x), values(gamma), values(beta));
    let xs = f32_values(&x);
    let (mean, variance) = batch_norm_stats(xs, dims);
    let gamma = f32_values(&gamma);
    let beta = f32_values(&beta);
    let output = batch_norm_apply(xs, dims, [&mean, &variance, gamma, beta], epsilon, relu);
    TrainBatchNorm {
        output: flex(output, &shape),
        mean: flex(mean, &[dims[1]]),
        variance: flex(variance, &[dims[1]]),
    }
}

fn backward_flex(
    x: &FlexTensor,
    gamma: &FlexTensor,
    relu_beta: Option<&FlexTensor>,
    mean: &FlexTensor,
    variance: &FlexTensor,
    epsilon: f64,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let shape = x.layout().shape().to_vec();
    let dims = split_dims(&shape);
    let [x, gamma, mean, variance, grad] = [x, gamma, mean, variance, grad].map(values);
    let beta = relu_beta.map(values);
    let (dx, dgamma, dbeta) = batch_norm_backward(
        f32_values(&x),
        f32_values(&grad),
        dims,
        [f32_values(&mean), f32_values(&variance), f32_values(&gamma)],
        beta.as_ref().map(f32_values),
        epsilon,
    );
    (
        flex(dx, &shape),
        flex(dgamma, &[dims[1]]),
        flex(dbeta, &[dims[1]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Output, statistics and gradients equal burn's `batch_norm_train` and its backward, for
    /// images, a 1x1 map (the SK attention's BN) and a single image, each without and with the
    /// fused ReLU (against burn's `relu` after the BN).
    #[test]
    fn matches_burn_batch_norm_train() {
        let device = Device::flex().autodiff();
        let shapes = [[4, 6, 5, 7], [8, 16, 1, 1], [1, 3, 4, 4]];
        for (case, (dims, relu)) in shapes
            .into_iter()
            .flat_map(|dims| [(dims, false), (dims, true)])
            .enumerate()
        {
            let x = Tensor::<4>::random(dims, Distribution::Normal(0.5, 2.0), &device);
            let gamma = Tensor::<1>::random([dims[1]], Distribution::Default, &device);
            let beta = Tensor::<1>::random([dims[1]], Distribution::Default, &device);
            let n = x.shape().num_elements();
            let probe: Vec<f32> = (0..n).map(|j| (j as f32 * 0.61).cos()).collect();
            let probe = Tensor::<1>::from_floats(probe.as_slice(), &device).reshape(dims);
            let run = |ours: bool| {
                let (x, gamma, beta) = (
                    x.clone().detach().require_grad(),
                    gamma.clone().detach().require_grad(),
                    beta.clone().detach().require_grad(),
                );
                let (out, mean, var) = if ours {
                    let r = train_batch_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu);
                    (r.output, r.mean, r.variance)
                } else {
                    let r = burn::tensor::module::batch_norm_train(
                        x.clone(),
                        gamma.clone(),
                        beta.clone(),
                        1e-5,
                    );
                    let out = if relu {
                        burn::tensor::activation::relu(r.output)
                    } else {
                        r.output
                    };
                    (out, r.mean, r.variance)
                };
                let grads = (out.clone() * probe.clone()).sum().backward();
                [
                    out.inner().into_data(),
                    mean.inner().into_data(),
                    var.inner().into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    gamma.grad(&grads).unwrap().into_data(),
                    beta.grad(&grads).unwrap().into_data(),
                ]
            };
            let names = ["output", "mean", "variance", "dx", "dgamma", "dbeta"];
            for ((name, a), b) in names.iter().zip(run(true)).zip(run(false)) {
                super::super::assert_close(&format!("case {case}: {name}"), a, b, 1e-4);
            }
        }
    }
}
