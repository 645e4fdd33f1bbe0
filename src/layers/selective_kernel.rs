//! The selective kernel convolution (Li et al., "Selective Kernel Networks", CVPR 2019, sec. 3.1).
//!
//! Split, fuse, select:
//! - **Split**: M branches, each a grouped convolution with its own receptive field, + BN + ReLU:
//!   `U_m = ReLU(BN(conv_m(x)))`.
//! - **Fuse**: `U = sum_m U_m`, `s = GAP(U)`, `z = act(norm(W_reduce s))`, where `norm`+`act` is
//!   BN+ReLU in the paper and timm and nothing in the Keras notebook.
//! - **Select**: `a = softmax over m of (W_select z)`, per channel; `V = sum_m a_m * U_m`.
//!
//! Matches timm's `SelectiveKernel` / `SelectiveKernelAttn` (module paths `paths.{m}.conv`,
//! `paths.{m}.bn`, `attn.fc_reduce`, `attn.bn`, `attn.fc_select`), and, with
//! [`SkConfig::keras`], the notebook's `SKUnit` (true k x k kernels, biased Dense layers, no norm
//! on z, channel-major logits).

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

use super::{
    fold_into_conv, BatchNorm2d, BatchNorm2dConfig, Conv2d, ConvConfig, ConvGeometry, ConvNormAct,
    ConvNormActConfig,
};
use crate::config::{LogitLayout, NormConfig, Padding, SkConfig};
use crate::ops::{self, Activation};
use crate::sizes::{sum_params, Sizes};

/// Builds a [`SelectiveKernel`].
#[derive(Debug, Clone)]
pub struct SelectiveKernelConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels C (the width of every branch).
    pub out_channels: usize,
    /// Stride of every branch.
    pub stride: usize,
    /// Branches, groups, attention.
    pub sk: SkConfig,
    /// BatchNorm settings.
    pub norm: NormConfig,
    /// Padding convention.
    pub padding: Padding,
}

impl SelectiveKernelConfig {
    /// A stride-1 unit with PyTorch BN and padding.
    pub fn new(in_channels: usize, out_channels: usize, sk: SkConfig) -> Self {
        Self {
            in_channels,
            out_channels,
            stride: 1,
            sk,
            norm: NormConfig::pytorch(),
            padding: Padding::Symmetric,
        }
    }

    /// Sets the stride.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the BatchNorm settings.
    pub fn with_norm(mut self, norm: NormConfig) -> Self {
        self.norm = norm;
        self
    }

    /// Sets the padding convention.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Creates the unit. Channel counts must be valid for the groups and the split (see
    /// [`crate::config::NetworkConfig::validate`], which checks whole networks).
    pub fn init(&self, device: &Device) -> SelectiveKernel {
        let sk = &self.sk;
        let m = sk.branches();
        let c = self.out_channels;
        let branch_in = if sk.split_input {
            self.in_channels / m
        } else {
            self.in_channels
        };
        let groups = sk.groups.min(c);
        let paths = (0..m)
            .map(|i| {
                let (kernel, dilation) = sk.branch_kernel(i);
                let geometry = ConvGeometry::new(kernel, self.padding)
                    .with_stride(self.stride)
                    .with_dilation(dilation)
                    .with_groups(groups);
                ConvNormActConfig::new(branch_in, c, geometry)
                    .with_bias(sk.conv_bias)
                    .with_norm(self.norm)
                    .init(device)
            })
            .collect();
        let d = sk.attn_width.resolve(c);
        let one_by_one = ConvGeometry::new(1, Padding::Symmetric);
        let attn = SelectiveKernelAttn {
            fc_reduce: ConvConfig::new(c, d, one_by_one)
                .with_bias(sk.attn_bias)
                .init(device),
            bn: sk
                .attn_norm_act
                .then(|| BatchNorm2dConfig::new(d).with_norm(self.norm).init(device)),
            fc_select: ConvConfig::new(d, c * m, one_by_one)
                .with_bias(sk.attn_bias)
                .init(device),
            layout: sk.layout,
        };
        SelectiveKernel {
            paths,
            attn,
            split_input: sk.split_input,
            selection: Selection::Learned,
        }
    }
}

