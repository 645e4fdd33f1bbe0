//! Images/s of one SGD training step (forward, backward, update) for a preset or a config file,
//! to compare with `tools/bench_train_torch.py` on the same machine.
//!
//! cargo run --release --example train_step -- [ARCH | CONFIG.json] [BATCH] [STEPS]

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use sknet::train::optim::{Optimizer, OptimizerConfig, OptimizerKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let arch = args.next().unwrap_or_else(|| "sknet-tiny".into());
    let batch: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mut config = if arch.ends_with(".json") || arch.ends_with(".toml") {
        sknet::NetworkConfig::from_file(std::path::Path::new(&arch))?
    } else {
        sknet::presets::by_name(&arch)?
    };
    config.num_classes = 10;
    let device = sknet::device::training_device();
    let mut model = sknet::weights::seeded_init(sknet::SkNet::new(&config, &device)?, 0);
    let mut sgd = Optimizer::new(OptimizerConfig {
        kind: OptimizerKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        weight_decay: 5e-4,
        backbone_lr_scale: 1.0,
    });
    let [h, w] = config.default_input;
    let mut times = Vec::new();
    for _ in 0..steps + 2 {
        let x = Tensor::<4>::random([batch, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
        let t = Instant::now();
        // The whole step on the CPU kernels' thread pool, as `sknet train` runs it.
        model = sknet::ops::on_cpu_pool(|| {
            let loss = model.forward(x).powf_scalar(2.0).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            sgd.step(model, grads, 0.01)
        });
        let _ = model.fc.bias.as_ref().map(|b| b.val().into_data());
        times.push(t.elapsed().as_secs_f64());
    }
    let mut times = times.split_off(2);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"arch\": \"{}\", \"batch\": {batch}, \"median_step_s\": {median:.4}, \"images_per_s\": {:.1}}}",
        config.name,
        batch as f64 / median
    );
    Ok(())
}
