//! The settings every part of a network shares: padding, the stem, the block family, BatchNorm.

use serde::{Deserialize, Serialize};

/// How convolutions pad their input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// PyTorch/timm: `((stride - 1) + dilation * (kernel - 1)) / 2` on every side.
    Symmetric,
    /// TensorFlow/Keras `'same'`: output = ceil(input / stride); an odd total pad puts the extra
    /// row and column at the bottom and right.
    Same,
}

/// The stem: what comes before the first stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StemConfig {
    /// ResNet stem: 7x7/2 conv (no bias), BN, ReLU, 3x3/2 max-pool. Stride 4.
    Imagenet {
        /// Output channels of the 7x7 conv.
        width: usize,
        /// Max-pool like Caffe (no padding, ceil mode) instead of PyTorch (padding 1).
        caffe_pool: bool,
    },
    /// CIFAR stem: 3x3/1 conv (no bias), BN, ReLU. Stride 1.
    Cifar {
        /// Output channels.
        width: usize,
    },
    /// The Keras notebook: BN on the raw input, 7x7/2 'same' conv with bias, BN, ReLU,
    /// 3x3/2 'same' max-pool. Stride 4.
    KerasSeed {
        /// Output channels of the 7x7 conv.
        width: usize,
    },
}

impl StemConfig {
    /// Channels the stem produces.
    pub fn width(&self) -> usize {
        match *self {
            StemConfig::Imagenet { width, .. }
            | StemConfig::Cifar { width }
            | StemConfig::KerasSeed { width } => width,
        }
    }
}

/// Residual block family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// timm's SelectiveKernelBasic: SK conv (carries the stride), 3x3 conv + BN, add, ReLU.
    /// Expansion 1.
    Basic,
    /// Paper / timm SelectiveKernelBottleneck: 1x1 conv + BN + ReLU, SK conv (stride),
    /// 1x1 conv + BN, add, ReLU. Expansion 4.
    Bottleneck,
    /// The Keras notebook's SKConv: 1x1 conv (bias) + BN + ReLU, SK unit, BN, 1x1 conv (bias)
    /// to 2x + BN + ReLU, add, ReLU. Expansion 2.
    KerasSeed,
}

impl BlockKind {
    /// Output channels = planes * expansion.
    pub fn expansion(&self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
            BlockKind::KerasSeed => 2,
        }
    }
}

/// BatchNorm hyper-parameters, shared by every BN in the network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormConfig {
    /// Added to the variance.
    pub eps: f64,
    /// PyTorch convention: `running = (1 - momentum) * running + momentum * batch`.
    /// (Keras' momentum 0.99 is 0.01 here.)
    pub momentum: f64,
    /// Update the running variance with the unbiased batch variance (PyTorch) rather than the
    /// biased one (Keras).
    pub unbiased_running_var: bool,
}

impl NormConfig {
    /// PyTorch defaults: eps 1e-5, momentum 0.1, unbiased running variance.
    pub fn pytorch() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
            unbiased_running_var: true,
        }
    }
    /// Keras defaults: epsilon 1e-3, momentum 0.99, biased running variance.
    pub fn keras() -> Self {
        Self {
            eps: 1e-3,
            momentum: 0.01,
            unbiased_running_var: false,
        }
    }
}
