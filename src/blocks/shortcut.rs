//! The projection shortcut shared by every block: 1x1 conv (carrying the stride) + BN.

use burn::tensor::{Device, Tensor};

use crate::config::{NormConfig, Padding};
use crate::layers::{fold_into_conv, BatchNorm2d, Conv2d, ConvGeometry};

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
        Conv2d::new(in_channels, out_channels, geometry, bias, device),
        BatchNorm2d::new(out_channels, norm, device),
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

/// (trainable, non-trainable) parameters of an optional projection.
pub fn projection_params(projection: &Option<Projection>) -> (usize, usize) {
    projection.as_ref().map_or((0, 0), |(conv, bn)| {
        let (t, n) = bn.params();
        (conv.params() + t, n)
    })
}

/// Multiply-accumulates of an optional projection on an `h x w` input.
pub fn projection_macs(projection: &Option<Projection>, h: usize, w: usize) -> u64 {
    projection.as_ref().map_or(0, |(conv, _)| conv.macs(h, w))
}
