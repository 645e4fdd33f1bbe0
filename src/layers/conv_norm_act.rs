//! Convolution, BatchNorm and an activation: timm's `ConvNormAct`, with its key names
//! (`conv.weight`, `bn.weight`, ...).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{fold_into_conv, BatchNorm2d, BatchNorm2dConfig, Conv2d, ConvConfig, ConvGeometry};
use crate::config::NormConfig;
use crate::ops::{self, Activation};
use crate::sizes::{sum_params, Sizes};

/// Builds a [`ConvNormAct`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvNormActConfig {
    /// The convolution.
    pub conv: ConvConfig,
    /// BatchNorm settings (default: PyTorch's).
    pub norm: NormConfig,
    /// What follows the BN (default: ReLU, as in timm).
    pub activation: Activation,
}

impl ConvNormActConfig {
    /// A conv without bias, PyTorch's BN, and a ReLU.
    pub fn new(in_channels: usize, out_channels: usize, geometry: ConvGeometry) -> Self {
        Self {
            conv: ConvConfig::new(in_channels, out_channels, geometry),
            norm: NormConfig::pytorch(),
            activation: Activation::Relu,
        }
    }

    /// Sets whether the conv adds a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.conv = self.conv.with_bias(bias);
        self
    }

    /// Sets the BatchNorm settings.
    pub fn with_norm(mut self, norm: NormConfig) -> Self {
        self.norm = norm;
        self
    }

    /// Sets what follows the BN.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Creates the layer.
    pub fn init(&self, device: &Device) -> ConvNormAct {
        ConvNormAct {
            conv: self.conv.init(device),
            bn: BatchNorm2dConfig::new(self.conv.out_channels)
                .with_norm(self.norm)
                .init(device),
            activation: self.activation,
        }
    }
}

/// `act(bn(conv(x)))`.
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - output: `[batch, out_channels, height', width']`
#[derive(Module, Debug)]
pub struct ConvNormAct {
    /// The convolution.
    pub conv: Conv2d,
    /// The normalization.
    pub bn: BatchNorm2d,
    /// What follows the normalization.
    #[module(skip)]
    pub activation: Activation,
}

impl ConvNormAct {
    /// Applies conv, BN and the activation.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        if self.bn.folded {
            // Inference: the BN is in the conv's bias, the activation applied as it stores.
            return self.conv.forward_act(input, self.activation);
        }
        self.bn
            .forward_act(self.conv.forward(input), self.activation)
    }

    /// `relu(self.forward(input) + residual)`: a residual block's last conv and ending, in one
    /// pass where the BN is folded and no activation of its own comes first.
    pub fn forward_add_relu(&self, input: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
        if self.bn.folded && self.activation == Activation::Identity {
            return self.conv.forward_add_relu(input, residual);
        }
        ops::add_relu(self.forward(input), residual)
    }

    /// Folds the BN into the conv, for inference (see [`fold_into_conv`]).
    pub fn fold_batchnorm(self) -> Self {
        let (conv, bn) = fold_into_conv(self.conv, self.bn);
        Self { conv, bn, ..self }
    }
}

impl Sizes for ConvNormAct {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        self.conv.out_hw(h, w)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        self.conv.macs(h, w)
    }

    fn params(&self) -> (usize, usize) {
        sum_params([self.conv.params(), self.bn.params()])
    }
}
