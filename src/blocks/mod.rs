//! Residual blocks: timm's SK basic block, the paper's SK bottleneck, and the Keras notebook's
//! SKConv block.

mod basic;
mod bottleneck;
mod keras_seed;
mod shortcut;

pub use basic::BasicBlock;
pub use bottleneck::BottleneckBlock;
pub use keras_seed::KerasSeedBlock;
pub use shortcut::Projection;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::{BlockKind, NormConfig, Padding, SkConfig};
use crate::layers::{ConvGeometry, ConvNormActConfig, SelectiveKernelConfig};
use crate::sizes::Sizes;

/// Everything a block needs to know to build itself.
#[derive(Debug, Clone)]
pub struct BlockSpec {
    /// Family.
    pub kind: BlockKind,
    /// Input channels.
    pub in_channels: usize,
    /// Width of the SK unit.
    pub sk_width: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Stride (carried by the SK unit and the shortcut).
    pub stride: usize,
    /// SK settings.
    pub sk: SkConfig,
    /// BN settings.
    pub norm: NormConfig,
    /// Padding convention.
    pub padding: Padding,
    /// Biases on the block's plain convs.
    pub conv_bias: bool,
}

impl BlockSpec {
    /// timm and the paper project when the stride or the width changes; the notebook only when
    /// the width changes (config validation rules out a stride without a width change there).
    fn needs_projection(&self) -> bool {
        let width_changes = self.in_channels != self.out_channels;
        match self.kind {
            BlockKind::KerasSeed => width_changes,
            BlockKind::Basic | BlockKind::Bottleneck => width_changes || self.stride != 1,
        }
    }

    fn projection(&self, device: &Device) -> Option<Projection> {
        self.needs_projection().then(|| {
            shortcut::projection(
                self.in_channels,
                self.out_channels,
                self.stride,
                self.conv_bias,
                self.norm,
                self.padding,
                device,
            )
        })
    }

    /// A conv + BN + ReLU of this block, with its bias and BN settings.
    fn conv_norm_act(
        &self,
        inputs: usize,
        outputs: usize,
        geometry: ConvGeometry,
    ) -> ConvNormActConfig {
        ConvNormActConfig::new(inputs, outputs, geometry)
            .with_bias(self.conv_bias)
            .with_norm(self.norm)
    }

    /// The block's SK unit, carrying its stride.
    fn selective_kernel(&self, inputs: usize, outputs: usize) -> SelectiveKernelConfig {
        SelectiveKernelConfig::new(inputs, outputs, self.sk.clone())
            .with_stride(self.stride)
            .with_norm(self.norm)
            .with_padding(self.padding)
    }

    /// Builds the block.
    pub fn init(&self, device: &Device) -> Block {
        match self.kind {
            BlockKind::Basic => Block::Basic(BasicBlock::new(self, device)),
            BlockKind::Bottleneck => Block::Bottleneck(BottleneckBlock::new(self, device)),
            BlockKind::KerasSeed => Block::KerasSeed(KerasSeedBlock::new(self, device)),
        }
    }
}

/// One residual block of any family. The variant name does not enter parameter paths.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Block {
    /// timm's SK basic block.
    Basic(BasicBlock),
    /// The SK bottleneck.
    Bottleneck(BottleneckBlock),
    /// The Keras notebook's SKConv.
    KerasSeed(KerasSeedBlock),
}

macro_rules! each_block {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            Block::Basic($b) => $e,
            Block::Bottleneck($b) => $e,
            Block::KerasSeed($b) => $e,
        }
    };
}

impl Block {
    /// Forward; pushes the SK attention `[batch, M, C]` when `attention` is given.
    ///
    /// # Shapes
    /// - input: `[batch, in_channels, h, w]`
    /// - output: `[batch, out_channels, h', w']`
    pub fn forward(&self, input: Tensor<4>, attention: Option<&mut Vec<Tensor<3>>>) -> Tensor<4> {
        each_block!(self, b => b.forward(input, attention))
    }

    /// Folds every BN that follows a convolution into it, for inference.
    pub fn fold_batchnorm(self) -> Self {
        match self {
            Block::Basic(b) => Block::Basic(b.fold_batchnorm()),
            Block::Bottleneck(b) => Block::Bottleneck(b.fold_batchnorm()),
            Block::KerasSeed(b) => Block::KerasSeed(b.fold_batchnorm()),
        }
    }

    /// The layers of the residual branch in order, and the shortcut.
    fn layers(&self) -> (Vec<&dyn Sizes>, &dyn Sizes) {
        match self {
            Block::Basic(b) => (vec![&b.conv1 as &dyn Sizes, &b.conv2], &b.downsample),
            Block::Bottleneck(b) => (
                vec![&b.conv1 as &dyn Sizes, &b.conv2, &b.conv3],
                &b.downsample,
            ),
            Block::KerasSeed(b) => (
                vec![&b.conv1 as &dyn Sizes, &b.conv2, &b.bn2, &b.conv3],
                &b.downsample,
            ),
        }
    }

    /// The block's SK unit.
    pub fn selective_kernel(&self) -> &crate::layers::SelectiveKernel {
        match self {
            Block::Basic(b) => &b.conv1,
            Block::Bottleneck(b) => &b.conv2,
            Block::KerasSeed(b) => &b.conv2,
        }
    }

    /// The block's SK unit, to change how it selects.
    pub fn selective_kernel_mut(&mut self) -> &mut crate::layers::SelectiveKernel {
        match self {
            Block::Basic(b) => &mut b.conv1,
            Block::Bottleneck(b) => &mut b.conv2,
            Block::KerasSeed(b) => &mut b.conv2,
        }
    }

    /// Path of the SK unit inside the block (`conv1` or `conv2`).
    pub fn selective_kernel_name(&self) -> &'static str {
        match self {
            Block::Basic(_) => "conv1",
            Block::Bottleneck(_) | Block::KerasSeed(_) => "conv2",
        }
    }
}

impl Sizes for Block {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        self.layers().0.out_hw(h, w)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        let (branch, shortcut) = self.layers();
        branch.macs(h, w) + shortcut.macs(h, w)
    }

    fn params(&self) -> (usize, usize) {
        let (branch, shortcut) = self.layers();
        crate::sizes::sum_params([branch.params(), shortcut.params()])
    }
}
