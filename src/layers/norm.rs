//! BatchNorm with PyTorch parameter names and both PyTorch's and Keras' running statistics.

use burn::module::{Flag, Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::module::batch_norm;
use burn::tensor::{Device, Tensor};

use super::Conv2d;
use crate::config::NormConfig;
use crate::ops::{self, Activation};
use crate::sizes::Sizes;

/// Builds a [`BatchNorm2d`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNorm2dConfig {
    /// Channels.
    pub channels: usize,
    /// eps, momentum, variance convention (default: PyTorch's).
    pub norm: NormConfig,
}

impl BatchNorm2dConfig {
    /// A BN over `channels` with PyTorch's settings.
    pub fn new(channels: usize) -> Self {
        Self {
            channels,
            norm: NormConfig::pytorch(),
        }
    }

    /// Sets eps, momentum and the variance convention.
    pub fn with_norm(mut self, norm: NormConfig) -> Self {
        self.norm = norm;
        self
    }

    /// Identity-initialised BN: weight 1, bias 0, mean 0, var 1.
    pub fn init(&self, device: &Device) -> BatchNorm2d {
        let channels = self.channels;
        BatchNorm2d {
            weight: Initializer::Ones.init([channels], device),
            bias: Initializer::Zeros.init([channels], device),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            training: Param::from_bool(true),
            config: self.norm,
            folded: false,
        }
    }
}

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
    /// Channels.
    pub fn channels(&self) -> usize {
        self.weight.lazy_shape().dims::<1>()[0]
    }

    /// Applies the normalization.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.forward_act(input, Activation::Identity)
    }

    /// Applies the normalization, then `activation`: in CPU training one pass forward and one
    /// backward for both.
    pub fn forward_act<const D: usize>(
        &self,
        input: Tensor<D>,
        activation: Activation,
    ) -> Tensor<D> {
        if self.folded {
            return activation.apply(input);
        }
        if !(input.device().is_autodiff() && self.training.is_enabled()) {
            let device = input.device();
            let output = batch_norm(
                input,
                self.weight.val(),
                self.bias.val(),
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
                self.config.eps,
            );
            return activation.apply(output);
        }
        self.forward_training(input, activation)
    }

    /// Normalizes with the batch statistics and folds them into the running ones.
    fn forward_training<const D: usize>(
        &self,
        input: Tensor<D>,
        activation: Activation,
    ) -> Tensor<D> {
        let device = input.device();
        let dims = input.dims();
        let count: usize = dims
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, d)| d)
            .product();
        let (weight, bias, eps) = (self.weight.val(), self.bias.val(), self.config.eps);
        let result = ops::batch_norm_train(input, weight, bias, eps, activation);
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
}

/// Per channel: no multiply-adds counted (as Keras and the MAC counters count), the map's size
/// unchanged.
impl Sizes for BatchNorm2d {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Some((h, w))
    }

    fn macs(&self, _h: usize, _w: usize) -> u64 {
        0
    }

    fn params(&self) -> (usize, usize) {
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
