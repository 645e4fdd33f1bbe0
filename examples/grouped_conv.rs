//! Times burn-flex's grouped convolution against sknet's direct kernel on the grouped 3x3 convs of
//! skresnext50_32x4d's SK units (inference).
//!
//! cargo run --release --example grouped_conv -- [BATCH]

use burn::tensor::{module::conv2d, ops::ConvOptions, Device, Distribution, Tensor};
use sknet::layers::direct_conv::conv2d_direct;
use std::time::Instant;
fn main() {
    let device = Device::flex();
    let batch: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1);
    let shapes = [
        (64usize, 128usize, 56usize, 1usize, 1usize),
        (64, 128, 56, 1, 2),
        (128, 256, 56, 2, 1),
        (128, 256, 56, 2, 2),
        (128, 256, 28, 1, 1),
        (128, 256, 28, 1, 2),
        (256, 512, 28, 2, 1),
        (256, 512, 28, 2, 2),
        (256, 512, 14, 1, 1),
        (256, 512, 14, 1, 2),
        (512, 1024, 14, 2, 1),
        (512, 1024, 14, 2, 2),
        (512, 1024, 7, 1, 1),
        (512, 1024, 7, 1, 2),
    ];
    let (mut tb, mut td) = (0.0, 0.0);
    for (cin, cout, hw, s, d) in shapes {
        let g = 32;
        let x = Tensor::<4>::random([batch, cin, hw, hw], Distribution::Normal(0., 1.), &device);
        let w = Tensor::<4>::random([cout, cin / g, 3, 3], Distribution::Normal(0., 1.), &device);
        let opts = ConvOptions::new([s, s], [d, d], [d, d], g);
        let mut t = [0f64; 2];
        for which in 0..2 {
            let mut v = vec![];
            for _ in 0..9 {
                let st = Instant::now();
                let y = if which == 0 {
                    conv2d(x.clone(), w.clone(), None, opts.clone())
                } else {
                    conv2d_direct(x.clone(), w.clone(), None, s, d, [(d, d), (d, d)], g)
                };
                let _ = y.into_data();
                v.push(st.elapsed().as_secs_f64() * 1e3);
            }
            v.sort_by(f64::total_cmp);
            t[which] = v[4];
        }
        tb += t[0];
        td += t[1];
        println!("b{batch} {cin}->{cout} {hw}x{hw} s{s} d{d} gin{}: burn {:.2} ms, direct {:.2} ms, x{:.1}", cin / g, t[0], t[1], t[0] / t[1]);
    }
    println!("total burn {tb:.1} ms direct {td:.1} ms");
}
