//! The projection shortcut shared by every block: 1x1 conv (carrying the stride) + BN.

use burn::tensor::{Device, Tensor};

use crate::config::{NormConfig, Padding};
use crate::layers::{
    fold_into_conv, BatchNorm2d, BatchNorm2dConfig, Conv2d, ConvConfig, ConvGeometry,
};
use crate::sizes::{sum_params, Sizes};

/// `(conv, bn)`: a tuple, so that its parameter paths are `downsample.0.weight` and
/// `downsample.1.*`, as in timm's `nn.Sequential`.
pub type Projection = (Conv2d, BatchNorm2d);

/// A 1x1 projection from `in_channels` to `out_channels` with `stride`.
pub fn projection(
    in_channels: usize,
    out_channels: usize,
    stride: usize,
    bias: bool,
    norm: NormConfig,
    padding: Padding,
    device: &Device,
) -> Projection {
    let geometry = ConvGeometry::new(1, padding).with_stride(stride);
    (
        ConvConfig::new(in_channels, out_channels, geometry)
            .with_bias(bias)
            .init(device),
        BatchNorm2dConfig::new(out_channels)
            .with_norm(norm)
            .init(device),
    )
}

/// The shortcut branch: the projection when there is one, the input otherwise.
pub fn shortcut(projection: &Option<Projection>, input: Tensor<4>) -> Tensor<4> {
    match projection {
        Some((conv, bn)) => bn.forward(conv.forward(input)),
        None => input,
    }
}

/// Folds the projection's BN into its conv, for inference.
pub fn fold_projection(projection: Option<Projection>) -> Option<Projection> {
    projection.map(|(conv, bn)| fold_into_conv(conv, bn))
}

impl Sizes for Projection {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        self.0.out_hw(h, w)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        self.0.macs(h, w)
    }

    fn params(&self) -> (usize, usize) {
        sum_params([self.0.params(), self.1.params()])
    }
}
