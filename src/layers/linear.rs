//! Fully connected layer with PyTorch-layout weights (`[out, in]`).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

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
    /// PyTorch's default initialisation: uniform(+-1/sqrt(in)) for weight and bias.
    pub fn new(in_features: usize, out_features: usize, bias: bool, device: &Device) -> Self {
        let bound = 1.0 / (in_features as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Self {
            weight: init.init([out_features, in_features], device),
            bias: bias.then(|| init.init([out_features], device)),
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.shape().dims::<2>()[1]
    }

    /// Applies the layer.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        // As `(W x^T)^T`: the gemm crate takes the weights as its left operand in the layout
        // they are stored in, about twice as fast as `x W^T` for skresnext50's 2048 -> 1000
        // head at batch 8.
        let y = self.weight.val().matmul(input.transpose()).transpose();
        match &self.bias {
            Some(b) => y.add(b.val().unsqueeze_dim(0)),
            None => y,
        }
    }

    /// Learnable parameters.
    pub fn params(&self) -> usize {
        self.weight.shape().num_elements()
            + self.bias.as_ref().map_or(0, |b| b.shape().num_elements())
    }
}