/// The fuse and select half: from the branch outputs to per-channel branch weights.
///
/// The reduce and select layers are stored as 1x1 convolutions (`[out, in, 1, 1]`), as in timm
/// and the Caffe original, and applied as matrix products on the pooled vector.
#[derive(Module, Debug)]
pub struct SelectiveKernelAttn {
    /// `W_reduce`: C -> d.
    pub fc_reduce: Conv2d,
    /// BN on z (followed by ReLU), when configured.
    pub bn: Option<BatchNorm2d>,
    /// `W_select`: d -> M * C.
    pub fc_select: Conv2d,
    /// Where logit (m, c) sits among the M * C outputs.
    #[module(skip)]
    pub layout: LogitLayout,
}

/// Applies a 1x1 conv stored as `[out, in, 1, 1]` to a `[batch, in]` matrix.
fn pointwise(conv: &Conv2d, x: Tensor<2>) -> Tensor<2> {
    let [o, i, _, _] = conv.weight.lazy_shape().dims::<4>();
    // `(W x^T)^T`, weights on the left as stored: see `Linear::forward`.
    let y = conv
        .weight
        .val()
        .reshape([o, i])
        .matmul(x.transpose())
        .transpose();
    match &conv.bias {
        Some(b) => y.add(b.val().unsqueeze_dim(0)),
        None => y,
    }
}

impl SelectiveKernelAttn {
    /// Branch weights from the fused map.
    ///
    /// # Shapes
    /// - `fused`: `[batch, C, height, width]` (the sum of the branch outputs)
    /// - output: `[batch, M, C]`, summing to 1 over M
    pub fn forward(&self, fused: Tensor<4>) -> Tensor<3> {
        self.forward_pooled(ops::spatial_mean(fused))
    }

    /// Branch weights from the fused map's global average `s`.
    ///
    /// # Shapes
    /// - `s`: `[batch, C]`
    /// - output: `[batch, M, C]`, summing to 1 over M
    pub fn forward_pooled(&self, s: Tensor<2>) -> Tensor<3> {
        let [b, c] = s.dims();
        let mut z = pointwise(&self.fc_reduce, s);
        if let Some(bn) = &self.bn {
            z = bn.forward_act(z, Activation::Relu);
        }
        let logits = pointwise(&self.fc_select, z);
        let m = self.fc_select.out_channels() / c;
        let logits = match self.layout {
            LogitLayout::BranchMajor => logits.reshape([b, m, c]),
            LogitLayout::ChannelMajor => logits.reshape([b, c, m]).swap_dims(1, 2),
        };
        softmax(logits, 1)
    }

    /// Folds the BN on z into `fc_reduce`, for inference.
    pub fn fold_batchnorm(self) -> Self {
        match self.bn {
            Some(bn) => {
                let (fc_reduce, bn) = fold_into_conv(self.fc_reduce, bn);
                Self {
                    fc_reduce,
                    bn: Some(bn),
                    ..self
                }
            }
            None => self,
        }
    }
}

/// Works on the pooled vector: `out_hw` is the single position it outputs.
impl Sizes for SelectiveKernelAttn {
    fn out_hw(&self, _h: usize, _w: usize) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    fn macs(&self, _h: usize, _w: usize) -> u64 {
        self.fc_reduce.macs(1, 1) + self.fc_select.macs(1, 1)
    }

    fn params(&self) -> (usize, usize) {
        sum_params([
            self.fc_reduce.params(),
            self.bn.params(),
            self.fc_select.params(),
        ])
    }
}

/// Which branch weights the select step uses: the learned attention, or fixed weights in its
/// place for an ablation (does the selection matter on this model?).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Selection {
    /// The attention computed from the input (the network as trained).
    #[default]
    Learned,
    /// `1 / M` for every branch and channel.
    Uniform,
    /// Weight 1 on branch K, 0 on the others: a single-kernel network.
    Branch(usize),
}

