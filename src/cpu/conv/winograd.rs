//! Dense 3x3 stride-1 convolutions as Winograd F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms
//! for Convolutional Neural Networks", CVPR 2016), for CPU inference.
//!
//! Each 2x2 block of outputs (a tile) comes from a 4x4 patch of the padded input: with the patch
//! `d` and a 3x3 kernel `g`, `Y = A^T [(G g G^T) . (B^T d B)] A`. The 16 products of the
//! transformed patch and kernel, summed over input channels, are 16 matrix products
//! `M[xi] = U[xi] V[xi]` (`U[xi]`: output by input channels, `V[xi]`: input channels by tiles),
//! which [`super::pointwise`]'s kernel computes at the rate of a 1x1 conv. That is 16
//! multiplications for 4 outputs where the direct kernels spend 36: transforms included, faster
//! than the kernels it replaces on skresnet18's 3x3 convs of 14x14 to 56x56 maps, and about even
//! on the dilated ones of 56x56 maps (figures in BENCHMARKS.md).
//!
//! A dilated conv is `dilation^2` undilated ones, one per output phase (rows and columns
//! `py + dilation * k`, `px + dilation * k`), over the input's matching phase: each tile reads
//! its patch `dilation` apart.
//!
//! The transformed weights `U` (16 / 9 the size of the weights) are made once, on the first
//! call, and kept with the packed kernel's ([`super::packed::PackedWeights`]). The results
//! differ from a direct conv's by rounding only (the transforms' coefficients are 0, +-1 and
//! +-1/2).

use rayon::prelude::*;

use super::plan::{Images, Plan};

/// Transformed values of a tile: a 4x4 patch.
const XI: usize = 16;

/// Whether `plan` is a conv this module computes, and one it computes faster than the direct
/// kernels: dense, 3x3, stride 1, on maps of at least 14x14 (on 7x7 maps, a 4x4 grid of tiles
/// is too little work per pass over the weights).
pub(super) fn applies(plan: &Plan) -> bool {
    plan.kernel == 3
        && plan.stride == 1
        && plan.group_in == plan.in_channels
        && plan.out_h.div_ceil(plan.dilation) >= 14
        && plan.out_w.div_ceil(plan.dilation) >= 14
        && super::pointwise::available()
}

/// `U[xi][o][i] = (G g G^T)[xi]` for each output channel `o` and input channel `i` of `weight`
/// (`[out][in][3][3]`), with `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
pub(super) fn transform_weights(weight: &[f32], [out, inputs]: [usize; 2]) -> Vec<f32> {
    assert_eq!(weight.len(), out * inputs * 9);
    let mut u = vec![0f32; XI * out * inputs];
    for (oi, g) in weight.chunks_exact(9).enumerate() {
        // G g: 4 rows of 3.
        let mut gg = [[0f32; 3]; 4];
        for c in 0..3 {
            let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
            gg[0][c] = g0;
            gg[1][c] = 0.5 * (g0 + g1 + g2);
            gg[2][c] = 0.5 * (g0 - g1 + g2);
            gg[3][c] = g2;
        }
        for (a, row) in gg.iter().enumerate() {
            let [r0, r1, r2] = *row;
            let values = [r0, 0.5 * (r0 + r1 + r2), 0.5 * (r0 - r1 + r2), r2];
            for (b, v) in values.into_iter().enumerate() {
                u[(4 * a + b) * out * inputs + oi] = v;
            }
        }
    }
    u
}

/// The tiles of one image: `dilation^2` phases of `rows x cols` tiles each.
#[derive(Debug, Clone, Copy)]
struct Tiling {
    dilation: usize,
    rows: usize,
    cols: usize,
    /// The padded input plane's width (its height is `dilation * (2 * rows + 2)`).
    width: usize,
}

impl Tiling {
    fn new(plan: &Plan) -> Self {
        let d = plan.dilation;
        let (rows, cols) = (
            plan.out_h.div_ceil(d).div_ceil(2),
            plan.out_w.div_ceil(d).div_ceil(2),
        );
        Self {
            dilation: d,
            rows,
            cols,
            width: d * (2 * cols + 2),
        }
    }

    fn height(&self) -> usize {
        self.dilation * (2 * self.rows + 2)
    }

    /// Tiles of an image.
    fn tiles(&self) -> usize {
        self.dilation * self.dilation * self.rows * self.cols
    }
}

