//! # sknet
//!
//! Selective Kernel Networks (Li, Wang, Hu, Yang, "Selective Kernel Networks", CVPR 2019,
//! arXiv:1903.06586) in Rust, on [burn](https://burn.dev).
//!
//! - [`layers::selective_kernel`]: the SK convolution (split, fuse, select), covering the paper,
//!   timm and the Keras notebook variants.
//! - [`blocks`]: SK basic, SK bottleneck and the notebook's SKConv block.
//! - [`config`] and [`presets`]: every network from one serializable config.
//! - [`model::SkNet`]: the network, with attention outputs and backbone features.
//! - [`summary`]: Keras-style summaries.
//! - [`weights`]: tensors by checkpoint key.
//!
//! ```no_run
//! use sknet::{device, model::SkNet, presets};
//! let device = device::default_device();
//! let config = presets::by_name("skresnet18").unwrap();
//! let model = SkNet::new(&config, &device).unwrap();
//! let x = burn::tensor::Tensor::<4>::zeros([1, 3, 224, 224], &device);
//! let logits = model.forward(x); // [1, 1000]
//! ```

pub mod blocks;
pub mod config;
mod cpu;
pub mod data;
pub mod device;
pub mod eval;
pub mod infer;
pub mod layers;
pub mod model;
pub mod ops;
pub mod presets;
pub mod sizes;
pub mod summary;
pub mod train;
pub mod weights;

pub use config::{ConfigError, NetworkConfig};
pub use model::{InputError, SkNet};
