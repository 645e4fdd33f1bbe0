//! A dense 1x1 convolution of NCHW images with AVX-512: `out[o][p] = sum over k of w[o][k] *
//! x[k][p]` for each image, then the bias (and the ReLU) on the way out.
//!
//! A general GEMM packs both operands on every call; here neither is packed. A register block
//! of up to [`ROWS`] output channels by [`VECTORS`] vectors of 16 positions reads the input's
//! rows as they are (one vector load per 16 positions and input channel) and the weights' rows
//! as they are (one broadcast per output channel and input channel), and keeps all its sums in
//! registers over every input channel: 24 accumulators, 4 loads and 6 broadcasts per 24 FMAs.
//! Partial blocks (the last rows, the last positions) use smaller blocks and masked loads and
//! stores. It beats the packing GEMM it replaces on all of skresnext50's 1x1 convs
//! (`examples/pointwise_conv.rs`, figures in BENCHMARKS.md), by most on the 7x7 and 14x14 maps of
//! the last stages, where packing dominated.
//!
//! Work is cut into tasks of (image, band of [`BAND`] positions, band of output channels): a
//! task's input columns stay in L2 while its output channels go by.

use rayon::prelude::*;

/// Output channels in one register block.
const ROWS: usize = 6;
/// Vectors of 16 positions in one register block: 64 positions, which also covers a 7x7 map
/// whole (blocks of 6 x 2 and 12 x 2 vectors ran 7x7 maps slower).
const VECTORS: usize = 4;
/// Positions of one task at most (a multiple of 16): its input is `in_channels` times this.
const BAND: usize = 256;

/// Whether this CPU runs [`pointwise`].
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The 1x1 conv of `images` images `x` (`[images][k][plane]`) with `w` (`[m][k]`), finished
/// (bias, residual, ReLU) as `finish` says, into `out` (`[images][m][plane]`), every element
/// written.
///
/// # Panics
/// If [`available`] is false or a slice is not of its shape's length.
pub(super) fn pointwise(
    images: usize,
    shape: [usize; 3],
    x: &[f32],
    w: &[f32],
    finish: Finish,
    out: &mut [f32],
) {
    let [m, k, plane] = shape;
    pointwise_with(images, shape, x, w, 1, finish, out, [k * plane, m * plane])
}

/// What the products get on their way out: `bias` (`[m]`), then `residual` (laid out like the
/// output) if any, then a ReLU if `relu`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Finish<'a> {
    pub(super) bias: &'a [f32],
    pub(super) residual: Option<&'a [f32]>,
    pub(super) relu: bool,
}

/// [`pointwise`] with `weight_sets` weight matrices (`w`: `[weight_sets][m][k]`): image `j` is
/// multiplied by set `j % weight_sets` (the Winograd conv's 16 products per image); and with
/// images `strides[0]` floats apart in `x` and `strides[1]` apart in `out` (at least their
/// sizes; the values between them are neither read nor written).
///
/// # Panics
/// If [`available`] is false or a slice is not of its shape's length.
#[allow(clippy::too_many_arguments)]
pub(super) fn pointwise_with(
    images: usize,
    [m, k, plane]: [usize; 3],
    x: &[f32],
    w: &[f32],
    weight_sets: usize,
    finish: Finish,
    out: &mut [f32],
    [x_stride, out_stride]: [usize; 2],
) {
    let Finish {
        bias,
        residual,
        relu,
    } = finish;
    assert!(available(), "the pointwise kernel needs AVX-512");
    assert!(x_stride >= k * plane && out_stride >= m * plane);
    assert_eq!(w.len(), weight_sets * m * k);
    assert_eq!(bias.len(), m);
    if images == 0 || m * plane == 0 {
        return;
    }
    let span = |stride: usize, len: usize| (images - 1) * stride + len;
    assert!(x.len() >= span(x_stride, k * plane));
    assert!(out.len() >= span(out_stride, m * plane));
    assert!(residual.is_none_or(|r| r.len() == out.len()));
    // Bands of whole vectors of positions, as even as they can be (784 positions: 4 bands of 12
    // or 13 vectors, not 3 of 16 and one of 1).
    let vectors = plane.div_ceil(16);
    let bands = vectors.div_ceil(BAND / 16);
    let band_positions = |band: usize| {
        (16 * (band * vectors / bands)).min(plane)..(16 * ((band + 1) * vectors / bands)).min(plane)
    };
    // Enough channel bands for four tasks a thread, in whole register blocks.
    let wanted = 4 * rayon::current_num_threads();
    let blocks = m.div_ceil(ROWS);
    let channel_bands = wanted.div_ceil(images * bands).clamp(1, blocks);
    let band_rows = blocks.div_ceil(channel_bands) * ROWS;
    let channel_bands = m.div_ceil(band_rows);
    let out_ptr = super::SendPtr(out.as_mut_ptr());
    (0..images * bands * channel_bands)
        .into_par_iter()
        .for_each(|task| {
            let (image, rest) = (
                task / (bands * channel_bands),
                task % (bands * channel_bands),
            );
            let (band, channel_band) = (rest / channel_bands, rest % channel_bands);
            let positions = band_positions(band);
            let rows = channel_band * band_rows..(channel_band * band_rows + band_rows).min(m);
            let x_image = &x[image * x_stride..][..k * plane];
            let w = &w[image % weight_sets * m * k..][..m * k];
            // SAFETY: `available` checked AVX-512; the tasks write disjoint (rows, positions)
            // rectangles of image `image`'s output, all within `out`.
            unsafe {
                let out_image = out_ptr.get().add(image * out_stride);
                let residual = residual.map(|r| &r[image * out_stride..][..m * plane]);
                band_task(
                    [k, plane],
                    x_image,
                    w,
                    Finish {
                        bias,
                        residual,
                        relu,
                    },
                    rows,
                    positions,
                    out_image,
                )
            }
        });
}

