//! The GPU backend (`--features wgpu` or `vulkan`) against the CPU backend: the same deterministic
//! networks and inputs on both, inference and a training step.
//!
//! Runs on any Vulkan device, Mesa's lavapipe (Vulkan on the CPU) included:
//!
//! ```sh
//! apt-get install mesa-vulkan-drivers
//! XDG_RUNTIME_DIR=/tmp cargo test --release --features wgpu --test gpu
//! ```
#![cfg(any(feature = "vulkan", feature = "wgpu"))]

mod common;

use burn::tensor::Device;
use common::{input, rel_err, to_vec};
use sknet::{presets, SkNet};

fn gpu() -> Device {
    sknet::device::default_device()
}

fn network(name: &str, units: Option<usize>, device: &Device) -> SkNet {
    let mut config = presets::by_name(name).unwrap();
    if let Some(n) = units {
        config.layers = config.layers.iter().map(|_| n).collect();
    }
    sknet::weights::deterministic_init(SkNet::new(&config, device).unwrap())
}

fn logits_match(name: &str, units: Option<usize>, shape: [usize; 4]) {
    let (cpu, gpu) = (Device::flex(), gpu());
    let want = to_vec(network(name, units, &cpu).forward(input(&shape, &cpu)));
    let model = network(name, units, &gpu);
    let got = to_vec(model.forward(input(&shape, &gpu)));
    let err = rel_err(&got, &want);
    println!("{name}: gpu vs cpu logits rel err {err:.2e}");
    assert!(err < 1e-4, "{name}: gpu vs cpu logits rel err {err:.2e}");
    let folded = to_vec(model.fold_batchnorm().forward(input(&shape, &gpu)));
    let err = rel_err(&folded, &want);
    assert!(
        err < 1e-4,
        "{name}: folded, gpu vs cpu logits rel err {err:.2e}"
    );
}

#[test]
fn skresnet18_forward_matches_cpu() {
    logits_match("skresnet18", None, [2, 3, 96, 96]);
}

#[test]
fn skresnext50_forward_matches_cpu() {
    logits_match("skresnext50_32x4d", None, [1, 3, 224, 224]);
}

#[test]
fn keras_seed_forward_matches_cpu() {
    logits_match("keras-seed", Some(1), [1, 3, 67, 59]);
}

#[test]
fn training_step_gradients_match_cpu() {
    let grads_of = |device: &Device| {
        let device = device.clone().autodiff();
        let model = network("sknet-tiny", None, &device);
        let loss = model
            .forward(input(&[4, 3, 32, 32], &device))
            .powf_scalar(2.0)
            .mean();
        let loss_value = to_vec(loss.clone());
        let grads = loss.backward();
        let tensors = sknet::weights::flat_tensors(&model, Some(&grads));
        let grad = |key: &str| {
            let t = tensors
                .iter()
                .find(|t| t.named.path == key)
                .expect("tensor");
            t.grad.clone().expect("gradient")
        };
        let (conv, fc) = (grad("conv1.weight"), grad("fc.weight"));
        (loss_value, to_vec(conv), to_vec(fc))
    };
    let (cpu, gpu) = (grads_of(&Device::flex()), grads_of(&gpu()));
    for (what, got, want) in [
        ("loss", &gpu.0, &cpu.0),
        ("stem grad", &gpu.1, &cpu.1),
        ("fc grad", &gpu.2, &cpu.2),
    ] {
        let err = rel_err(got, want);
        println!("sknet-tiny {what}: gpu vs cpu rel err {err:.2e}");
        assert!(err < 1e-4, "{what}: gpu vs cpu rel err {err:.2e}");
    }
}
