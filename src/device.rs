//! The one place that picks the compute device.
//!
//! The default build runs on burn's pure-Rust `flex` CPU backend. Building with
//! `--features vulkan` (or `wgpu`) runs on a GPU through Vulkan/WebGPU; `--features cuda` is
//! wired for machines whose build can fetch what burn's CUDA backend needs (it is not built in
//! this project's CI). The first enabled of cuda, vulkan, wgpu wins.

use burn::tensor::Device;

/// Name of the backend this binary computes on.
pub fn backend_name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "vulkan") {
        "vulkan"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else {
        "flex (CPU)"
    }
}

/// The device inference runs on.
#[allow(unreachable_code)]
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    return Device::cuda(0);
    #[cfg(feature = "vulkan")]
    return Device::vulkan(burn::tensor::DeviceKind::DefaultDevice);
    #[cfg(feature = "wgpu")]
    return Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    Device::flex()
}

/// The device training runs on: the default device with automatic differentiation.
pub fn training_device() -> Device {
    default_device().autodiff()
}
