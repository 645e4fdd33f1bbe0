//! The SK unit's settings: branches, groups, the attention's width and layout.

use serde::{Deserialize, Serialize};

use super::{invalid, within, ConfigError, MAX_BRANCHES, MAX_CHANNELS, MAX_KERNEL};

/// How the width `d` of the attention vector z is chosen from the unit's width C.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttnWidth {
    /// The paper: `d = max(C / r, L)` (integer division).
    Paper {
        /// Reduction ratio r.
        reduction: usize,
        /// Floor L.
        min_width: usize,
    },
    /// timm: `make_divisible(C * ratio, divisor)` (round to the nearest multiple of `divisor`,
    /// at least `divisor`, and never more than 10% below `C * ratio`).
    Divisible {
        /// rd_ratio.
        ratio: f64,
        /// rd_divisor.
        divisor: usize,
    },
    /// A fixed width.
    Fixed {
        /// d.
        width: usize,
    },
}

impl AttnWidth {
    /// The width d for a unit of `channels` output channels.
    pub fn resolve(&self, channels: usize) -> usize {
        match *self {
            AttnWidth::Paper {
                reduction,
                min_width,
            } => (channels / reduction).max(min_width),
            AttnWidth::Divisible { ratio, divisor } => {
                make_divisible(channels as f64 * ratio, divisor)
            }
            AttnWidth::Fixed { width } => width,
        }
    }
}

/// timm's `make_divisible` (round_limit 0.9).
pub fn make_divisible(value: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let rounded = (((value + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * value {
        rounded + divisor
    } else {
        rounded
    }
}

/// Output layout of the select layer's `M * C` logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogitLayout {
    /// Logit of branch m, channel c at index `m * C + c` (paper, Caffe, timm).
    BranchMajor,
    /// Logit of branch m, channel c at index `c * M + m` (the Keras notebook's reshape).
    ChannelMajor,
}

/// The split/fuse/select hyper-parameters of every SK unit in a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkConfig {
    /// One entry per branch: the receptive field of that branch (3, 5, 7, ...). M = its length.
    pub kernel_sizes: Vec<usize>,
    /// Realise a k x k receptive field as a 3x3 conv with dilation (k-1)/2 (paper, timm), or as
    /// a true k x k conv (the Keras notebook).
    pub dilated_3x3: bool,
    /// Convolution groups G in each branch (clamped to the unit width, as timm does).
    pub groups: usize,
    /// timm's split_input: each branch sees an equal slice of the input channels.
    pub split_input: bool,
    /// Width of z.
    pub attn_width: AttnWidth,
    /// BatchNorm + ReLU on z (paper, timm); the Keras notebook has neither.
    pub attn_norm_act: bool,
    /// Biases on the reduce and select layers (Keras Dense layers have them).
    pub attn_bias: bool,
    /// Biases on the branch convolutions (Keras Conv2D default).
    pub conv_bias: bool,
    /// Layout of the select layer's logits.
    pub layout: LogitLayout,
}

impl SkConfig {
    /// The paper: branches 3x3 and dilated "5x5", G = 32, d = max(C/16, 32), BN+ReLU on z.
    pub fn paper() -> Self {
        Self {
            kernel_sizes: vec![3, 5],
            dilated_3x3: true,
            groups: 32,
            split_input: false,
            attn_width: AttnWidth::Paper {
                reduction: 16,
                min_width: 32,
            },
            attn_norm_act: true,
            attn_bias: false,
            conv_bias: false,
            layout: LogitLayout::BranchMajor,
        }
    }

    /// timm's skresnet18/34: split input, d = make_divisible(C / 8, 16), no groups.
    pub fn timm_basic() -> Self {
        Self {
            groups: 1,
            split_input: true,
            attn_width: AttnWidth::Divisible {
                ratio: 1.0 / 8.0,
                divisor: 16,
            },
            ..Self::paper()
        }
    }

    /// timm's skresnext50_32x4d: d = make_divisible(C / 16, 32), G = 32.
    pub fn timm_resnext() -> Self {
        Self {
            attn_width: AttnWidth::Divisible {
                ratio: 1.0 / 16.0,
                divisor: 32,
            },
            ..Self::paper()
        }
    }

    /// The Keras notebook's SKUnit: true 3x3 and 5x5 kernels with bias, d = max(C/16, 32),
    /// Dense layers with bias and no BN/ReLU on z, channel-major logits.
    pub fn keras() -> Self {
        Self {
            kernel_sizes: vec![3, 5],
            dilated_3x3: false,
            groups: 32,
            split_input: false,
            attn_width: AttnWidth::Paper {
                reduction: 16,
                min_width: 32,
            },
            attn_norm_act: false,
            attn_bias: true,
            conv_bias: true,
            layout: LogitLayout::ChannelMajor,
        }
    }

    /// Number of branches M.
    pub fn branches(&self) -> usize {
        self.kernel_sizes.len()
    }

    /// (kernel, dilation) of branch `m`.
    pub fn branch_kernel(&self, m: usize) -> (usize, usize) {
        let k = self.kernel_sizes[m];
        if self.dilated_3x3 {
            (3, (k - 1) / 2)
        } else {
            (k, 1)
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let branches = self.kernel_sizes.len();
        if !(2..=MAX_BRANCHES).contains(&branches) {
            return Err(invalid(
                "sk.kernel_sizes",
                format!("needs 2 to {MAX_BRANCHES} branches (M >= 2), found {branches}"),
            ));
        }
        for (m, &k) in self.kernel_sizes.iter().enumerate() {
            within(&format!("sk.kernel_sizes[{m}]"), k, 1, MAX_KERNEL)?;
            if k % 2 == 0 {
                return Err(invalid(
                    format!("sk.kernel_sizes[{m}]"),
                    format!("must be an odd size, found {k}"),
                ));
            }
            if self.dilated_3x3 && k < 3 {
                return Err(invalid(
                    format!("sk.kernel_sizes[{m}]"),
                    format!("must be >= 3 when dilated_3x3 is set, found {k}"),
                ));
            }
        }
        within("sk.groups", self.groups, 1, MAX_CHANNELS)?;
        match self.attn_width {
            AttnWidth::Paper {
                reduction,
                min_width,
            } => {
                within("sk.attn_width.reduction", reduction, 1, MAX_CHANNELS)?;
                within("sk.attn_width.min_width", min_width, 1, MAX_CHANNELS)?;
            }
            AttnWidth::Divisible { ratio, divisor } => {
                if !(ratio.is_finite() && ratio > 0.0 && ratio <= 64.0) {
                    return Err(invalid(
                        "sk.attn_width.ratio",
                        format!("must be a number within (0, 64], found {ratio}"),
                    ));
                }
                within("sk.attn_width.divisor", divisor, 1, MAX_CHANNELS)?;
            }
            AttnWidth::Fixed { width } => {
                within("sk.attn_width.width", width, 1, MAX_CHANNELS)?;
            }
        }
        Ok(())
    }
}
