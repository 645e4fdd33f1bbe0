//! Max pooling for CPU inference (the ImageNet stems' 3x3 stride-2 pool).
//!
//! burn-flex's max pool computes every output with index arithmetic and a NaN test per element;
//! on skresnet18 it was a sizeable part of a forward pass. Here each output row is the maximum of
//! `kernel` input rows (a contiguous, vectorized pass), then of `kernel` columns of that row.
//! Windows are clipped to the input, which is how PyTorch treats padding (as minus infinity) and
//! windows that hang over the end in ceil mode. A NaN in a window makes that output NaN, as in
//! PyTorch.
//!
//! A Flex backend extension, so it reads burn-flex's buffer in place; forward only (training
//! keeps burn's pool, whose backward pass needs its indices).

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

/// The pooling window: size, stride, padding before the first row and column, output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolWindow {
    /// Square window size.
    pub kernel: usize,
    /// Stride, both axes.
    pub stride: usize,
    /// Padding before the first (row, column).
    pub pad: [usize; 2],
    /// Output (height, width).
    pub out: [usize; 2],
}

/// Max pooling as a Flex backend extension.
#[backend_extension(Flex)]
pub trait MaxPoolOps: Backend {
    /// Max pooling of `x` over `window`.
    fn direct_max_pool2d(x: FloatTensor<Self>, window: PoolWindow) -> FloatTensor<Self>;
}

impl MaxPoolOps for Flex {
    fn direct_max_pool2d(x: FloatTensor<Self>, window: PoolWindow) -> FloatTensor<Self> {
        assert_eq!(x.dtype(), DType::F32, "the CPU max pool is f32");
        let x = x.to_contiguous();
        let shape = x.layout().shape();
        let [batch, channels, h, w] = [shape[0], shape[1], shape[2], shape[3]];
        let [out_h, out_w] = window.out;
        let input = x.as_slice::<f32>().expect("contiguous f32");
        // SAFETY: `pool_plane` writes every output of its plane.
        let mut out = unsafe { super::output_buffer(batch * channels * out_h * out_w) };
        if !out.is_empty() {
            out.par_chunks_mut(out_h * out_w)
                .zip(input.par_chunks(h * w))
                .for_each_init(Vec::new, |rows, (out_plane, in_plane)| {
                    pool_plane(in_plane, [h, w], window, rows, out_plane)
                });
        }
        FlexTensor::from_data(TensorData::new(
            out,
            Shape::new([batch, channels, out_h, out_w]),
        ))
    }
}

/// Max pooling over `window`, computed directly, for inference on the Flex CPU backend (f32).
///
/// # Shapes
/// - input: `[batch, channels, height, width]`
/// - output: `[batch, channels, window.out[0], window.out[1]]`
pub fn max_pool2d_direct(input: Tensor<4>, window: PoolWindow) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as MaxPoolOps>::direct_max_pool2d(
        input.into_dispatch(),
        window,
    ))
}

/// The input rows or columns `[start, end)` that output `i`'s window covers, clipped to `len`.
fn span(i: usize, window: PoolWindow, pad: usize, len: usize) -> (usize, usize) {
    let start = (i * window.stride).saturating_sub(pad);
    let end = (i * window.stride + window.kernel)
        .saturating_sub(pad)
        .min(len);
    (start, end.max(start))
}

/// `a` or `b`, whichever is larger: a plain compare that vectorizes as one instruction, where
/// `f32::max` adds a NaN test per lane. NaNs are handled apart (see [`pool_plane`]).
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

