//! The weight gradient of a kxk convolution on the CPU, computed directly from the padded input.
//!
//! For one image and group, with the input zero-padded and split into stride phases as the
//! forward kernel lays it out ([`super::direct`]), every (input channel, kernel tap) pair
//! `e` reads the input at `phases[start(e) + oy * width + ox]` for output position `(oy, ox)`, so
//!
//! `dW[o][e] = sum over output positions (oy, ox) of dY[o][oy][ox] * phases[start(e) + oy * width + ox]`.
//!
//! The kernel holds a block of output channels in vector lanes and a block of entries `e` in
//! registers: per output position it loads the output gradient of the block's channels (from a
//! transposed copy, position-major) and one broadcast input value per entry, and does one FMA per
//! (vector, entry). The sums stay in registers over the whole image and are never reduced across
//! lanes. The im2col + GEMM formulation it replaces wrote every patch twice (im2col, then the
//! GEMM's packing) and ran tiny GEMMs for grouped convs.
//!
//! Used by [`super::backward`] for kxk convs whose output channels a group fill whole vectors
//! (16 with AVX-512, 8 with AVX2, which AVX-512 CPUs also have); others keep im2col + GEMM.

use rayon::prelude::*;

use super::isa::Kernel;
use super::plan::{Images, PhaseLayout, Plan};

/// Entries (input channel, tap) whose sums the AVX-512 kernel holds in registers: with two
/// vectors of output channels, 24 accumulators, two gradient vectors and a broadcast fill 27 of
/// the 32 registers.
const ENTRIES_AVX512: usize = 12;
/// The same for AVX2's 16 registers: 12 accumulators, two gradient vectors and a broadcast.
const ENTRIES_AVX2: usize = 6;

/// Per-split buffers: the padded input of one (image, group), the transposed output gradient,
/// and the split's weight gradient, entry-major (`[group][entry][out channel]`).
struct Scratch {
    phases: Vec<f32>,
    dy_t: Vec<f32>,
    dw_t: Vec<f32>,
}

