//! The Keras notebook's `SKConv` block, quirks included.
//!
//! Differences from the paper's bottleneck, all reproduced: every conv has a bias; the SK unit is
//! followed by a BN without ReLU; the expanding 1x1 conv (to 2x the unit width) has BN *and*
//! ReLU before the residual add; the shortcut is projected whenever the input width differs from
//! the output width (so the stride sits in the SK branches and in the shortcut conv).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::shortcut::{fold_projection, shortcut, Projection};
use super::BlockSpec;
use crate::layers::{BatchNorm2d, BatchNorm2dConfig, ConvGeometry, ConvNormAct, SelectiveKernel};
use crate::ops;

/// `relu(relu(bn3(conv3(bn2(sk(relu(bn1(conv1(x)))))))) + shortcut(x))`.
///
/// Notebook names: `conv1` = conv1x1_1 + bn1, `conv2` = skunit, `bn2` = bn2,
/// `conv3` = conv1x1_2 + bn3, `downsample` = shortcut.
///
/// # Shapes
/// - input: `[batch, in_channels, h, w]`
/// - output: `[batch, 2 * filters, ceil(h / stride), ceil(w / stride)]`
#[derive(Module, Debug)]
pub struct KerasSeedBlock {
    /// 1x1 conv (bias) + BN + ReLU, in -> filters.
    pub conv1: ConvNormAct,
    /// The SK unit, filters -> filters, with the stride.
    pub conv2: SelectiveKernel,
    /// BN after the SK unit, no activation.
    pub bn2: BatchNorm2d,
    /// 1x1 conv (bias) + BN + ReLU, filters -> 2 * filters.
    pub conv3: ConvNormAct,
    /// Projection shortcut (1x1 conv with bias and stride, + BN).
    pub downsample: Option<Projection>,
}

impl KerasSeedBlock {
    /// Builds the block.
    pub fn new(spec: &BlockSpec, device: &Device) -> Self {
        let one = ConvGeometry::new(1, spec.padding);
        let filters = spec.sk_width;
        Self {
            conv1: spec
                .conv_norm_act(spec.in_channels, filters, one)
                .init(device),
            conv2: spec.selective_kernel(filters, filters).init(device),
            bn2: BatchNorm2dConfig::new(filters)
                .with_norm(spec.norm)
                .init(device),
            conv3: spec
                .conv_norm_act(filters, spec.out_channels, one)
                .init(device),
            downsample: spec.projection(device),
        }
    }

    /// Folds every BN that follows a convolution into it, for inference.
    pub fn fold_batchnorm(self) -> Self {
        // bn2 normalizes the SK unit's weighted sum, not a convolution: it stays.
        Self {
            conv1: self.conv1.fold_batchnorm(),
            conv2: self.conv2.fold_batchnorm(),
            conv3: self.conv3.fold_batchnorm(),
            downsample: fold_projection(self.downsample),
            ..self
        }
    }

    /// Forward; pushes the SK attention `[batch, M, C]` when asked.
    pub fn forward(&self, input: Tensor<4>, attention: Option<&mut Vec<Tensor<3>>>) -> Tensor<4> {
        let x = self.conv1.forward(input.clone());
        let (x, a) = self.conv2.forward_with_attention(x);
        if let Some(sink) = attention {
            sink.push(a);
        }
        let x = self.conv3.forward(self.bn2.forward(x));
        ops::add_relu(x, shortcut(&self.downsample, input))
    }
}
