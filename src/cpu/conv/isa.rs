//! The instruction sets the conv kernels run on ([`Kernel`]: portable, AVX2 or AVX-512, picked at
//! run time) and the direct kernel's inner loops for each: a portable one output channel at a
//! time, and register-blocked ones that compute [`BLOCK_CHANNELS`] output channels together.

use super::plan::{PhaseLayout, Plan, CHUNK};

/// The portable kernel, one output channel at a time:
/// `acc[j] = sum over taps t of weights[t] * data[starts[t] + j]`, a chunk at a time (each chunk
/// stays in registers across all the taps and is stored once). Used without AVX2/FMA and for
/// groups whose output channels are not a multiple of [`BLOCK_CHANNELS`].
pub(super) fn accumulate(data: &[f32], starts: &[usize], weights: &[f32], acc: &mut [f32]) {
    for (j, chunk) in acc.chunks_exact_mut(CHUNK).enumerate() {
        let mut sum = [0f32; CHUNK];
        for (&start, &weight) in starts.iter().zip(weights) {
            let src: &[f32; CHUNK] = data[start + j * CHUNK..][..CHUNK]
                .try_into()
                .expect("a chunk");
            for q in 0..CHUNK {
                sum[q] += weight * src[q];
            }
        }
        chunk.copy_from_slice(&sum);
    }
}

/// Output channels computed together by the blocked kernel: each input vector it loads feeds this
/// many FMAs.
pub(super) const BLOCK_CHANNELS: usize = 4;

/// The instruction set of the direct conv's per-group kernels ([`super::direct`]), which the
/// weight-gradient kernel ([`super::weight_grad`]) and the 1x1 path go by too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// One output channel at a time, in whatever the compiler makes of it.
    Portable,
    /// [`BLOCK_CHANNELS`] output channels at a time in AVX2 registers.
    Avx2,
    /// The same in AVX-512 registers: half the instructions and loads of [`Kernel::Avx2`] for the
    /// same FMAs, and the faster of the two on skresnext50's grouped convs and the stem.
    Avx512,
}

#[cfg(test)]
thread_local! {
    /// Tests run every kernel the CPU has, not only the best.
    pub(super) static FORCED_KERNEL: std::cell::Cell<Option<Kernel>> = const { std::cell::Cell::new(None) };
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(super) fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if fma && std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// [`Kernel::best`], or in tests the kernel a test forces.
    pub(super) fn chosen() -> Self {
        #[cfg(test)]
        return FORCED_KERNEL.get().unwrap_or_else(Kernel::best);
        #[cfg(not(test))]
        Kernel::best()
    }

    /// The kernel for `plan`: the blocked ones need whole blocks of output channels a group.
    pub(super) fn for_plan(plan: &Plan) -> Self {
        let best = Kernel::chosen();
        if plan.group_out.is_multiple_of(BLOCK_CHANNELS) {
            best
        } else {
            Kernel::Portable
        }
    }

    /// Floats a vector register holds.
    pub(super) fn lanes(self) -> usize {
        match self {
            Kernel::Avx512 => 16,
            _ => 8,
        }
    }

    /// `acc[c][j] = sum over taps t of weights[c][t] * data[starts[t] + j]` for the block's
    /// channels, through this (blocked) kernel with `vectors` registers a channel.
    pub(super) fn accumulate_block(
        self,
        vectors: usize,
        data: &[f32],
        starts: &[usize],
        weights: &[f32],
        padded_run: usize,
        acc: &mut [f32],
    ) {
        // SAFETY: `Kernel::best` found these instruction sets on this CPU (the blocked kernels
        // are only chosen through it); the kernels check their bounds themselves.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match (self, vectors) {
                (Kernel::Avx512, 1) => avx512::<1>(data, starts, weights, padded_run, acc),
                (Kernel::Avx512, 2) => avx512::<2>(data, starts, weights, padded_run, acc),
                (Kernel::Avx512, _) => avx512::<3>(data, starts, weights, padded_run, acc),
                (_, 1) => avx2::<1>(data, starts, weights, padded_run, acc),
                (_, 2) => avx2::<2>(data, starts, weights, padded_run, acc),
                (_, _) => avx2::<3>(data, starts, weights, padded_run, acc),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (vectors, data, starts, weights, padded_run, acc);
            unreachable!("{self:?} is an x86-64 kernel, chosen only there");
        }
    }
}

/// Vector registers of outputs per channel that the blocked kernels hold: 3 (with
/// [`BLOCK_CHANNELS`], 12 accumulators, 3 input vectors and a broadcast weight fill AVX2's 16
/// registers) unless the output is so small that rounding its run up to whole blocks wastes more
/// than fewer vectors cost (7x7 maps: a run of 61 or 73 outputs).
pub(super) fn block_vectors(plan: &Plan, layout: &PhaseLayout, lanes: usize) -> usize {
    // Relative cost per output of 1 and 2 vectors: more loads per FMA.
    let cost =
        |vectors: usize, factor: f64| layout.padded_run(plan, lanes * vectors) as f64 * factor;
    [(3, 1.0), (2, 1.1), (1, 1.35)]
        .into_iter()
        .min_by(|a, b| cost(a.0, a.1).total_cmp(&cost(b.0, b.1)))
        .map_or(3, |(vectors, _)| vectors)
}

