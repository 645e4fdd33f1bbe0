//! # sknet
//!
//! Selective Kernel Networks (Li, Wang, Hu, Yang, "Selective Kernel Networks", CVPR 2019,
//! arXiv:1903.06586) in Rust, on [burn](https://burn.dev).
//!
//! - [`SelectiveKernel`]: the SK convolution (split, fuse, select), covering the paper, timm and
//!   the Keras notebook variants ([`SkConfig`]).
//! - [`blocks`]: SK basic, SK bottleneck and the notebook's SKConv block.
//! - [`NetworkConfig`] and [`presets`]: every network from one serializable config.
//! - [`SkNet`]: the network, with attention outputs and backbone features.
//! - [`weights`]: checkpoints (safetensors, PyTorch), loading with a key report, timm export.
//! - [`train`], [`eval`], [`infer`]: training with an observer, evaluation, prediction.
//! - [`onnx`]: export to ONNX (opset 17), BatchNorms folded or kept, attention as outputs.
//! - `serve` (feature `serve`, on by default): an HTTP inference server with dynamic batching.
//! - [`ops`]: the fused tensor operations the layers are made of; they pick sknet's CPU kernels
//!   where those apply and burn's ops elsewhere.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use sknet::{presets, SelectiveKernelConfig, SkConfig, SkNet};
//!
//! let device = Device::flex();
//! let mut config = presets::by_name("sknet-tiny")?;
//! config.num_classes = 10;
//! let model = SkNet::new(&config, &device)?;
//! let x = Tensor::<4>::zeros([2, 3, 32, 32], &device);
//! let (logits, attention) = model.forward_with_attention(x);
//! assert_eq!(logits.dims(), [2, 10]);
//! assert_eq!(attention[0].weights.dims()[1], 2); // two branches per SK unit
//!
//! // The SK layer on its own: the paper's two branches (3x3 and dilated 3x3), 32 groups.
//! let sk = SelectiveKernelConfig::new(64, 128, SkConfig::paper())
//!     .with_stride(2)
//!     .init(&device);
//! let (y, weights) = sk.forward_with_attention(Tensor::<4>::zeros([2, 64, 16, 16], &device));
//! assert_eq!(y.dims(), [2, 128, 8, 8]);
//! assert_eq!(weights.dims(), [2, 2, 128]); // [batch, M, C], summing to 1 over M
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Pretrained weights, from a file or the Hugging Face hub cache:
//!
//! ```no_run
//! use sknet::weights::{load_pretrained, LoadOptions};
//!
//! let device = burn::tensor::Device::flex();
//! let loaded = load_pretrained("hf:timm/skresnet18.ra_in1k", &LoadOptions::default(), &device)?;
//! let model = loaded.model.fold_batchnorm(); // for inference
//! # Ok::<(), sknet::weights::WeightsError>(())
//! ```

pub mod attention;
pub mod blocks;
pub mod config;
mod cpu;
pub mod data;
pub mod device;
pub mod eval;
mod files;
pub mod infer;
pub mod layers;
pub mod model;
pub mod onnx;
pub mod ops;
pub mod plot;
pub mod presets;
#[cfg(feature = "serve")]
pub mod serve;
pub mod sizes;
pub mod summary;
pub mod train;
pub mod weights;

pub use config::{ConfigError, NetworkConfig, SkConfig};
pub use layers::{Selection, SelectiveKernel, SelectiveKernelConfig};
pub use model::{InputError, SkNet};
pub use sizes::Sizes;
pub use weights::{load_pretrained, LoadOptions, Pretrained, WeightsError};
