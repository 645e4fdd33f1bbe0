//! Times sknet's 1x1 convs (inference, through `sknet::ops::conv2d`) on skresnext50_32x4d's
//! shapes, with the rate each reaches.
//!
//! cargo run --release --example pointwise_conv -- [BATCH]
//!
//! Each time is the fastest of 21 calls.

use burn::tensor::{ops::ConvOptions, Device, Distribution, Tensor};
use sknet::ops::{conv2d, Activation};
use std::time::Instant;

fn main() {
    let device = Device::flex();
    let batch: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("BATCH is a number"))
        .unwrap_or(1);
    // (in, out, size, stride, how many in the network)
    let cases = [
        (64, 128, 56, 1, 1),
        (64, 256, 56, 1, 2),
        (256, 128, 56, 1, 2),
        (128, 256, 56, 1, 2),
        (256, 256, 56, 1, 1),
        (256, 512, 56, 2, 1),
        (512, 256, 28, 1, 3),
        (256, 512, 28, 1, 4),
        (512, 512, 28, 1, 1),
        (512, 1024, 28, 2, 1),
        (1024, 512, 14, 1, 5),
        (512, 1024, 14, 1, 6),
        (1024, 1024, 14, 1, 1),
        (1024, 2048, 14, 2, 1),
        (2048, 1024, 7, 1, 2),
        (1024, 2048, 7, 1, 3),
    ];
    let mut total = 0.0;
    let mut flops = 0.0;
    for (cin, cout, hw, s, count) in cases {
        let x = Tensor::<4>::random([batch, cin, hw, hw], Distribution::Normal(0., 1.), &device);
        // Weights are cold in a network's forward pass: cycle through more than the L3 holds.
        let copies = (64 << 20) / (cout * cin * 4) + 1;
        let ws: Vec<_> = (0..copies)
            .map(|_| Tensor::<4>::random([cout, cin, 1, 1], Distribution::Normal(0., 1.), &device))
            .collect();
        let b = Tensor::<1>::random([cout], Distribution::Normal(0., 1.), &device);
        let opts = ConvOptions::new([s, s], [0, 0], [1, 1], 1);
        let mut best = f64::INFINITY;
        for call in 0..21 {
            let w = &ws[call % copies];
            let start = Instant::now();
            let y = conv2d(
                x.clone(),
                w.clone(),
                Some(b.clone()),
                None,
                opts.clone(),
                Activation::Relu,
            );
            let _ = y.into_data();
            best = best.min(start.elapsed().as_secs_f64() * 1e3);
        }
        let out = hw / s;
        let gflop = 2.0 * (batch * cin * cout * out * out) as f64 / 1e9;
        total += best * count as f64;
        flops += gflop * count as f64;
        println!(
            "b{batch} {cin}->{cout} {hw}x{hw} s{s} x{count}: {best:.3} ms, {:.0} GFLOP/s",
            gflop / best * 1e3
        );
    }
    println!("total {total:.1} ms, {:.0} GFLOP/s", flops / total * 1e3);
}
