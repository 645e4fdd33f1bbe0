//! The SK bottleneck: the paper's SKNet unit and timm's `SelectiveKernelBottleneck`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::shortcut::{fold_projection, shortcut, Projection};
use super::BlockSpec;
use crate::layers::{Activation, ConvGeometry, ConvNormAct, SelectiveKernel};

/// `relu(conv3(sk(conv1(x))) + shortcut(x))`: 1x1 reduce, SK conv (stride), 1x1 expand.
///
/// # Shapes
/// - input: `[batch, in_channels, h, w]`
/// - output: `[batch, 4 * planes, h / stride, w / stride]`
#[derive(Module, Debug)]
pub struct BottleneckBlock {
    /// 1x1 conv + BN + ReLU, in -> width.
    pub conv1: ConvNormAct,
    /// SK conv, width -> width, with the stride.
    pub conv2: SelectiveKernel,
    /// 1x1 conv + BN, width -> out.
    pub conv3: ConvNormAct,
    /// Projection shortcut.
    pub downsample: Option<Projection>,
}

impl BottleneckBlock {
    /// Builds the block.
    pub fn new(spec: &BlockSpec, device: &Device) -> Self {
        let one = ConvGeometry::new(1, spec.padding);
        let width = spec.sk_width;
        Self {
            conv1: spec
                .conv_norm_act(spec.in_channels, width, one)
                .init(device),
            conv2: spec.selective_kernel(width, width).init(device),
            conv3: spec
                .conv_norm_act(width, spec.out_channels, one)
                .with_activation(Activation::Identity)
                .init(device),
            downsample: spec.projection(device),
        }
    }

    /// Folds every BN that follows a convolution into it, for inference.
    pub fn fold_batchnorm(self) -> Self {
        Self {
            conv1: self.conv1.fold_batchnorm(),
            conv2: self.conv2.fold_batchnorm(),
            conv3: self.conv3.fold_batchnorm(),
            downsample: fold_projection(self.downsample),
        }
    }

    /// Forward; pushes the SK attention `[batch, M, C]` when asked.
    pub fn forward(&self, input: Tensor<4>, attention: Option<&mut Vec<Tensor<3>>>) -> Tensor<4> {
        let x = self.conv1.forward(input.clone());
        let (x, a) = self.conv2.forward_with_attention(x);
        if let Some(sink) = attention {
            sink.push(a);
        }
        let shortcut = shortcut(&self.downsample, input);
        self.conv3.forward_add_relu(x, shortcut)
    }
}