fn pool_plane(
    input: &[f32],
    [h, w]: [usize; 2],
    window: PoolWindow,
    row: &mut Vec<f32>,
    out: &mut [f32],
) {
    let [_, out_w] = window.out;
    let (kernel, stride, pad) = (window.kernel, window.stride, window.pad[1]);
    // A NaN test the compiler vectorizes (`any` stops early, so it stays scalar).
    let has_nan = input
        .chunks(256)
        .any(|c| c.iter().fold(false, |nan, v| nan | v.is_nan()));
    // The window rows' column-wise maximum, between `pad` leading and enough trailing minus
    // infinities that output `x`'s window is `row[x * stride..][..kernel]`: padding counts as
    // minus infinity, as in PyTorch.
    let len = (pad + w).max(out_w.saturating_sub(1) * stride + kernel);
    row.clear();
    row.resize(len, f32::NEG_INFINITY);
    for (y, out_row) in out.chunks_mut(out_w).enumerate() {
        let (r0, r1) = span(y, window, window.pad[0], h);
        let maxima = &mut row[pad..pad + w];
        maxima.fill(f32::NEG_INFINITY);
        for input_row in input[r0 * w..r1 * w].chunks(w) {
            for (m, &v) in maxima.iter_mut().zip(input_row) {
                *m = larger(*m, v);
            }
        }
        // ...then the maximum over the window's columns.
        if (kernel, stride) == (3, 2) {
            // The stems' pool, without a loop over the window.
            for (x, dst) in out_row.iter_mut().enumerate() {
                let c = &row[2 * x..2 * x + 3];
                *dst = larger(larger(c[0], c[1]), c[2]);
            }
        } else {
            for (x, dst) in out_row.iter_mut().enumerate() {
                let c = &row[x * stride..x * stride + kernel];
                *dst = c.iter().fold(f32::NEG_INFINITY, |m, &v| larger(m, v));
            }
        }
        if has_nan {
            // A window holding a NaN gives NaN.
            for (x, dst) in out_row.iter_mut().enumerate() {
                let (c0, c1) = span(x, window, window.pad[1], w);
                let nan = input[r0 * w..r1 * w]
                    .chunks(w)
                    .any(|r| r[c0..c1].iter().any(|v| v.is_nan()));
                if nan {
                    *dst = f32::NAN;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;
    use burn::tensor::{Device, Distribution};

    /// Compares with burn's max pool: PyTorch's symmetric padding, ceil mode (windows over the
    /// end), Keras 'same' padding (more after than before), odd sizes, a NaN.
    #[test]
    fn matches_burn_max_pool2d() {
        let device = Device::flex();
        // (h, w, padding pairs, ceil mode)
        let cases = [
            (9, 8, [(1, 1), (1, 1)], false),
            (10, 7, [(0, 0), (0, 0)], true),
            (8, 9, [(0, 1), (0, 1)], false),
            (1, 1, [(1, 1), (1, 1)], false),
            (5, 5, [(0, 0), (0, 0)], false),
        ];
        for (n, (h, w, pads, ceil)) in cases.into_iter().enumerate() {
            let x = Tensor::<4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
            let options = MaxPoolOptions::new([3, 3])
                .with_stride([2, 2])
                .with_padding_pairs(pads)
                .with_ceil_mode(ceil);
            let expected = max_pool2d(x.clone(), options);
            let [_, _, out_h, out_w] = expected.dims();
            let window = PoolWindow {
                kernel: 3,
                stride: 2,
                pad: [pads[0].0, pads[1].0],
                out: [out_h, out_w],
            };
            let got = max_pool2d_direct(x, window);
            assert_eq!(got.dims(), expected.dims(), "case {n}");
            let err: f32 = (got - expected).abs().max().into_scalar();
            assert!(err == 0.0, "case {n}: max difference {err}");
        }
        // A NaN spreads to the outputs whose windows hold it, and only to them.
        let mut values = vec![1f32; 25];
        values[18] = f32::NAN; // row 3, column 3
        let x = Tensor::<4>::from_data(TensorData::new(values, [1, 1, 5, 5]), &device);
        let window = PoolWindow {
            kernel: 3,
            stride: 2,
            pad: [1, 1],
            out: [3, 3],
        };
        let got: Vec<f32> = max_pool2d_direct(x, window)
            .into_data()
            .try_to_vec()
            .unwrap();
        let nan: Vec<bool> = got.iter().map(|v| v.is_nan()).collect();
        let expected = [false, false, false, false, true, true, false, true, true];
        assert_eq!(nan, expected, "{got:?}");
    }
}