/// The output channels `rows` at `positions` of one image.
///
/// # Safety
/// The CPU supports AVX-512F (checked by [`pointwise_with`] through [`available`]); `out` points
/// to the image's `[m][plane]` output, whose (rows, positions) rectangle no one else touches
/// meanwhile. `x` and `w` are `[k][plane]` and `[m][k]`, `finish`'s slices `[m]` and like `out`.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn band_task(
    [k, plane]: [usize; 2],
    x: &[f32],
    w: &[f32],
    finish: Finish,
    rows: std::ops::Range<usize>,
    positions: std::ops::Range<usize>,
    out: *mut f32,
) {
    // Register blocks of as even a number of vectors as they can be: a block of one vector
    // does one FMA per broadcast weight, a quarter of what four do (196 positions: 4, 3, 3 and
    // 3 vectors, not 4, 4, 4 and 1).
    let vectors = positions.len().div_ceil(16);
    let panels = vectors.div_ceil(VECTORS);
    let mut o = rows.start;
    while o < rows.end {
        let r = (rows.end - o).min(ROWS);
        for panel in 0..panels {
            let p = positions.start + 16 * (panel * vectors / panels);
            let end = positions.start + 16 * ((panel + 1) * vectors / panels);
            let n = end.min(positions.end) - p;
            let t = Tile {
                k,
                x: x.as_ptr().add(p),
                x_stride: plane,
                w: w.as_ptr().add(o * k),
                bias: finish.bias.as_ptr().add(o),
                residual: finish
                    .residual
                    .map_or(std::ptr::null(), |r| r[o * plane + p..].as_ptr()),
                out: out.add(o * plane + p),
                out_stride: plane,
                n,
                relu: finish.relu,
            };
            tile_any(r, n.div_ceil(16), t);
        }
        o += r;
    }
}

/// The stand-in for the x86-64 kernel on other targets, where the pointwise kernel is never chosen.
///
/// # Safety
/// Never to be called: it panics.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn band_task(
    _: [usize; 2],
    _: &[f32],
    _: &[f32],
    _: Finish,
    _: std::ops::Range<usize>,
    _: std::ops::Range<usize>,
    _: *mut f32,
) {
    unreachable!("the pointwise kernel is x86-64 only, and chosen only there")
}

/// One register block's operands: `n` positions (at most `16 * V`) from `x` and `out`, rows from
/// `w`, `bias` and `out`; `residual` (laid out like `out`) is added unless it is null.
#[derive(Clone, Copy)]
struct Tile {
    k: usize,
    x: *const f32,
    x_stride: usize,
    w: *const f32,
    bias: *const f32,
    residual: *const f32,
    out: *mut f32,
    out_stride: usize,
    n: usize,
    relu: bool,
}

/// [`tile`] for `rows` (at most [`ROWS`]) and `vectors` (at most [`VECTORS`]).
///
/// # Safety
/// As [`tile`]'s, with `R = rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_any(rows: usize, vectors: usize, t: Tile) {
    macro_rules! by_vectors {
        ($r:literal) => {
            match vectors {
                1 => tile::<$r, 1>(t),
                2 => tile::<$r, 2>(t),
                3 => tile::<$r, 3>(t),
                _ => tile::<$r, 4>(t),
            }
        };
    }
    match rows {
        1 => by_vectors!(1),
        2 => by_vectors!(2),
        3 => by_vectors!(3),
        4 => by_vectors!(4),
        5 => by_vectors!(5),
        _ => by_vectors!(6),
    }
}

/// `R` output channels by `t.n` positions (`V` vectors, the last one masked), over all `t.k`
/// input channels, in registers; then bias, ReLU and a masked store.
///
/// # Safety
/// The CPU supports AVX-512F; `t.x` is readable for `t.n` positions of each of `t.k` rows
/// `t.x_stride` apart, `t.w` for `R` rows of `t.k` weights one after another, `t.bias` for `R`
/// values; `t.out` (and `t.residual` unless null) for `t.n` positions of each of `R` rows
/// `t.out_stride` apart, outputs that no one else touches meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // indices pair registers across arrays
unsafe fn tile<const R: usize, const V: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let mut masks = [0xffffu16; V];
    masks[V - 1] = if t.n.is_multiple_of(16) {
        0xffff
    } else {
        (1u16 << (t.n % 16)) - 1
    };
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut xp = t.x;
    for i in 0..t.k {
        let mut xv = [_mm512_setzero_ps(); V];
        for v in 0..V {
            xv[v] = _mm512_maskz_loadu_ps(masks[v], xp.wrapping_add(16 * v));
        }
        for r in 0..R {
            let wv = _mm512_set1_ps(*t.w.add(r * t.k + i));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(wv, xv[v], acc[r][v]);
            }
        }
        xp = xp.wrapping_add(t.x_stride);
    }
    let zero = _mm512_setzero_ps();
    for r in 0..R {
        let b = _mm512_set1_ps(*t.bias.add(r));
        for v in 0..V {
            let mut y = _mm512_add_ps(acc[r][v], b);
            if !t.residual.is_null() {
                let at = t.residual.add(r * t.out_stride + 16 * v);
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(masks[v], at));
            }
            if t.relu {
                // Zero first: a NaN (the second operand) is kept.
                y = _mm512_max_ps(zero, y);
            }
            _mm512_mask_storeu_ps(t.out.add(r * t.out_stride + 16 * v), masks[v], y);
        }
    }
}