/// `dW` of `y = conv2d(x, w)` for the output gradient `dy`, in `w`'s layout
/// (`[out_channels, in_channels / groups, k, k]`), or `None` where this kernel does not apply
/// (1x1 kernels, no AVX2, output channels a group not a multiple of the vector width, shapes the
/// forward kernel does not take: see `Plan::checked`).
///
/// # Shapes
/// - x: `[batch, in_channels, h, w]` given as `x_shape`
/// - w: `w_shape` = `[out_channels, in_channels / groups, k, k]`
/// - dy: `[batch, out_channels, h', w']`, contiguous
pub(super) fn weight_grad(
    x: Images,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    dy: &[f32],
    options: &burn::tensor::ops::ConvOptions<2>,
) -> Option<Vec<f32>> {
    let plan = Plan::checked(&x_shape, &w_shape, options)?;
    let kernel = vector_kernel(&plan)?;
    let layout = PhaseLayout::new(&plan);
    let starts = layout.tap_starts(&plan);
    let entries = starts.len();
    let block = match kernel {
        Kernel::Avx512 => ENTRIES_AVX512,
        _ => ENTRIES_AVX2,
    };
    // Whole blocks of entries: the padding ones read the first entry's data, and their sums are
    // dropped.
    let mut padded_starts = starts.clone();
    padded_starts.resize(entries.div_ceil(block) * block, starts[0]);
    let groups = plan.in_channels / plan.group_in;
    let (go, plane) = (plan.group_out, plan.out_h * plan.out_w);
    let group_input = plan.group_in * plan.in_h * plan.in_w;
    let out_len = plan.out_channels * plane;
    assert_eq!(dy.len(), plan.batch * out_len);
    let w_len = plan.out_channels * entries;
    let group_grad = GroupGrad {
        kernel,
        geometry: Geometry {
            out_h: plan.out_h,
            out_w: plan.out_w,
            width: layout.width,
        },
        padded_starts: &padded_starts,
        block,
        entries,
        group_out: go,
    };

    // Each part sums a fixed, contiguous run of (image, group) tasks, and the parts are added in
    // order: the same sums in the same order on every run (rayon's fold would cut the tasks as
    // its threads happen to steal them, and float sums depend on the order).
    let tasks = plan.batch * groups;
    let per_part = tasks
        .div_ceil(rayon::current_num_threads().clamp(1, tasks.max(1)))
        .max(1);
    let partials: Vec<Vec<f32>> = (0..tasks.div_ceil(per_part))
        .into_par_iter()
        .map(|part| {
            let mut scratch = Scratch {
                phases: Vec::new(),
                dy_t: vec![0f32; plane * go],
                dw_t: vec![0f32; w_len],
            };
            for task in part * per_part..((part + 1) * per_part).min(tasks) {
                let (n, g) = (task / groups, task % groups);
                layout.fill(&plan, x.part(n, g, group_input), &mut scratch.phases);
                // Position-major output gradient: the block's channels are one vector load.
                let dy_g = &dy[n * out_len + g * go * plane..][..go * plane];
                super::transpose(dy_g, go, plane, &mut scratch.dy_t);
                let dw_g = &mut scratch.dw_t[g * entries * go..][..entries * go];
                group_grad.add(&scratch.phases, &scratch.dy_t, dw_g);
            }
            scratch.dw_t
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw_t = partials.next().unwrap_or_else(|| vec![0f32; w_len]);
    for part in partials {
        for (a, b) in dw_t.iter_mut().zip(&part) {
            *a += b;
        }
    }
    // [group][entry][o] -> [group][o][entry], which is the weight's layout.
    // SAFETY: the transpositions below write every group's block.
    let mut dw = unsafe { super::output_buffer(w_len) };
    for g in 0..groups {
        super::transpose(
            &dw_t[g * entries * go..][..entries * go],
            entries,
            go,
            &mut dw[g * go * entries..][..go * entries],
        );
    }
    Some(dw)
}

/// The vector kernel for `plan`'s weight gradient: AVX-512 or AVX2, one whose vectors a group's
/// output channels fill whole (AVX2 for multiples of 8 that are not of 16); `None` for 1x1
/// kernels and where neither applies.
fn vector_kernel(plan: &Plan) -> Option<Kernel> {
    let kernel = match Kernel::for_plan(plan) {
        // 8 output channels a group (skresnext50's second stage) fill AVX2 vectors, not AVX-512.
        Kernel::Avx512 if !plan.group_out.is_multiple_of(16) => Kernel::Avx2,
        kernel => kernel,
    };
    let lanes = kernel.lanes();
    if plan.kernel == 1 || kernel == Kernel::Portable || !plan.group_out.is_multiple_of(lanes) {
        return None;
    }
    Some(kernel)
}

/// What the (image, group) tasks of one weight gradient share.
struct GroupGrad<'a> {
    kernel: Kernel,
    geometry: Geometry,
    /// A group's tap starts, one per entry, padded to whole blocks with the first one's.
    padded_starts: &'a [usize],
    /// Entries a kernel call holds in registers.
    block: usize,
    /// Entries (input channel, tap) of a group.
    entries: usize,
    /// Output channels of a group.
    group_out: usize,
}

impl GroupGrad<'_> {
    /// Adds one (image, group)'s weight gradient to `dw_g` (`[entry][out channel]`), from the
    /// group's padded input `phases` and its position-major output gradient `dy_t`.
    #[inline]
    fn add(&self, phases: &[f32], dy_t: &[f32], dw_g: &mut [f32]) {
        let (go, block, entries) = (self.group_out, self.block, self.entries);
        let lanes = self.kernel.lanes();
        for (b, starts) in self.padded_starts.chunks_exact(block).enumerate() {
            let first = b * block;
            let mut o = 0;
            while o < go {
                let vectors = if go - o >= 2 * lanes { 2 } else { 1 };
                let mut sums = [0f32; 2 * 16 * ENTRIES_AVX512];
                kernel_block(
                    self.kernel,
                    vectors,
                    &self.geometry,
                    phases,
                    starts,
                    &dy_t[o..],
                    go,
                    &mut sums,
                );
                let width = vectors * lanes;
                for (e, sum) in sums.chunks_exact(width).take(block).enumerate() {
                    if first + e < entries {
                        let dst = &mut dw_g[(first + e) * go + o..][..width];
                        for (d, s) in dst.iter_mut().zip(sum) {
                            *d += s;
                        }
                    }
                }
                o += width;
            }
        }
    }
}

