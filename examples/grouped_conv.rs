//! Times burn-flex's convolution against sknet's (`sknet::ops::conv2d` with unpacked weights,
//! which runs the direct kernel at inference) on the convs that sknet sends to the direct kernel:
//! skresnext50_32x4d's grouped SK convs, and the dense kxk convs of skresnet18 and the ResNet stem.
//!
//! cargo run --release --example grouped_conv -- [BATCH]
//!
//! Each time is the fastest of 21 calls: this machine's speed drifts, and the minimum is the
//! steadiest statistic for a comparison.

use burn::tensor::{module::conv2d, ops::ConvOptions, Device, Distribution, Tensor};
use sknet::ops::{self, Activation};
use std::time::Instant;

fn main() {
    let device = Device::flex();
    let batch: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("BATCH is a number"))
        .unwrap_or(1);
    // (name, in, out, groups, kernel, input size, stride, dilation)
    let mut cases = vec![(
        "stem", 3usize, 64usize, 1usize, 7usize, 224usize, 2usize, 1usize,
    )];
    // skresnext50's SK unit: two paths (3x3, and 3x3 dilated 2), 32 groups, channels in = out;
    // a stage's first unit has stride 2.
    for (c, hw, s) in [
        (128, 56, 1),
        (256, 56, 2),
        (256, 28, 1),
        (512, 28, 2),
        (512, 14, 1),
        (1024, 14, 2),
        (1024, 7, 1),
    ] {
        for d in [1, 2] {
            cases.push(("skresnext50", c, c, 32, 3, hw, s, d));
        }
    }
    // skresnet18: the SK paths see half the input channels; the second conv is a dense 3x3.
    for (c, hw, s) in [
        (64, 56, 1),
        (128, 56, 2),
        (128, 28, 1),
        (256, 14, 1),
        (512, 7, 1),
    ] {
        for d in [1, 2] {
            cases.push(("skresnet18 sk", c / 2, c, 1, 3, hw, s, d));
        }
        cases.push(("skresnet18 conv2", c, c, 1, 3, hw / s, 1, 1));
    }
    let (mut total_burn, mut total_direct) = (0.0, 0.0);
    for (name, cin, cout, g, k, hw, s, d) in cases {
        let x = Tensor::<4>::random([batch, cin, hw, hw], Distribution::Normal(0., 1.), &device);
        let w = Tensor::<4>::random([cout, cin / g, k, k], Distribution::Normal(0., 1.), &device);
        let pad = d * (k - 1) / 2;
        let opts = ConvOptions::new([s, s], [pad, pad], [d, d], g);
        let mut best = [f64::INFINITY; 2];
        for (which, best) in best.iter_mut().enumerate() {
            for _ in 0..21 {
                let start = Instant::now();
                let y = if which == 0 {
                    conv2d(x.clone(), w.clone(), None, opts.clone())
                } else {
                    ops::conv2d(
                        x.clone(),
                        w.clone(),
                        None,
                        None,
                        opts.clone(),
                        Activation::Identity,
                    )
                };
                let _ = y.into_data();
                *best = best.min(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        total_burn += best[0];
        total_direct += best[1];
        println!(
            "b{batch} {name} {cin}->{cout} g{g} k{k} {hw}x{hw} s{s} d{d}: burn {:.2} ms, direct {:.2} ms, x{:.1}",
            best[0],
            best[1],
            best[0] / best[1]
        );
    }
    println!("total burn {total_burn:.1} ms direct {total_direct:.1} ms");
}
