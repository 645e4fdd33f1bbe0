//! The direct conv's paths for dense convs as matrix products: a kxk conv as one GEMM per kernel
//! tap over the phase-split padded input, a 1x1 conv as one product per image of the input as
//! it lies (the AVX-512 [`super::pointwise`] kernel, or a GEMM).

use rayon::prelude::*;

use super::gemm_strided;
use super::isa::{Epilogue, Kernel, TASKS_PER_THREAD};
use super::plan::{PhaseLayout, Plan, SLACK};

/// A dense conv as one GEMM per kernel tap, accumulated: `acc[o][j] += sum over input channels i
/// of w[o][i][tap] * phases[i][start(tap) + j]`. The padded, phase-split input is the GEMM's
/// right-hand side as it is (rows one channel apart), so there is no im2col copy and no layout
/// change. Threads split the work by images and bands of output rows, not inside the GEMMs: one
/// synchronisation per conv instead of one per tap.
pub(super) fn run_tapwise_gemm(
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let plane = plan.out_h * plan.out_w;
    let layout = PhaseLayout::new(plan);
    let kk = plan.kernel * plan.kernel;
    // The start of each tap's run in channel 0: the first `kk` tap starts.
    let starts: Vec<usize> = layout.tap_starts(plan).into_iter().take(kk).collect();
    let epilogue = Epilogue {
        plan,
        width: layout.width,
        relu,
    };
    let in_plane = plan.in_h * plan.in_w;
    let (m, k) = (plan.out_channels, plan.in_channels);
    let image_phases = plan.in_channels * layout.channel;
    let mut phases = vec![0f32; plan.batch * image_phases + SLACK];
    phases[..plan.batch * image_phases]
        .par_chunks_mut(layout.channel)
        .zip(x.par_chunks(in_plane))
        .for_each(|(dst, src)| layout.fill_into(plan, src, dst));
    // Tasks are bands of output rows of an image, enough of them to keep every thread busy; each
    // runs its GEMMs on one thread into its own buffer.
    let wanted = TASKS_PER_THREAD * rayon::current_num_threads();
    let bands = wanted.div_ceil(plan.batch).clamp(1, plan.out_h);
    let band_rows = plan.out_h.div_ceil(bands);
    let bands = plan.out_h.div_ceil(band_rows);
    // The run of output rows [r0, r1): the last row ends at its last output column.
    let band_run = |band: usize| {
        let (r0, r1) = (band * band_rows, ((band + 1) * band_rows).min(plan.out_h));
        (r0, r1, (r1 - r0 - 1) * layout.width + plan.out_w)
    };
    let accs: Vec<Vec<f32>> = (0..plan.batch * bands)
        .into_par_iter()
        .map(|task| {
            let (image, band) = (task / bands, task % bands);
            let (r0, _, n) = band_run(band);
            let offset = image * image_phases + r0 * layout.width;
            let mut acc = vec![0f32; m * n];
            for (tap, &start) in starts.iter().enumerate() {
                gemm_strided(
                    [m, n, k],
                    &mut acc,
                    [n, 1],
                    tap > 0,
                    &w[tap..],
                    [k * kk, kk],
                    &phases[offset + start..],
                    [layout.channel, 1],
                    gemm::Parallelism::None,
                );
            }
            acc
        })
        .collect();
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(index, out_plane)| {
            let (image, o) = (index / m, index % m);
            for band in 0..bands {
                let (r0, r1, n) = band_run(band);
                let acc = &accs[image * bands + band][o * n..][..n];
                let rows = &mut out_plane[r0 * plan.out_w..r1 * plan.out_w];
                epilogue.store(acc, bias[o], rows);
            }
        });
}

/// A strided dense 1x1 conv (the projection shortcut): the 1x1 conv of the input subsampled to
/// every `stride`-th row and column.
pub(super) fn run_strided_pointwise(
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let plane = plan.out_h * plan.out_w;
    // SAFETY: each channel's plane is written from every stride-th row and column.
    let mut subsampled = unsafe { super::output_buffer(x.len() / (plan.in_h * plan.in_w) * plane) };
    subsampled
        .par_chunks_mut(plane)
        .zip(x.par_chunks(plan.in_h * plan.in_w))
        .for_each(|(dst, channel)| {
            let rows = channel.chunks(plan.in_w).step_by(plan.stride);
            let values = rows.flat_map(|row| row.iter().step_by(plan.stride));
            for (d, &v) in dst.iter_mut().zip(values) {
                *d = v;
            }
        });
    let plan = Plan {
        in_h: plan.out_h,
        in_w: plan.out_w,
        stride: 1,
        ..*plan
    };
    run_pointwise(&plan, &subsampled, w, bias, relu, out)
}

/// A dense 1x1 conv: per image, `out = w · x` with `x` as `[in_channels, positions]`, as it is.
/// With AVX-512, [`super::pointwise`] computes it with the bias and ReLU. Otherwise it is a GEMM
/// straight into the output, then the bias (and the ReLU) added in one pass: no zeroed
/// buffer and no separate bias and activation passes. With an image per thread or more, each
/// image's GEMM runs on one thread and its epilogue follows while the output is in cache; with
/// fewer images, the GEMM itself is split over the threads (splitting the output channels
/// instead made every thread pack the whole input).
pub(super) fn run_pointwise(
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let plane = plan.out_h * plan.out_w;
    let (m, k) = (plan.out_channels, plan.in_channels);
    if Kernel::chosen() == Kernel::Avx512 && super::pointwise::available() {
        let finish = super::pointwise::Finish {
            bias,
            residual: None,
            relu,
        };
        return super::pointwise::pointwise(plan.batch, [m, k, plane], x, w, finish, out);
    }
    let store = |out_image: &mut [f32], parallel: bool| {
        let epilogue = |(o, row): (usize, &mut [f32])| {
            let shift = bias[o];
            if relu {
                row.iter_mut()
                    .for_each(|v| *v = crate::cpu::relu(*v + shift));
            } else {
                row.iter_mut().for_each(|v| *v += shift);
            }
        };
        if parallel {
            out_image
                .par_chunks_mut(plane)
                .enumerate()
                .for_each(epilogue);
        } else {
            out_image.chunks_mut(plane).enumerate().for_each(epilogue);
        }
    };
    let gemm = |image: &[f32], out_image: &mut [f32], parallelism| {
        gemm_strided(
            [m, plane, k],
            out_image,
            [plane, 1],
            false,
            w,
            [k, 1],
            image,
            [plane, 1],
            parallelism,
        );
    };
    if plan.batch >= rayon::current_num_threads() {
        let images = x.par_chunks(k * plane).zip(out.par_chunks_mut(m * plane));
        images.for_each(|(image, out_image)| {
            gemm(image, out_image, gemm::Parallelism::None);
            store(out_image, false);
        });
    } else {
        for (image, out_image) in x.chunks(k * plane).zip(out.chunks_mut(m * plane)) {
            gemm(image, out_image, gemm::Parallelism::Rayon(0));
            store(out_image, true);
        }
    }
}
