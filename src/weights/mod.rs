//! Tensors by name: checkpoint files (safetensors, PyTorch), loading with a full key report,
//! export to timm-compatible state dicts, the Hugging Face hub cache, and the deterministic
//! weights the parity tests use.

pub mod checkpoint;
pub mod deterministic;
pub mod hub;
pub mod load;
pub mod metadata;
pub mod paths;
pub mod seeded;

pub use checkpoint::{Checkpoint, RawTensor, WeightsError};
pub use deterministic::deterministic_init;
pub use load::{load_into, load_pretrained, LoadOptions, LoadReport, Pretrained};
pub use paths::{
    flat_tensors, named_tensors, replace_tensors, FlatTensor, NamedTensor, TensorRole, TensorSource,
};
pub use seeded::seeded_init;
