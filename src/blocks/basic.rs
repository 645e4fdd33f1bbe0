//! timm's `SelectiveKernelBasic` (skresnet18/34): the SK conv replaces the first 3x3 conv.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::shortcut::{fold_projection, shortcut, Projection};
use super::BlockSpec;
use crate::layers::{Activation, ConvGeometry, ConvNormAct, SelectiveKernel};
use crate::ops;

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
        let conv1 = spec
            .selective_kernel(spec.in_channels, spec.sk_width)
            .init(device);
        let conv2 = spec
            .conv_norm_act(spec.sk_width, out, ConvGeometry::new(3, spec.padding))
            .with_activation(Activation::Identity)
            .init(device);
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
        ops::add_relu(x, shortcut(&self.downsample, input))
    }
}
