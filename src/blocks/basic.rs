//! timm's `SelectiveKernelBasic` (skresnet18/34): the SK conv replaces the first 3x3 conv.

use crate::layers::residual_relu;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::shortcut::{fold_projection, projection_macs, projection_params, shortcut, Projection};
use super::BlockSpec;
use crate::layers::selective_kernel::SelectiveKernelConfig;
use crate::layers::{ConvGeometry, ConvNormAct, SelectiveKernel};

/// `relu(conv2(sk(x)) + shortcut(x))`; the SK conv carries the stride.
///
/// # Shapes
/// - input: `[batch, in_channels, h, w]`
/// - output: `[batch, planes, h / stride, w / stride]`
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// SK conv, in -> planes, with the stride.
    pub conv1: SelectiveKernel,
    /// 3x3 conv + BN, no activation.
    pub conv2: ConvNormAct,
    /// Projection shortcut.
    pub downsample: Option<Projection>,
}

impl BasicBlock {
    /// Builds the block.
    pub fn new(spec: &BlockSpec, device: &Device) -> Self {
        let out = spec.out_channels;
        let conv1 = SelectiveKernelConfig::new(spec.in_channels, spec.sk_width, spec.sk.clone())
            .with_stride(spec.stride)
            .with_norm(spec.norm)
            .with_padding(spec.padding)
            .init(device);
        let conv2 = ConvNormAct::new(
            spec.sk_width,
            out,
            ConvGeometry::new(3, spec.padding),
            spec.conv_bias,
            spec.norm,
            false,
            device,
        );
        Self {
            conv1,
            conv2,
            downsample: spec.projection(device),
        }
    }

    /// Folds every BN that follows a convolution into it, for inference.
    pub fn fold_batchnorm(self) -> Self {
        Self {
            conv1: self.conv1.fold_batchnorm(),
            conv2: self.conv2.fold_batchnorm(),
            downsample: fold_projection(self.downsample),
        }
    }

    /// Forward; pushes the SK attention `[batch, M, C]` when asked.
    pub fn forward(&self, input: Tensor<4>, attention: Option<&mut Vec<Tensor<3>>>) -> Tensor<4> {
        let (x, a) = self.conv1.forward_with_attention(input.clone());
        if let Some(sink) = attention {
            sink.push(a);
        }
        let x = self.conv2.forward(x);
        residual_relu(x, shortcut(&self.downsample, input))
    }

    pub(crate) fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (h, w) = self.conv1.out_hw(h, w)?;
        self.conv2.conv.out_hw(h, w)
    }

    pub(crate) fn macs(&self, h: usize, w: usize) -> u64 {
        let (oh, ow) = self.conv1.out_hw(h, w).unwrap_or((0, 0));
        self.conv1.macs(h, w)
            + self.conv2.conv.macs(oh, ow)
            + projection_macs(&self.downsample, h, w)
    }

    pub(crate) fn params(&self) -> (usize, usize) {
        sum_params(&[
            self.conv1.params(),
            self.conv2.params(),
            projection_params(&self.downsample),
        ])
    }
}

/// Adds (trainable, non-trainable) pairs.
pub(crate) fn sum_params(parts: &[(usize, usize)]) -> (usize, usize) {
    parts.iter().fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}
