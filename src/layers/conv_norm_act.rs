//! Convolution, BatchNorm and an optional ReLU: timm's `ConvNormAct`, with its key names
//! (`conv.weight`, `bn.weight`, ...).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{fold_into_conv, BatchNorm2d, Conv2d, ConvGeometry};
use crate::config::NormConfig;

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
    /// Whether a ReLU follows.
    #[module(skip)]
    pub relu: bool,
}

impl ConvNormAct {
    /// A new conv + BN (+ ReLU).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        geometry: ConvGeometry,
        bias: bool,
        norm: NormConfig,
        relu: bool,
        device: &Device,
    ) -> Self {
        Self {
            conv: Conv2d::new(in_channels, out_channels, geometry, bias, device),
            bn: BatchNorm2d::new(out_channels, norm, device),
            relu,
        }
    }

    /// Applies conv, BN and the optional ReLU.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        if self.bn.folded && self.relu {
            return self.conv.forward_relu(input);
        }
        let x = self.conv.forward(input);
        if self.relu {
            self.bn.forward_relu(x)
        } else {
            self.bn.forward(x)
        }
    }

    /// `relu(self.forward(input) + residual)`: a residual block's last conv and ending, in one
    /// pass where the BN is folded, no ReLU of its own comes first, and CPU inference's 1x1
    /// kernel runs.
    pub fn forward_add_relu(&self, input: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
        if self.bn.folded && !self.relu {
            return self.conv.forward_add_relu(input, residual);
        }
        super::residual_relu(self.forward(input), residual)
    }

    /// Folds the BN into the conv, for inference (see [`fold_into_conv`]).
    pub fn fold_batchnorm(self) -> Self {
        let (conv, bn) = fold_into_conv(self.conv, self.bn);
        Self { conv, bn, ..self }
    }

    /// (trainable, non-trainable) parameter counts.
    pub fn params(&self) -> (usize, usize) {
        let (t, n) = self.bn.params();
        (self.conv.params() + t, n)
    }
}
