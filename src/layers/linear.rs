//! Fully connected layer with PyTorch-layout weights (`[out, in]`).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::sizes::Sizes;

/// Builds a [`Linear`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the layer adds a bias (default: yes).
    pub bias: bool,
}

impl LinearConfig {
    /// A layer with bias.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self {
            in_features,
            out_features,
            bias: true,
        }
    }

    /// Sets whether the layer adds a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// PyTorch's default initialisation: uniform(+-1/sqrt(in)) for weight and bias.
    pub fn init(&self, device: &Device) -> Linear {
        let bound = 1.0 / (self.in_features as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Linear {
            weight: init.init([self.out_features, self.in_features], device),
            bias: self.bias.then(|| init.init([self.out_features], device)),
        }
    }
}

/// `y = x W^T + b`, with `W` stored as `[out, in]` like `torch.nn.Linear`.
///
/// # Shapes
/// - input: `[batch, in_features]`
/// - output: `[batch, out_features]`
#[derive(Module, Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.lazy_shape().dims::<2>()[0]
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.lazy_shape().dims::<2>()[1]
    }

    /// Applies the layer.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        // As `(W x^T)^T`: the gemm crate takes the weights as its left operand in the layout
        // they are stored in, which is faster than `x W^T` for the large heads.
        let y = self.weight.val().matmul(input.transpose()).transpose();
        match &self.bias {
            Some(b) => y.add(b.val().unsqueeze_dim(0)),
            None => y,
        }
    }
}

/// A linear layer takes one vector per image: its output is one position.
impl Sizes for Linear {
    fn out_hw(&self, _h: usize, _w: usize) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    fn macs(&self, _h: usize, _w: usize) -> u64 {
        self.weight.lazy_shape().num_elements() as u64
    }

    fn params(&self) -> (usize, usize) {
        let bias = self
            .bias
            .as_ref()
            .map_or(0, |b| b.lazy_shape().num_elements());
        (self.weight.lazy_shape().num_elements() + bias, 0)
    }
}
