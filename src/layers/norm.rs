//! BatchNorm with PyTorch parameter names and both PyTorch's and Keras' running statistics.

use burn::module::{Flag, Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn::tensor::{activation, Device, Tensor};

use super::train_norm::train_batch_norm;
use super::{cpu_training_kernels, Conv2d};

/// The output of a batch-statistics BatchNorm, whichever implementation computed it.
struct BatchStatistics<const D: usize> {
    output: Tensor<D>,
    mean: Tensor<1>,
    variance: Tensor<1>,
}
use crate::config::NormConfig;

/// Batch normalization over the channel axis (axis 1).
///
/// Parameter names follow PyTorch (`weight`, `bias`, `running_mean`, `running_var`) so that paths
/// equal checkpoint keys. In training (an autodiff device, layer not frozen) it normalizes with
/// the batch statistics and updates the running ones; otherwise it uses the running ones. The
/// running variance is updated with the unbiased batch variance when
/// [`NormConfig::unbiased_running_var`] is set (PyTorch), with the biased one otherwise (Keras).
/// A batch with a single value per channel (batch 1 on a 1x1 map) does not fail: its variance is
/// zero, and the running variance is then updated with zero.
///
/// # Shapes
/// - input: `[batch, channels, ...]`
/// - output: same as input
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Scale (gamma), `[channels]`.
    pub weight: Param<Tensor<1>>,
    /// Shift (beta), `[channels]`.
    pub bias: Param<Tensor<1>>,
    /// Running mean, `[channels]`.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running variance, `[channels]`.
    pub running_var: RunningState<Tensor<1>>,
    /// Whether this layer trains (freezing turns it off).
    pub training: Param<Flag>,
    /// eps, momentum, variance convention.
    #[module(skip)]
    pub config: NormConfig,
    /// Set by [`fold_into_conv`]: the preceding convolution already applies this normalization,
    /// so `forward` passes its input through.
    #[module(skip)]
    pub folded: bool,
}

impl BatchNorm2d {
    /// Identity-initialised BN: weight 1, bias 0, mean 0, var 1.
    pub fn new(channels: usize, config: NormConfig, device: &Device) -> Self {
        Self {
            weight: Initializer::Ones.init([channels], device),
            bias: Initializer::Zeros.init([channels], device),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            training: Param::from_bool(true),
            config,
            folded: false,
        }
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.weight.shape().dims::<1>()[0]
    }

    /// Applies the normalization.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.normalize(input, false)
    }

    /// Applies the normalization, then a ReLU. In CPU training (`f32`) the two are one pass
    /// forward and one backward ([`train_batch_norm`]).
    pub fn forward_relu<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.normalize(input, true)
    }

    fn normalize<const D: usize>(&self, input: Tensor<D>, relu: bool) -> Tensor<D> {
        let device = input.device();
        let fused = cpu_training_kernels()
            && !self.folded
            && device.is_autodiff()
            && self.training.is_enabled()
            && input.dtype() == burn::tensor::DType::F32;
        if relu && !fused {
            return activation::relu(self.normalize(input, false));
        }
        if self.folded {
            return input;
        }
        if !(device.is_autodiff() && self.training.is_enabled()) {
            return batch_norm(
                input,
                self.weight.val(),
                self.bias.val(),
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
                self.config.eps,
            );
        }
        let dims = input.dims();
        let count: usize = dims
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, d)| d)
            .product();
        let (weight, bias, eps) = (self.weight.val(), self.bias.val(), self.config.eps);
        let result = if cpu_training_kernels() {
            let r = train_batch_norm(input, weight, bias, eps, relu);
            BatchStatistics {
                output: r.output,
                mean: r.mean,
                variance: r.variance,
            }
        } else {
            let r = batch_norm_train(input, weight, bias, eps);
            BatchStatistics {
                output: r.output,
                mean: r.mean,
                variance: r.variance,
            }
        };
        let variance = if self.config.unbiased_running_var && count > 1 {
            result
                .variance
                .mul_scalar(count as f64 / (count - 1) as f64)
        } else {
            result.variance
        };
        let m = self.config.momentum;
        let mean = self
            .running_mean
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - m)
            .add(result.mean.mul_scalar(m));
        let var = self
            .running_var
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - m)
            .add(variance.mul_scalar(m));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        // burn keeps per-thread updates until a sync; fold ours in now so that the module's
        // value (what checkpoints and evaluation read) is current.
        self.running_mean.value_sync();
        self.running_var.value_sync();
        result.output
    }

    /// (trainable, non-trainable) parameter counts, as Keras counts them.
    pub fn params(&self) -> (usize, usize) {
        let c = self.channels();
        (2 * c, 2 * c)
    }
}
/// Folds inference-mode `bn` into the convolution `conv` that feeds it, for inference.
///
/// With `s = weight / sqrt(running_var + eps)`, the convolution becomes `W' = W * s` (per output
/// channel) and `b' = (b - running_mean) * s + bias`, and the returned BN is marked folded (a
/// no-op). The pair computes what `bn(conv(x))` computed in evaluation mode, with one pass over
/// the activations less.
pub fn fold_into_conv(conv: Conv2d, bn: BatchNorm2d) -> (Conv2d, BatchNorm2d) {
    if bn.folded {
        return (conv, bn);
    }
    let out = conv.out_channels();
    let scale = bn
        .weight
        .val()
        .div(bn.running_var.value().add_scalar(bn.config.eps).sqrt());
    let shift = bn.running_mean.value();
    let bias = match &conv.bias {
        Some(b) => b.val().sub(shift),
        None => shift.neg(),
    };
    let bias = bias.mul(scale.clone()).add(bn.bias.val());
    let weight = conv.weight.val().mul(scale.reshape([out, 1, 1, 1]));
    let conv = Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
        geometry: conv.geometry,
        packed: None,
    }
    .pack_weights();
    (conv, BatchNorm2d { folded: true, ..bn })
}