/// Where the output positions lie in the phase planes.
struct Geometry {
    out_h: usize,
    out_w: usize,
    /// Row pitch of the phase planes.
    width: usize,
}

/// `sums[e][lane]` = the block's sums (entry-major, `vectors * lanes` output channels each), over
/// every output position, of `dy_t[p * pitch + lane] * data[starts[e] + oy * width + ox]`.
#[allow(clippy::too_many_arguments)]
fn kernel_block(
    kernel: Kernel,
    vectors: usize,
    geometry: &Geometry,
    data: &[f32],
    starts: &[usize],
    dy_t: &[f32],
    pitch: usize,
    sums: &mut [f32],
) {
    let run = (geometry.out_h - 1) * geometry.width + geometry.out_w;
    let lanes = kernel.lanes();
    let plane = geometry.out_h * geometry.out_w;
    // The bounds the raw-pointer kernels rely on.
    assert!(starts.iter().all(|&s| s + run <= data.len()));
    assert!(dy_t.len() >= (plane - 1) * pitch + vectors * lanes);
    assert!(sums.len() >= starts.len() * vectors * lanes);
    // SAFETY: `Kernel::for_plan` chose this instruction set after detecting it (the portable
    // kernel never gets here); the bounds are checked above.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match (kernel, vectors) {
            (Kernel::Avx512, 1) => grad_avx512::<1>(geometry, data, starts, dy_t, pitch, sums),
            (Kernel::Avx512, _) => grad_avx512::<2>(geometry, data, starts, dy_t, pitch, sums),
            (_, 1) => grad_avx2::<1>(geometry, data, starts, dy_t, pitch, sums),
            (_, _) => grad_avx2::<2>(geometry, data, starts, dy_t, pitch, sums),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (geometry, data, starts, dy_t, pitch, sums, vectors);
        unreachable!("{kernel:?} is an x86-64 kernel, chosen only there");
    }
}

/// Defines the weight-gradient kernel for one instruction set, holding `$entries` entries times
/// `VECTORS` vectors of output channels in registers.
macro_rules! grad_kernel {
    ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal, $entries:expr,
     $vec:ty, $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        #[doc = concat!("The CPU supports ", $features, " (found by [`Kernel::for_plan`]).")]
        /// `data`, `dy_t` and `sums` hold what [`kernel_block`] asserts: every entry's run from
        /// its start, the gradient vectors of every position, and every entry's sums.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const VECTORS: usize>(
            geometry: &Geometry,
            data: &[f32],
            starts: &[usize],
            dy_t: &[f32],
            pitch: usize,
            sums: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            const ENTRIES: usize = $entries;
            assert_eq!(starts.len(), ENTRIES);
            let mut acc: [[$vec; VECTORS]; ENTRIES] = [[$zero(); VECTORS]; ENTRIES];
            let base = data.as_ptr();
            let ptrs: [*const f32; ENTRIES] = std::array::from_fn(|e| base.add(starts[e]));
            let mut grad = dy_t.as_ptr();
            for oy in 0..geometry.out_h {
                let row = oy * geometry.width;
                for j in row..row + geometry.out_w {
                    let mut g = [$zero(); VECTORS];
                    for (v, g) in g.iter_mut().enumerate() {
                        *g = $load(grad.add($lanes * v));
                    }
                    for (e, acc) in acc.iter_mut().enumerate() {
                        let value = $splat(*ptrs[e].add(j));
                        for (a, &g) in acc.iter_mut().zip(&g) {
                            *a = $fma(g, value, *a);
                        }
                    }
                    grad = grad.add(pitch);
                }
            }
            let out = sums.as_mut_ptr();
            for (e, acc) in acc.iter().enumerate() {
                for (v, &a) in acc.iter().enumerate() {
                    $store(out.add((e * VECTORS + v) * $lanes), a);
                }
            }
        }
    };
}

grad_kernel!(
    /// The weight-gradient kernel in AVX2 registers (8 output channels a vector).
    grad_avx2, "avx2,fma", 8, ENTRIES_AVX2, __m256,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps
);
grad_kernel!(
    /// The weight-gradient kernel in AVX-512 registers (16 output channels a vector).
    grad_avx512, "avx512f", 16, ENTRIES_AVX512, __m512,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps
);