/// `out = conv(images, U) + bias`, ReLU'd if `relu`, every element written.
///
/// # Panics
/// If `plan` is not one this module [`applies`] to (AVX-512 included), or the sizes do not
/// match it.
pub(super) fn run_winograd(
    plan: &Plan,
    images: Images,
    u: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    assert!(plan.kernel == 3 && plan.stride == 1 && plan.group_in == plan.in_channels);
    assert!(
        super::pointwise::available(),
        "the Winograd conv needs AVX-512"
    );
    let (m, k) = (plan.out_channels, plan.in_channels);
    assert_eq!(u.len(), XI * m * k);
    assert_eq!(bias.len(), m);
    let plane = plan.out_h * plan.out_w;
    assert_eq!(out.len(), plan.batch * m * plane);
    let tiling = Tiling::new(plan);
    let tiles = tiling.tiles();
    let in_plane = plan.in_h * plan.in_w;
    // V[n][xi][i][t], then M[n][xi][o][t], with the xi a little more than their size apart: a
    // tile's 16 values are read or written together, and at a multiple of 4 KiB apart (64
    // channels of 784 tiles) they all fell in the same L1 cache set.
    let (v_stride, m_stride) = (k * tiles + 16, m * tiles + 16);
    // SAFETY: `transform_input` writes every tile of every channel (not the gaps, which nothing
    // reads).
    let mut v = unsafe { super::output_buffer(plan.batch * XI * v_stride) };
    v.par_chunks_mut(XI * v_stride)
        .enumerate()
        .for_each(|(n, v_image)| {
            let image = images.part(n, 0, k * in_plane);
            let v_image = super::SendPtr(v_image.as_mut_ptr());
            (0..k)
                .into_par_iter()
                .for_each_init(Vec::new, |scratch, i| {
                    // SAFETY: AVX-512 (asserted above); channel `i`'s tiles of each xi, which no
                    // other task writes.
                    unsafe {
                        transform_input(
                            plan,
                            tiling,
                            &image[i * in_plane..][..in_plane],
                            scratch,
                            v_image.get().add(i * tiles),
                            v_stride,
                        )
                    }
                });
        });
    // SAFETY: the pointwise kernel writes every product (not the gaps, which nothing reads).
    let mut products = unsafe { super::output_buffer(plan.batch * XI * m_stride) };
    let zeros = vec![0f32; m];
    super::pointwise::pointwise_with(
        plan.batch * XI,
        [m, k, tiles],
        &v,
        u,
        XI,
        super::pointwise::Finish {
            bias: &zeros,
            residual: None,
            relu: false,
        },
        &mut products,
        [v_stride, m_stride],
    );
    drop(v);
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(index, out_plane)| {
            let (n, o) = (index / m, index % m);
            let products = &products[n * XI * m_stride + o * tiles..];
            // SAFETY: AVX-512 (asserted above).
            unsafe { transform_output(plan, tiling, products, m_stride, bias[o], relu, out_plane) };
        });
}

/// Writes `V[xi][t]` of one input channel at `v + xi * xi_stride + t`.
///
/// # Safety
/// The CPU supports AVX-512F ([`run_winograd`] asserts it; the function is compiled for it so that
/// the compiler vectorizes its loops); `v` is valid for those writes, and no one else touches them
/// meanwhile.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn transform_input(
    plan: &Plan,
    tiling: Tiling,
    channel: &[f32],
    scratch: &mut Vec<f32>,
    v: *mut f32,
    xi_stride: usize,
) {
    let Tiling {
        dilation: d,
        rows,
        cols,
        width,
    } = tiling;
    // The zero-padded plane, large enough for every tile's patch; then one phase's even and
    // odd columns (a phase's row `r` is the plane's row `py + d r`, its column `c` the plane's
    // `px + d c`); then B^T d of a tile row, in even and odd columns.
    let (phase_rows, half) = (2 * rows + 2, cols + 1);
    let plane = tiling.height() * width;
    scratch.clear();
    scratch.resize(plane + 2 * phase_rows * half + 8 * half, 0.0);
    let (padded, rest) = scratch.split_at_mut(plane);
    let (even, rest) = rest.split_at_mut(phase_rows * half);
    let (odd, mixed) = rest.split_at_mut(phase_rows * half);
    let (top, left) = (plan.pads[0].0, plan.pads[1].0);
    for (y, row) in channel.chunks_exact(plan.in_w).enumerate() {
        padded[(y + top) * width + left..][..plan.in_w].copy_from_slice(row);
    }
    for py in 0..d {
        for px in 0..d {
            for r in 0..phase_rows {
                let row = &padded[(py + d * r) * width..][..width];
                let e = &mut even[r * half..][..half];
                let o = &mut odd[r * half..][..half];
                split_columns(row, px, d, e, o);
            }
            let first_tile = (py * d + px) * rows * cols;
            for ty in 0..rows {
                // B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] over the
                // patch rows, the same on even and odd columns...
                let (mixed_even, mixed_odd) = mixed.split_at_mut(4 * half);
                for (lines, mixed) in [(&*even, mixed_even), (&*odd, mixed_odd)] {
                    let l = &lines[2 * ty * half..][..4 * half];
                    let (l0, l1, l2, l3) = (
                        &l[..half],
                        &l[half..2 * half],
                        &l[2 * half..3 * half],
                        &l[3 * half..],
                    );
                    let (m0, m) = mixed.split_at_mut(half);
                    let (m1, m) = m.split_at_mut(half);
                    let (m2, m3) = m.split_at_mut(half);
                    for c in 0..half {
                        m0[c] = l0[c] - l2[c];
                        m1[c] = l1[c] + l2[c];
                        m2[c] = l2[c] - l1[c];
                        m3[c] = l1[c] - l3[c];
                    }
                }
                // ...then B over the columns: tile tx's patch columns are even[tx], odd[tx],
                // even[tx + 1] and odd[tx + 1].
                let first = first_tile + ty * cols;
                for a in 0..4 {
                    let me = &mixed[a * half..][..half];
                    let mo = &mixed[(4 + a) * half..][..half];
                    let (e0, e1, o0, o1) = (&me[..cols], &me[1..], &mo[..cols], &mo[1..]);
                    // SAFETY: the caller's; four disjoint runs of `cols` values.
                    let base = v.add(4 * a * xi_stride + first);
                    let d0 = std::slice::from_raw_parts_mut(base, cols);
                    let d1 = std::slice::from_raw_parts_mut(base.add(xi_stride), cols);
                    let d2 = std::slice::from_raw_parts_mut(base.add(2 * xi_stride), cols);
                    let d3 = std::slice::from_raw_parts_mut(base.add(3 * xi_stride), cols);
                    for tx in 0..cols {
                        d0[tx] = e0[tx] - e1[tx];
                        d1[tx] = o0[tx] + e1[tx];
                        d2[tx] = e1[tx] - o0[tx];
                        d3[tx] = o0[tx] - o1[tx];
                    }
                }
            }
        }
    }
}

