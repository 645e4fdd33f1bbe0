//! The whole network: stem, up to four stages of residual blocks, global average pooling and a
//! linear classifier.
//!
//! Parameter paths equal timm's checkpoint keys (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.conv2.paths.0.conv.weight`, `layer1.0.downsample.0.weight`, `fc.bias`, ...); the
//! Keras notebook's model adds `input_bn` (its BN on the raw input).

use burn::module::Module;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};
use thiserror::Error;

use crate::blocks::{Block, BlockSpec};
use crate::config::{ConfigError, NetworkConfig, Padding, StemConfig};
use crate::layers::{
    fold_into_conv, Activation, BatchNorm2d, BatchNorm2dConfig, Conv2d, ConvConfig, ConvGeometry,
    Linear, LinearConfig, Selection,
};
use crate::ops;
use crate::sizes::Sizes;

/// Most parameters (BatchNorm statistics included) a network may have: 4 GiB of f32, ten times
/// the largest SKNet here.
pub const MAX_PARAMETERS: u64 = 1 << 30;

/// Most stages a network may have: timm's `layer1` .. `layer4`.
pub const MAX_STAGES: usize = 4;

/// An input the network cannot take.
#[derive(Debug, Error, PartialEq)]
pub enum InputError {
    /// Wrong rank or channel count.
    #[error("input has shape {found:?}; expected [batch, {channels}, height, width]")]
    Shape {
        /// The shape given.
        found: Vec<usize>,
        /// Channels the network takes.
        channels: usize,
    },
    /// The spatial size vanishes somewhere in the network.
    #[error(
        "input {height}x{width} is too small for `{arch}`: the feature map vanishes at {layer}; \
         the smallest square input it takes is {min_side}x{min_side}"
    )]
    TooSmall {
        /// Network name.
        arch: String,
        /// Input height.
        height: usize,
        /// Input width.
        width: usize,
        /// The first layer with no output.
        layer: String,
        /// The smallest square side that works.
        min_side: usize,
    },
    /// A batch whose activations alone would take more memory than sknet allows.
    #[error(
        "a batch of {batch} at {height}x{width} needs at least {gib:.1} GiB for one activation of \
         `{arch}` (the limit is {limit_gib} GiB): use a smaller batch or input"
    )]
    TooLarge {
        /// Network name.
        arch: String,
        /// Batch size.
        batch: usize,
        /// Input height.
        height: usize,
        /// Input width.
        width: usize,
        /// The largest activation's size in GiB.
        gib: f64,
        /// The limit in GiB.
        limit_gib: u64,
    },
}

/// Largest single activation a forward pass may hold, in bytes.
pub const MAX_ACTIVATION_BYTES: u128 = 16 << 30;

/// Per-channel branch weights of one SK unit.
#[derive(Debug, Clone)]
pub struct UnitAttention {
    /// Module path of the unit, e.g. `layer2.3.conv2`.
    pub path: String,
    /// The paper's name, `SK_{stage}_{unit}` with stages numbered 2..5 (sec. 4.3).
    pub paper_name: String,
    /// `[batch, M, C]`; sums to 1 over M.
    pub weights: Tensor<3>,
}

