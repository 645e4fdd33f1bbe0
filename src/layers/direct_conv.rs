//! Direct grouped convolution for CPU inference.
//!
//! burn-flex runs a grouped convolution as one im2col and one small gemm per group. With the
//! SK unit's typical 32 groups of 2 to 16 channels, those gemms are too small to use the machine,
//! and the grouped 3x3 convs dominate ResNeXt-style SK inference. This kernel computes each output
//! plane directly from a zero-padded copy of the input, split into stride phases: every
//! (input channel, kernel tap) pair then adds one weight times one contiguous run of that copy to
//! the whole output plane, a plain `out[j] += w * in[j + offset]` that the compiler vectorizes
//! (AVX2 + FMA when the CPU has them, chosen at run time).
//!
//! It only runs forward on the Flex CPU backend without autodiff; training and the GPU backends keep
//! burn's convolution (see [`Conv2d::forward`](super::Conv2d::forward)).

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// Everything the kernel needs besides the data.
#[derive(Debug, Clone, Copy)]
struct Plan {
    in_channels: usize,
    in_h: usize,
    in_w: usize,
    out_channels: usize,
    out_h: usize,
    out_w: usize,
    group_in: usize,
    group_out: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_top: usize,
    pad_left: usize,
}

/// `conv2d(input, weight, bias)` computed directly, for the forward pass on the CPU.
///
/// `pads` are the (begin, end) paddings of height and width; the output size follows from them as
/// in burn's (and PyTorch's) convolution.
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - weight: `[out_channels, in_channels / groups, kernel, kernel]`
/// - bias: `[out_channels]`
/// - output: `[batch, out_channels, height', width']`
pub fn conv2d_direct(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    dilation: usize,
    pads: [(usize, usize); 2],
    groups: usize,
) -> Tensor<4> {
    let device = input.device();
    let [batch, in_channels, in_h, in_w] = input.dims();
    let [out_channels, group_in, kernel, _] = weight.dims();
    let span = dilation * (kernel - 1) + 1;
    let out_len = |len: usize, (a, b): (usize, usize)| (len + a + b - span) / stride + 1;
    let plan = Plan {
        in_channels,
        in_h,
        in_w,
        out_channels,
        out_h: out_len(in_h, pads[0]),
        out_w: out_len(in_w, pads[1]),
        group_in,
        group_out: out_channels / groups,
        kernel,
        stride,
        dilation,
        pad_top: pads[0].0,
        pad_left: pads[1].0,
    };
    let x = to_f32(input);
    let w = to_f32(weight);
    let b = bias.map(to_f32);
    let mut out = vec![0f32; batch * out_channels * plan.out_h * plan.out_w];
    run(&plan, &x, &w, b.as_deref(), pads, &mut out);
    Tensor::from_data(
        TensorData::new(out, [batch, out_channels, plan.out_h, plan.out_w]),
        &device,
    )
}

fn to_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .try_into_vec::<f32>()
        .expect("float tensors on the CPU backend hold f32")
}

/// The input zero-padded and, for a stride `s > 1`, split into its `s * s` phases:
/// `phase[py][px][i][j] = padded[i * s + py][j * s + px]`. Every kernel tap then reads one
/// contiguous run of a phase plane, whatever the stride, dilation or padding.
struct Phases {
    data: Vec<f32>,
    height: usize,
    width: usize,
}

impl Phases {
    fn new(plan: &Plan, x: &[f32], pads: [(usize, usize); 2]) -> Self {
        let s = plan.stride;
        let padded_h = plan.in_h + pads[0].0 + pads[0].1;
        let padded_w = plan.in_w + pads[1].0 + pads[1].1;
        let (height, width) = (padded_h.div_ceil(s), padded_w.div_ceil(s));
        let phase_plane = height * width;
        let in_plane = plan.in_h * plan.in_w;
        // A chunk of slack at the end: the last runs are computed in whole chunks.
        let mut data = vec![0f32; x.len() / in_plane.max(1) * s * s * phase_plane + CHUNK];
        data.par_chunks_mut(s * s * phase_plane)
            .zip(x.par_chunks(in_plane))
            .for_each(|(phases, input)| {
                for (y, row) in input.chunks(plan.in_w).enumerate() {
                    if s == 1 {
                        let start = (y + plan.pad_top) * width + plan.pad_left;
                        phases[start..start + plan.in_w].copy_from_slice(row);
                        continue;
                    }
                    let (i, py) = ((y + plan.pad_top) / s, (y + plan.pad_top) % s);
                    for px in 0..s {
                        // First input column that lands in phase column px.
                        let x0 = (px + s - plan.pad_left % s) % s;
                        let j0 = (x0 + plan.pad_left) / s;
                        let start = (py * s + px) * phase_plane + i * width + j0;
                        let values = row.iter().skip(x0).step_by(s);
                        for (dst, &value) in phases[start..].iter_mut().zip(values) {
                            *dst = value;
                        }
                    }
                }
            });
        Self {
            data,
            height,
            width,
        }
    }

    /// Where channel `channel` (counted over the batch) starts.
    fn offset(&self, channel: usize, stride: usize) -> usize {
        channel * stride * stride * self.height * self.width
    }
}

/// Outputs computed together, in registers, before they are stored: eight AVX vectors, enough
/// independent FMA chains to hide the FMA latency.
const CHUNK: usize = 64;