/// Defines a blocked kernel for one instruction set: [`BLOCK_CHANNELS`] output channels of one
/// group at a time, which share their input taps.
/// `acc[c][j] = sum over taps t of weights[c][t] * data[starts[t] + j]`, for `j` in whole blocks
/// of `LANES * VECTORS` up to `padded_run`: per tap, `VECTORS` input vectors and four broadcast
/// weights feed `4 * VECTORS` FMAs into accumulators that stay in registers across all taps. (The
/// portable kernel does one load per FMA and is bound by loads.)
macro_rules! blocked_kernel {
    ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal,
     $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        #[doc = concat!("The CPU supports ", $features, " (found by [`Kernel::best`]).")]
        /// The sizes are asserted here.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const VECTORS: usize>(
            data: &[f32],
            starts: &[usize],
            weights: &[f32],
            padded_run: usize,
            acc: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            let taps = starts.len();
            let block = $lanes * VECTORS;
            assert!(weights.len() == taps * BLOCK_CHANNELS);
            assert!(acc.len() >= BLOCK_CHANNELS * padded_run && padded_run.is_multiple_of(block));
            assert!(starts.iter().all(|&s| s + padded_run <= data.len()));
            let src = data.as_ptr();
            let dst = acc.as_mut_ptr();
            for j in (0..padded_run).step_by(block) {
                let mut sum = [[$zero(); VECTORS]; BLOCK_CHANNELS];
                for (t, &start) in starts.iter().enumerate() {
                    let p = src.add(start + j);
                    let mut v = [$zero(); VECTORS];
                    for (q, v) in v.iter_mut().enumerate() {
                        *v = $load(p.add($lanes * q));
                    }
                    let wt = weights.as_ptr().add(t);
                    for (c, row) in sum.iter_mut().enumerate() {
                        let weight = $splat(*wt.add(c * taps));
                        for (s, &value) in row.iter_mut().zip(&v) {
                            *s = $fma(weight, value, *s);
                        }
                    }
                }
                for (c, row) in sum.iter().enumerate() {
                    for (q, &s) in row.iter().enumerate() {
                        $store(dst.add(c * padded_run + j + $lanes * q), s);
                    }
                }
            }
        }
    };
}

blocked_kernel!(
    /// The blocked kernel in AVX2 registers (8 floats).
    avx2, "avx2,fma", 8,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps
);
blocked_kernel!(
    /// The blocked kernel in AVX-512 registers (16 floats).
    avx512, "avx512f", 16,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps
);

/// Tasks the work is cut into at least, per thread, so that threads finish together.
pub(super) const TASKS_PER_THREAD: usize = 4;

/// What happens to a computed run on its way to the output.
pub(super) struct Epilogue<'a> {
    pub(super) plan: &'a Plan,
    /// The run's row pitch: the phase plane's width.
    pub(super) width: usize,
    pub(super) relu: bool,
}

impl Epilogue<'_> {
    /// Copies a run computed over the phase plane's width into an output plane, dropping the
    /// extra columns between rows, adding the bias and applying the ReLU if any.
    pub(super) fn store(&self, acc: &[f32], shift: f32, out_plane: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::pointwise::available() {
            // SAFETY: AVX-512 was detected.
            return unsafe { self.store_avx512(acc, shift, out_plane) };
        }
        self.store_any(acc, shift, out_plane)
    }

    /// [`Self::store`] with AVX-512 vectors, a row's last one masked: the rows of small maps are
    /// too short for the compiler's vector loops (a 14x14 map's rows went all scalar), which made
    /// the stores a sizeable cost next to the grouped convs' FMAs.
    ///
    /// # Safety
    /// The CPU supports AVX-512F (the caller checks with [`super::pointwise::available`]). The
    /// slices' bounds are asserted here.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_avx512(&self, acc: &[f32], shift: f32, out_plane: &mut [f32]) {
        use std::arch::x86_64::*;
        let (out_w, width) = (self.plan.out_w, self.width);
        let rows = out_plane.len() / out_w.max(1);
        assert!(out_w <= width && rows * out_w == out_plane.len());
        assert!(rows == 0 || (rows - 1) * width + out_w <= acc.len());
        let (shift, zero) = (_mm512_set1_ps(shift), _mm512_setzero_ps());
        for y in 0..rows {
            let (src, dst) = (
                acc.as_ptr().add(y * width),
                out_plane.as_mut_ptr().add(y * out_w),
            );
            let mut x = 0;
            while x < out_w {
                let n = (out_w - x).min(16);
                let mask: __mmask16 = if n == 16 { 0xffff } else { (1 << n) - 1 };
                let mut v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, src.add(x)), shift);
                if self.relu {
                    // Zero first: a NaN (the second operand) is kept.
                    v = _mm512_max_ps(zero, v);
                }
                _mm512_mask_storeu_ps(dst.add(x), mask, v);
                x += 16;
            }
        }
    }

    #[inline(always)]
    fn store_any(&self, acc: &[f32], shift: f32, out_plane: &mut [f32]) {
        let rows = out_plane
            .chunks_mut(self.plan.out_w)
            .zip(acc.chunks(self.width));
        if self.relu {
            for (dst, src) in rows {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = crate::cpu::relu(v + shift);
                }
            }
        } else {
            for (dst, src) in rows {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v + shift;
                }
            }
        }
    }
}
