//! 2-D convolution with PyTorch-layout weights (`[out, in / groups, kh, kw]`) and either
//! PyTorch's symmetric padding or Keras' `'same'` padding.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

use crate::config::Padding;
use crate::ops::{self, Activation, PackedWeights};
use crate::sizes::Sizes;

/// Geometry of a convolution: everything but its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
    /// Groups.
    pub groups: usize,
    /// Padding convention.
    pub padding: Padding,
}

impl ConvGeometry {
    /// A `kernel x kernel` conv with stride 1, dilation 1, one group.
    pub fn new(kernel: usize, padding: Padding) -> Self {
        Self {
            kernel,
            stride: 1,
            dilation: 1,
            groups: 1,
            padding,
        }
    }

    /// Sets the stride.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the dilation.
    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets the groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    fn effective_kernel(&self) -> usize {
        self.dilation * (self.kernel - 1) + 1
    }

    /// (begin, end) padding along one axis of length `len`.
    pub fn pads(&self, len: usize) -> (usize, usize) {
        match self.padding {
            Padding::Symmetric => {
                let p = ((self.stride - 1) + self.dilation * (self.kernel - 1)) / 2;
                (p, p)
            }
            Padding::Same => {
                let out = len.div_ceil(self.stride);
                let total = ((out.saturating_sub(1)) * self.stride + self.effective_kernel())
                    .saturating_sub(len);
                (total / 2, total - total / 2)
            }
        }
    }

    /// Output length along one axis, or `None` when the input is too small for one window.
    pub fn out_len(&self, len: usize) -> Option<usize> {
        let (a, b) = self.pads(len);
        let padded = len + a + b;
        let k = self.effective_kernel();
        (len > 0 && padded >= k).then(|| (padded - k) / self.stride + 1)
    }
}

/// A 2-D convolution. Parameter names follow PyTorch: `weight`, `bias`.
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - output: `[batch, out_channels, height', width']`
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in / groups, kernel, kernel]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`, when the conv has a bias.
    pub bias: Option<Param<Tensor<1>>>,
    /// Kernel, stride, dilation, groups, padding.
    #[module(skip)]
    pub geometry: ConvGeometry,
    /// The weights packed for CPU inference's packed kernel, once the conv is prepared for
    /// inference ([`Conv2d::pack_weights`]); not part of the checkpoint.
    #[module(skip)]
    pub packed: Option<PackedWeights>,
}

/// Builds a [`Conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel, stride, dilation, groups, padding.
    pub geometry: ConvGeometry,
    /// Whether the conv adds a bias (default: no, as before a BatchNorm).
    pub bias: bool,
}

impl ConvConfig {
    /// A conv without bias.
    pub fn new(in_channels: usize, out_channels: usize, geometry: ConvGeometry) -> Self {
        Self {
            in_channels,
            out_channels,
            geometry,
            bias: false,
        }
    }

    /// Sets whether the conv adds a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// A new conv with Kaiming-normal weights (ReLU gain, `fan_out = out * k * k` as PyTorch's
    /// `kaiming_normal_(mode="fan_out")` computes it, which timm's ResNet uses), and zero bias.
    pub fn init(&self, device: &Device) -> Conv2d {
        let (geometry, in_channels, out_channels) =
            (self.geometry, self.in_channels, self.out_channels);
        let k = geometry.kernel;
        let fan_in = in_channels / geometry.groups * k * k;
        let fan_out = out_channels * k * k;
        let weight = Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        }
        .init_with(
            [out_channels, in_channels / geometry.groups, k, k],
            Some(fan_in),
            Some(fan_out),
            device,
        );
        let bias = self
            .bias
            .then(|| Initializer::Zeros.init([out_channels], device));
        Conv2d {
            weight,
            bias,
            geometry,
            packed: None,
        }
    }
}

impl Conv2d {
    /// Packs the weights for CPU inference's packed kernel where it applies (see
    /// [`ops::pack_conv_weights`]). Nothing is packed until a call uses them, and they are used
    /// only while the weights stay the tensor they were packed from.
    pub fn pack_weights(self) -> Self {
        let packed = ops::pack_conv_weights(&self.weight.val(), self.geometry.groups);
        Self { packed, ..self }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.lazy_shape().dims::<4>()[0]
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.weight.lazy_shape().dims::<4>()[1] * self.geometry.groups
    }

    /// Applies the convolution.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.forward_act(input, Activation::Identity)
    }

    /// `act(conv(input))`, the activation applied as the output is stored where a kernel can.
    pub fn forward_act(&self, input: Tensor<4>, activation: Activation) -> Tensor<4> {
        let [_, _, h, w] = input.dims();
        let bias = self.bias.as_ref().map(|b| b.val());
        let (weight, options) = (self.weight.val(), self.options(h, w));
        ops::conv2d(
            input,
            weight,
            bias,
            self.packed.as_ref(),
            options,
            activation,
        )
    }

    /// `relu(conv(input) + residual)`, a residual block's last conv and its ending.
    pub fn forward_add_relu(&self, input: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = input.dims();
        let bias = self.bias.as_ref().map(|b| b.val());
        let (weight, options) = (self.weight.val(), self.options(h, w));
        ops::conv2d_add_relu(input, weight, bias, self.packed.as_ref(), options, residual)
    }

    /// The conv's options for an input of `(h, w)`.
    fn options(&self, h: usize, w: usize) -> ConvOptions<2> {
        let g = self.geometry;
        ConvOptions::new_with_padding(
            [g.stride, g.stride],
            [g.pads(h), g.pads(w)],
            [g.dilation, g.dilation],
            g.groups,
        )
    }
}

impl Sizes for Conv2d {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Some((self.geometry.out_len(h)?, self.geometry.out_len(w)?))
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        let (oh, ow) = self.out_hw(h, w).unwrap_or((0, 0));
        let [o, i, kh, kw] = self.weight.lazy_shape().dims::<4>();
        (oh * ow * o * i * kh * kw) as u64
    }

    fn params(&self) -> (usize, usize) {
        let bias = self
            .bias
            .as_ref()
            .map_or(0, |b| b.lazy_shape().num_elements());
        (self.weight.lazy_shape().num_elements() + bias, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // TF 'same': 224 -> 112 with a 7x7/2 kernel pads 2 before and 3 after.
        let g = ConvGeometry::new(7, Padding::Same).with_stride(2);
        assert_eq!(g.pads(224), (2, 3));
        assert_eq!(g.out_len(224), Some(112));
        // 3x3/2 on 112: total pad 1, all at the end.
        let g = ConvGeometry::new(3, Padding::Same).with_stride(2);
        assert_eq!(g.pads(112), (0, 1));
        assert_eq!(g.out_len(113), Some(57));
    }

    #[test]
    fn symmetric_padding_matches_timm() {
        let g = ConvGeometry::new(3, Padding::Symmetric).with_dilation(2);
        assert_eq!(g.pads(56), (2, 2));
        assert_eq!(g.out_len(56), Some(56));
        let g = ConvGeometry::new(3, Padding::Symmetric).with_stride(2);
        assert_eq!(g.out_len(56), Some(28));
        let g = ConvGeometry::new(1, Padding::Symmetric).with_stride(2);
        assert_eq!(g.out_len(7), Some(4));
        let g = ConvGeometry::new(7, Padding::Symmetric).with_stride(2);
        assert_eq!(g.out_len(1), Some(1));
        let g = ConvGeometry::new(3, Padding::Symmetric).with_dilation(3);
        assert_eq!(g.pads(5), (3, 3));
    }
}