/// A Selective Kernel Network.
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - output: `[batch, num_classes]` logits (the Keras notebook applies a softmax on top; use
///   [`SkNet::predict_proba`] for probabilities)
#[derive(Module, Debug)]
pub struct SkNet {
    /// BN on the raw input (Keras notebook only).
    pub input_bn: Option<BatchNorm2d>,
    /// Stem convolution.
    pub conv1: Conv2d,
    /// Stem BN.
    pub bn1: BatchNorm2d,
    /// Stage 1 (stride 4 after an ImageNet stem).
    pub layer1: Vec<Block>,
    /// Stage 2.
    pub layer2: Vec<Block>,
    /// Stage 3.
    pub layer3: Vec<Block>,
    /// Stage 4.
    pub layer4: Vec<Block>,
    /// Classifier.
    pub fc: Linear,
    /// The config it was built from.
    #[module(skip)]
    pub config: NetworkConfig,
}

impl SkNet {
    /// Builds a network (freshly initialised) from a validated config.
    pub fn new(config: &NetworkConfig, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        if config.num_stages() > MAX_STAGES {
            return Err(ConfigError::Invalid {
                field: "layers".into(),
                constraint: format!(
                    "at most {MAX_STAGES} stages are supported, found {}",
                    config.num_stages()
                ),
            });
        }
        let norm = config.norm;
        let (input_bn, stem_conv) = match config.stem {
            StemConfig::Imagenet { width, .. } => (
                None,
                ConvConfig::new(
                    config.in_channels,
                    width,
                    ConvGeometry::new(7, Padding::Symmetric).with_stride(2),
                )
                .with_bias(false)
                .init(device),
            ),
            StemConfig::Cifar { width } => (
                None,
                ConvConfig::new(
                    config.in_channels,
                    width,
                    ConvGeometry::new(3, Padding::Symmetric),
                )
                .with_bias(false)
                .init(device),
            ),
            StemConfig::KerasSeed { width } => (
                Some(
                    BatchNorm2dConfig::new(config.in_channels)
                        .with_norm(norm)
                        .init(device),
                ),
                ConvConfig::new(
                    config.in_channels,
                    width,
                    ConvGeometry::new(7, Padding::Same).with_stride(2),
                )
                .with_bias(true)
                .init(device),
            ),
        };
        let mut stages: Vec<Vec<Block>> = Vec::new();
        let mut in_ch = config.stem.width();
        for i in 0..config.num_stages() {
            let mut blocks = Vec::new();
            for j in 0..config.layers[i] {
                let spec = BlockSpec {
                    kind: config.block,
                    in_channels: in_ch,
                    sk_width: config.sk_width(i),
                    out_channels: config.stage_channels(i),
                    stride: if j == 0 { config.strides[i] } else { 1 },
                    sk: config.sk.clone(),
                    norm,
                    padding: config.padding,
                    conv_bias: config.conv_bias,
                };
                blocks.push(spec.init(device));
                in_ch = config.stage_channels(i);
            }
            stages.push(blocks);
        }
        stages.resize_with(MAX_STAGES, Vec::new);
        let mut stages = stages.into_iter();
        let mut next = || stages.next().unwrap_or_default();
        let model = Self {
            input_bn,
            conv1: stem_conv,
            bn1: BatchNorm2dConfig::new(config.stem.width())
                .with_norm(norm)
                .init(device),
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            fc: LinearConfig::new(in_ch, config.num_classes).init(device),
            config: config.clone(),
        };
        model.check_parameter_count()?;
        Ok(model)
    }

    /// At most [`MAX_PARAMETERS`]. The weights are not allocated until first used: counting
    /// them from their lazy shapes is free.
    fn check_parameter_count(&self) -> Result<(), ConfigError> {
        let parameters: u128 = crate::weights::named_tensors(self)
            .iter()
            .map(|t| t.shape.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        if parameters > MAX_PARAMETERS as u128 {
            return Err(ConfigError::TooLarge {
                network: self.config.name.clone(),
                parameters,
                gib: parameters as f64 * 4.0 / (1u64 << 30) as f64,
                max: MAX_PARAMETERS,
            });
        }
        Ok(())
    }

    /// Folds every BatchNorm that follows a convolution into that convolution's weight and bias
    /// (the stem, every conv+BN pair of the blocks and SK branches, the BN on the SK unit's z, the
    /// projection shortcuts), which saves one pass over the activations per BN at inference.
    ///
    /// The folded network computes what the original computes in evaluation mode. It is for
    /// inference only: its conv weights include the BN statistics, so it must not be trained or
    /// exported (the folded BNs keep their values but no longer apply them). Folding twice
    /// changes nothing.
    pub fn fold_batchnorm(self) -> Self {
        let (conv1, bn1) = fold_into_conv(self.conv1, self.bn1);
        let fold = |stage: Vec<Block>| stage.into_iter().map(Block::fold_batchnorm).collect();
        Self {
            conv1,
            bn1,
            layer1: fold(self.layer1),
            layer2: fold(self.layer2),
            layer3: fold(self.layer3),
            layer4: fold(self.layer4),
            ..self
        }
    }

    /// The network with every SK unit selecting by `selection` instead of its learned attention
    /// (an ablation; [`Selection::Learned`] restores the network as trained).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] (field `selection`) for a branch that some unit does not have.
    pub fn with_selection(mut self, selection: Selection) -> Result<Self, ConfigError> {
        for stage in [
            &mut self.layer1,
            &mut self.layer2,
            &mut self.layer3,
            &mut self.layer4,
        ] {
            for block in stage.iter_mut() {
                let sk = block.selective_kernel_mut();
                if let Selection::Branch(k) = selection {
                    let m = sk.paths.len();
                    if k >= m {
                        return Err(ConfigError::Invalid {
                            field: "selection".into(),
                            constraint: format!(
                                "branch {k} does not exist: the SK units have branches 0..={}",
                                m - 1
                            ),
                        });
                    }
                }
                sk.selection = selection;
            }
        }
        Ok(self)
    }

    /// Whether [`SkNet::fold_batchnorm`] has been applied.
    pub fn is_batchnorm_folded(&self) -> bool {
        self.bn1.folded
    }

    /// The non-empty stages, in order.
    pub fn stages(&self) -> Vec<&Vec<Block>> {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn pool_options(&self) -> Option<(MaxPoolOptions<2>, ConvGeometry)> {
        let base = MaxPoolOptions::new([3, 3]).with_stride([2, 2]);
        match self.config.stem {
            StemConfig::Cifar { .. } => None,
            StemConfig::Imagenet {
                caffe_pool: false, ..
            } => Some((
                base.with_padding([1, 1]),
                ConvGeometry::new(3, Padding::Symmetric).with_stride(2),
            )),
            StemConfig::Imagenet {
                caffe_pool: true, ..
            } => Some((
                base.with_ceil_mode(true),
                // Stand-in geometry for size arithmetic; see `pool_out_len`.
                ConvGeometry::new(3, Padding::Symmetric).with_stride(2),
            )),
            StemConfig::KerasSeed { .. } => {
                Some((base, ConvGeometry::new(3, Padding::Same).with_stride(2)))
            }
        }
    }

    /// The stem pool's output length for an input length (the input's when there is no pool).
    pub(crate) fn pool_out_len(&self, len: usize) -> Option<usize> {
        match self.config.stem {
            StemConfig::Cifar { .. } => Some(len),
            // No padding, ceil mode: the last window may hang over the end.
            StemConfig::Imagenet {
                caffe_pool: true, ..
            } => (len >= 3).then(|| (len - 3).div_ceil(2) + 1),
            _ => self.pool_options()?.1.out_len(len),
        }
    }

    /// The stem's max pool for an `h x w` map, its padding resolved; `None` for stems without
    /// one.
    pub(crate) fn stem_pool(&self, h: usize, w: usize) -> Option<MaxPoolOptions<2>> {
        let (options, geometry) = self.pool_options()?;
        Some(match self.config.stem {
            StemConfig::KerasSeed { .. } => {
                options.with_padding_pairs([geometry.pads(h), geometry.pads(w)])
            }
            _ => options,
        })
    }

    fn max_pool(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let Some(options) = self.stem_pool(h, w) else {
            return x;
        };
        let out = match (self.pool_out_len(h), self.pool_out_len(w)) {
            (Some(out_h), Some(out_w)) => Some([out_h, out_w]),
            _ => None,
        };
        ops::max_pool2d(x, options, out)
    }

    /// The stem before its max-pool (stride 2 for ImageNet stems).
    fn stem(&self, x: Tensor<4>) -> Tensor<4> {
        let x = match &self.input_bn {
            Some(bn) => bn.forward(x),
            None => x,
        };
        if self.bn1.folded {
            // Inference: the BN is in the conv's bias, and the ReLU is applied as it stores.
            return self.conv1.forward_act(x, Activation::Relu);
        }
        self.bn1
            .forward_act(self.conv1.forward(x), Activation::Relu)
    }

    fn run_stages(
        &self,
        x: Tensor<4>,
        mut attention: Option<&mut Vec<Tensor<3>>>,
        mut features: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<4> {
        let mut x = x;
        for stage in self.stages() {
            for block in stage {
                x = block.forward(x, attention.as_deref_mut());
            }
            if let Some(f) = features.as_deref_mut() {
                f.push(x.clone());
            }
        }
        x
    }

    fn head(&self, x: Tensor<4>) -> Tensor<2> {
        // The SK attention's one-pass global average, not two `mean_dim`s.
        self.fc.forward(ops::spatial_mean(x))
    }

    /// Logits.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        ops::on_cpu_pool(|| {
            let x = self.max_pool(self.stem(input));
            self.head(self.run_stages(x, None, None))
        })
    }

    /// The features the classifier sees: the last stage's output, averaged over positions.
    ///
    /// # Shapes
    /// - input: `[batch, in_channels, height, width]`
    /// - output: `[batch, features]` (the classifier's input width)
    pub fn forward_pooled(&self, input: Tensor<4>) -> Tensor<2> {
        ops::on_cpu_pool(|| {
            let x = self.max_pool(self.stem(input));
            ops::spatial_mean(self.run_stages(x, None, None))
        })
    }

    /// Class probabilities (softmax of the logits).
    pub fn predict_proba(&self, input: Tensor<4>) -> Tensor<2> {
        burn::tensor::activation::softmax(self.forward(input), 1)
    }

    /// Logits and the attention of every SK unit, in network order.
    pub fn forward_with_attention(&self, input: Tensor<4>) -> (Tensor<2>, Vec<UnitAttention>) {
        let mut weights = Vec::new();
        let logits = ops::on_cpu_pool(|| {
            let x = self.max_pool(self.stem(input));
            self.head(self.run_stages(x, Some(&mut weights), None))
        });
        let attention = self
            .unit_names()
            .into_iter()
            .zip(weights)
            .map(|((path, paper_name), weights)| UnitAttention {
                path,
                paper_name,
                weights,
            })
            .collect();
        (logits, attention)
    }

    /// Backbone features: the stem output (before the max-pool) and each stage's output. For
    /// ImageNet-style stems with four stages these have strides 2, 4, 8, 16 and 32.
    pub fn features(&self, input: Tensor<4>) -> Vec<Tensor<4>> {
        ops::on_cpu_pool(|| {
            let stem = self.stem(input);
            let mut out = vec![stem.clone()];
            self.run_stages(self.max_pool(stem), None, Some(&mut out));
            out
        })
    }

    /// `(module path, paper name)` of every SK unit.
    pub fn unit_names(&self) -> Vec<(String, String)> {
        self.stages()
            .iter()
            .enumerate()
            .flat_map(|(i, stage)| {
                stage.iter().enumerate().map(move |(j, b)| {
                    (
                        format!("layer{}.{j}.{}", i + 1, b.selective_kernel_name()),
                        format!("SK_{}_{}", i + 2, j + 1),
                    )
                })
            })
            .collect()
    }

    /// Checks an input shape before running: channels, and a size every layer can take.
    pub fn check_input(&self, dims: &[usize]) -> Result<(), InputError> {
        if dims.len() != 4 || dims[1] != self.config.in_channels || dims[0] == 0 {
            return Err(InputError::Shape {
                found: dims.to_vec(),
                channels: self.config.in_channels,
            });
        }
        let trace = self.trace_shapes(dims[2], dims[3])?;
        let bytes = self.largest_activation(&trace) * dims[0] as u128 * 4;
        if bytes > MAX_ACTIVATION_BYTES {
            return Err(InputError::TooLarge {
                arch: self.config.name.clone(),
                batch: dims[0],
                height: dims[2],
                width: dims[3],
                gib: bytes as f64 / (1u64 << 30) as f64,
                limit_gib: (MAX_ACTIVATION_BYTES >> 30) as u64,
            });
        }
        Ok(())
    }

    /// Floats of the largest map one image makes (a lower bound of what a forward holds): the
    /// input, the stem's output, and each block's output and SK branches.
    fn largest_activation(&self, trace: &ShapeTrace) -> u128 {
        let c = &self.config;
        let area = |(h, w): (usize, usize)| h as u128 * w as u128;
        let mut largest = area(trace.stem) * c.stem.width() as u128;
        let mut k = 0;
        for (i, stage) in self.stages().iter().enumerate() {
            let branches = (c.sk_width(i) * c.sk.branches()) as u128;
            let channels = branches.max(c.stage_channels(i) as u128);
            for _ in stage.iter() {
                largest = largest.max(area(trace.blocks[k]) * channels);
                k += 1;
            }
        }
        largest
    }

    /// Spatial size after the stem (before pooling), after pooling and after every block.
    pub(crate) fn trace_shapes(&self, h: usize, w: usize) -> Result<ShapeTrace, InputError> {
        self.trace(h, w).map_err(|layer| InputError::TooSmall {
            arch: self.config.name.clone(),
            height: h,
            width: w,
            layer,
            min_side: self.min_input_side(),
        })
    }

    /// Spatial sizes through the network, or the first layer whose map vanishes.
    fn trace(&self, h: usize, w: usize) -> Result<ShapeTrace, String> {
        let stem = self.conv1.out_hw(h, w).ok_or("conv1")?;
        let pooled = match (self.pool_out_len(stem.0), self.pool_out_len(stem.1)) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err("maxpool".into()),
        };
        let mut blocks = Vec::new();
        let mut cur = pooled;
        for (i, stage) in self.stages().iter().enumerate() {
            for (j, block) in stage.iter().enumerate() {
                cur = block
                    .out_hw(cur.0, cur.1)
                    .ok_or_else(|| format!("layer{}.{j}", i + 1))?;
                blocks.push(cur);
            }
        }
        Ok(ShapeTrace {
            stem,
            pooled,
            blocks,
        })
    }

    /// The smallest square input side the network takes.
    pub fn min_input_side(&self) -> usize {
        // Every layer here maps a size >= 1 to a size >= 1 except where a window does not fit,
        // so the answer is small: search upwards.
        (1..=4096)
            .find(|&s| self.trace(s, s).is_ok())
            .unwrap_or(usize::MAX)
    }
}

/// Spatial sizes through the network, for summaries.
#[derive(Debug, Clone)]
pub(crate) struct ShapeTrace {
    pub stem: (usize, usize),
    pub pooled: (usize, usize),
    pub blocks: Vec<(usize, usize)>,
}
