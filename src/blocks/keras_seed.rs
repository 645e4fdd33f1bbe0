//! The Keras notebook's `SKConv` block, quirks included.
//!
//! Differences from the paper's bottleneck, all reproduced: every conv has a bias; the SK unit is
//! followed by a BN without ReLU; the expanding 1x1 conv (to 2x the unit width) has BN *and*
//! ReLU before the residual add; the shortcut is projected whenever the input width differs from
//! the output width (so the stride sits in the SK branches and in the shortcut conv).

use crate::layers::residual_relu;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::basic::sum_params;
use super::shortcut::{fold_projection, projection_macs, projection_params, shortcut, Projection};
use super::BlockSpec;
use crate::layers::selective_kernel::SelectiveKernelConfig;
use crate::layers::{BatchNorm2d, ConvGeometry, ConvNormAct, SelectiveKernel};

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
            conv1: ConvNormAct::new(
                spec.in_channels,
                filters,
                one,
                spec.conv_bias,
                spec.norm,
                true,
                device,
            ),
            conv2: SelectiveKernelConfig::new(filters, filters, spec.sk.clone())
                .with_stride(spec.stride)
                .with_norm(spec.norm)
                .with_padding(spec.padding)
                .init(device),
            bn2: BatchNorm2d::new(filters, spec.norm, device),
            conv3: ConvNormAct::new(
                filters,
                spec.out_channels,
                one,
                spec.conv_bias,
                spec.norm,
                true,
                device,
            ),
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
        residual_relu(x, shortcut(&self.downsample, input))
    }

    pub(crate) fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        self.conv2.out_hw(h, w)
    }

    pub(crate) fn macs(&self, h: usize, w: usize) -> u64 {
        let (oh, ow) = self.conv2.out_hw(h, w).unwrap_or((0, 0));
        self.conv1.conv.macs(h, w)
            + self.conv2.macs(h, w)
            + self.conv3.conv.macs(oh, ow)
            + projection_macs(&self.downsample, h, w)
    }

    pub(crate) fn params(&self) -> (usize, usize) {
        sum_params(&[
            self.conv1.params(),
            self.conv2.params(),
            self.bn2.params(),
            self.conv3.params(),
            projection_params(&self.downsample),
        ])
    }
}
