//! Tensors by name: the path walk that checkpoint import/export builds on, and the deterministic
//! weights the parity tests use.

pub mod deterministic;
pub mod paths;

pub use deterministic::deterministic_init;
pub use paths::{
    flat_tensors, named_tensors, replace_tensors, FlatTensor, NamedTensor, TensorRole, TensorSource,
};
