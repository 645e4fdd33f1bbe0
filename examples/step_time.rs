use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use std::time::Instant;
fn main() {
    let arch = std::env::args().nth(1).unwrap_or("sknet-tiny".into());
    let batch: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(64);
    let device = Device::flex().autodiff();
    let mut config = sknet::presets::by_name(&arch).unwrap();
    config.num_classes = 10;
    let mut model = sknet::SkNet::new(&config, &device).unwrap();
    let mut sgd = sknet::train::optim::Sgd::new(sknet::train::optim::SgdConfig {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 5e-4,
    });
    let [h, w] = config.default_input;
    for i in 0..6 {
        let x = Tensor::<4>::random(
            [batch, 3, h, w],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let t = Instant::now();
        let logits = model.forward(x);
        let t1 = t.elapsed();
        let loss = logits.powf_scalar(2.0).mean();
        let g = loss.backward();
        let t2 = t.elapsed();
        let grads = GradientsParams::from_grads(g, &model);
        model = sgd.step(model, grads, 0.01);
        let t3 = t.elapsed();
        println!(
            "step {i}: fwd {:?} bwd {:?} opt {:?} total {:?} -> {:.0} img/s",
            t1,
            t2 - t1,
            t3 - t2,
            t3,
            batch as f64 / t3.as_secs_f64()
        );
    }
}