/// `even[c] = row[px + 2 d c]` and `odd[c] = row[px + d + 2 d c]`: phase column `px`'s even
/// and odd columns. Strides 2 and 4 are spelled out for the compiler to vectorize.
#[inline(always)]
fn split_columns(row: &[f32], px: usize, d: usize, even: &mut [f32], odd: &mut [f32]) {
    let n = even.len();
    assert!(odd.len() == n && n > 0 && px + d + 2 * d * (n - 1) < row.len());
    match d {
        1 => {
            let row = &row[..2 * n];
            for c in 0..n {
                even[c] = row[2 * c];
                odd[c] = row[2 * c + 1];
            }
        }
        2 => {
            let row = &row[px..px + 4 * n - 1];
            for c in 0..n {
                even[c] = row[4 * c];
                odd[c] = row[4 * c + 2];
            }
        }
        _ => {
            for c in 0..n {
                even[c] = row[px + 2 * d * c];
                odd[c] = row[px + d + 2 * d * c];
            }
        }
    }
}

/// `dst[2 i] = a[i]`, `dst[2 i + 1] = b[i]`, as far as `dst` goes.
#[inline(always)]
fn interleave(a: &[f32], b: &[f32], dst: &mut [f32]) {
    let pairs = dst.len() / 2;
    let (a, b) = (&a[..dst.len().div_ceil(2)], &b[..pairs]);
    for ((pair, &x), &y) in dst.chunks_exact_mut(2).zip(a).zip(b) {
        pair[0] = x;
        pair[1] = y;
    }
    if dst.len() % 2 == 1 {
        dst[2 * pairs] = a[pairs];
    }
}

