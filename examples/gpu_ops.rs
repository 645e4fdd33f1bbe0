//! Runs the operations an SKNet forward uses, one at a time, on the default device, printing each
//! before it runs: on a driver that fails, the last line names the operation.
//!
//! XDG_RUNTIME_DIR=/tmp cargo run --release --features wgpu --example gpu_ops   (or --features vulkan)

use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::{batch_norm, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Distribution, Tensor};

fn step<const D: usize>(name: &str, f: impl FnOnce() -> Tensor<D>) {
    eprint!("{name} ... ");
    let v: f32 = f().sum().into_scalar();
    eprintln!("ok ({v:.3})");
}

fn main() {
    let device = sknet::device::default_device();
    eprintln!("backend: {}", sknet::device::backend_name());
    let x = || Tensor::<4>::random([2, 8, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let w = |o: usize, i: usize, k: usize| {
        Tensor::<4>::random([o, i, k, k], Distribution::Normal(0.0, 0.1), &device)
    };
    let v = |n: usize| Tensor::<1>::random([n], Distribution::Uniform(0.5, 1.5), &device);
    step("add", || x() + x());
    step("relu", || relu(x()));
    step("mean_dim", || x().mean_dim(3).mean_dim(2));
    step("matmul", || {
        Tensor::<2>::random([4, 8], Distribution::Default, &device)
            .matmul(Tensor::<2>::random([8, 16], Distribution::Default, &device))
            .unsqueeze::<4>()
    });
    step("softmax", || {
        softmax(
            Tensor::<3>::random([2, 2, 8], Distribution::Default, &device),
            1,
        )
        .unsqueeze::<4>()
    });
    step("batch_norm", || {
        batch_norm(x(), v(8), v(8), v(8), v(8), 1e-5)
    });
    step("conv 1x1", || {
        conv2d(
            x(),
            w(16, 8, 1),
            None,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        )
    });
    step("conv 3x3", || {
        conv2d(
            x(),
            w(16, 8, 3),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        )
    });
    step("conv 3x3 bias", || {
        conv2d(
            x(),
            w(16, 8, 3),
            Some(v(16)),
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        )
    });
    step("conv 3x3 stride 2", || {
        conv2d(
            x(),
            w(16, 8, 3),
            None,
            ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
        )
    });
    step("conv 3x3 dilated", || {
        conv2d(
            x(),
            w(16, 8, 3),
            None,
            ConvOptions::new([1, 1], [2, 2], [2, 2], 1),
        )
    });
    step("conv 3x3 grouped", || {
        conv2d(
            x(),
            w(16, 2, 3),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 4),
        )
    });
    step("conv 7x7 stride 2", || {
        conv2d(
            Tensor::<4>::random([1, 3, 32, 32], Distribution::Default, &device),
            w(8, 3, 7),
            None,
            ConvOptions::new([2, 2], [3, 3], [1, 1], 1),
        )
    });
    step("max_pool", || {
        max_pool2d(
            x(),
            MaxPoolOptions::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
        )
    });
    step("narrow + mul", || x().narrow(1, 0, 4) * x().narrow(1, 4, 4));
    eprintln!("all ok");
}
