//! Helpers the CPU kernels share: Flex tensor access, output buffers without a zero fill, a
//! blocked transpose, a strided GEMM and a lane-wise sum.

/// An output buffer that parallel tasks share, each writing its own disjoint part of it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: a `SendPtr` sent to another thread points into a buffer that outlives the tasks it is
// sent to, each of which writes only its own disjoint elements.
unsafe impl Send for SendPtr {}
// SAFETY: the tasks that share a `SendPtr` only read the pointer itself; through it, each writes
// only its own disjoint elements of the buffer, which outlives them.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A contiguous `f32` Flex tensor of `shape` holding `data` (row-major).
pub(crate) fn flex_f32(data: Vec<f32>, shape: &[usize]) -> burn::backend::flex::FlexTensor {
    burn::backend::flex::FlexTensor::from_data(burn::tensor::TensorData::new(
        data,
        burn::tensor::Shape::from(shape.to_vec()),
    ))
}

/// `t` itself when contiguous (moved, so that a buffer it holds alone stays unshared), else a
/// contiguous copy. `what` names the op in the message if `t` is not `f32`.
pub(crate) fn into_contiguous_f32(
    t: burn::backend::flex::FlexTensor,
    what: &str,
) -> burn::backend::flex::FlexTensor {
    assert_eq!(
        t.dtype(),
        burn::tensor::DType::F32,
        "{what} takes f32 tensors"
    );
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The values of contiguous `t` for writing in place: `Some` when `t` holds its whole buffer
/// (`len` floats) alone, so that an op can reuse it instead of allocating its output.
pub(crate) fn unique_f32_mut(
    t: &mut burn::backend::flex::FlexTensor,
    len: usize,
) -> Option<&mut [f32]> {
    if t.layout().contiguous_offsets() != Some((0, len)) {
        return None;
    }
    t.try_storage_mut::<f32>().filter(|s| s.len() == len)
}

/// `dst = srcᵀ` for `src` of `rows x cols` (row-major), in 8x8 blocks: a row-by-row transposition
/// strides through memory on one side, and reading many rows a cache line at a time defeats the
/// prefetcher, while a block reads 8 lines and writes 8.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const BLOCK: usize = 8;
    assert_eq!(src.len(), rows * cols);
    assert_eq!(dst.len(), rows * cols);
    let (full_rows, full_cols) = (rows - rows % BLOCK, cols - cols % BLOCK);
    for c0 in (0..full_cols).step_by(BLOCK) {
        for r0 in (0..full_rows).step_by(BLOCK) {
            let block: [&[f32]; BLOCK] =
                std::array::from_fn(|i| &src[(r0 + i) * cols + c0..][..BLOCK]);
            for j in 0..BLOCK {
                let out = &mut dst[(c0 + j) * rows + r0..][..BLOCK];
                for (o, row) in out.iter_mut().zip(&block) {
                    *o = row[j];
                }
            }
        }
    }
    // The ragged edges: the last columns of the full rows, then the last rows.
    for r in 0..rows {
        let columns = if r < full_rows {
            full_cols..cols
        } else {
            0..cols
        };
        for c in columns {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// A buffer of `len` floats for an op that writes every one of them before any is read, without
/// `vec![0.0; len]`'s zero fill: that was a memset pass over each output of the training kernels,
/// a measurable part of a sknet-tiny step. Test builds fill it with NaN instead, so that an
/// element left unwritten fails the comparisons with the reference ops.
///
/// # Safety
/// The caller writes every element before reading any.
#[allow(clippy::uninit_vec)] // deliberate: see above; every caller's safety note says why
pub(crate) unsafe fn output_buffer(len: usize) -> Vec<f32> {
    if cfg!(debug_assertions) {
        return vec![f32::NAN; len];
    }
    let mut buffer = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; f32 has no invalid bit patterns, and the caller writes every
    // element before reading it.
    unsafe { buffer.set_len(len) };
    buffer
}

/// The four dimensions of a 4-d Flex tensor.
pub(crate) fn dims4(t: &burn::backend::flex::FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

/// `max(v, 0)` that keeps a NaN, as PyTorch's ReLU does (`f32::max` returns the other operand,
/// so a NaN would become 0 and hide a broken network). One vector max instruction with the zero
/// first; the AVX-512 stores do the same with `_mm512_max_ps(zero, v)`, which returns its second
/// operand when either is NaN.
#[inline(always)]
pub(crate) fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// `Σ f(a_i, b_i)` over two equal-length runs, in 16 independent `f32` lanes (which the compiler
/// vectorizes) summed into an `f64`: a plane holds at most a few thousand values.
pub(crate) fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += f(ca[i], cb[i]);
        }
    }
    let tail: f64 = a_rest
        .iter()
        .zip(b_rest)
        .map(|(&x, &y)| f(x, y) as f64)
        .sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// Asserts that two float tensors have the same length and differ by less than `tolerance`
/// anywhere; the message names `what` and the largest difference.
#[cfg(test)]
pub(crate) fn assert_close(
    what: &str,
    a: burn::tensor::TensorData,
    b: burn::tensor::TensorData,
    tolerance: f32,
) {
    let (a, b) = (
        a.try_to_vec::<f32>().unwrap(),
        b.try_to_vec::<f32>().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    // A NaN on either side (an output element never written, see `output_buffer`) fails too.
    let diff = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .map(|d| if d.is_nan() { f32::INFINITY } else { d })
        .fold(0f32, f32::max);
    assert!(diff < tolerance, "{what} differs by {diff}");
}

/// `dst[m x n] (+)= lhs[m x k] · rhs[k x n]`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    [dst_rs, dst_cs]: [usize; 2],
    accumulate: bool,
    lhs: &[f32],
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: &[f32],
    [rhs_rs, rhs_cs]: [usize; 2],
    parallelism: gemm::Parallelism,
) {
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    // The bounds the raw-pointer call below relies on.
    assert!(m == 0 || n == 0 || last(dst_rs, dst_cs, m, n) < dst.len());
    assert!(m == 0 || k == 0 || last(lhs_rs, lhs_cs, m, k) < lhs.len());
    assert!(k == 0 || n == 0 || last(rhs_rs, rhs_cs, k, n) < rhs.len());
    let call = chosen_gemm();
    // SAFETY: every index the GEMM touches is within the slices, checked above; `dst` is borrowed
    // mutably and so does not alias `lhs` or `rhs`.
    unsafe {
        call(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `gemm::gemm`'s signature for f32.
type GemmFn = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    isize,
    isize,
    bool,
    *const f32,
    isize,
    isize,
    *const f32,
    isize,
    isize,
    f32,
    f32,
    bool,
    bool,
    bool,
    gemm::Parallelism,
);

/// The GEMM sknet's convolutions call. `gemm` (built with `x86-v4`) picks its AVX-512 kernels
/// wherever AVX-512 exists. They are faster on Intel's cores, with two full-width FMA units
/// (training steps 8 to 15% shorter on a Xeon with AMX), and slower on AMD's Zen, which splits a
/// 512-bit operation in two (training steps about 20% longer on an EPYC): AMD CPUs take its AVX2
/// kernels (BENCHMARKS.md).
#[cfg(target_arch = "x86_64")]
fn chosen_gemm() -> GemmFn {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let avx2 = *AVX2.get_or_init(|| {
        // CPUID leaf 0: the vendor string.
        let id = std::arch::x86_64::__cpuid(0);
        let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        vendor == b"AuthenticAMD" && std::arch::is_x86_feature_detected!("fma")
    });
    if avx2 {
        gemm_avx2
    } else {
        gemm::gemm::<f32>
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn chosen_gemm() -> GemmFn {
    gemm::gemm::<f32>
}

/// `gemm::gemm` for f32 with its AVX2 + FMA kernels whatever the CPU: the same steps (a
/// row-major destination is computed as its transpose, which the kernels prefer), then its
/// generic driver with the FMA microkernels. Strides are non-negative here (they come from
/// `usize`), so `gemm`'s handling of negative ones is not needed.
///
/// # Safety
/// As `gemm::gemm`; the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx2(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: f32,
    beta: f32,
    _conj_dst: bool,
    _conj_lhs: bool,
    _conj_rhs: bool,
    parallelism: gemm::Parallelism,
) {
    use gemm_f32::microkernel::fma::f32 as ukr;
    // The FMA kernels' vector width (f32 lanes of a 256-bit register).
    const LANES: usize = 8;
    let (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs) =
        if dst_cs.abs() < dst_rs.abs() {
            (
                n, m, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs,
            )
        } else {
            (
                m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs,
            )
        };
    let simd = gemm_common::simd::V3::try_new().expect("AVX2 and FMA, checked by the caller");
    // SAFETY: as the caller's contract; the arguments are gemm::gemm's after its transposition.
    unsafe {
        gemm_common::gemm::gemm_basic_generic::<
            _,
            f32,
            LANES,
            { ukr::MR_DIV_N * LANES },
            { ukr::NR },
            { ukr::MR_DIV_N },
            { ukr::H_M },
            { ukr::H_N },
        >(
            simd,
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            |a, b, c| a * b + c,
            &ukr::UKR,
            &ukr::H_UKR,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::GemmFn;

    /// The AVX2 path that AMD CPUs take gives what the default path gives, on every layout the
    /// convolutions use (row- and column-major operands, accumulation, odd sizes).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_gemm_equals_the_default_one() {
        if !std::arch::is_x86_feature_detected!("fma") {
            return;
        }
        let [m, n, k] = [37usize, 29, 53];
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 - 500.0) / 250.0)
                .collect()
        };
        let (lhs, rhs) = (values(m * k, 1), values(k * n, 2));
        for ((dst_rs, dst_cs), accumulate) in [((n, 1), false), ((1, m), true), ((n, 1), true)] {
            for (lhs_rs, lhs_cs) in [(k, 1), (1, m)] {
                for (rhs_rs, rhs_cs) in [(n, 1), (1, k)] {
                    let start = values(m * n, 3);
                    let mut want = start.clone();
                    let mut got = start.clone();
                    let default: GemmFn = gemm::gemm::<f32>;
                    for (call, out) in [(default, &mut want), (super::gemm_avx2, &mut got)] {
                        // SAFETY: the strides describe dense m x k, k x n and m x n matrices.
                        unsafe {
                            call(
                                m,
                                n,
                                k,
                                out.as_mut_ptr(),
                                dst_cs as isize,
                                dst_rs as isize,
                                accumulate,
                                lhs.as_ptr(),
                                lhs_cs as isize,
                                lhs_rs as isize,
                                rhs.as_ptr(),
                                rhs_cs as isize,
                                rhs_rs as isize,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                    }
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{i}: {a} vs {b}");
                    }
                    // And it is a product: one entry by hand.
                    let (r, c) = (5, 7);
                    let mut dot: f64 = (0..k)
                        .map(|t| {
                            lhs[r * lhs_rs + t * lhs_cs] as f64
                                * rhs[t * rhs_rs + c * rhs_cs] as f64
                        })
                        .sum();
                    if accumulate {
                        dot += start[r * dst_rs + c * dst_cs] as f64;
                    }
                    let g = got[r * dst_rs + c * dst_cs] as f64;
                    assert!((g - dot).abs() < 1e-3 * dot.abs().max(1.0), "{g} vs {dot}");
                }
            }
        }
    }

    /// Every block and edge case lands where an element-by-element transposition puts it.
    #[test]
    fn transpose_matches_elementwise() {
        for (rows, cols) in [(8, 8), (32, 1024), (24, 49), (13, 7), (1, 9), (16, 3)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            super::transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}