/// One output channel's plane from its products `M[xi][t]` (`products[xi * xi_stride + t]`):
/// `A^T M A` per tile, with `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`, plus `shift`, ReLU'd if
/// `relu`.
///
/// # Safety
/// The CPU supports AVX-512F ([`run_winograd`] asserts it; the function is compiled for it so that
/// the compiler vectorizes its loops).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn transform_output(
    plan: &Plan,
    tiling: Tiling,
    products: &[f32],
    xi_stride: usize,
    shift: f32,
    relu: bool,
    out: &mut [f32],
) {
    let Tiling {
        dilation: d,
        rows,
        cols,
        ..
    } = tiling;
    // Per phase column px: the outputs (row r, column c) of every tile t of the phase row, at
    // `y[(px * 4 + 2 r + c) * tiles + t]`: one long loop a phase, which the compiler vectorizes
    // (the tiles of one row are as few as 7).
    let tiles = rows * cols;
    let mut y = vec![0f32; d * 4 * tiles];
    let mut lines = vec![0f32; d * 2 * cols];
    for py in 0..d {
        for (px, y) in y.chunks_exact_mut(4 * tiles).enumerate() {
            let first = (py * d + px) * tiles;
            let (y0, y1) = y.split_at_mut(2 * tiles);
            let (y00, y01) = y0.split_at_mut(tiles);
            let (y10, y11) = y1.split_at_mut(tiles);
            // Sixteen named runs, so that the compiler sees their lengths.
            let run = |xi: usize| &products[xi * xi_stride + first..][..tiles];
            let (m0, m1, m2, m3) = (run(0), run(1), run(2), run(3));
            let (m4, m5, m6, m7) = (run(4), run(5), run(6), run(7));
            let (m8, m9, m10, m11) = (run(8), run(9), run(10), run(11));
            let (m12, m13, m14, m15) = (run(12), run(13), run(14), run(15));
            for t in 0..tiles {
                // A^T M: two rows of four (r0, r1); then A.
                let r0b0 = m0[t] + m4[t] + m8[t];
                let r0b1 = m1[t] + m5[t] + m9[t];
                let r0b2 = m2[t] + m6[t] + m10[t];
                let r0b3 = m3[t] + m7[t] + m11[t];
                let r1b0 = m4[t] - m8[t] - m12[t];
                let r1b1 = m5[t] - m9[t] - m13[t];
                let r1b2 = m6[t] - m10[t] - m14[t];
                let r1b3 = m7[t] - m11[t] - m15[t];
                y00[t] = r0b0 + r0b1 + r0b2 + shift;
                y01[t] = r0b1 - r0b2 - r0b3 + shift;
                y10[t] = r1b0 + r1b1 + r1b2 + shift;
                y11[t] = r1b1 - r1b2 - r1b3 + shift;
            }
        }
        if relu {
            for v in y.iter_mut() {
                *v = crate::cpu::relu(*v);
            }
        }
        for ty in 0..rows {
            // Output row py + d (2 ty + r): phase px's row (its tiles' columns c interleaved)
            // at columns px + d x.
            for r in 0..2 {
                let oy = py + d * (2 * ty + r);
                if oy >= plan.out_h {
                    continue;
                }
                let row = &mut out[oy * plan.out_w..][..plan.out_w];
                let y_of =
                    |px: usize, c: usize| &y[(px * 4 + 2 * r + c) * tiles + ty * cols..][..cols];
                if d == 1 {
                    interleave(y_of(0, 0), y_of(0, 1), row);
                    continue;
                }
                for px in 0..d {
                    let line = &mut lines[px * 2 * cols..][..2 * cols];
                    interleave(y_of(px, 0), y_of(px, 1), line);
                }
                if d == 2 {
                    interleave(&lines[..2 * cols], &lines[2 * cols..], row);
                } else {
                    for (x, dst) in row.iter_mut().enumerate() {
                        *dst = lines[x % d * 2 * cols + x / d];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cpu::conv::packed::{max_error_against_burn, PackedWeights};
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Distribution, Tensor};

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    /// Against burn's convolution: even and odd map sizes (partial tiles), dilations 1 and 2
    /// (odd sizes: phases of different sizes), asymmetric padding, batch 2, a channel-window
    /// input, with and without the ReLU; the weights are transformed once and reused.
    #[test]
    fn matches_burn_conv2d() {
        if !super::super::pointwise::available() {
            return;
        }
        let device = Device::flex();
        // (in, out, dilation, pads, h, w)
        let cases = [
            (8, 16, 1, [(1, 1), (1, 1)], 14, 14),
            (5, 32, 1, [(1, 1), (1, 1)], 15, 17),
            (6, 16, 2, [(2, 2), (2, 2)], 28, 29),
            (3, 48, 2, [(2, 2), (2, 2)], 31, 30),
            (7, 16, 1, [(0, 2), (2, 0)], 16, 15),
            (4, 16, 3, [(3, 3), (3, 3)], 43, 42),
        ];
        for (n, (cin, cout, d, pads, h, w)) in cases.into_iter().enumerate() {
            let batch = 1 + n % 2;
            let extra = if n % 2 == 0 { 0 } else { 3 };
            let x = random([batch, cin + extra, h, w], &device).narrow(1, extra.min(2), cin);
            let weight = random([cout, cin, 3, 3], &device);
            let bias = random([cout], &device);
            let options = ConvOptions::new_with_padding([1, 1], pads, [d, d], 1);
            let packed = PackedWeights::of(&weight, 1).expect("packable");
            for with_relu in [false, true, false] {
                let err = max_error_against_burn(&x, &weight, &packed, &bias, &options, with_relu);
                assert!(
                    err < 1e-4,
                    "case {n} relu {with_relu}: max difference {err}"
                );
            }
            assert!(packed.is_winograd(), "case {n}");
            assert!(!packed.is_packed(), "case {n}");
        }
    }
}