/// The selective kernel convolution: M branches, fused and selected by channel attention.
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - output: `[batch, C, height / stride, width / stride]`
/// - attention: `[batch, M, C]`
#[derive(Module, Debug)]
pub struct SelectiveKernel {
    /// The M branches (split).
    pub paths: Vec<ConvNormAct>,
    /// Fuse and select.
    pub attn: SelectiveKernelAttn,
    /// Each branch sees `in_channels / M` channels (timm's split_input).
    #[module(skip)]
    pub split_input: bool,
    /// The branch weights the select step uses (learned, unless ablated).
    #[module(skip)]
    pub selection: Selection,
}

impl SelectiveKernel {
    /// Output and per-channel branch weights.
    pub fn forward_with_attention(&self, input: Tensor<4>) -> (Tensor<4>, Tensor<3>) {
        let branches = self.split(input);
        let attention = match self.selection {
            Selection::Learned => self.attn.forward_pooled(fuse(&branches)),
            fixed => {
                let [batch, c, _, _] = branches[0].dims();
                fixed_attention(fixed, [batch, branches.len(), c], &branches[0].device())
            }
        };
        (ops::sk_select(branches, attention.clone()), attention)
    }

    /// Output only.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.forward_with_attention(input).0
    }

    /// Split: every branch on the input, or on its own slice of the input's channels.
    fn split(&self, input: Tensor<4>) -> Vec<Tensor<4>> {
        let m = self.paths.len();
        let part = input.dims()[1] / m;
        self.paths
            .iter()
            .enumerate()
            .map(|(i, path)| match self.split_input {
                true => path.forward(ops::channel_window(input.clone(), i * part, part)),
                false => path.forward(input.clone()),
            })
            .collect()
    }

    /// Folds every BN that follows a convolution into it, for inference.
    pub fn fold_batchnorm(self) -> Self {
        Self {
            paths: self
                .paths
                .into_iter()
                .map(ConvNormAct::fold_batchnorm)
                .collect(),
            attn: self.attn.fold_batchnorm(),
            ..self
        }
    }

    /// Output channels C.
    pub fn out_channels(&self) -> usize {
        self.paths[0].conv.out_channels()
    }
}

/// The `[batch, M, C]` weights of a fixed selection (a branch outside `0..M` gets none).
fn fixed_attention(selection: Selection, [batch, m, c]: [usize; 3], device: &Device) -> Tensor<3> {
    let per_branch: Vec<f32> = (0..m)
        .map(|i| match selection {
            Selection::Learned | Selection::Uniform => 1.0 / m as f32,
            Selection::Branch(k) => (i == k) as u8 as f32,
        })
        .collect();
    let values: Vec<f32> = (0..batch)
        .flat_map(|_| per_branch.iter().flat_map(|&v| std::iter::repeat_n(v, c)))
        .collect();
    Tensor::from_data(TensorData::new(values, [batch, m, c]), device)
}

/// Fuse: `s = GAP(sum_m U_m)`, taken as the sum of the branches' averages, so the fused map
/// itself is never formed.
fn fuse(branches: &[Tensor<4>]) -> Tensor<2> {
    branches
        .iter()
        .map(|u| ops::spatial_mean(u.clone()))
        .reduce(|acc, s| acc.add(s))
        .expect("an SK unit has at least two branches")
}

impl Sizes for SelectiveKernel {
    /// `None` also when the branches disagree on the output size.
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let first = self.paths[0].out_hw(h, w)?;
        self.paths
            .iter()
            .all(|p| p.out_hw(h, w) == Some(first))
            .then_some(first)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        let branches: u64 = self.paths.iter().map(|p| p.macs(h, w)).sum();
        branches + self.attn.macs(1, 1)
    }

    fn params(&self) -> (usize, usize) {
        sum_params(
            self.paths
                .iter()
                .map(Sizes::params)
                .chain([self.attn.params()]),
        )
    }
}
