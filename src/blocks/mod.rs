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

    /// Output `(height, width)` for an input of `(height, width)`; `None` if too small.
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        each_block!(self, b => b.out_hw(h, w))
    }

    /// Multiply-accumulates of conv and linear layers, for one image.
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        each_block!(self, b => b.macs(h, w))
    }

    /// (trainable, non-trainable) parameters; BN running statistics are non-trainable.
    pub fn params(&self) -> (usize, usize) {
        each_block!(self, b => b.params())
    }

    /// The block's SK unit.
    pub fn selective_kernel(&self) -> &crate::layers::SelectiveKernel {
        match self {
            Block::Basic(b) => &b.conv1,
            Block::Bottleneck(b) => &b.conv2,
            Block::KerasSeed(b) => &b.conv2,
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