fn run(
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pads: [(usize, usize); 2],
    out: &mut [f32],
) {
    let plane = plan.out_h * plan.out_w;
    if plane == 0 {
        return;
    }
    let phases = Phases::new(plan, x, pads);
    // One run covers every output row, with the phase plane's extra columns in between; it is
    // computed in whole chunks (the phase data has a chunk of slack at its end).
    let run = (plan.out_h - 1) * phases.width + plan.out_w;
    let padded_run = run.div_ceil(CHUNK) * CHUNK;
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let fma = false;
    out.par_chunks_mut(plane).enumerate().for_each_init(
        || (vec![0f32; padded_run], Vec::new()),
        |(acc, taps), (index, out_plane)| {
            let (b, o) = (index / plan.out_channels, index % plan.out_channels);
            list_taps(plan, &phases, w, b, o, taps);
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU was just checked for AVX2 and FMA.
                unsafe { accumulate_fma(&phases.data, taps, acc) };
            } else {
                accumulate_generic(&phases.data, taps, acc);
            }
            #[cfg(not(target_arch = "x86_64"))]
            accumulate_generic(&phases.data, taps, acc);
            let _ = fma;
            let shift = bias.map_or(0.0, |bias| bias[o]);
            for (dst, src) in out_plane
                .chunks_mut(plan.out_w)
                .zip(acc.chunks(phases.width))
            {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v + shift;
                }
            }
        },
    );
}

/// Every (input channel, kernel tap) of output channel `o` of image `b`, as (where its run
/// starts in the phase data, weight).
fn list_taps(
    plan: &Plan,
    phases: &Phases,
    w: &[f32],
    b: usize,
    o: usize,
    taps: &mut Vec<(usize, f32)>,
) {
    let (k, s, d) = (plan.kernel, plan.stride, plan.dilation);
    let phase_plane = phases.height * phases.width;
    let group = o / plan.group_out;
    taps.clear();
    for i in 0..plan.group_in {
        let channel = phases.offset(b * plan.in_channels + group * plan.group_in + i, s);
        let weights = &w[(o * plan.group_in + i) * k * k..][..k * k];
        for ky in 0..k {
            let (dy, py) = ((ky * d) / s, (ky * d) % s);
            for kx in 0..k {
                let (dx, px) = ((kx * d) / s, (kx * d) % s);
                let start = channel + (py * s + px) * phase_plane + dy * phases.width + dx;
                taps.push((start, weights[ky * k + kx]));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_fma(data: &[f32], taps: &[(usize, f32)], acc: &mut [f32]) {
    accumulate(data, taps, acc, |acc, weight, value| {
        value.mul_add(weight, acc)
    });
}

fn accumulate_generic(data: &[f32], taps: &[(usize, f32)], acc: &mut [f32]) {
    accumulate(data, taps, acc, |acc, weight, value| acc + weight * value);
}

/// `acc[j] = sum over taps of weight * data[start + j]`, a chunk at a time: each chunk of
/// outputs stays in registers across all the taps and is stored once.
#[inline(always)]
fn accumulate(
    data: &[f32],
    taps: &[(usize, f32)],
    acc: &mut [f32],
    madd: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    for (j, chunk) in acc.chunks_exact_mut(CHUNK).enumerate() {
        let mut sum = [0f32; CHUNK];
        for &(start, weight) in taps {
            let src: &[f32; CHUNK] = data[start + j * CHUNK..][..CHUNK]
                .try_into()
                .expect("a chunk");
            for q in 0..CHUNK {
                sum[q] = madd(sum[q], weight, src[q]);
            }
        }
        chunk.copy_from_slice(&sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Distribution};

    /// Compares with burn's convolution over strides, dilations, groups, kernel sizes and
    /// asymmetric (Keras 'same') padding, on odd sizes.
    #[test]
    fn matches_burn_conv2d() {
        let device = Device::flex();
        let cases = [
            // (in, out, groups, kernel, stride, dilation, pads, h, w)
            (8, 8, 4, 3, 1, 1, [(1, 1), (1, 1)], 9, 7),
            (8, 16, 4, 3, 2, 1, [(1, 1), (1, 1)], 9, 8),
            (8, 8, 2, 3, 1, 2, [(2, 2), (2, 2)], 7, 10),
            (12, 6, 3, 5, 2, 1, [(1, 2), (2, 2)], 11, 6),
            (4, 8, 1, 3, 1, 1, [(0, 0), (0, 0)], 5, 5),
            (6, 6, 6, 3, 3, 2, [(0, 1), (1, 0)], 13, 12),
            (4, 4, 2, 3, 1, 1, [(1, 1), (1, 1)], 1, 1),
        ];
        for (n, (cin, cout, g, k, s, d, pads, h, w)) in cases.into_iter().enumerate() {
            let x = Tensor::<4>::random([2, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
            let wt = Tensor::<4>::random(
                [cout, cin / g, k, k],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let bias = Tensor::<1>::random([cout], Distribution::Normal(0.0, 1.0), &device);
            let expected = conv2d(
                x.clone(),
                wt.clone(),
                Some(bias.clone()),
                ConvOptions::new_with_padding([s, s], pads, [d, d], g),
            );
            let got = conv2d_direct(x, wt, Some(bias), s, d, pads, g);
            assert_eq!(got.dims(), expected.dims(), "case {n}");
            let err: f32 = (got - expected).abs().max().into_scalar();
            assert!(err < 1e-4, "case {n}: max difference {err}");
        }
    }
}
